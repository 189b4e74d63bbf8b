"""HTTP requests become API Gateway HTTP API (payload 2.0) events, and handler results become HTTP."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from fme_bridge.local.http_api import (
    API_GATEWAY_MAX_BODY,
    ApiServer,
    HttpApi,
    HttpRequest,
    Route,
    build_event,
    build_response,
    routes_from_template,
)
from fme_bridge.local.runtime import LocalFunction
from fme_bridge.template import Stack
from tests.conftest import load_event


class EchoHandler:
    """Stands in for a function: records the event, answers what the test sets."""

    def __init__(self, result: Any = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.result = result if result is not None else {"statusCode": 200, "body": "ok"}

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_event_has_the_shape_of_api_gateways_payload_2_0(stack: Stack) -> None:
    sample = load_event("local/apigw_http_v2_aws_sample.json")
    route = Route("POST", "/my/{parameter1}", LocalFunction(stack, "IngestFunction", handler=EchoHandler()))
    request = HttpRequest(
        "POST",
        "/my/value1?parameter1=value1&parameter1=value2&parameter2=value",
        [
            ("Header1", "value1"),
            ("Header2", "value1"),
            ("Header2", "value2"),
            ("Cookie", "cookie1; cookie2"),
            ("Content-Type", "text/plain"),
            ("Host", sample["requestContext"]["domainName"]),
            ("User-Agent", sample["requestContext"]["http"]["userAgent"]),
        ],
        b"Hello from Lambda",
        source_ip=sample["requestContext"]["http"]["sourceIp"],
    )
    event = build_event(request, route, {"parameter1": "value1"})

    assert set(event) == set(sample)
    assert set(event["requestContext"]) == set(sample["requestContext"])
    assert set(event["requestContext"]["http"]) == set(sample["requestContext"]["http"])
    for name in (
        "version",
        "rawQueryString",
        "cookies",
        "queryStringParameters",
        "body",
        "pathParameters",
        "isBase64Encoded",
    ):
        assert event[name] == sample[name], name
    assert event["headers"]["header2"] == "value1,value2"
    assert "cookie" not in event["headers"]  # in cookies instead
    context, expected = event["requestContext"], sample["requestContext"]
    for name in ("accountId", "domainName", "domainPrefix", "stage"):
        assert context[name] == expected[name], name
    for name in ("method", "protocol", "sourceIp", "userAgent"):
        assert context["http"][name] == expected["http"][name], name
    # time and timeEpoch (milliseconds) name the same moment.
    received = datetime.strptime(context["time"], "%d/%b/%Y:%H:%M:%S %z")
    assert int(received.timestamp()) == context["timeEpoch"] // 1000
    assert event["routeKey"] == event["requestContext"]["routeKey"] == "POST /my/{parameter1}"
    assert event["rawPath"] == event["requestContext"]["http"]["path"] == "/my/value1"


def test_binary_bodies_are_base64_encoded_and_text_bodies_are_not(stack: Stack) -> None:
    route = Route("POST", "/x", LocalFunction(stack, "IngestFunction", handler=EchoHandler()))
    gzipped = HttpRequest("POST", "/x", [("content-type", "application/octet-stream")], b"\x1f\x8b\x00\xff")
    event = build_event(gzipped, route, {})
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x1f\x8b\x00\xff"
    as_json = build_event(
        HttpRequest("POST", "/x", [("Content-Type", "application/json")], b'{"a":1}'), route, {}
    )
    assert (as_json["body"], as_json["isBase64Encoded"]) == ('{"a":1}', False)
    empty = build_event(HttpRequest("POST", "/x", [], b""), route, {})
    assert "body" not in empty
    # Media types are case-insensitive.
    shouted = build_event(
        HttpRequest("POST", "/x", [("Content-Type", "Application/JSON; charset=UTF-8")], b"{}"), route, {}
    )
    assert (shouted["body"], shouted["isBase64Encoded"]) == ("{}", False)


def test_query_parameters_without_a_value_are_kept_empty(stack: Stack) -> None:
    route = Route("GET", "/x", LocalFunction(stack, "IngestFunction", handler=EchoHandler()))
    event = build_event(HttpRequest("GET", "/x?flag&limit=&n=1", [], b""), route, {})
    assert event["queryStringParameters"] == {"flag": "", "limit": "", "n": "1"}
    assert event["rawQueryString"] == "flag&limit=&n=1"


@pytest.mark.parametrize(
    ("result", "status", "body"),
    [
        ({"statusCode": 401, "body": '{"message":"Unauthorized"}'}, 401, b'{"message":"Unauthorized"}'),
        (
            {"statusCode": 200, "body": base64.b64encode(b"\x00\x01").decode(), "isBase64Encoded": True},
            200,
            b"\x00\x01",
        ),
        ({"statusCode": 204}, 204, b""),
        ({"stored": 3}, 200, b'{"stored": 3}'),  # 2.0 infers a JSON 200 from a plain object
        ("plain", 200, b"plain"),
    ],
)
def test_results_become_responses_by_the_payload_2_0_rules(result: Any, status: int, body: bytes) -> None:
    response = build_response(result)
    assert (response.status, response.body) == (status, body)


def test_result_headers_and_cookies_become_response_headers_and_multi_value_headers_do_not() -> None:
    response = build_response(
        {
            "statusCode": 200,
            "headers": {"content-type": "text/plain", "x-ids": "a,b"},
            "multiValueHeaders": {"x-other": ["1", "2"]},  # payload 1.0 only: API Gateway ignores it
            "cookies": ["session=1; HttpOnly", "theme=dark"],
            "body": "ok",
        }
    )
    assert response.headers == [
        ("content-type", "text/plain"),
        ("x-ids", "a,b"),
        ("set-cookie", "session=1; HttpOnly"),
        ("set-cookie", "theme=dark"),
    ]


def test_route_matching_follows_api_gateway(stack: Stack) -> None:
    fn = LocalFunction(stack, "IngestFunction", handler=EchoHandler())
    route = Route("GET", "/profiles/{environment}/{trafficType}/{key}", fn)
    assert route.match("GET", "/profiles/Production/user/u%201") == {
        "environment": "Production",
        "trafficType": "user",
        "key": "u%201",
    }
    assert route.match("POST", "/profiles/Production/user/u1") is None
    assert route.match("GET", "/profiles/Production/user") is None
    greedy = Route("ANY", "/files/{proxy+}", fn)
    assert greedy.match("DELETE", "/files/a/b/c") == {"proxy": "a/b/c"}


def test_the_most_specific_route_wins_as_at_api_gateway(stack: Stack, template_copy: dict[str, Any]) -> None:
    # Declared least specific first: the order of the template does not decide.
    routes = {"Greedy": "GET /files/{proxy+}", "Param": "GET /files/{name}", "Any": "ANY /files/readme"}
    routes["Exact"] = "GET /files/readme"
    template_copy["Resources"] = {
        logical: {
            "Type": "AWS::Serverless::Function",
            "Properties": {
                "Handler": "functions.ingest.app.lambda_handler",
                "Events": {
                    "Route": {
                        "Type": "HttpApi",
                        "Properties": dict(zip(("Method", "Path"), route.split(), strict=True)),
                    }
                },
            },
        }
        for logical, route in routes.items()
    }
    handler = EchoHandler()
    api = HttpApi(routes_from_template(stack, lambda logical: LocalFunction(stack, logical, handler=handler)))

    for method, path, expected in (
        ("GET", "/files/readme", "Exact"),
        ("POST", "/files/readme", "Any"),
        ("GET", "/files/notes", "Param"),
        ("GET", "/files/a/b", "Greedy"),
    ):
        assert api.handle(HttpRequest(method, path, [], b"")).status == 200
        assert handler.events[-1]["routeKey"] == routes[expected], (method, path)


@pytest.fixture
def served(stack: Stack, template_copy: dict[str, Any]) -> Iterator[tuple[str, dict[str, EchoHandler]]]:
    """The template's routes, with the profile route's function replaced by an echo."""
    template_copy["Resources"]["ProfilesFunction"] = {
        "Type": "AWS::Serverless::Function",
        "Properties": {
            "Handler": "functions.profiles.app.lambda_handler",
            "Events": {
                "Profile": {
                    "Type": "HttpApi",
                    "Properties": {"Method": "GET", "Path": "/profiles/{environment}/{trafficType}/{key}"},
                }
            },
        },
    }
    handlers = {
        "IngestFunction": EchoHandler(),
        "ProfilesFunction": EchoHandler({"found": True}),
        "ImpressionsWebhookFunction": EchoHandler(),
    }
    routes = routes_from_template(
        stack, lambda logical: LocalFunction(stack, logical, handler=handlers[logical])
    )
    server = ApiServer(("127.0.0.1", 0), HttpApi(routes, {"/_local/info": lambda: {"ok": True}}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handlers
    server.shutdown()
    server.server_close()


def test_template_routes_are_served_over_http(served: tuple[str, dict[str, EchoHandler]]) -> None:
    url, handlers = served
    handlers["IngestFunction"].result = {
        "statusCode": 401,
        "headers": {"content-type": "application/json"},
        "body": '{"message":"Unauthorized"}',
    }
    response = httpx.post(
        f"{url}/segment/conn-1?x=1", json={"type": "track"}, headers={"Authorization": "Bearer s"}
    )
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}
    (event,) = handlers["IngestFunction"].events
    assert event["routeKey"] == "POST /segment/{connectionId}"
    assert event["pathParameters"] == {"connectionId": "conn-1"}
    assert event["headers"]["authorization"] == "Bearer s"
    assert json.loads(event["body"]) == {"type": "track"}
    assert event["rawQueryString"] == "x=1"

    profile = httpx.get(f"{url}/profiles/Production/user/u1")
    assert profile.json() == {"found": True}
    assert handlers["ProfilesFunction"].events[0]["pathParameters"]["key"] == "u1"


def test_paths_are_decoded_as_an_http_api_decodes_them(served: tuple[str, dict[str, EchoHandler]]) -> None:
    url, handlers = served
    # Once to match the route, each parameter once more: a slash inside a key is sent as %252F.
    assert httpx.get(f"{url}/profiles/Production/user/tenant%252F7%2523a").json() == {"found": True}
    event = handlers["ProfilesFunction"].events[-1]
    assert event["pathParameters"]["key"] == "tenant/7#a"
    assert (
        event["rawPath"]
        == event["requestContext"]["http"]["path"]
        == "/profiles/Production/user/tenant%2F7%23a"
    )
    # Encoded once, the slash splits the path: no route matches, as at API Gateway.
    assert httpx.get(f"{url}/profiles/Production/user/tenant%2F7").status_code == 404


def test_unknown_routes_and_failed_invocations_answer_like_api_gateway(
    served: tuple[str, dict[str, EchoHandler]],
) -> None:
    url, handlers = served
    assert httpx.get(f"{url}/segment/conn-1").status_code == 404  # wrong method
    assert httpx.post(f"{url}/nope").json() == {"message": "Not Found"}
    handlers["IngestFunction"].result = RuntimeError("boom")
    failed = httpx.post(f"{url}/segment/conn-1", content=b"{}")
    assert (failed.status_code, failed.json()) == (500, {"message": "Internal Server Error"})
    assert httpx.get(f"{url}/_local/info").json() == {"ok": True}
    assert httpx.post(f"{url}/_local/info").status_code == 404  # the local routes answer GET only


def test_a_body_over_api_gateways_10_mb_is_refused_before_the_function(stack: Stack) -> None:
    handler = EchoHandler()
    route = Route("POST", "/segment/{connectionId}", LocalFunction(stack, "IngestFunction", handler=handler))
    api = HttpApi([route])
    answer = api.handle(HttpRequest("POST", "/segment/c", [], b"x" * (API_GATEWAY_MAX_BODY + 1)))
    assert (answer.status, json.loads(answer.body)) == (413, {"message": "Request Entity Too Large"})
    assert handler.events == []


def test_the_6_mb_payload_limit_counts_utf_8_bytes(served: tuple[str, dict[str, EchoHandler]]) -> None:
    """Non-ASCII text counts its UTF-8 bytes, as Lambda counts them, not the \\uXXXX escapes."""
    url, handlers = served
    body = json.dumps({"text": "漢" * 1_100_000}, ensure_ascii=False).encode()  # 3.3 MB
    assert httpx.post(f"{url}/segment/conn-1", content=body).status_code == 200
    assert len(handlers["IngestFunction"].events) == 1
    too_large = json.dumps({"text": "漢" * 2_200_000}, ensure_ascii=False).encode()  # 6.6 MB
    answer = httpx.post(f"{url}/segment/conn-1", content=too_large)
    assert answer.status_code == 413
    assert "6 MB" in answer.json()["message"]


def test_the_function_runs_with_its_template_environment(stack: Stack) -> None:
    seen: dict[str, str] = {}

    def handler(event: Any, context: Any) -> dict[str, Any]:
        import os

        seen.update(os.environ)
        seen["remaining"] = str(context.get_remaining_time_in_millis())
        return {"statusCode": 204}

    fn = LocalFunction(stack, "IngestFunction", handler=handler)
    fn.invoke({})
    assert seen["EVENTS_TABLE"] == stack.tables["EventsTable"]
    assert seen["POWERTOOLS_SERVICE_NAME"] == "ingest"
    assert 0 < int(seen["remaining"]) <= 9000  # the template's Timeout for IngestFunction
