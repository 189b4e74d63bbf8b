"""SQS helpers of the queue consumers: SendMessageBatch packing (at most ten entries and 256 KiB of
bodies per call) and a record's place among its deliveries."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

MAX_ENTRIES = 10
# SQS's long-standing limits: 256 KiB per message, and per SendMessageBatch call (bodies and message
# attributes together). Queues may now allow 1 MiB, but one created before that, or with a smaller
# MaximumMessageSize, does not.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_CALL_BYTES = 256 * 1024


def batch_calls(
    items: Iterable[T], size: Callable[[T], int], max_bytes: int = MAX_CALL_BYTES
) -> Iterator[list[T]]:
    """The items, in their order, grouped into calls; an item larger than ``max_bytes`` goes alone."""
    chunk: list[T] = []
    chunk_bytes = 0
    for item in items:
        item_bytes = size(item)
        if chunk and (len(chunk) >= MAX_ENTRIES or chunk_bytes + item_bytes > max_bytes):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(item)
        chunk_bytes += item_bytes
    if chunk:
        yield chunk


def receive_count(record: Mapping[str, Any]) -> int:
    """How many times SQS has delivered this record (``ApproximateReceiveCount``), this time included."""
    try:
        return int(record.get("attributes", {}).get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        return 1


def max_receives() -> int | None:
    """The queue's ``maxReceiveCount`` (``MAX_RECEIVE_COUNT``, set by template.yaml beside the redrive
    policy): the receive after which SQS moves a message to the DLQ. None when not set."""
    value = os.environ.get("MAX_RECEIVE_COUNT")
    return int(value) if value else None
