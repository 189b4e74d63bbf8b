"""The producer side: an impression listener for the Python Split SDK that feeds the impressions queue.

    from splitio import get_factory
    from fme_bridge.listener import SqsImpressionListener

    listener = SqsImpressionListener(queue_url, environment_name="Production", traffic_type="user")
    factory = get_factory(SDK_KEY, config={"impressionListener": listener})
    ...
    listener.close()  # at shutdown: sends what is still pending

The SDK calls :meth:`SqsImpressionListener.log_impression` on the request path, for every
evaluation. That call only appends to an in-memory queue; a background thread turns what piled up
into envelopes (docs/outbound.md: ``{"environmentName", "trafficType", "impressions": [...]}`` with
each impression in the SDK impression-listener shape) and sends them with ``SendMessageBatch``:
when ``flush_interval`` has passed, when ``batch_size`` impressions are waiting, and on close.

Nothing here ever raises into the SDK. A failed send is retried on the next flush; if SQS stays
unreachable and more than ``max_pending`` impressions pile up, the oldest are dropped and counted
(``stats.dropped``, with a warning in the log) rather than exhausting the application's memory.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared.sqs_batches import MAX_CALL_BYTES as SQS_MAX_CALL_BYTES
from shared.sqs_batches import batch_calls

logger = logging.getLogger(__name__)

# Envelopes under 64 KiB: SQS bills each 64 KiB chunk of a message as one request.
DEFAULT_ENVELOPE_BYTES = 60_000
# What the SDKs report when IP addresses are disabled or unknown.
# As shared.outbound.impressions.NO_VALUE, not imported from there: that module loads pydantic and
# msgspec, which the application this listener runs in need not have.
_NO_VALUE = {"NA", "unknown", ""}


@dataclass
class ListenerStats:
    received: int = 0  # impressions handed over by the SDK
    sent: int = 0  # impressions accepted by SQS
    dropped: int = 0  # impressions given up (over max_pending, unsent at close, logged after it)
    failed_sends: int = 0  # SendMessageBatch calls or entries that failed (and were retried)
    messages: int = 0  # SQS messages (envelopes) sent


def impression_listener_shape(data: Mapping[str, Any], machine_ip: str | None = None) -> dict[str, Any]:
    """The SDK's listener data → the listener shape of docs/outbound.md (without attributes).

    The Python SDK hands over ``{"impression": Impression(...), "attributes", "sdk-language-version",
    "instance-id"}`` with the impression as a named tuple; the JavaScript SDK already sends
    ``{"impression": {"feature", "keyName", ...}, "ip", "hostname", "sdkLanguageVersion"}``.
    """
    impression: Any = data["impression"]
    item: dict[str, Any]
    if isinstance(impression, Mapping):
        item = {"impression": dict(impression)}
    else:
        item = {
            "impression": {
                "feature": impression.feature_name,
                "keyName": impression.matching_key,
                "treatment": impression.treatment,
                "time": impression.time,
                "bucketingKey": impression.bucketing_key,
                "label": impression.label,
                "changeNumber": impression.change_number,
                "properties": getattr(impression, "properties", None),
            }
        }
    language_version = data.get("sdkLanguageVersion") or data.get("sdk-language-version")
    hostname = data.get("hostname") or data.get("instance-id")
    ip = data.get("ip") or machine_ip
    item["sdkLanguageVersion"] = language_version
    item["hostname"] = hostname if isinstance(hostname, str) and hostname not in _NO_VALUE else None
    item["ip"] = ip if isinstance(ip, str) and ip not in _NO_VALUE else None
    return item


def queue_region(queue_url: str) -> str | None:
    """The region in an SQS queue URL (``https://sqs.us-east-1.amazonaws.com/…``, or the legacy
    ``https://us-east-1.queue.amazonaws.com/…``); None for any other host."""
    host = (urlsplit(queue_url).hostname or "").split(".")
    if len(host) > 2 and host[0] == "sqs" and host[2] == "amazonaws":
        return host[1]
    if len(host) > 3 and host[1:3] == ["queue", "amazonaws"]:
        return host[0]
    return None


def _configured_region() -> str | None:
    """The region boto3's default session has (``setup_default_session``, AWS_DEFAULT_REGION, the
    profile's)."""
    import boto3  # the SDK's process may not otherwise need boto3 loaded

    return (boto3.DEFAULT_SESSION or boto3.session.Session()).region_name


def _call_if_alive(method: weakref.WeakMethod[Any]) -> None:
    bound = method()
    if bound is not None:
        bound()


class SqsImpressionListener:
    """``impressionListener`` for ``splitio-client``: impressions → envelopes on the impressions queue."""

    def __init__(
        self,
        queue_url: str,
        environment_name: str,
        *,
        traffic_type: str | None = None,
        environment_id: str | None = None,
        sqs_client: Any = None,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_pending: int = 100_000,
        max_envelope_bytes: int = DEFAULT_ENVELOPE_BYTES,
        include_attributes: bool = False,
        machine_ip: str | None = None,
        register_atexit: bool = True,
    ) -> None:
        if max_envelope_bytes > SQS_MAX_CALL_BYTES:
            raise ValueError(f"max_envelope_bytes must be at most {SQS_MAX_CALL_BYTES} (an SQS message)")
        self.queue_url = queue_url
        self._header: dict[str, Any] = {"environmentName": environment_name}
        if environment_id:
            self._header["environmentId"] = environment_id
        if traffic_type:
            self._header["trafficType"] = traffic_type
        self._sqs = sqs_client
        self._own_client = sqs_client is None  # boto3 clients are not fork-safe: a child makes its own
        self._region: str | None = None
        if self._own_client:
            # Found now, so that a missing region is the application's error at start-up instead of
            # every send failing later in the background. The queue URL's region is the queue's: a
            # client of another region could not reach it.
            self._region = queue_region(queue_url) or os.environ.get("AWS_REGION") or _configured_region()
            if not self._region:
                raise ValueError(
                    f"no AWS region for {queue_url!r}: "
                    "set AWS_REGION or AWS_DEFAULT_REGION, or pass sqs_client"
                )
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.max_envelope_bytes = max_envelope_bytes
        self.include_attributes = include_attributes
        self.machine_ip = machine_ip
        self.stats = ListenerStats()
        # Raw SDK data, converted off the request path.
        self._pending: deque[Mapping[str, Any]] = deque()
        self._count_lock = threading.Lock()
        # Serialised impressions a failed send left behind; retried first.
        self._retry: list[str] = []
        self._start()
        # Pre-forking servers (gunicorn, uWSGI) fork after the app is built: a child inherits the
        # listener but not its thread. It gets a thread of its own and an empty queue (the parent
        # sends what it had pending).
        hook = weakref.WeakMethod(self._after_fork_in_child)  # the hook must not keep us alive
        os.register_at_fork(after_in_child=lambda: _call_if_alive(hook))
        if register_atexit:
            atexit.register(self.close)

    def _start(self) -> None:
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fme-impression-listener", daemon=True)
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        # New locks first, closed or not: one a parent's thread held at the fork stays held here.
        self._count_lock = threading.Lock()
        self._send_lock = threading.Lock()
        if self._closed.is_set():
            return
        self._pending.clear()
        self._retry = []
        self.stats = ListenerStats()
        self._sqs = None if self._own_client else self._sqs
        self._start()

    # -- the SDK's side ---------------------------------------------------------------------

    def log_impression(self, data: Mapping[str, Any]) -> None:
        """Called by the SDK for every impression; returns at once and never raises."""
        try:
            with self._count_lock:
                self.stats.received += 1
                # Checked under the lock close() closes under: what is appended, close() sends.
                closed, overflow = self._closed.is_set(), False
                if not closed:
                    self._pending.append(data)
                    overflow = len(self._pending) > self.max_pending
                    if overflow:
                        self._pending.popleft()
                        self.stats.dropped += 1
            if closed:  # nothing would send it (an SDK still evaluating at exit, say)
                self._drop(1, "the listener is closed")
                return
            if overflow and self.stats.dropped % 1000 == 1:
                logger.warning("impression listener: impressions dropped, SQS is not keeping up")
            if len(self._pending) >= self.batch_size:
                self._wake.set()
        except Exception:  # the SDK's request path must never see our failure
            logger.exception("impression listener: could not queue an impression")

    # -- lifecycle --------------------------------------------------------------------------

    def flush(self) -> bool:
        """Send everything pending now, from the calling thread; True when nothing is left."""
        with self._send_lock:
            return self._send_pending()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background thread and send what is pending (idempotent)."""
        with self._count_lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._wake.set()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._pending or self._retry:
            self._drop(len(self._pending) + len(self._retry), "closed before SQS accepted them")

    def __enter__(self) -> SqsImpressionListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the background side ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self.flush()
            except Exception:
                logger.exception("impression listener: flush failed")

    def _client(self) -> Any:
        if self._sqs is None:
            import boto3  # the SDK's process may not otherwise need boto3 loaded

            self._sqs = boto3.client("sqs", region_name=self._region)
        return self._sqs

    def _serialised(self) -> list[str]:
        items = self._retry
        self._retry = []
        while self._pending:
            data = self._pending.popleft()
            try:
                item = impression_listener_shape(data, self.machine_ip)
                if self.include_attributes:
                    item["attributes"] = data.get("attributes")
                serialised = json.dumps(item, separators=(",", ":"), default=str)
            except Exception:
                self._drop(1, "unusable impression data")
                continue
            if len(serialised.encode()) > self.max_envelope_bytes - 200:
                self._drop(1, "an impression larger than an envelope")
                continue
            items.append(serialised)
        # Failed sends pile up only while SQS is unreachable: keep the newest.
        overflow = len(items) - self.max_pending
        if overflow > 0:
            del items[:overflow]
            self._drop(overflow, "SQS is not keeping up")
        return items

    def _drop(self, count: int, why: str) -> None:
        with self._count_lock:
            self.stats.dropped += count
        logger.warning("impression listener: %d impressions dropped: %s", count, why)

    def _envelopes(self, items: list[str]) -> list[tuple[str, list[str]]]:
        header = json.dumps(self._header, separators=(",", ":"))[:-1] + ',"impressions":['
        envelopes: list[tuple[str, list[str]]] = []
        current: list[str] = []
        size = len(header) + 2
        for item in items:
            extra = len(item.encode()) + (1 if current else 0)
            if current and size + extra > self.max_envelope_bytes:
                envelopes.append((header + ",".join(current) + "]}", current))
                current, size = [], len(header) + 2
                extra = len(item.encode())
            current.append(item)
            size += extra
        if current:
            envelopes.append((header + ",".join(current) + "]}", current))
        return envelopes

    def _send_pending(self) -> bool:
        envelopes = self._envelopes(self._serialised())
        for chunk in batch_calls(envelopes, lambda envelope: len(envelope[0].encode()), SQS_MAX_CALL_BYTES):
            self._send_chunk(chunk)
        return not self._retry and not self._pending

    def _send_chunk(self, chunk: list[tuple[str, list[str]]]) -> None:
        entries = [{"Id": str(i), "MessageBody": body} for i, (body, _) in enumerate(chunk)]
        try:
            response = self._client().send_message_batch(QueueUrl=self.queue_url, Entries=entries)
        except Exception as exc:
            self.stats.failed_sends += 1
            logger.warning("impression listener: SendMessageBatch failed (%s); retrying", type(exc).__name__)
            for _, items in chunk:
                self._retry.extend(items)
            return
        failed = {int(entry["Id"]) for entry in response.get("Failed", [])}
        for index, (_, items) in enumerate(chunk):
            if index in failed:
                self.stats.failed_sends += 1
                self._retry.extend(items)
            else:
                self.stats.sent += len(items)
                self.stats.messages += 1
        if failed:
            logger.warning("impression listener: %d SQS entries failed; retrying", len(failed))
