"""DeliveryFailureQueue: where what FME refused for good (and what the stream gave up on) is kept.

Two kinds of message share the queue:
- the delivery function's own, for permanent refusals (4xx other than 429, a connection whose
  delivery is misconfigured, an unreadable item). The body holds the items themselves, so that
  ``fme-bridge delivery redrive`` can send them again once the cause is fixed:
  ``{"kind": "events"|"identities", "connectionId", "reason", "status", "failedAt", "failureId",
  "items": [...]}`` (``failureId``: the message's own, so that the connection's status can name the
  messages its last error is about, and a redrive clear only an error it resolved);
- Lambda's on-failure records for a stream batch that exhausted its retries or its age
  (``{"requestContext": …, "DDBStreamBatchInfo": {"shardId", "startSequenceNumber", …}}``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# SQS takes 256 KiB per message; stay below it with room for the envelope.
MAX_MESSAGE_BYTES = 200_000
SOURCE = "fme-segment-bridge/delivery"


@dataclass(frozen=True)
class Refusal:
    """Items of one connection refused for the same reason."""

    kind: str  # "events" or "identities"
    connection_id: str
    reason: str
    status: int | None
    items: Sequence[dict[str, Any]]
    failure_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def messages(refusal: Refusal, failed_at: int) -> list[tuple[str, str]]:
    """The refusal as ``(failure id, body)`` pairs, each body under :data:`MAX_MESSAGE_BYTES`."""
    envelope = {
        "source": SOURCE,
        "kind": refusal.kind,
        "connectionId": refusal.connection_id,
        "reason": refusal.reason,
        "status": refusal.status,
        "failedAt": failed_at,
        "failureId": f"{refusal.failure_id}.0000",
    }
    base = len(json.dumps({**envelope, "items": []}))
    parts: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = base
    for item in refusal.items:
        item_size = len(json.dumps(item)) + 2
        if current and size + item_size > MAX_MESSAGE_BYTES:
            parts.append(current)
            current, size = [], base
        current.append(item)
        size += item_size
    if current:
        parts.append(current)
    ids = [f"{refusal.failure_id}.{n}" for n in range(1, len(parts) + 1)]
    return [
        (failure_id, json.dumps({**envelope, "failureId": failure_id, "items": part}))
        for failure_id, part in zip(ids, parts, strict=True)
    ]


class FailureQueue:
    """Sends refusals to the queue (an SQS client and the queue URL)."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._url = queue_url

    def send(self, refusal: Refusal, failed_at: int) -> list[str]:
        """The failure ids of the messages sent; raises when SQS fails: the caller then keeps the
        records for a retry."""
        attributes = {
            "kind": {"DataType": "String", "StringValue": refusal.kind},
            "connectionId": {"DataType": "String", "StringValue": refusal.connection_id},
        }
        sent = []
        # One message per call: a batch call caps the sum of its messages, and refusals are rare.
        for failure_id, body in messages(refusal, failed_at):
            self._sqs.send_message(QueueUrl=self._url, MessageBody=body, MessageAttributes=attributes)
            sent.append(failure_id)
        return sent
