"""Batching client for Segment's HTTP Tracking API (``POST {endpoint}/batch``).

Why not the official ``segment-analytics-python`` client: it queues messages for a background
consumer thread that posts batches of at most 100 messages one request at a time and flushes on
a timer. In a Lambda function that thread is frozen between invocations (messages queued at the
end of one invocation are sent, or lost, whenever the container next thaws), its outcome is not
reported back per message, so a failed send cannot be turned into an SQS batch item failure, and
100-message sequential requests use a fraction of what Segment accepts per request. Here, within
one invocation:

- messages are serialised once and packed by their serialised size into requests of up to
  2,500 messages and 500 KB (:class:`BatchPacker`);
- requests go out concurrently over one ``httpx.AsyncClient`` (bounded by a semaphore);
- each request is retried by :func:`shared.http_retry.send_with_retry` (429 with ``Retry-After``,
  408, 410, 460, 5xx other than 501/505, timeouts and connection errors; backoff with jitter)
  within the Lambda's remaining time, and its outcome is returned to the caller, which maps it
  back to the SQS messages that produced each Segment message.
"""

from __future__ import annotations

import asyncio
import base64
import time
import zlib
from array import array
from dataclasses import dataclass, field

import httpx

from shared import __version__
from shared.http_retry import (
    SEGMENT_POLICY,
    Deadline,
    RetryPolicy,
    SendResult,
    send_with_retry,
    tls_context,
)
from shared.outbound.segment_messages import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES

_PREFIX = b'{"batch":['
_SUFFIX_START = b'],"sentAt":"'
_SUFFIX_END = b'"}'
# Bytes a batch body carries besides its messages: prefix, suffix and a 24-character sentAt.
_ENVELOPE_BYTES = len(_PREFIX) + len(_SUFFIX_START) + 24 + len(_SUFFIX_END)
GZIP_LEVEL = 1
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip member (header and CRC), not a bare zlib stream


@dataclass
class SegmentBatch:
    """Serialised messages for one request, and where each came from (SQS record, impression)."""

    payload: bytes = b""  # the messages joined by commas
    records: array[int] = field(default_factory=lambda: array("I"))
    items: array[int] = field(default_factory=lambda: array("I"))

    def __len__(self) -> int:
        return len(self.records)

    def body(self, sent_at: str) -> bytes:
        return b"".join((_PREFIX, self.payload, _SUFFIX_START, sent_at.encode(), _SUFFIX_END))


class BatchPacker:
    """Packs serialised messages into batches under Segment's count and size limits."""

    def __init__(self, max_bytes: int = MAX_BATCH_BYTES, max_messages: int = MAX_BATCH_MESSAGES) -> None:
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self._parts: list[bytes] = []
        self._records = array("I")
        self._items = array("I")
        self._size = _ENVELOPE_BYTES

    def add(self, message: bytes, record: int, item: int) -> SegmentBatch | None:
        """Add one message; returns the batch it closed, if adding it needed a new one."""
        closed = None
        extra = len(message) + (1 if self._parts else 0)
        if self._parts and (self._size + extra > self.max_bytes or len(self._parts) >= self.max_messages):
            closed = self.flush()
            extra = len(message)
        self._parts.append(message)
        self._records.append(record)
        self._items.append(item)
        self._size += extra
        return closed

    def flush(self) -> SegmentBatch | None:
        if not self._parts:
            return None
        batch = SegmentBatch(b",".join(self._parts), self._records, self._items)
        self._parts = []
        self._records = array("I")
        self._items = array("I")
        self._size = _ENVELOPE_BYTES
        return batch


def basic_auth(write_key: str) -> str:
    """Segment's Basic auth: the write key is the user name, the password is empty."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def sent_at() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def http_client(timeout: float = 10.0, concurrency: int = 8) -> httpx.AsyncClient:
    """The Segment HTTP client; :mod:`shared.http_session` keeps it from one invocation to the next."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        verify=tls_context(),
        headers={"User-Agent": f"fme-segment-bridge/{__version__}"},
    )


class SegmentClient:
    """Sends :class:`SegmentBatch` es concurrently, each with retries, within a deadline."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        deadline: Deadline,
        concurrency: int = 8,
        policy: RetryPolicy = SEGMENT_POLICY,
    ) -> None:
        self._http = http
        self._deadline = deadline
        self._policy = policy
        self._slots = asyncio.Semaphore(concurrency)

    async def send(
        self, endpoint: str, write_key: str, batch: SegmentBatch, gzip: bool = False
    ) -> SendResult:
        url = f"{endpoint.rstrip('/')}/batch"
        headers = {"Authorization": basic_auth(write_key), "Content-Type": "application/json"}
        if gzip:
            headers["Content-Encoding"] = "gzip"

        def build() -> httpx.Request:
            # sentAt is fresh on every attempt: Segment corrects timestamps by (receivedAt - sentAt).
            body = batch.body(sent_at())
            if gzip:
                # The fastest level: on batches of track messages, level 6 took twice the CPU
                # for about a seventh fewer bytes.
                body = zlib.compress(body, GZIP_LEVEL, wbits=_GZIP_WBITS)
            return self._http.build_request("POST", url, content=body, headers=headers)

        async with self._slots:
            return await send_with_retry(self._http, build, self._policy, self._deadline)
