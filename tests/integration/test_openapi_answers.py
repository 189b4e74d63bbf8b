"""The OpenAPI document against the real handlers: each answer they give is one it describes (status,
content type, body and headers), and the credentials it describes are the ones they accept."""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections.abc import Callable
from typing import Any

import boto3
import pytest
import schemathesis

from fme_bridge.openapi import document
from fme_bridge.template import Stack
from shared.inbound.messages import MAX_MESSAGES
from shared.outbound import webhook_relay
from shared.profiles.profile_view import DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT
from tests.conftest import REGION, put_secret
from tests.integration import test_impressions_webhook as relay_api
from tests.integration import test_profiles_api as profiles_api
from tests.integration.ingest_support import SECRET, Webhook, segment_message, signature
from tests.openapi_support import conforms

SCHEMA = schemathesis.openapi.from_dict(document())
WEBHOOK = "/segment/{connectionId}"
RELAY = "/impressions/{token}"
PROFILES = "/profiles/{environment}/{trafficType}/{key}"


def described(path: str, method: str, status: int, headers: dict[str, str], body: str) -> None:
    """Fails unless the document describes this answer of the operation, every header included."""
    case = SCHEMA[path][method].Case(path_parameters=dict.fromkeys(re.findall(r"{(\w+)}", path), "p"))
    conforms(case, status, headers, body)
    documented = document()["paths"][path][method.lower()]["responses"][str(status)].get("headers", {})
    assert {name.lower() for name in headers} - {"content-type"} == {name.lower() for name in documented}


@pytest.fixture
def relay(stack: Stack, function_env: Callable[[str], dict[str, str]]) -> Stack:
    function_env("ImpressionsWebhookFunction")
    put_secret("impressions-webhook", relay_api.TOKEN)
    return stack


@pytest.fixture
def profiles(stack: Stack, function_env: Callable[[str], dict[str, str]]) -> Stack:
    function_env("ProfilesFunction")
    put_secret("profiles", profiles_api.SECRET)
    return stack


def webhook_answer(webhook: Webhook, event: dict[str, Any]) -> tuple[int, dict[str, str], str]:
    from functions.ingest import app

    response = app.lambda_handler(event, webhook.context)
    return response["statusCode"], response.get("headers") or {}, response["body"]


def test_every_answer_of_the_segment_webhook_is_described(webhook: Webhook) -> None:
    track = segment_message("track")
    statuses = []
    for event in (
        webhook.event([track, segment_message("identify")]),
        webhook.event(track, headers={"authorization": "Bearer wrong"}),
        webhook.event(b"not json"),
        webhook.event([track] * (MAX_MESSAGES + 1)),
    ):
        status, headers, body = webhook_answer(webhook, event)
        described(WEBHOOK, "POST", status, headers, body)
        statuses.append(status)
    boto3.client("dynamodb", region_name=REGION).delete_table(TableName=webhook.env["EVENTS_TABLE"])
    status, headers, body = webhook_answer(webhook, webhook.event(track))
    described(WEBHOOK, "POST", status, headers, body)
    assert [*statuses, status] == [200, 401, 400, 413, 503]


def test_every_answer_of_the_impressions_webhook_is_described(
    relay: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.impressions_webhook import app
    from shared import config

    impression = {"key": "user-1", "split": "new_checkout", "treatment": "on", "time": 1}
    statuses = []
    for event in (
        relay_api.api_event(gzip.compress(json.dumps([impression]).encode())),
        relay_api.api_event(gzip.compress(b"[]"), token="wrong"),
        relay_api.api_event(b"[{"),
        relay_api.api_event(b"[" + b"1," * (webhook_relay.MAX_COMMAS + 1) + b"1]"),
    ):
        response = app.lambda_handler(event, lambda_context)
        described(RELAY, "POST", response["statusCode"], response["headers"], response["body"])
        statuses.append(response["statusCode"])

    def unavailable(*_: Any, **__: Any) -> Any:
        raise config.ConfigUnavailable("Secrets Manager failing")

    monkeypatch.setattr(config, "get_secret", unavailable)
    response = app.lambda_handler(relay_api.api_event(gzip.compress(b"[]")), lambda_context)
    described(RELAY, "POST", response["statusCode"], response["headers"], response["body"])
    assert [*statuses, response["statusCode"]] == [200, 401, 400, 413, 503]


def test_every_answer_of_the_profile_api_is_described(
    profiles: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles_api.store_identity(profiles)
    statuses = []
    for options in (
        {},
        {"authorization": "Bearer wrong"},
        {"query": {"limit": "0"}},
        {"key": "nobody"},
    ):
        status, body, headers = profiles_api.call(lambda_context, **options)
        described(PROFILES, "GET", status, headers, json.dumps(body))
        statuses.append(status)
    monkeypatch.setenv("EVENTS_TABLE", "no-such-table")
    status, body, headers = profiles_api.call(lambda_context)
    described(PROFILES, "GET", status, headers, json.dumps(body))
    assert [*statuses, status] == [200, 401, 400, 404, 503]


def documented_credentials(path: str, method: str, secret: str, body: bytes) -> list[dict[str, str]]:
    """The headers each security scheme of the operation describes, carrying ``secret``."""
    schemes = document()["components"]["securitySchemes"]
    found = []
    for requirement in document()["paths"][path][method]["security"]:
        ((name, _),) = requirement.items()
        scheme = schemes[name]
        if scheme["type"] == "http" and scheme["scheme"] == "basic":
            found.append({"authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode()})
        elif scheme["type"] == "http":
            found.append({"authorization": f"{scheme['scheme'].title()} {secret}"})
        elif scheme["name"].lower() == "x-signature":  # an HMAC of the body, keyed with the secret
            found.append({"x-signature": signature(secret, body)})
        else:
            found.append({scheme["name"].lower(): secret})
    return found


def test_each_documented_credential_lets_a_message_into_the_segment_webhook(webhook: Webhook) -> None:
    track = segment_message("track")
    credentials = documented_credentials(WEBHOOK, "post", SECRET, json.dumps(track).encode())
    assert len(credentials) == 3
    for headers in credentials:
        assert webhook.post(track, headers=headers).status == 200, headers
        wrong = {name: value[:-2] + "00" for name, value in headers.items()}
        assert webhook.post(track, headers=wrong).status == 401, wrong


def test_the_documented_bearer_token_reads_a_profile(profiles: Stack, lambda_context: Any) -> None:
    profiles_api.store_identity(profiles)
    ((headers),) = documented_credentials(PROFILES, "get", profiles_api.SECRET, b"")
    assert profiles_api.call(lambda_context, authorization=headers["authorization"])[0] == 200


def test_the_documented_batch_limit_is_the_webhooks() -> None:
    body = document()["paths"][WEBHOOK]["post"]["requestBody"]["content"]["application/json"]["schema"]
    (array,) = (branch for branch in body["oneOf"] if branch.get("type") == "array")
    assert array["maxItems"] == MAX_MESSAGES


def test_the_documented_events_limit_is_the_profile_apis(profiles: Stack, lambda_context: Any) -> None:
    profiles_api.store_identity(profiles)
    parameters = document()["paths"][PROFILES]["get"]["parameters"]
    (schema,) = (p["schema"] for p in parameters if p["name"] == "limit")
    assert (schema["default"], schema["maximum"]) == (DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT)
    for limit, status in (
        (schema["minimum"], 200),
        (schema["maximum"], 200),
        (schema["minimum"] - 1, 400),
        (schema["maximum"] + 1, 400),
    ):
        assert profiles_api.call(lambda_context, query={"limit": str(limit)})[0] == status, limit
