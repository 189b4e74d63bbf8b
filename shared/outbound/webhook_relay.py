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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
from botocore.exceptions import BotoCoreError, ClientError

from shared import aws
from shared.sqs_batches import MAX_MESSAGE_BYTES, batch_calls

# What a body may inflate to: about 180,000 impressions, far more than FME posts in its 10 s.
MAX_INFLATED_BYTES = 64 * 1024 * 1024
# Rounds of SendMessageBatch for entries SQS refused or calls that failed, before the answer is 503.
SEND_ROUNDS = 4
SEND_THREADS = 8


class NotImpressions(Exception):
    """The body is not JSON of a shape the impressions queue takes (400)."""


@dataclass
class Relayed:
    """A body cut into queue messages."""

    bodies: list[str] = field(default_factory=list)
    impressions: int = 0  # items of an array or an envelope; 1 for a single object
    too_large: list[int] = field(default_factory=list)  # positions of items no message can hold


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
        return json.loads(body)
    except (ValueError, RecursionError):  # invalid JSON, invalid UTF-8, or nested too deep
        raise NotImpressions("the request body is not JSON") from None


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
    return Relayed(bodies=[encoded.decode()], impressions=1)


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
            parts, used, size = [], 0, len(item)
        parts.append(item)
        used += size
    if parts:
        relayed.bodies.append((opening + b",".join(parts) + closing).decode())
    return relayed


def send(
    queue_url: str,
    bodies: Sequence[str],
    seconds_left: Callable[[], float],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send ``bodies`` to the queue (SendMessageBatch, calls side by side); how many could not be
    sent. What SQS refuses or a failed call held is sent again, for :data:`SEND_ROUNDS` rounds with
    backoff, while ``seconds_left()`` allows."""
    pending = list(bodies)
    client = aws.client("sqs")
    for round_ in range(SEND_ROUNDS):
        calls = list(batch_calls(pending, lambda body: len(body.encode())))
        with ThreadPoolExecutor(max_workers=min(SEND_THREADS, len(calls) or 1)) as pool:
            refused = pool.map(lambda call: _send_call(client, queue_url, call), calls)
            pending = [body for bodies_refused in refused for body in bodies_refused]
        if not pending:
            return 0
        wait = random.uniform(0, 0.1 * 2**round_)  # noqa: S311 - jitter, not security
        if round_ + 1 == SEND_ROUNDS or seconds_left() <= wait + 1.0:
            break
        sleep(wait)
    return len(pending)


def _send_call(client: Any, queue_url: str, bodies: list[str]) -> list[str]:
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
    try:
        response = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
    except (BotoCoreError, ClientError):
        return bodies
    return [bodies[int(failed["Id"])] for failed in response.get("Failed", [])]
