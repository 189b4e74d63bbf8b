"""The impressions handler, end to end: real SQS-shaped events (moto), the real loopback Segment sink."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from functions.impressions import app
from shared import __version__
from tests.conftest import load_event, put_config, put_secret
from tests.integration.sqs_events import event

PROD_KEY = "wk-production"
ALL_KEY = "wk-all-environments"


@pytest.fixture
def sink() -> Iterator[SegmentSink]:
    with SegmentSink(write_keys={PROD_KEY, ALL_KEY}) as server:
        yield server


@pytest.fixture
def env(function_env: Callable[[str], dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("SEND_MARGIN_MS", "500")
    return function_env("ImpressionsFunction")


@pytest.fixture
def production(env: dict[str, str], sink: SegmentSink) -> dict[str, Any]:
    """One outbound config: Production, users and anonymous visitors."""
    document = {
        "environments": ["Production"],
        "identities": {"user": "userId", "anonymous": "anonymousId"},
        "defaultTrafficType": "user",
        "endpoint": sink.endpoint,
    }
    put_config("outbound/production", document)
    put_secret("outbound/production", PROD_KEY)
    return document


@pytest.fixture
def context(lambda_context: Any) -> Any:
    """A context whose remaining time runs down like Lambda's."""
    end = time.monotonic() + 6.0
    lambda_context.get_remaining_time_in_millis = lambda: int((end - time.monotonic()) * 1000)
    return lambda_context


def webhook(**overrides: Any) -> dict[str, Any]:
    impression = {
        "key": "user-1",
        "split": "new_checkout",
        "environmentId": "env-prod-id",
        "environmentName": "Production",
        "treatment": "on",
        "time": 1795483041109,
        "bucketingKey": None,
        "label": "default rule",
        "machineName": "ip-10-0-1-17",
        "machineIp": "10.0.1.17",
        "splitVersionNumber": 1795482000000,
        "sdk": "python",
        "sdkVersion": "10.7.0",
        "properties": None,
    }
    impression.update(overrides)
    return impression


def failures(response: dict[str, Any]) -> set[str]:
    return {f["itemIdentifier"] for f in response["batchItemFailures"]}


def test_webhook_impression_becomes_the_documented_track_call(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    sqs_event = load_event("sqs_impressions.json")
    sqs_event["Records"] = sqs_event["Records"][:1]

    response = app.lambda_handler(sqs_event, context)

    assert response == {"batchItemFailures": []}
    [request] = sink.requests
    assert request.path == "/v1/batch"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"{PROD_KEY}:".encode()).decode()
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.body)
    assert set(body) == {"batch", "sentAt"}
    [message] = body["batch"]
    assert message["messageId"].startswith("fme-")
    assert len(message["messageId"]) <= 100
    assert message == {
        "type": "track",
        "event": "get_treatment",
        "userId": "7f244b10-9ca5-11e5-9706-16a11fb02dec",
        "timestamp": "2026-11-24T01:17:21.109Z",
        "messageId": message["messageId"],
        "properties": {
            "split": "new_checkout",
            "treatment": "on",
            "label": "default rule",
            "environmentId": "194da2f0-3e22-11ea-ba75-12f2f63694e5",
            "environmentName": "Production",
            "splitVersionNumber": 1795482000000,
            "key": "7f244b10-9ca5-11e5-9706-16a11fb02dec",
            "bucketingKey": None,
            "machineIp": "10.0.1.17",
            "machineName": "ip-10-0-1-17",
            "sdk": "java",
            "sdkVersion": "4.13.0",
        },
        "context": {"library": {"name": "fme-segment-bridge", "version": __version__}},
    }


def test_three_shapes_mixed_in_one_batch(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    put_config(
        "outbound/everything",
        {
            "environments": ["*"],
            "identities": {"user": "userId", "account": "userId"},
            "endpoint": sink.endpoint,
            "eventName": "fme_impression",
        },
    )
    put_secret("outbound/everything", ALL_KEY)
    bodies = [
        (load_event("impressions_webhook.json")),
        load_event("impression_listener_js.json"),
        load_event("impressions_envelope.json"),
        load_event("impressions_webhook.json")[0],  # one webhook object on its own
    ]
    response = app.lambda_handler(event(*(json.dumps(b) for b in bodies)), context)

    assert response == {"batchItemFailures": []}
    production_messages = sink.messages_for(PROD_KEY)
    everything = sink.messages_for(ALL_KEY)
    # Production: 2 webhook + 1 listener + 1 webhook object; Staging goes to the "*" config only.
    assert len(production_messages) == 4
    assert len(everything) == 5  # all but the anonymous one, which it does not map
    assert {m["event"] for m in production_messages} == {"get_treatment"}
    assert {m["event"] for m in everything} == {"fme_impression"}

    listener = next(m for m in production_messages if m["properties"]["key"].startswith("41e5"))
    assert listener["userId"] == "41e51150-6825-11e8-9f57-0acd31e5aef0"
    assert listener["timestamp"] == "2026-11-24T01:17:30.000Z"
    assert listener["properties"] == {
        "split": "new_checkout",
        "treatment": "off",
        "label": "default rule",
        "environmentId": None,
        "environmentName": "Production",
        "splitVersionNumber": 1795482000000,  # the listener's changeNumber
        "key": "41e51150-6825-11e8-9f57-0acd31e5aef0",
        "bucketingKey": None,
        "machineIp": "10.0.2.5",
        "machineName": "web-5",
        "sdk": "javascript",
        "sdkVersion": "11.4.0",
        "page": "cart",
    }

    anonymous = next(m for m in production_messages if m["properties"]["split"] == "pricing_page_v2")
    assert anonymous["anonymousId"] == "23adfd82-aa0f-45a7-a756-24f2a7a4c895"
    assert "userId" not in anonymous
    # Custom properties are added, never overwriting the impression's own.
    assert anonymous["properties"]["plan"] == "pro"
    assert anonymous["properties"]["split"] == "pricing_page_v2"

    # The "*" config maps only user and account: the anonymous impression is not its to send.
    staging = [m for m in everything if m["properties"]["environmentName"] == "Staging"]
    assert sorted((m["properties"]["key"], m["userId"]) for m in staging) == [
        ("account-42", "account-42"),
        ("user-1", "user-1"),
    ]
    assert {m["properties"]["sdk"] for m in staging} == {"python", "go"}


def test_redelivered_message_yields_the_same_message_ids(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    body = json.dumps([webhook(key=f"user-{i}") for i in range(5)])
    app.lambda_handler(event(body), context)
    app.lambda_handler(event(body), context)
    ids = [m["messageId"] for m in sink.messages]
    assert len(ids) == 10
    assert ids[:5] == ids[5:]
    assert len(set(ids)) == 5
