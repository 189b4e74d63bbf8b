"""An FME-compatible HTTP server on loopback: the Events API and the Admin API's Save Identities.

For tests and the local stack. It answers like FME does — ``POST /api/events/bulk`` with
``Authorization: Bearer <server-side SDK key>`` → 202; ``POST /internal/api/v2/trafficTypes/{tt}/
environments/{env}/identities`` with ``Authorization: Bearer <Admin API key>`` → 200 with
``{"objects", "failed", "metadata"}`` — checks the keys (401 otherwise), validates bodies the way
FME does (400 for a malformed event; a per-identity failure for a bad attribute id), and records
what it accepted. It can be told to fail the next N requests with a status (500, 429 with the
rate-limit reset headers, …) or to hold them past the client's timeout.

``python -m fme_bridge.fme_sink --port 8089 --sdk-key K --admin-key A`` runs one standalone;
``GET /_sink/state`` shows what it received.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote

from fme_bridge.loopback_server import LoopbackServer, url_host

EVENT_TYPE_ID = re.compile(r"[a-zA-Z0-9][-_.:a-zA-Z0-9]{0,79}")
ATTRIBUTE_ID = re.compile(r"[a-zA-Z][-_a-zA-Z0-9]*")
# FME's paths, after any prefix (one sink can stand for several accounts: ``/webshop/api/…``).
EVENTS_PATH = "/api/events/bulk"
IDENTITIES_PATH = re.compile(
    r"/internal/api/v2/trafficTypes/(?P<tt>[^/]+)/environments/(?P<env>[^/]+)/identities\Z"
)


@dataclass(frozen=True)
class ReceivedEvent:
    sdk_key: str
    event: dict[str, Any]


@dataclass(frozen=True)
class IdentityUpdate:
    traffic_type: str
    environment: str
    key: str
    values: dict[str, Any]


@dataclass(frozen=True)
class RequestLog:
    method: str
    path: str
    status: int
    items: int


@dataclass
class Fault:
    """What the next requests get instead of a normal answer."""

    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to hold the request before answering (a timeout when > client timeout)
    body: str = '{"code": 500, "message": "injected failure"}'
    path_contains: str = ""  # only requests whose path contains this


class FmeSink:
    """The server; use as a context manager or ``start()`` / ``stop()``."""

    def __init__(
        self,
        sdk_keys: Iterable[str] | None = (),
        admin_keys: Iterable[str] | None = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """``sdk_keys`` / ``admin_keys``: the keys accepted; None accepts any (the local stack)."""
        self.sdk_keys = None if sdk_keys is None else set(sdk_keys)
        self.admin_keys = None if admin_keys is None else set(admin_keys)
        self.events: list[ReceivedEvent] = []
        self.identity_updates: list[IdentityUpdate] = []
        self.requests: list[RequestLog] = []
        self.refused_identity_keys: dict[str, tuple[int, str]] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server = LoopbackServer((host, port), _handler_for(self))
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{url_host(str(host))}:{port}"

    @property
    def events_endpoint(self) -> str:
        """What a connection's ``delivery.eventsEndpoint`` is set to."""
        return f"{self.url}/api"

    @property
    def identities_endpoint(self) -> str:
        """What a connection's ``delivery.identitiesEndpoint`` is set to."""
        return f"{self.url}/internal/api/v2"

    def start(self) -> FmeSink:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fme-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FmeSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault injection --------------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int = 500,
        headers: dict[str, str] | None = None,
        body: str | None = None,
        path_contains: str = "",
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``headers``), accepting nothing."""
        fault = Fault(status=status, headers=dict(headers or {}), path_contains=path_contains)
        if body is not None:
            fault.body = body
        with self._lock:
            self._faults.extend(Fault(**vars(fault)) for _ in range(count))

    def rate_limit_next(self, count: int, reset_seconds: int = 1, path_contains: str = "") -> None:
        """429 with FME's ``X-RateLimit-Reset-Seconds-*`` headers."""
        self.fail_next(
            count,
            429,
            {"X-RateLimit-Reset-Seconds-Org": str(reset_seconds), "X-RateLimit-Reset-Seconds-IP": "0"},
            '{"code": 429, "message": "rate limit exceeded"}',
            path_contains,
        )

    def hang_next(self, count: int, seconds: float, path_contains: str = "") -> None:
        """Hold the next ``count`` requests for ``seconds`` before answering 504, accepting nothing."""
        with self._lock:
            self._faults.extend(
                Fault(status=504, delay=seconds, path_contains=path_contains, body="") for _ in range(count)
            )

    def refuse_identity(self, key: str, status: int = 400, message: str = "invalid identity") -> None:
        """List this identity key as failed in Save Identities answers."""
        with self._lock:
            self.refused_identity_keys[key] = (status, message)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.path_contains in path:
                    return self._faults.pop(i)
        return None

    # -- state ------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "events": [{"sdkKey": e.sdk_key[:4] + "…", **e.event} for e in self.events],
                "identities": [vars(u) for u in self.identity_updates],
                "requests": [vars(r) for r in self.requests],
            }

    # -- the two APIs -----------------------------------------------------------------------------

    def events_bulk(self, bearer: str | None, body: Any) -> tuple[int, Any, int]:
        if not _accepted(bearer, self.sdk_keys):
            return 401, {"code": 401, "message": "Unauthorized"}, 0
        problem = _event_batch_problem(body)
        if problem:
            return 400, {"code": 400, "message": problem}, 0
        with self._lock:
            self.events.extend(ReceivedEvent(str(bearer), event) for event in body)
        return 202, None, len(body)

    def save_identities(
        self, bearer: str | None, traffic_type: str, environment: str, body: Any
    ) -> tuple[int, Any, int]:
        if not _accepted(bearer, self.admin_keys):
            return 401, {"code": 401, "message": "Unauthorized"}, 0
        if not isinstance(body, list):
            return 400, {"code": 400, "message": "body must be a JSON array of identities"}, 0
        objects, failed = [], []
        for entry in body:
            obj = {
                "trafficTypeId": traffic_type,
                "environmentId": environment,
                **(entry if isinstance(entry, dict) else {}),
            }
            problem = _identity_problem(entry)
            with self._lock:
                refused = self.refused_identity_keys.get(str(obj.get("key")))
            if problem is None and refused is not None:
                failed.append({"object": obj, "status": refused[0], "message": refused[1]})
            elif problem is not None:
                failed.append({"object": obj, "status": 400, "message": problem})
            else:
                objects.append(obj)
        with self._lock:
            self.identity_updates.extend(
                IdentityUpdate(traffic_type, environment, o["key"], dict(o["values"])) for o in objects
            )
        return 200, {"objects": objects, "failed": failed, "metadata": {}}, len(objects)


def _accepted(bearer: str | None, keys: set[str] | None) -> bool:
    return bool(bearer) and (keys is None or bearer in keys)


def _event_batch_problem(body: Any) -> str | None:
    if not isinstance(body, list):
        return "body must be a JSON array of events"
    for i, event in enumerate(body):
        if not isinstance(event, dict):
            return f"event {i}: not an object"
        for name in ("eventTypeId", "trafficTypeName", "key"):
            if not isinstance(event.get(name), str) or not event[name]:
                return f"event {i}: {name} is required"
        if not EVENT_TYPE_ID.fullmatch(event["eventTypeId"]):
            return f"event {i}: eventTypeId {event['eventTypeId']!r} is invalid"
        if len(event["key"]) > 250:
            return f"event {i}: key is longer than 250 characters"
        if not isinstance(event.get("timestamp"), int) or isinstance(event.get("timestamp"), bool):
            return f"event {i}: timestamp must be epoch milliseconds"
        value = event.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"event {i}: value must be a number or null"
        if event.get("properties") is not None and not isinstance(event.get("properties"), dict):
            return f"event {i}: properties must be an object"
    return None


def _identity_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or not entry["key"]:
        return "key is required"
    values = entry.get("values")
    if not isinstance(values, dict):
        return "values must be an object"
    for name, value in values.items():
        if not ATTRIBUTE_ID.fullmatch(name):
            return f"attribute id {name!r} is invalid"
        if not isinstance(value, str):
            return f"attribute {name!r}: values are strings"
    return None


def _handler_for(sink: FmeSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
            data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _bearer(self) -> str | None:
            header = self.headers.get("Authorization", "")
            return header[7:].strip() if header.lower().startswith("bearer ") else None

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/_sink/state":
                self._answer(200, sink.state())
            else:
                self._answer(404, {"code": 404, "message": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = unquote(self.path.split("?", 1)[0])
            fault = sink._take_fault(path)
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                with sink._lock:
                    sink.requests.append(RequestLog("POST", path, fault.status, 0))
                with contextlib.suppress(OSError):  # the client gave up waiting, as intended
                    self._answer(fault.status, fault.body.encode(), fault.headers)
                return
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                self._answer(400, {"code": 400, "message": "body is not JSON"})
                return
            match = IDENTITIES_PATH.search(path)
            if path.endswith(EVENTS_PATH):
                status, answer, items = sink.events_bulk(self._bearer(), body)
            elif match:
                status, answer, items = sink.save_identities(self._bearer(), match["tt"], match["env"], body)
            else:
                status, answer, items = 404, {"code": 404, "message": "not found"}, 0
            with sink._lock:
                sink.requests.append(RequestLog("POST", path, status, items))
            self._answer(status, answer)

    return Handler


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port}: a port is a number from 0 to 65535")
    return port


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8089)
    parser.add_argument("--sdk-key", action="append", help="accepted server-side SDK key (default: any)")
    parser.add_argument("--admin-key", action="append", help="accepted Admin API key (default: any)")
    args = parser.parse_args(argv)
    sink = FmeSink(args.sdk_key, args.admin_key, args.host, args.port).start()
    print(f"FME sink: events {sink.events_endpoint}, identities {sink.identities_endpoint}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sink.stop()


if __name__ == "__main__":
    main()
