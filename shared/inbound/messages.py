"""Webhook bodies and the Segment messages inside them.

Three body shapes are accepted (docs/inbound.md): one message object (classic Webhooks), a JSON array
of messages (Webhooks (Actions) batching) and ``{"batch": [...]}`` (HTTP Tracking API style). A body
that is not one of those is a :class:`BadRequest`; a single bad message inside a batch is not — the
mapping drops it by index and keeps the others.
"""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime
from math import isfinite
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from shared.surrogates import has_surrogate_escape, replace_lone_surrogates

MAX_MESSAGES = 4000
GZIP_MAGIC = b"\x1f\x8b"  # how every gzip stream starts
# Latest epoch ms the sort key's 13 digits hold (year 2286); anything outside is not a real time.
_MAX_EPOCH_MS = 9_999_999_999_999


class BadRequest(Exception):
    """The body cannot be read as Segment messages (400)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


class PayloadTooLarge(Exception):
    """The body exceeds a size or count limit (413); the message names the limit."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.message = message
        self.limit = limit


def gunzip(body: bytes, limit: int) -> bytes:
    """A ``Content-Encoding: gzip`` body (Segment SDKs can send one), inflated up to ``limit`` bytes."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise BadRequest("invalid_gzip", "the request body is not valid gzip") from None
    if len(inflated) > limit:
        raise PayloadTooLarge(
            f"the request body inflates to more than {limit} bytes; the limit is {limit}", limit
        )
    if not inflater.eof:  # cut short: what it holds is not the whole body
        raise BadRequest("invalid_gzip", "the request body is not valid gzip")
    return inflated


def _reject_constant(name: str) -> Any:
    # NaN / Infinity are not JSON, and DynamoDB cannot store them.
    raise ValueError(f"{name} is not a JSON value")


def _integer_or_text(digits: str) -> int | str:
    """An integer, or its digits as text when Python refuses to convert that many (over 4,300)."""
    try:
        return int(digits)
    except ValueError:
        return digits


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        # Valid JSON that json refuses: an integer of more digits than Python converts. Read again,
        # keeping such integers as their text (a property DynamoDB cannot hold as a number is kept
        # as text anyway), so that one message's number does not cost its neighbours. Any other
        # error is raised again by the second reading.
        return json.loads(raw, parse_constant=_reject_constant, parse_int=_integer_or_text)


def decode_body(raw: bytes) -> list[Any]:
    """The messages of a webhook body, in order; raises :class:`BadRequest` / :class:`PayloadTooLarge`."""
    if not raw.strip():
        raise BadRequest("empty_body", "the request body is empty; expected a Segment message or an array")
    try:
        document = _loads(raw)
    except ValueError as exc:  # includes UnicodeDecodeError
        if raw.startswith(GZIP_MAGIC):
            raise BadRequest(
                "invalid_json", "the request body is gzip without Content-Encoding: gzip; send that header"
            ) from None
        raise BadRequest("invalid_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        # A 503 here would make Segment retry a body that can never succeed.
        raise BadRequest("invalid_json", "the request body is nested too deeply") from None
    if has_surrogate_escape(raw):
        document = replace_lone_surrogates(document)
    messages: Any
    if isinstance(document, list):
        messages = document
    elif isinstance(document, dict):
        if "batch" in document and "type" not in document:
            messages = document["batch"]
            if not isinstance(messages, list):
                raise BadRequest("invalid_batch", '"batch" must be an array of Segment messages')
        elif not document:
            raise BadRequest("empty_body", "the request body is an empty object; expected a Segment message")
        else:
            messages = [document]
    else:
        raise BadRequest(
            "invalid_body_type",
            f"the request body must be a JSON object or array, not {_json_type(document)}",
        )
    if not messages:
        raise BadRequest("empty_batch", "the request body holds no messages")
    if len(messages) > MAX_MESSAGES:
        raise PayloadTooLarge(
            f"the request body holds {len(messages)} messages; at most {MAX_MESSAGES} are accepted",
            MAX_MESSAGES,
        )
    return messages


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


def first_element_text(raw: bytes) -> bytes | None:
    """The exact bytes of the first element of a JSON array body, or None when the body is no array.

    Webhooks (Actions) signs a batch with ``JSON.stringify(batch[0])``; the raw text of that element
    as it was sent is the most faithful copy of what was signed (re-serializing may format numbers
    differently). Only the first element is parsed, so this is cheap before authentication.
    """
    text = raw.lstrip()
    if not text.startswith(b"["):
        return None
    try:
        decoded = text.decode()
    except UnicodeDecodeError:
        return None
    start = 1
    while start < len(decoded) and decoded[start] in " \t\r\n":
        start += 1
    try:
        _, end = json.JSONDecoder().raw_decode(decoded, start)
    except (ValueError, RecursionError):  # runs before authentication: any body must get a 401
        return None
    return decoded[start:end].encode()


def compact_json(value: Any) -> bytes:
    """JSON as ``JSON.stringify`` writes it: no spaces, non-ASCII kept as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------------------------------------
# Segment messages


def _id_string(value: Any) -> Any:
    # Some libraries send numeric ids; Segment itself treats ids as strings.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if value == "":
        return None
    return value


IdString = Annotated[str | None, BeforeValidator(_id_string)]


def key_of(raw: Any) -> str | None:
    """A traffic key from an id (string, or a number sent by a loosely typed library); None for
    an empty one or one of whitespace alone, which FME's SDKs refuse."""
    if isinstance(raw, str):
        return raw if raw.strip() else None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return str(raw)
    return None


def _key_string(value: Any) -> Any:
    # userId / anonymousId as keys; anything that is no id at all is left for the model to refuse.
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return key_of(value)
    return value


KeyString = Annotated[str | None, BeforeValidator(_key_string)]


def _empty_list_as_object(value: Any) -> Any:
    # PHP's json_encode writes an empty array for empty properties or traits (analytics-php).
    return {} if isinstance(value, list) and not value else value


Fields = Annotated[dict[str, Any] | None, BeforeValidator(_empty_list_as_object)]


class SegmentMessage(BaseModel):
    """A Segment spec message: the common fields plus those of identify/track/page/screen/group.

    Fields not named here are kept (``model_extra``) so that dotted ``eventTypeIdField`` /
    ``valueField`` paths can reach anything the message carries.
    """

    model_config = ConfigDict(extra="allow")

    type: str
    messageId: IdString = None
    userId: KeyString = None
    anonymousId: KeyString = None
    timestamp: Any = None
    originalTimestamp: Any = None
    receivedAt: Any = None
    sentAt: Any = None
    event: Any = None
    name: Any = None
    groupId: Any = None
    properties: Fields = None
    traits: Fields = None
    context: Fields = None

    def lookup(self, path: str) -> Any:
        """The value at a dotted path (``event``, ``properties.revenue``), None when absent."""
        head, _, rest = path.partition(".")
        value: Any = (
            getattr(self, head) if head in type(self).model_fields else (self.model_extra or {}).get(head)
        )
        if rest:
            for part in rest.split("."):
                if not isinstance(value, dict):
                    return None
                value = value.get(part)
        return value

    def sent_time_ms(self) -> int | None:
        """The time the message carries: ``timestamp``, else ``originalTimestamp``, else ``receivedAt``."""
        for candidate in (self.timestamp, self.originalTimestamp, self.receivedAt):
            parsed = to_epoch_ms(candidate)
            if parsed is not None:
                return parsed
        return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_epoch_ms(value: Any) -> int | None:
    """ISO-8601 (as Segment sends) or a number (epoch ms, or seconds when small) → epoch ms."""
    millis: int | None = None
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            try:  # RFC 3339 allows a lowercase "t" and "z", which fromisoformat refuses
                parsed = datetime.fromisoformat(value.upper())
            except ValueError:
                return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        millis = (parsed - _EPOCH) // _ONE_MS
    elif isinstance(value, int) and not isinstance(value, bool):
        # Ten-digit numbers are epoch seconds; thirteen-digit ones epoch milliseconds. An integer of
        # any size is compared as it is: converted to a float, one past 1e308 would raise.
        millis = value * 1000 if abs(value) < 100_000_000_000 else value
    elif isinstance(value, float) and isfinite(value):
        millis = int(value * 1000) if abs(value) < 100_000_000_000 else int(value)
    if millis is None or not 0 <= millis <= _MAX_EPOCH_MS:
        return None
    return millis


_ONE_MS = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - _EPOCH
