"""A Segment-compatible HTTP Tracking API on loopback, for tests, the local stack and benchmarks.

It answers the routes of Segment's HTTP Tracking API (``POST /v1/batch`` and ``/v1/import`` plus
the single-call routes ``/v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``, ``/v1/group``,
``/v1/alias``), checks Basic auth against the configured write keys (the write key is the user name,
the password is empty), enforces Segment's limits (500 KB per request, 32 KB per message, 2,500
messages per batch), accepts gzip bodies, and records every request and every accepted message.

Faults can be injected for the next N requests or for a fraction of them: an HTTP status (500, 429
with ``Retry-After``, …), a hang longer than the client's timeout, or a dropped connection. With
``accept=True`` the messages are recorded before the fault, as when Segment stored a batch but the
answer was lost — the case that deduplication by ``messageId`` exists for.

    with SegmentSink(write_keys={"wk"}) as sink:
        endpoint = sink.endpoint          # http://127.0.0.1:<port>/v1
        sink.fail_next(2, status=503)
        ...
        assert len(sink.messages) == 10
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from fme_bridge.loopback_server import LoopbackServer, url_host

MAX_REQUEST_BYTES = 500 * 1000
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_MESSAGES = 2500
SINGLE_CALL_TYPES = ("track", "identify", "page", "screen", "group", "alias")
BATCH_ROUTES = ("batch", "import")

FaultKind = Literal["status", "timeout", "drop"]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind = "status"
    status: int = 500
    retry_after: float | None = None
    hang_seconds: float = 2.0
    accept: bool = False  # record the messages before failing (stored, but the answer is lost)


@dataclass
class RecordedRequest:
    """One request as the sink saw it, with what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes  # decompressed
    write_key: str | None
    status: int | None = None  # None when the sink hung or dropped the connection
    fault: Fault | None = None
    error: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    gzipped: bool = False
    connection: str | None = None  # the client's address and port: requests on one connection share it
    wire_size: int = 0  # the body's bytes as sent (compressed, when gzipped)

    @property
    def size(self) -> int:
        return len(self.body)


class SegmentSink:
    """A threaded loopback server speaking Segment's HTTP Tracking API. Thread-safe."""

    def __init__(
        self,
        write_keys: Iterable[str] = ("test-write-key",),
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        check_message_size: bool = True,
    ) -> None:
        self.write_keys = set(write_keys)
        # Measuring every message costs a serialization each; benchmarks may turn it off.
        self.check_message_size = check_message_size
        self._host = host
        self._port = port
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._messages: list[dict[str, Any]] = []
        self._message_keys: list[str] = []
        self._faults: list[Fault] = []
        self._fault_fraction: tuple[float, Fault, random.Random] | None = None
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> SegmentSink:
        if self._server is not None:
            return self
        server = LoopbackServer((self._host, self._port), _handler_for(self))
        server.block_on_close = False  # a hanging (fault-injected) request must not hold up stop()
        self._server = server
        # A short poll interval keeps stop() quick.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="segment-sink", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> SegmentSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the sink is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{url_host(self._host)}:{self.port}"

    @property
    def endpoint(self) -> str:
        """What an outbound config's ``endpoint`` should be set to."""
        return f"{self.url}/v1"

    # -- what was received ------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Every accepted message, in arrival order (redeliveries included)."""
        with self._lock:
            return list(self._messages)

    def messages_for(self, write_key: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m, k in zip(self._messages, self._message_keys, strict=True) if k == write_key]

    def unique_messages(self) -> dict[str, dict[str, Any]]:
        """Accepted messages by ``messageId``, as Segment's deduplication would keep them."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for message in self._messages:
                out.setdefault(str(message.get("messageId")), message)
            return out

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` messages were accepted; False on timeout."""
        end = time.monotonic() + timeout
        with self._lock:
            while len(self._messages) < count:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def clear(self) -> None:
        """Forget requests, messages and pending faults."""
        with self._lock:
            self._requests.clear()
            self._messages.clear()
            self._message_keys.clear()
            self._faults.clear()
            self._fault_fraction = None

    # -- fault injection --------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        *,
        kind: FaultKind = "status",
        retry_after: float | None = None,
        hang_seconds: float = 2.0,
        accept: bool = False,
    ) -> None:
        """Fail the next ``count`` requests (queued after faults already pending)."""
        fault = Fault(kind, status, retry_after, hang_seconds, accept)
        with self._lock:
            self._faults.extend([fault] * count)

    def fail_fraction(
        self,
        fraction: float,
        status: int = 500,
        *,
        kind: FaultKind = "status",
        retry_after: float | None = None,
        hang_seconds: float = 2.0,
        accept: bool = False,
        seed: int = 0,
    ) -> None:
        """Fail each request with probability ``fraction`` (0 turns it off); seeded, so repeatable."""
        with self._lock:
            self._fault_fraction = (
                (fraction, Fault(kind, status, retry_after, hang_seconds, accept), random.Random(seed))  # noqa: S311 - fault injection
                if fraction > 0
                else None
            )

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.pop(0)
            if self._fault_fraction is not None:
                fraction, fault, rng = self._fault_fraction
                if rng.random() < fraction:
                    return fault
            return None

    # -- request handling (called from server threads) --------------------------------------

    def _record(self, request: RecordedRequest, accepted: bool) -> None:
        with self._lock:
            self._requests.append(request)
            if accepted:
                self._messages.extend(request.messages)
                self._message_keys.extend([request.write_key or ""] * len(request.messages))
            self._lock.notify_all()

    def _authorized_key(self, headers: dict[str, str], payload: Any) -> str | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user = base64.b64decode(auth[6:].strip(), validate=True).decode().split(":", 1)[0]
            except (binascii.Error, UnicodeDecodeError):
                return None
            return user if user in self.write_keys else None
        # Segment also accepts the write key in the body.
        key = payload.get("writeKey") if isinstance(payload, dict) else None
        return key if isinstance(key, str) and key in self.write_keys else None


def _validate(route: str, payload: Any, check_size: bool) -> tuple[list[dict[str, Any]], str | None]:
    """The messages of a request, or the reason Segment would refuse it."""
    if not isinstance(payload, dict):
        return [], "body must be a JSON object"
    if route in BATCH_ROUTES:
        batch = payload.get("batch")
        if not isinstance(batch, list):
            return [], "batch must be an array"
        if len(batch) > MAX_BATCH_MESSAGES:
            return [], f"batch has {len(batch)} messages, more than {MAX_BATCH_MESSAGES}"
        messages = batch
    else:
        messages = [{**payload, "type": payload.get("type", route)}]
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return [], f"message {index} is not an object"
        if check_size:
            size = len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())
            if size > MAX_MESSAGE_BYTES:
                return [], f"message {index} is {size} bytes, more than {MAX_MESSAGE_BYTES}"
        if message.get("type") not in SINGLE_CALL_TYPES:
            return [], f"message {index} has an unknown type {message.get('type')!r}"
        if not message.get("userId") and not message.get("anonymousId"):
            return [], f"message {index} has neither userId nor anonymousId"
        if message.get("type") == "track" and not message.get("event"):
            return [], f"message {index} is a track without event"
    return messages, None


def _not_json(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON (and Segment) does not.
    raise ValueError(f"{name} is not JSON")


def _handler_for(sink: SegmentSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "segment-sink"
        # Headers and body go out as two writes: with Nagle on, the body waits for the client's
        # delayed ACK (about 40 ms on Linux loopback) on every keep-alive request.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(404, {"success": False, "message": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            gzipped = headers.get("content-encoding", "").lower() == "gzip"
            recorded = RecordedRequest(
                "POST", self.path, headers, raw, None, gzipped=gzipped, wire_size=len(raw)
            )
            recorded.connection = "{}:{}".format(*self.client_address[:2])
            route = self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            if not self.path.startswith("/v1/") or route not in (*BATCH_ROUTES, *SINGLE_CALL_TYPES):
                recorded.status = 404
                sink._record(recorded, accepted=False)
                self._answer(404, {"success": False, "message": "not found"})
                return
            if len(raw) > MAX_REQUEST_BYTES * 4:
                self._refuse(recorded, 400, "request too large")
                return
            try:
                body = gzip.decompress(raw) if gzipped else raw
                recorded.body = body
                payload = json.loads(body, parse_constant=_not_json)
            except (OSError, ValueError):
                self._refuse(recorded, 400, "body is not valid JSON")
                return
            recorded.write_key = sink._authorized_key(headers, payload)
            if recorded.write_key is None:
                self._refuse(recorded, 401, "invalid write key")
                return
            if len(body) > MAX_REQUEST_BYTES:
                self._refuse(recorded, 400, f"request is {len(body)} bytes, more than {MAX_REQUEST_BYTES}")
                return
            # No message can be over the limit when the whole body is not.
            check_size = sink.check_message_size and len(body) > MAX_MESSAGE_BYTES
            messages, problem = _validate(route, payload, check_size)
            if problem is not None:
                self._refuse(recorded, 400, problem)
                return
            recorded.messages = messages
            fault = sink._next_fault()
            if fault is None:
                recorded.status = 200
                sink._record(recorded, accepted=True)
                self._answer(200, {"success": True})
                return
            recorded.fault = fault
            sink._record(recorded, accepted=fault.accept)
            if fault.kind == "timeout":
                time.sleep(fault.hang_seconds)
                self.close_connection = True
                return
            if fault.kind == "drop":
                self.close_connection = True
                self.connection.close()
                return
            recorded.status = fault.status
            extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            self._answer(fault.status, {"success": False, "message": "injected fault"}, extra)

        def _refuse(self, recorded: RecordedRequest, status: int, reason: str) -> None:
            recorded.status = status
            recorded.error = reason
            sink._record(recorded, accepted=False)
            self._answer(status, {"success": False, "code": "invalid_request", "message": reason})

    return Handler
