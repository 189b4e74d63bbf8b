"""DeliveryFailureQueue: where what FME refused for good (and what the stream gave up on) is kept.

Two kinds of message share the queue:
- the delivery function's own, for permanent refusals (4xx other than 429, a connection whose
  delivery is misconfigured, an unreadable item). The body holds the items themselves, so that
  ``fme-bridge delivery redrive`` can send them again once the cause is fixed:
  ``{"kind": "events"|"identities", "connectionId", "reason", "status", "failedAt", "items": [...]}``;
- Lambda's on-failure records for a stream batch that exhausted its retries or its age
  (``{"requestContext": …, "DDBStreamBatchInfo": {"shardId", "startSequenceNumber", …}}``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
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


def messages(refusal: Refusal, failed_at: int) -> list[str]:
    """The refusal as message bodies, each under :data:`MAX_MESSAGE_BYTES`."""
    envelope = {
        "source": SOURCE,
        "kind": refusal.kind,
        "connectionId": refusal.connection_id,
        "reason": refusal.reason,
        "status": refusal.status,
        "failedAt": failed_at,
    }
    base = len(json.dumps({**envelope, "items": []}))
    bodies: list[str] = []
    current: list[dict[str, Any]] = []
    size = base
    for item in refusal.items:
        item_size = len(json.dumps(item)) + 2
        if current and size + item_size > MAX_MESSAGE_BYTES:
            bodies.append(json.dumps({**envelope, "items": current}))
            current, size = [], base
        current.append(item)
        size += item_size
    if current:
        bodies.append(json.dumps({**envelope, "items": current}))
    return bodies


class FailureQueue:
    """Sends refusals to the queue (an SQS client and the queue URL)."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._url = queue_url

    def send(self, refusal: Refusal, failed_at: int) -> None:
        """Raises when SQS fails: the caller then keeps the records for a retry."""
        bodies = messages(refusal, failed_at)
        attributes = {
            "kind": {"DataType": "String", "StringValue": refusal.kind},
            "connectionId": {"DataType": "String", "StringValue": refusal.connection_id},
        }
        # One message per call: a batch call caps the sum of its messages, and refusals are rare.
        for body in bodies:
            self._sqs.send_message(QueueUrl=self._url, MessageBody=body, MessageAttributes=attributes)
