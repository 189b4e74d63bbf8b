"""FME's impressions webhook, relayed onto the impressions queue (docs/outbound.md).

FME posts arrays of impressions in the webhook shape, gzipped, about every 10 s, and cannot add
headers of the receiver's choosing: the URL carries the secret. The relay checks only that the body
is JSON of a shape the queue takes (an array of impressions, one impression, or an envelope), cuts it
into messages SQS accepts and sends them. Every impression is checked by the impressions function,
whose dead-letter queue says why one could not be delivered.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import msgspec
from botocore.exceptions import BotoCoreError, ClientError

from shared import aws
from shared.sqs_batches import MAX_MESSAGE_BYTES, batch_calls

# What a body may inflate to (about 90,000 impressions of the webhook shape) and how many commas it
# may hold (such impressions hold 14 each): bounds on the function's memory, about 130 bytes per
# item of the body besides the body itself, whatever the items are (413 beyond either).
MAX_INFLATED_BYTES = 32 * 1024 * 1024
MAX_COMMAS = 2_000_000
# Rounds of SendMessageBatch for entries SQS refused or calls that failed, before the answer is 503.
SEND_ROUNDS = 4
SEND_THREADS = 8
# Time kept back from the calls for the answer.
DEADLINE_MARGIN_S = 1.5


class NotImpressions(Exception):
    """The body is not JSON of a shape the impressions queue takes (400)."""


class TooManyItems(Exception):
    """The body holds more values than the function takes in one post (413)."""


@dataclass
class Relayed:
    """A body cut into queue messages."""

    bodies: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # items in each of the bodies
    impressions: int = 0  # items of an array or an envelope; 1 for a single object
    too_large: list[int] = field(default_factory=list)  # positions of items no message can hold


@dataclass
class Sent:
    """What :func:`send` did not get onto the queue."""

    unsent: int = 0  # messages still refused, or not answered, when the rounds or the time ran out
    refused: dict[int, str] = field(default_factory=dict)  # messages SQS refused for good: the reasons


_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_START = re.compile(rb"\s*")
# Valid in JSON text, refused in an SQS message (U+FFFE, U+FFFF in UTF-8): such a body is escaped.
_SQS_REFUSES = (b"\xef\xbf\xbe", b"\xef\xbf\xbf")


def queue_messages(body: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Relayed:
    """The JSON ``body`` as queue messages of at most ``max_bytes``: an array into arrays, an envelope
    into envelopes with the same fields beside ``impressions``, one impression as it is.

    Items are copied as the body holds them, without being decoded (msgspec checks the JSON); a body
    msgspec does not take (a lone surrogate escape: a string cut inside an emoji) is read by the
    standard library and its items written again."""
    if body.count(b",") > MAX_COMMAS:
        raise TooManyItems(f"the request body holds more than {MAX_COMMAS:,} values; send fewer per post")
    if not body.isascii():  # ASCII is UTF-8: no check, and no decoded copy of the body
        try:
            body.decode()  # msgspec does not check the UTF-8 of what it keeps raw
        except UnicodeDecodeError:
            raise NotImpressions("the request body is not JSON (not UTF-8)") from None
    at = _START.match(body).end()  # type: ignore[union-attr]  # \s* always matches
    first = body[at : at + 1]
    if first in (b"[", b"{") and not any(refused in body for refused in _SQS_REFUSES):
        try:
            return _raw_messages(body, first, max_bytes)
        except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deep
            pass
    return _decoded_messages(parse(body), max_bytes)


def parse(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_not_json)
    except (ValueError, RecursionError):  # invalid JSON, invalid UTF-8, or nested too deep
        raise NotImpressions("the request body is not JSON") from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _raw_messages(body: bytes, first: bytes, max_bytes: int) -> Relayed:
    if first == b"[":
        return _pack([bytes(item) for item in _ITEMS.decode(body)], b"[", b"]", max_bytes)
    fields = _FIELDS.decode(body)
    items = fields.pop("impressions", None)
    if items is None or not bytes(items).lstrip().startswith(b"["):
        return _single(body.strip(), max_bytes)
    head = b",".join(msgspec.json.encode(name) + b":" + bytes(value) for name, value in fields.items())
    opening = b"{" + head + b"," if head else b"{"
    return _pack(
        [bytes(item) for item in _ITEMS.decode(items)], opening + b'"impressions":[', b"]}", max_bytes
    )


def _decoded_messages(document: Any, max_bytes: int) -> Relayed:
    if isinstance(document, list):
        return _pack([_encode(item) for item in document], b"[", b"]", max_bytes)
    if not isinstance(document, dict):
        raise NotImpressions("the request body must be a JSON array of impressions, or an object")
    items = document.get("impressions")
    if isinstance(items, list):
        head = {name: value for name, value in document.items() if name != "impressions"}
        opening = _encode(head)[:-1] + b"," if head else b"{"
        return _pack([_encode(item) for item in items], opening + b'"impressions":[', b"]}", max_bytes)
    return _single(_encode(document), max_bytes)


def _encode(value: Any) -> bytes:
    # ASCII: a lone surrogate stays an escape, which SQS accepts and the impressions function reads
    # as U+FFFD.
    return json.dumps(value, separators=(",", ":")).encode()


def _single(encoded: bytes, max_bytes: int) -> Relayed:
    if len(encoded) > max_bytes:
        return Relayed(impressions=1, too_large=[0])
    return Relayed(bodies=[encoded.decode()], counts=[1], impressions=1)


def _pack(items: Sequence[bytes], opening: bytes, closing: bytes, max_bytes: int) -> Relayed:
    relayed = Relayed(impressions=len(items))
    room = max_bytes - len(opening) - len(closing)
    parts: list[bytes] = []
    used = 0
    for position, item in enumerate(items):
        size = len(item) + (1 if parts else 0)  # the comma before it
        if len(item) > room:
            relayed.too_large.append(position)
            continue
        if used + size > room:
            relayed.bodies.append((opening + b",".join(parts) + closing).decode())
            relayed.counts.append(len(parts))
            parts, used, size = [], 0, len(item)
        parts.append(item)
        used += size
    if parts:
        relayed.bodies.append((opening + b",".join(parts) + closing).decode())
        relayed.counts.append(len(parts))
    return relayed


def send(
    queue_url: str,
    bodies: Sequence[str],
    seconds_left: Callable[[], float],
    sleep: Callable[[float], None] = time.sleep,
) -> Sent:
    """Send ``bodies`` to the queue (SendMessageBatch, calls side by side). What a failed call held,
    or SQS refused for a reason of its own, is sent again, for :data:`SEND_ROUNDS` rounds with
    backoff; what SQS refuses as the sender's fault is not. Calls not answered
    :data:`DEADLINE_MARGIN_S` before ``seconds_left()`` runs out are given up on (counted unsent),
    so that the function still answers."""
    sizes = [len(body.encode()) for body in bodies]
    pending = list(range(len(bodies)))
    refused: dict[int, str] = {}
    client = aws.client("sqs")
    for round_ in range(SEND_ROUNDS):
        calls = list(batch_calls(pending, sizes.__getitem__))
        pool = ThreadPoolExecutor(max_workers=min(SEND_THREADS, len(calls) or 1))
        futures = {
            pool.submit(_send_call, client, queue_url, [bodies[i] for i in call]): call for call in calls
        }
        done, late = wait(futures, timeout=max(0.0, seconds_left() - DEADLINE_MARGIN_S))
        pool.shutdown(wait=False, cancel_futures=True)
        pending = [index for future in late for index in futures[future]]
        for future in done:
            call = futures[future]
            again, for_good = future.result()
            pending.extend(call[position] for position in again)
            refused.update((call[position], reason) for position, reason in for_good.items())
        if not pending:
            break
        pause = random.uniform(0, 0.1 * 2**round_)  # noqa: S311 - jitter, not security
        if late or round_ + 1 == SEND_ROUNDS or seconds_left() <= pause + DEADLINE_MARGIN_S:
            break
        sleep(pause)
    return Sent(unsent=len(pending), refused=refused)


def _send_call(client: Any, queue_url: str, bodies: list[str]) -> tuple[list[int], dict[int, str]]:
    """The positions of the bodies to send again, and the reasons of those SQS refused as the
    sender's fault."""
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
    try:
        response = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
    except (BotoCoreError, ClientError):
        return list(range(len(bodies))), {}
    failed = response.get("Failed", [])
    again = [int(entry["Id"]) for entry in failed if not entry.get("SenderFault")]
    for_good = {int(e["Id"]): str(e.get("Code") or "refused") for e in failed if e.get("SenderFault")}
    return again, for_good
