"""SendMessageBatch packing: at most ten entries and 256 KiB of bodies per call."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

MAX_ENTRIES = 10
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
