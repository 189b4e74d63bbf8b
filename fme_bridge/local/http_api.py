"""The template's HTTP API on loopback: HTTP requests in, API Gateway HTTP API (payload 2.0) events out.

Routes come from the ``HttpApi`` events of template.yaml, so a route added there is served here
without changes. Requests become the events API Gateway builds (``routeKey``, ``rawPath``,
``rawQueryString``, lower-cased ``headers``, ``cookies``, ``pathParameters``, ``requestContext.http``,
``body`` / ``isBase64Encoded``) and handler results become responses by the 2.0 rules. Paths are
decoded as an HTTP API decodes them: once to match the route (the ``rawPath`` the function sees),
and each path parameter once more (a ``/`` inside a parameter is sent as ``%252F``).
"""

from __future__ import annotations

import base64
import json
import re
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from rich.markup import escape

from fme_bridge.local.runtime import LocalFunction
from fme_bridge.loopback_server import LoopbackServer
from fme_bridge.template import Stack, function_events

# API Gateway HTTP API quota; a synchronous Lambda invocation payload is capped at 6 MB.
API_GATEWAY_MAX_BODY = 10 * 1024 * 1024
LAMBDA_MAX_PAYLOAD = 6 * 1024 * 1024

_TEXT_TYPES = re.compile(
    r"^(text/.*|application/(json|.*\+json|xml|.*\+xml|javascript|x-www-form-urlencoded))(;.*)?$", re.I
)


@dataclass
class Route:
    method: str  # upper case, or ANY
    path: str  # /segment/{connectionId}
    function: LocalFunction
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        regex = ""
        for part in re.split(r"(\{[^}]+\})", self.path):
            if part.startswith("{") and part.endswith("+}"):
                regex += f"(?P<{_group(part[1:-2])}>.+)"
            elif part.startswith("{"):
                regex += f"(?P<{_group(part[1:-1])}>[^/]+)"
            else:
                regex += re.escape(part)
        self.pattern = re.compile(f"^{regex}$")

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in ("ANY", method):
            return None
        found = self.pattern.match(path)
        if found is None:
            return None
        names = re.findall(r"\{([^}+]+)\+?\}", self.path)
        return {name: found.group(_group(name)) for name in names}


def _group(name: str) -> str:
    return re.sub(r"\W", "_", name)


def routes_from_template(stack: Stack, make_function: Callable[[str], LocalFunction]) -> list[Route]:
    routes = [
        Route(str(event.properties.get("Method", "ANY")).upper(), str(event.properties["Path"]), fn)
        for event in function_events("HttpApi")
        for fn in [make_function(event.function)]
    ]
    # API Gateway prefers the most specific route: fewer path variables first, greedy ones last.
    return sorted(routes, key=lambda r: (r.path.count("+}"), r.path.count("{"), r.method == "ANY"))


@dataclass
class HttpRequest:
    method: str
    target: str  # path and query string as sent
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str = "127.0.0.1"
    protocol: str = "HTTP/1.1"


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def build_event(request: HttpRequest, route: Route, path_parameters: dict[str, str]) -> dict[str, Any]:
    """The API Gateway HTTP API payload 2.0 event for ``request`` matched to ``route``."""
    split = urlsplit(request.target)
    path = unquote(split.path)
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        lower = name.lower()
        if lower == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        headers[lower] = f"{headers[lower]},{value}" if lower in headers else value
    query: dict[str, str] = {}
    for name, value in parse_qsl(split.query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": path,
        "rawQueryString": split.query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": headers.get("host", "localhost"),
            "domainPrefix": headers.get("host", "localhost").split(".")[0],
            "http": {
                "method": request.method,
                "path": path,
                "protocol": request.protocol,
                "sourceIp": request.source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex[:16],
            "routeKey": route.route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if request.body:
        content_type = headers.get("content-type", "")
        text = _as_text(request.body) if _TEXT_TYPES.match(content_type) or not content_type else None
        if text is None:
            event["body"] = base64.b64encode(request.body).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
    return event


def _as_text(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def build_response(result: Any) -> HttpResponse:
    """Turn a handler's return value into HTTP the way payload format 2.0 does."""
    if not (isinstance(result, dict) and "statusCode" in result):
        # 2.0 infers a 200 JSON response from anything that is not a full response object.
        text = result if isinstance(result, str) else json.dumps(result)
        return HttpResponse(200, [("content-type", "application/json")], text.encode())
    # 2.0 has no multiValueHeaders (a 1.0 field): repeated values are comma-joined in headers.
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    headers.extend(("set-cookie", str(c)) for c in result.get("cookies") or [])
    raw = result.get("body") or ""
    body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode()
    return HttpResponse(int(result["statusCode"]), headers, body)


def _json_response(status: int, document: Any) -> HttpResponse:
    return HttpResponse(status, [("content-type", "application/json")], json.dumps(document).encode())


class HttpApi:
    """Dispatches requests to the template's routes; ``extra_routes`` serve ``/_local/…`` paths."""

    def __init__(
        self, routes: list[Route], extra_routes: dict[str, Callable[[], Any]] | None = None, log: Any = None
    ) -> None:
        self.routes = routes
        self.extra_routes = extra_routes or {}
        self.log = log

    def handle(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        response, route_key = self._dispatch(request)
        if self.log is not None:
            elapsed = (time.monotonic() - started) * 1000
            self.log(
                f"{escape(request.method)} {escape(urlsplit(request.target).path)} ({route_key}) → "
                f"{response.status} in {elapsed:.0f} ms"
            )
        return response

    def _dispatch(self, request: HttpRequest) -> tuple[HttpResponse, str]:
        path = urlsplit(request.target).path
        if request.method == "GET" and path in self.extra_routes:
            return _json_response(200, self.extra_routes[path]()), "local"
        for route in self.routes:
            parameters = route.match(request.method, unquote(path))
            if parameters is None:
                continue
            parameters = {name: unquote(value) for name, value in parameters.items()}
            if len(request.body) > API_GATEWAY_MAX_BODY:
                return _json_response(413, {"message": "Request Entity Too Large"}), route.route_key
            event = build_event(request, route, parameters)
            # The payload as Lambda counts it: UTF-8 bytes, non-ASCII text unescaped.
            if len(json.dumps(event, ensure_ascii=False).encode()) > LAMBDA_MAX_PAYLOAD:
                return _json_response(
                    413, {"message": "Request too large: a Lambda request payload is limited to 6 MB"}
                ), route.route_key
            try:
                result = route.function.invoke(event)
            except Exception:  # API Gateway answers a failed invocation with a bare 500
                if self.log is not None:
                    trace = escape(traceback.format_exc())
                    self.log(f"[red]{route.function.logical_id} raised[/red]\n{trace}")
                return _json_response(500, {"message": "Internal Server Error"}), route.route_key
            return build_response(result), route.route_key
        return _json_response(404, {"message": "Not Found"}), "no route"


class _RequestHandler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        request = HttpRequest(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            protocol=self.request_version,
        )
        response = self.server.api.handle(request)
        self.send_response(
            response.status,
            HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else "",
        )
        names = {name.lower() for name, _ in response.headers}
        for name, value in response.headers:
            self.send_header(name, value)
        if "content-length" not in names:
            self.send_header("content-length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged by :class:`HttpApi` (with route and timing) instead."""


class ApiServer(LoopbackServer):
    def __init__(self, address: tuple[str, int], api: HttpApi) -> None:
        self.api = api
        super().__init__(address, _RequestHandler)
