"""The HTTP API fuzzed from its OpenAPI document with schemathesis, through the real handlers.

Every generated request becomes the HTTP API v2 event API Gateway would deliver; half of them are
given the right credentials (and a known connection) so that bodies get past authentication and
reach parsing, mapping and storage. Zero 5xx, and every 4xx carries a JSON error body.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from fme_bridge.openapi import document
from fme_bridge.template import load_template
from tests.conftest import load_event, put_secret
from tests.integration.ingest_support import CONNECTION, SECRET, Webhook
from tests.openapi_support import conforms
from tests.reliability import scale

PROFILES_SECRET = "profiles-fuzz-secret"
RELAY_TOKEN = "impressions-fuzz-token"
# Examples per operation (hypothesis adds its explicit and invalid-input phases); the soak run
# sends over 10,000 requests in all.
EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES") or scale.count(25, 5200))
schema = schemathesis.openapi.from_dict(document())
STATUSES: Counter[str] = Counter()


def test_the_document_describes_the_template_routes() -> None:
    routes = set()
    for resource in load_template()["Resources"].values():
        for source in resource.get("Properties", {}).get("Events", {}).values():
            if source["Type"] == "HttpApi":
                routes.add((source["Properties"]["Method"].lower(), source["Properties"]["Path"]))
    documented = {(method, path) for path, item in document()["paths"].items() for method in item}
    assert documented == routes


def to_event(case: Any) -> dict[str, Any]:
    """The HTTP API v2 event for a generated request."""
    webhook = case.operation.path.startswith("/segment/")
    relay = case.operation.path.startswith("/impressions/")
    event = copy.deepcopy(
        load_event("apigw_http_segment_webhook.json" if webhook or relay else "profiles_get.json")
    )
    kwargs = case.as_transport_kwargs(base_url="https://api.example")
    headers = {str(k).lower(): str(v) for k, v in (kwargs.get("headers") or {}).items()}
    chosen = zlib.crc32(repr((case.path_parameters, case.body, case.query)).encode()) % 2 == 0
    path_parameters = {k: str(v) for k, v in (case.path_parameters or {}).items()}
    if chosen:  # known connection, right secret: the body is what is tested
        if webhook:
            path_parameters["connectionId"] = CONNECTION
        if relay:
            path_parameters["token"] = RELAY_TOKEN
        headers["authorization"] = f"Bearer {SECRET if webhook else PROFILES_SECRET}"
    path = case.operation.path
    for name, value in path_parameters.items():
        path = path.replace("{" + name + "}", quote(value, safe=""))
    body: bytes = b""
    if "json" in kwargs:
        body = json.dumps(kwargs["json"]).encode()
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        body = data if isinstance(data, bytes) else str(data).encode()
    query = {k: str(v) for k, v in (case.query or {}).items()}
    event["headers"] = {**headers, "content-length": str(len(body))}
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["routeKey"] = event["requestContext"]["routeKey"] = f"{case.method.upper()} {case.operation.path}"
    event["pathParameters"] = path_parameters
    event["queryStringParameters"] = query or None
    event["rawQueryString"] = urlencode(query)
    event["isBase64Encoded"] = True
    event["body"] = base64.b64encode(body).decode()
    return event


@pytest.fixture
def handlers(
    function_env: Callable[[str], dict[str, str]], lambda_context: Any
) -> Iterator[dict[str, Callable[[dict[str, Any]], dict[str, Any]]]]:
    from functions.impressions_webhook import app as relay
    from functions.ingest import app as ingest
    from functions.profiles import app as profiles

    STATUSES.clear()  # this test's requests only; the report adds up the records of a run
    Webhook.create(function_env, lambda_context)
    function_env("ProfilesFunction")
    put_secret("profiles", PROFILES_SECRET)
    function_env("ImpressionsWebhookFunction")
    put_secret("impressions-webhook", RELAY_TOKEN)
    yield {
        "segmentWebhook": lambda event: ingest.lambda_handler(event, lambda_context),
        "impressionsWebhook": lambda event: relay.lambda_handler(event, lambda_context),
        "getProfile": lambda event: profiles.lambda_handler(event, lambda_context),
    }
    scale.record(
        "openapi_fuzz",
        merge=True,
        figures={
            "requests": sum(STATUSES.values()),
            "answers": dict(sorted(STATUSES.items())),
            "5xx": sum(n for s, n in STATUSES.items() if s.split(" ")[1].startswith("5")),
        },
    )


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not scale.SOAK,
)
def test_no_request_gets_a_5xx(
    case: Any, handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]
) -> None:
    response = handlers[case.operation.definition.raw["operationId"]](to_event(case))
    status = response["statusCode"]
    STATUSES[f"{case.operation.definition.raw['operationId']} {status}"] += 1
    assert status < 500, (status, response.get("body"))
    if status >= 400:
        body = json.loads(response["body"])
        assert isinstance(body, dict)
        assert body["error"]
    # The answer is one the document describes: its status, content type, body and headers.
    conforms(case, status, response.get("headers") or {}, response.get("body", ""))
