"""The impressions handler, end to end: real SQS-shaped events (moto), the real loopback Segment sink."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from functions.impressions import app
from shared import __version__, config
from tests.conftest import load_event, published_metrics, put_config, put_secret
from tests.integration import sqs_events
from tests.integration.policy_support import RawCall
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
    """A context whose remaining time runs down like Lambda's, from the handler's first look at it.

    Starting the clock on first use keeps the (possibly slow) set-up of moto out of the budget.
    """
    started: list[float] = []

    def remaining() -> int:
        if not started:
            started.append(time.monotonic())
        return int((started[0] + 6.0 - time.monotonic()) * 1000)

    lambda_context.get_remaining_time_in_millis = remaining
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
    assert not request.gzipped  # unless the config asks for it
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


def test_each_matching_config_gets_its_own_message_id(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    """Segment deduplicates messageIds across all sources and workspaces: with one id, the second
    source would drop the impression. A redelivery keeps each config's id."""
    put_config("outbound/everything", {**production, "environments": ["*"]})
    put_secret("outbound/everything", ALL_KEY)
    body = json.dumps(webhook())
    for _ in range(2):
        assert app.lambda_handler(event(body), context) == {"batchItemFailures": []}

    first, again = sink.messages_for(PROD_KEY)
    [everything, everything_again] = sink.messages_for(ALL_KEY)
    assert first["messageId"] == again["messageId"]
    assert everything["messageId"] == everything_again["messageId"]
    assert everything["messageId"] != first["messageId"]
    assert {k: v for k, v in everything.items() if k != "messageId"} == {
        k: v for k, v in first.items() if k != "messageId"
    }


def test_a_config_naming_an_environment_by_id_gets_its_impressions_with_its_event_name(
    env: dict[str, str], sink: SegmentSink, context: Any
) -> None:
    """An outbound config's environments may be names or ids; its eventName is the track call's event."""
    put_config(
        "outbound/by-id",
        {
            "environments": ["env-prod-id"],
            "identities": {"user": "userId"},
            "eventName": "Experiment Viewed",
            "endpoint": sink.endpoint,
        },
    )
    put_secret("outbound/by-id", PROD_KEY)
    other = webhook(environmentId="env-staging-id", environmentName="Staging", key="user-2")
    assert app.lambda_handler(event(json.dumps([webhook(), other])), context)["batchItemFailures"] == []

    [message] = sink.messages_for(PROD_KEY)  # the Staging impression matches no config: dead-lettered
    assert (message["event"], message["userId"]) == ("Experiment Viewed", "user-1")
    assert message["properties"]["environmentId"] == "env-prod-id"


def test_python_sdk_listener_names_and_placeholders_for_disabled_ip_addresses(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    impression = {"feature": "new_checkout", "keyName": "user-7", "treatment": "on", "time": 1795483041109}
    python_sdk = {
        "impression": {**impression, "label": "default rule", "changeNumber": 17, "bucketingKey": None},
        "attributes": {},
        "instance-id": "ip-10-1-1-1",
        "sdk-language-version": "python-10.2.0",
        "environmentName": "Production",
    }
    java_without_ip = {  # IPAddressesEnabled false: the Java SDK reports "NA"
        "impression": {**impression, "keyName": "user-8"},
        "ip": "NA",
        "hostname": "NA",
        "sdkLanguageVersion": "java-4.13.0",
        "environmentName": "Production",
    }
    response = app.lambda_handler(event(json.dumps(python_sdk), json.dumps(java_without_ip)), context)

    assert response == {"batchItemFailures": []}
    by_key = {m["userId"]: m["properties"] for m in sink.messages}
    assert {k: by_key["user-7"][k] for k in ("machineName", "machineIp", "sdk", "sdkVersion")} == {
        "machineName": "ip-10-1-1-1",
        "machineIp": None,
        "sdk": "python",
        "sdkVersion": "10.2.0",
    }
    assert (by_key["user-8"]["machineName"], by_key["user-8"]["machineIp"]) == (None, None)


def test_listener_objects_of_the_go_python_and_dotnet_sdks_reach_segment(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    bodies = ["impression_listener_go.json", "impression_listener_python.json", "impression_dotnet.json"]
    dotnet = load_event("impression_dotnet.json") | {"trafficType": "user"}
    response = app.lambda_handler(
        event(*(json.dumps(load_event(name)) for name in bodies[:2]), json.dumps(dotnet)), context
    )

    assert response == {"batchItemFailures": []}
    by_key = {m["userId"]: m for m in sink.messages}
    go = by_key["5a1e2f90-6825-11e8-9f57-0acd31e5aef0"]
    assert go["timestamp"] == "2026-11-24T01:17:40.000Z"
    assert {
        k: go["properties"][k] for k in ("split", "treatment", "splitVersionNumber", "sdk", "machineName")
    } == {
        "split": "new_checkout",
        "treatment": "on",
        "splitVersionNumber": 1795482000000,
        "sdk": "go",
        "machineName": "ip-10-0-3-9",
    }
    python = by_key["6b2f3a01-6825-11e8-9f57-0acd31e5aef0"]["properties"]
    assert (python["treatment"], python["sdkVersion"], python["page"]) == ("off", "10.5.1", "cart")
    assert by_key["7c3a4b12-6825-11e8-9f57-0acd31e5aef0"]["properties"]["treatment"] == "on"


def test_listener_objects_of_the_ruby_and_java_sdks_reach_segment(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    """Ruby's impression router hash, and Java's ``Impression`` serialised field by field (Gson) or
    by its accessor names."""
    java_accessors = {
        "key": "af6d7e45-6825-11e8-9f57-0acd31e5aef0",
        "bucketingKey": None,
        "split": "new_checkout",
        "treatment": "on",
        "time": 1795483070000,
        "appliedRule": "in segment beta_testers",
        "changeNumber": 1795482000000,
        "environmentName": "Production",
    }
    bodies = [load_event("impression_listener_ruby.json"), load_event("impression_listener_java.json")]
    response = app.lambda_handler(event(*(json.dumps(b) for b in [*bodies, java_accessors])), context)

    assert response == {"batchItemFailures": []}
    by_key = {m["userId"]: m for m in sink.messages}

    def seen(key: str) -> tuple[Any, ...]:
        message = by_key[key]
        fields = ("split", "treatment", "label", "splitVersionNumber", "bucketingKey")
        return (message["timestamp"], *(message["properties"][field] for field in fields))

    beta, default = "in segment beta_testers", "default rule"
    assert seen("8d4b5c23-6825-11e8-9f57-0acd31e5aef0") == (  # Ruby
        "2026-11-24T01:17:30.000Z",
        "new_checkout",
        "on",
        beta,
        1795482000000,
        None,
    )
    assert seen("9e5c6d34-6825-11e8-9f57-0acd31e5aef0") == (  # Java, Gson
        "2026-11-24T01:17:40.000Z",
        "new_checkout",
        "off",
        default,
        1795482000000,
        "account-7",
    )
    assert seen("af6d7e45-6825-11e8-9f57-0acd31e5aef0") == (  # Java, accessor names
        "2026-11-24T01:17:50.000Z",
        "new_checkout",
        "on",
        beta,
        1795482000000,
        None,
    )


def test_the_php_sdks_listener_data_reaches_segment(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    """PHP's ``Impression`` names the matching key ``id``, and its ``instance-id`` is the host's IP."""
    php = load_event("impression_listener_php.json")
    both_names = {**php, "impression": {**php["impression"], "keyName": "user-php", "id": "not-the-key"}}
    response = app.lambda_handler(event(json.dumps(php), json.dumps(both_names)), context)

    assert response == {"batchItemFailures": []}
    by_key = {m["userId"]: m for m in sink.messages}
    assert set(by_key) == {"b07e8f56-6825-11e8-9f57-0acd31e5aef0", "user-php"}
    message = by_key["b07e8f56-6825-11e8-9f57-0acd31e5aef0"]
    assert message["timestamp"] == "2026-11-24T01:17:40.000Z"
    fields = ("split", "treatment", "splitVersionNumber", "machineIp", "machineName", "sdk", "sdkVersion")
    assert {k: message["properties"][k] for k in fields} == {
        "split": "new_checkout",
        "treatment": "on",
        "splitVersionNumber": 1795482000000,
        "machineIp": "10.0.4.2",
        "machineName": None,
        "sdk": "php",
        "sdkVersion": "7.3.0",
    }


def test_nan_and_infinity_in_properties_go_to_segment_as_null(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    # What a Python SDK listener's json.dumps writes for float("nan") and float("inf").
    body = json.dumps(webhook(key="user-nan", properties={"score": float("nan"), "limit": float("inf")}))
    assert "NaN" in body
    response = app.lambda_handler(event(body, json.dumps(webhook(key="user-fine"))), context)

    assert response == {"batchItemFailures": []}  # the sink, like Segment, refuses bodies that are not JSON
    by_key = {m["userId"]: m["properties"] for m in sink.messages}
    assert set(by_key) == {"user-nan", "user-fine"}
    assert (by_key["user-nan"]["score"], by_key["user-nan"]["limit"]) == (None, None)


def test_the_identity_field_carries_the_key_never_the_bucketing_key(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    body = json.dumps(
        [
            webhook(key="user-9", bucketingKey="bucket-9"),
            webhook(key="visitor-3", bucketingKey="bucket-3", trafficType="anonymous"),
        ]
    )
    response = app.lambda_handler(event(body), context)

    assert response == {"batchItemFailures": []}
    user, visitor = sorted(sink.messages, key=lambda m: m["properties"]["key"])
    assert (user["userId"], user["properties"]["bucketingKey"]) == ("user-9", "bucket-9")
    assert "anonymousId" not in user
    assert (visitor["anonymousId"], visitor["properties"]["bucketingKey"]) == ("visitor-3", "bucket-3")
    assert "userId" not in visitor


def test_a_configs_user_and_anonymous_messages_share_its_requests(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    """A config's messages are packed together, whichever identity field they carry."""
    body = json.dumps([webhook(key="user-1"), webhook(key="visitor-1", trafficType="anonymous")])
    assert app.lambda_handler(event(body), context) == {"batchItemFailures": []}
    [request] = sink.requests
    assert [m.get("userId") or m["anonymousId"] for m in request.messages] == ["user-1", "visitor-1"]


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


# ---------------------------------------------------------------------------------------------
# Permanent errors: dead-letter queue with the reason, never retried, good neighbours delivered


def test_permanent_errors_are_dead_lettered_with_their_reason(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    good = json.dumps(webhook(key="good"))
    bodies = {
        "bad-json": "{not json",
        "not-an-object": '"just a string"',
        "no-environment": json.dumps(
            {"impression": {"feature": "f", "keyName": "k", "treatment": "on", "time": 1}}
        ),
        "no-config": json.dumps(webhook(environmentName="Staging", environmentId="env-staging")),
        "unmapped-traffic-type": json.dumps(webhook(trafficType="account")),
        "too-large": json.dumps(webhook(properties={"blob": "x" * 33_000})),
        "invalid": json.dumps(webhook(time="yesterday")),
    }
    sqs_event = {
        "Records": [sqs_events.record(good, "good")]
        + [sqs_events.record(body, name) for name, body in bodies.items()]
    }
    response = app.lambda_handler(sqs_event, context)

    # Permanent failures are not retried: nothing to report back, all are in the DLQ.
    assert response == {"batchItemFailures": []}
    assert [m["properties"]["key"] for m in sink.messages] == ["good"]
    letters = {
        d["sourceMessageId"]: d for d in sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    }
    assert set(letters) == set(bodies)
    for name, body in bodies.items():
        assert letters[name]["body"] == body  # as it came: a redrive after the fix replays it
    assert letters["bad-json"]["errorCode"] == "invalid_json"
    assert letters["not-an-object"]["errorCode"] == "invalid_body"
    assert letters["no-environment"]["errorCode"] == "no_environment"
    assert letters["no-config"]["errorCode"] == "no_matching_config"
    assert "no outbound config matches environment 'Staging'" in letters["no-config"]["reason"]
    assert letters["unmapped-traffic-type"]["errorCode"] == "no_matching_config"
    assert "traffic type 'account' is not mapped" in letters["unmapped-traffic-type"]["reason"]
    assert letters["too-large"]["errorCode"] == "message_too_large"
    assert letters["invalid"]["errorCode"] == "invalid_impression"
    assert "time" in letters["invalid"]["reason"]
    assert all(d["failedImpressions"] == "1" for d in letters.values())


def test_an_impression_too_large_for_two_configs_names_both(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    # Named so that one reason is the tail of the other: each is listed all the same.
    put_config("outbound/eu-production", {**production})
    put_secret("outbound/eu-production", PROD_KEY)
    response = app.lambda_handler(event(json.dumps(webhook(properties={"blob": "x" * 33_000}))), context)
    assert response == {"batchItemFailures": []}
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert letter["errorCode"] == "message_too_large"
    reasons = letter["reason"].removeprefix("impression 0: message_too_large: ").split("; ")
    assert [r.split(":")[0] for r in reasons] == ["eu-production", "production"], letter["reason"]


def test_a_traffic_type_no_config_maps_is_dead_lettered_naming_every_config_of_its_environment(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    put_config("outbound/eu-production", {**production})
    response = app.lambda_handler(event(json.dumps(webhook(trafficType="account"))), context)
    assert response == {"batchItemFailures": []}
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert letter["reason"] == (
        "impression 0: no_matching_config: traffic type 'account' is not mapped by outbound config(s) "
        "eu-production, production"
    )


@pytest.mark.parametrize("over", [0, 1])
def test_a_dead_letters_reason_is_cut_past_1000_characters(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack, over: int
) -> None:
    start, end = "impression 0: no_matching_config: no outbound config matches environment '", "'"
    name = "x" * (1000 - len(start + end) + over)
    app.lambda_handler(event(json.dumps(webhook(environmentName=name, environmentId=None))), context)
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    reason = start + name + end
    assert letter["reason"] == (reason[:999] + "…" if over else reason)


def test_only_the_failed_impressions_of_an_envelope_are_dead_lettered(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    envelope = {
        "environmentName": "Production",
        "trafficType": "user",
        "impressions": [
            webhook(key="a", environmentName=None, environmentId=None),
            webhook(key="b", environmentName="Staging"),
            {"impression": {"feature": "f", "keyName": "c", "treatment": "on", "time": 5}},
            {"impression": {"feature": "f", "keyName": "d"}},
        ],
    }
    response = app.lambda_handler(event(json.dumps(envelope)), context)

    assert response == {"batchItemFailures": []}
    assert sorted(m["userId"] for m in sink.messages) == ["a", "c"]
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert letter["errorCode"] == "no_matching_config,invalid_impression"
    assert letter["failedImpressions"] == "2"
    assert "impression 1: no_matching_config" in letter["reason"]
    assert (
        "impression 3: invalid_impression: impressions.3: impression.treatment: Field required"
        in letter["reason"]
    )
    body = json.loads(letter["body"])
    assert body == {**envelope, "impressions": [envelope["impressions"][1], envelope["impressions"][3]]}


@pytest.mark.parametrize("status", [400, 501, 505])  # 501 and 505 are the 5xx Segment never retries
def test_segment_refusing_a_batch_is_permanent_and_not_retried(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack, status: int
) -> None:
    sink.fail_next(1, status)
    response = app.lambda_handler(event(json.dumps([webhook(key="a"), webhook(key="b")])), context)
    assert response == {"batchItemFailures": []}
    assert len(sink.requests) == 1
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert letter["errorCode"] == "segment_rejected"
    assert f"HTTP {status}" in letter["reason"]
    assert len(json.loads(letter["body"])) == 2


# ---------------------------------------------------------------------------------------------
# Transient errors: retried within the invocation, then reported back to SQS


@pytest.mark.parametrize(
    ("fault", "count"),
    [
        ({"status": 500}, 2),
        ({"status": 503}, 1),
        ({"status": 429, "retry_after": 1}, 1),
        ({"status": 408}, 1),
        ({"status": 410}, 1),
        ({"status": 460}, 1),
        ({"status": 502}, 1),
        ({"kind": "timeout", "hang_seconds": 3.0}, 1),
        ({"kind": "drop"}, 2),
    ],
)
def test_transient_faults_are_retried_within_the_invocation(
    production: dict[str, Any],
    sink: SegmentSink,
    context: Any,
    monkeypatch: pytest.MonkeyPatch,
    fault: dict[str, Any],
    count: int,
) -> None:
    if fault.get("kind") == "timeout":
        monkeypatch.setenv("SEGMENT_REQUEST_TIMEOUT", "1")  # well under the hang, well over a loaded loopback
    sink.fail_next(count, **fault)
    started = time.monotonic()
    response = app.lambda_handler(event(json.dumps(webhook())), context)
    assert response == {"batchItemFailures": []}
    assert len(sink.requests) == count + 1
    assert len(sink.messages) == 1
    if "retry_after" in fault:
        assert time.monotonic() - started >= 1.0  # Retry-After honoured


def test_only_messages_whose_impressions_failed_are_reported(
    production: dict[str, Any], context: Any, lambda_context: Any
) -> None:
    """Production goes to a healthy sink, Staging to one that keeps failing."""
    with SegmentSink(write_keys={"wk-staging"}) as failing:
        failing.fail_fraction(1.0, 503)
        put_config(
            "outbound/staging",
            {"environments": ["Staging"], "identities": {"user": "userId"}, "endpoint": failing.endpoint},
        )
        put_secret("outbound/staging", "wk-staging")
        end = time.monotonic() + 4.0  # configs load first: on a loaded machine that takes a while
        lambda_context.get_remaining_time_in_millis = lambda: int((end - time.monotonic()) * 1000)
        sqs_event = {
            "Records": [
                sqs_events.record(json.dumps(webhook(key="p1")), "prod-only"),
                sqs_events.record(json.dumps(webhook(key="s1", environmentName="Staging")), "staging-only"),
                sqs_events.record(
                    json.dumps([webhook(key="p2"), webhook(key="s2", environmentName="Staging")]), "both"
                ),
            ]
        }
        response = app.lambda_handler(sqs_event, lambda_context)

        assert failures(response) == {"staging-only", "both"}
        assert len(failing.requests) > 1  # retried until the deadline, then given back to SQS
        assert failing.messages == []


def test_a_retried_message_dead_letters_its_permanent_part_once_the_rest_is_delivered(
    production: dict[str, Any], sink: SegmentSink, lambda_context: Any, stack: Stack
) -> None:
    dlq = stack.queues["ImpressionsDeadLetterQueue"]
    body = json.dumps([webhook(key="p1"), webhook(key="lost", environmentName="Nowhere", environmentId="x")])
    sink.fail_fraction(1.0, 503)
    end = time.monotonic() + 2.0
    lambda_context.get_remaining_time_in_millis = lambda: int((end - time.monotonic()) * 1000)

    response = app.lambda_handler(event_with_id(body, "mixed"), lambda_context)

    # Retried whole: dead-lettering its permanent part now would do it again on every receive.
    assert failures(response) == {"mixed"}
    assert sqs_events.dead_letters(dlq) == []

    sink.fail_fraction(0.0)
    end = time.monotonic() + 6.0
    response = app.lambda_handler(event_with_id(body, "mixed", receive_count=2), lambda_context)

    assert response == {"batchItemFailures": []}
    assert [m["properties"]["key"] for m in sink.messages] == ["p1"]
    [letter] = sqs_events.dead_letters(dlq)
    assert letter["errorCode"] == "no_matching_config"
    assert [i["key"] for i in json.loads(letter["body"])] == ["lost"]


def event_with_id(body: str, message_id: str, receive_count: int = 1) -> dict[str, Any]:
    return {"Records": [sqs_events.record(body, message_id, receive_count=receive_count)]}


def test_missing_write_key_is_retried_not_dead_lettered(
    env: dict[str, str], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    put_config(
        "outbound/nokey", {"environments": ["*"], "identities": {"user": "userId"}, "endpoint": sink.endpoint}
    )
    sqs_event = event(json.dumps(webhook()))
    response = app.lambda_handler(sqs_event, context)
    assert failures(response) == {sqs_event["Records"][0]["messageId"]}
    assert sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"]) == []


def test_a_write_key_still_missing_on_the_last_receive_is_dead_lettered_naming_its_config(
    env: dict[str, str], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    put_config(
        "outbound/nokey", {"environments": ["*"], "identities": {"user": "userId"}, "endpoint": sink.endpoint}
    )
    last = sqs_events.max_receive_count(stack.queues["ImpressionsQueue"])
    sqs_event = {"Records": [sqs_events.record(json.dumps(webhook()), "m1", receive_count=last)]}
    assert app.lambda_handler(sqs_event, context) == {"batchItemFailures": []}
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert letter["reason"].startswith(
        f"still failing after {last} deliveries: nokey: write key unavailable ("
    )


def test_a_missing_write_key_is_looked_up_once_per_invocation_not_once_per_request(
    env: dict[str, str], sink: SegmentSink, context: Any, calls: list[RawCall]
) -> None:
    put_config(
        "outbound/nokey", {"environments": ["*"], "identities": {"user": "userId"}, "endpoint": sink.endpoint}
    )
    impressions = [
        webhook(key=f"user-{i:05d}", time=1795483041109 + i) for i in range(3000)
    ]  # several requests
    sqs_event = event(*(json.dumps(impressions[i : i + 300]) for i in range(0, 3000, 300)))
    response = app.lambda_handler(sqs_event, context)
    assert failures(response) == {r["messageId"] for r in sqs_event["Records"]}
    assert [c[1] for c in calls if c[0] == "secretsmanager"] == ["GetSecretValue"]


def test_an_invalid_config_for_every_environment_retries_all_but_stops_no_valid_config(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    put_config("outbound/typo", {"environments": ["*"], "identities": {"user": "userID"}})
    sqs_event = event(json.dumps(webhook()), json.dumps(webhook(key="u2")))
    response = app.lambda_handler(sqs_event, context)
    # Retried, so that the config receives them once fixed; the valid config has them already.
    assert failures(response) == {r["messageId"] for r in sqs_event["Records"]}
    assert sorted(m["userId"] for m in sink.messages) == ["u2", "user-1"]


@pytest.mark.parametrize("named", ["Staging", "stg"], ids=["by-name", "by-id"])
def test_an_invalid_config_retries_only_the_environments_it_names(
    production: dict[str, Any],
    sink: SegmentSink,
    context: Any,
    stack: Stack,
    caplog: pytest.LogCaptureFixture,
    named: str,
) -> None:
    put_config("outbound/staging", {"environments": [named], "identities": {"user": "userID"}})
    prod, staging = webhook(key="p1"), webhook(key="s1", environmentName="Staging", environmentId="stg")
    sqs_event = event(json.dumps(prod), json.dumps(staging))
    response = app.lambda_handler(sqs_event, context)
    # The log names the config and its problem in the message itself, whatever prints it.
    [logged] = [r.getMessage() for r in caplog.records if r.name == "shared.outbound.batch"]
    assert "outbound config staging invalid" in logged
    assert "identities.user: Input should be" in logged
    # Staging matches no valid config: retried rather than dead-lettered as no_matching_config.
    assert failures(response) == {sqs_event["Records"][1]["messageId"]}
    assert [m["userId"] for m in sink.messages] == ["p1"]
    assert sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"]) == []


def test_an_unreadable_config_may_be_meant_for_any_environment(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name=f"{config.config_prefix()}/outbound/broken", Value="{not json", Type="String"
    )
    sqs_event = event(json.dumps(webhook()))
    response = app.lambda_handler(sqs_event, context)
    assert failures(response) == {sqs_event["Records"][0]["messageId"]}
    assert [m["userId"] for m in sink.messages] == ["user-1"]


@pytest.mark.parametrize(
    "document",
    [
        {"environments": [], "identities": {"user": "userId"}},
        {"environments": ["Staging", None], "identities": {"user": "userId"}},
        [{"environments": ["Staging"], "identities": {"user": "userId"}}],
    ],
    ids=["no-environments", "not-all-names", "not-an-object"],
)
def test_an_invalid_config_whose_environments_cannot_be_read_may_be_meant_for_any(
    production: dict[str, Any], sink: SegmentSink, context: Any, document: Any
) -> None:
    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name=f"{config.config_prefix()}/outbound/broken", Value=json.dumps(document), Type="String"
    )
    sqs_event = event(json.dumps(webhook()))
    response = app.lambda_handler(sqs_event, context)
    assert failures(response) == {sqs_event["Records"][0]["messageId"]}
    assert [m["userId"] for m in sink.messages] == ["user-1"]


def test_impressions_naming_only_their_environment_id_are_routed_and_retried_by_it(
    env: dict[str, str], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    """Configs match an impression by its environment id when it carries no name."""
    put_config(
        "outbound/by-id",
        {"environments": ["env-prod-id"], "identities": {"user": "userId"}, "endpoint": sink.endpoint},
    )
    put_secret("outbound/by-id", PROD_KEY)
    put_config("outbound/staging", {"environments": ["env-staging-id"], "identities": {"user": "userID"}})
    bodies = [
        json.dumps(webhook(key=key, environmentName=None, environmentId=environment_id))
        for key, environment_id in (("p1", "env-prod-id"), ("s1", "env-staging-id"), ("d1", "env-dev-id"))
    ]
    sqs_event = event(*bodies)
    response = app.lambda_handler(sqs_event, context)

    assert [m["userId"] for m in sink.messages] == ["p1"]
    # Staging's config is invalid: retried until it is fixed. No config names the third environment.
    assert failures(response) == {sqs_event["Records"][1]["messageId"]}
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert letter["body"] == bodies[2]
    assert letter["reason"] == (
        "impression 0: no_matching_config: no outbound config matches environment 'env-dev-id'"
    )


def test_configs_unavailable_retry_every_message_of_the_batch(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSM failing (throttled, down): which configs the impressions are for is unknown. None is lost,
    none dead-lettered, not even a body that cannot be parsed: the whole batch is retried."""

    def unavailable(kind: str) -> dict[str, str]:
        raise config.ConfigUnavailable(f"{config.config_prefix()}/{kind}: ThrottlingException")

    monkeypatch.setattr(config, "list_parameters", unavailable)
    sqs_event = event(json.dumps(webhook()), json.dumps(webhook(key="u2")), "{broken")
    response = app.lambda_handler(sqs_event, context)
    assert failures(response) == {r["messageId"] for r in sqs_event["Records"]}
    assert sink.messages == []
    assert sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"]) == []


# ---------------------------------------------------------------------------------------------
# Through the real queue: redelivery, exactly once by messageId, and batches near the limits


def test_every_impression_arrives_exactly_once_after_redelivery(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    queue_url, queue_arn = stack.queues["ImpressionsQueue"], stack.queue_arns["ImpressionsQueue"]
    sqs = boto3.client("sqs", region_name="us-east-1")
    expected = set()
    for m in range(40):
        envelope = {
            "environmentName": "Production",
            "impressions": [webhook(key=f"user-{m}-{i}", time=1795483041109 + i) for i in range(25)],
        }
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(envelope))
        expected.update(f"user-{m}-{i}" for i in range(25))
    # Stored by Segment but the answer lost, then a hard failure: both leave messages to redeliver.
    sink.fail_fraction(0.4, 500, accept=True, seed=7)

    rounds = 0
    while rounds < 20:
        sqs_event = sqs_events.receive_event(queue_url, queue_arn, max_messages=10)
        if not sqs_event["Records"]:
            break
        rounds += 1
        end = time.monotonic() + 3.0
        context.get_remaining_time_in_millis = lambda end=end: int((end - time.monotonic()) * 1000)
        response = app.lambda_handler(sqs_event, context)
        sqs_events.settle(queue_url, sqs_event, response)
        if rounds == 3:
            sink.fail_fraction(0)

    unique = sink.unique_messages()
    assert len(sink.messages) > len(unique)  # there were redeliveries
    assert len(unique) == len(expected)
    assert {m["userId"] for m in unique.values()} == expected
    assert sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"]) == []


def test_batches_are_packed_up_to_the_size_limit(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    impressions = [webhook(key=f"user-{i:05d}", time=1795483041109 + i) for i in range(3000)]
    bodies = [json.dumps(impressions[i : i + 300]) for i in range(0, 3000, 300)]
    response = app.lambda_handler(event(*bodies), context)
    assert response == {"batchItemFailures": []}

    sizes = [r.size for r in sink.requests]
    counts = [len(r.messages) for r in sink.requests]
    assert sum(counts) == 3000
    assert max(sizes) <= 500_000
    assert max(counts) <= 2500
    message_size = max(len(json.dumps(m, separators=(",", ":"))) for m in sink.messages)
    # Every request but the last is full: one more message would not have fitted.
    full = sorted(sizes)[1:]
    assert len(full) >= 3
    assert all(s > 500_000 - message_size - 64 for s in full)
    assert len({m["messageId"] for m in sink.messages}) == 3000


def test_an_envelopes_traffic_type_applies_to_its_impressions_that_name_none(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    envelope = {
        "environmentName": "Production",
        "trafficType": "anonymous",
        "impressions": [webhook(key="visitor-1"), webhook(key="member-1", trafficType="user")],
    }
    assert app.lambda_handler(event(json.dumps(envelope)), context) == {"batchItemFailures": []}
    by_key = {m["properties"]["key"]: m for m in sink.messages}
    assert by_key["visitor-1"]["anonymousId"] == "visitor-1"
    assert "userId" not in by_key["visitor-1"]
    assert by_key["member-1"]["userId"] == "member-1"  # its own wins


def test_a_message_of_exactly_32_kib_is_sent_and_one_byte_more_is_not(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    """No message over 32 KB: 32,768 bytes is within the limit."""

    def size(message: dict[str, Any]) -> int:
        return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())

    # The message's size for some padding, as serialised: keys of one length, one padding property.
    probe_event = event(json.dumps(webhook(key="probe", properties={"pad": "x" * 30_000})))
    assert app.lambda_handler(probe_event, context) == {"batchItemFailures": []}
    [probe] = sink.messages
    padding = 30_000 + 32 * 1024 - size(probe)
    bodies = [
        json.dumps(webhook(key="fits1", properties={"pad": "x" * padding})),
        json.dumps(webhook(key="over1", properties={"pad": "x" * (padding + 1)})),
    ]
    sink.clear()
    assert app.lambda_handler(event(*bodies), context) == {"batchItemFailures": []}
    [fits] = sink.messages
    assert (fits["properties"]["key"], size(fits)) == ("fits1", 32 * 1024)
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert letter["errorCode"] == "message_too_large"
    assert f"message is {32 * 1024 + 1} bytes" in letter["reason"]


def test_a_config_with_gzip_sends_compressed_requests(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    put_config("outbound/production", {**production, "gzip": True})
    impressions = [webhook(key=f"user-{i:05d}", time=1795483041109 + i) for i in range(1000)]
    response = app.lambda_handler(event(json.dumps(impressions)), context)

    assert response == {"batchItemFailures": []}
    assert sink.requests
    assert all(r.gzipped and r.status == 200 for r in sink.requests)
    # On the wire, a small fraction of the JSON the sink inflated.
    assert sum(r.wire_size for r in sink.requests) < sum(r.size for r in sink.requests) / 4
    assert sorted(m["userId"] for m in sink.messages) == [f"user-{i:05d}" for i in range(1000)]


def test_wrong_write_key_is_dead_lettered_and_never_logged(
    env: dict[str, str], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    logs = io.StringIO()
    previous = app.logger.registered_handler.setStream(logs)  # type: ignore[attr-defined]
    secret = "wk-typo-do-not-log"
    put_config(
        "outbound/typo", {"environments": ["*"], "identities": {"user": "userId"}, "endpoint": sink.endpoint}
    )
    put_secret("outbound/typo", secret)
    try:
        response = app.lambda_handler(event(json.dumps(webhook())), context)
    finally:
        app.logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]
    assert response == {"batchItemFailures": []}, logs.getvalue()
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert letter["errorCode"] == "segment_rejected"
    assert letter["reason"].startswith(
        "impression 0: segment_rejected: typo: Segment refused the batch: HTTP 401"
    )
    assert "dead-lettered" in logs.getvalue()
    assert secret not in logs.getvalue() + json.dumps(letter)


def test_dead_letter_queue_unavailable_means_retry_not_loss(
    production: dict[str, Any], sink: SegmentSink, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/missing")
    sqs_event = {
        "Records": [
            sqs_events.record(json.dumps(webhook(environmentName="Nowhere")), "unroutable"),
            sqs_events.record(json.dumps(webhook()), "fine"),
        ]
    }
    response = app.lambda_handler(sqs_event, context)
    assert failures(response) == {"unroutable"}
    assert len(sink.messages) == 1


def test_a_dead_letter_redriven_after_the_fix_is_delivered(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    items = [webhook(key=k, environmentName=None, environmentId=None) for k in ("s1", "s2")]
    envelope = {"environmentName": "Staging", "impressions": items}
    app.lambda_handler(event(json.dumps(envelope)), context)
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert sink.messages == []

    # The fix: a config for Staging. Then the DLQ message goes back through the queue as it is.
    put_config(
        "outbound/staging",
        {"environments": ["Staging"], "identities": {"user": "userId"}, "endpoint": sink.endpoint},
    )
    put_secret("outbound/staging", ALL_KEY)
    config.clear_caches()
    response = app.lambda_handler(event(letter["body"]), context)
    assert response == {"batchItemFailures": []}
    assert sorted(m["userId"] for m in sink.messages_for(ALL_KEY)) == ["s1", "s2"]


def test_a_short_invocation_still_sends(
    production: dict[str, Any], sink: SegmentSink, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEND_MARGIN_MS")
    lambda_context.remaining_ms = 2000  # less than the 3 s margin kept for dead letters
    response = app.lambda_handler(event(json.dumps(webhook())), lambda_context)
    assert response == {"batchItemFailures": []}
    assert len(sink.messages) == 1


def test_many_dead_letters_are_sent_in_several_batch_calls(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    bodies = [f"{{broken {i}" for i in range(23)]
    sqs_event = {"Records": [sqs_events.record(body, f"m{i}") for i, body in enumerate(bodies)]}
    response = app.lambda_handler(sqs_event, context)
    assert response == {"batchItemFailures": []}
    letters = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert sorted(d["body"] for d in letters) == sorted(bodies)
    assert {d["errorCode"] for d in letters} == {"invalid_json"}


def test_a_context_without_a_clock_still_delivers(production: dict[str, Any], sink: SegmentSink) -> None:
    """Invokers that pass a minimal context (as in Powertools' testing docs) get the default budget."""

    @dataclasses.dataclass
    class MinimalContext:
        function_name: str = "test"
        memory_limit_in_mb: int = 128
        invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test"
        aws_request_id: str = "da658bd3-2d6f-4e7b-8ec2-937234644fdc"

    response = app.lambda_handler(event(json.dumps(webhook())), MinimalContext())

    assert response == {"batchItemFailures": []}
    assert [m["properties"]["split"] for m in sink.messages] == ["new_checkout"]


# ---------------------------------------------------------------------------------------------
# The last receive: to the DLQ with the reason, not by SQS's redrive without one


def test_a_message_failing_on_its_last_receive_is_dead_lettered_with_the_reason(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    last = sqs_events.max_receive_count(stack.queues["ImpressionsQueue"])
    assert stack.function_environment("ImpressionsFunction")["MAX_RECEIVE_COUNT"] == str(last)

    sink.fail_fraction(1.0, 503)
    body = json.dumps([webhook(key="u1"), webhook(key="u2")])
    sqs_event = {
        "Records": [
            sqs_events.record(body, "not-yet", receive_count=last - 1),
            sqs_events.record(body, "last-time", receive_count=last),
        ]
    }
    response = app.lambda_handler(sqs_event, context)

    assert failures(response) == {"not-yet"}  # SQS delivers it again
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert letter["body"] == body  # whole: a redrive replays it as it was
    attributes = letter
    assert attributes["errorCode"] == "retries_exhausted"
    assert attributes["sourceMessageId"] == "last-time"
    assert attributes["failedImpressions"] == "2"
    assert attributes["reason"].startswith(f"still failing after {last} deliveries: ")
    assert "503" in attributes["reason"]


def test_a_message_an_invalid_config_held_back_to_its_last_receive_is_dead_lettered_with_its_error(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    last = sqs_events.max_receive_count(stack.queues["ImpressionsQueue"])
    put_config("outbound/typo", {"environments": ["Production"], "identities": {"user": "userID"}})
    body = json.dumps(webhook(key="u1"))

    response = app.lambda_handler({"Records": [sqs_events.record(body, "m-1", receive_count=last)]}, context)

    assert failures(response) == set()
    [letter] = sqs_events.dead_letters(stack.queues["ImpressionsDeadLetterQueue"])
    assert (letter["errorCode"], letter["body"]) == ("retries_exhausted", body)
    assert letter["reason"].startswith(
        f"still failing after {last} deliveries: outbound config typo is invalid: "
    )
    assert "identities.user: Input should be" in letter["reason"]


def test_the_next_invocation_reuses_the_connections_to_segment(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    """The HTTP client outlives the invocation (shared.http_session): no new TCP / TLS per batch."""
    assert app.lambda_handler(event(json.dumps(webhook(key="user-1"))), context) == {"batchItemFailures": []}
    assert app.lambda_handler(event(json.dumps(webhook(key="user-2"))), context) == {"batchItemFailures": []}

    first, second = sink.requests
    assert first.connection is not None
    assert second.connection == first.connection


def test_metrics_count_impressions_and_messages_delivered_and_dead_lettered(
    production: dict[str, Any],
    sink: SegmentSink,
    context: Any,
    stack: Stack,
    capsys: pytest.CaptureFixture[str],
) -> None:
    envelope = {
        "environmentName": "Production",
        "trafficType": "user",
        "impressions": [
            webhook(key="c"),
            webhook(key="d", environmentName="Staging"),
            {"impression": {"feature": "f", "keyName": "e"}},
        ],
    }
    sqs_event = {
        "Records": [
            sqs_events.record(json.dumps([webhook(key="a"), webhook(key="b")]), "two-good"),
            sqs_events.record("{not json", "bad-json"),
            sqs_events.record(json.dumps(envelope), "one-good-two-bad"),
        ]
    }
    capsys.readouterr()

    assert app.lambda_handler(sqs_event, context) == {"batchItemFailures": []}

    [emf] = published_metrics(capsys.readouterr().out)
    counts = {
        name: emf[name]
        for name in (
            "ImpressionsReceived",
            "SegmentMessagesDelivered",
            "SegmentMessagesRetried",
            "SegmentRequests",
            "ImpressionsDeadLettered",
            "SqsMessagesDeadLettered",
            "SqsMessagesRetried",
        )
    }
    assert counts == {
        "ImpressionsReceived": [4.0],  # read: a, b, c, d; the one without treatment and time is not
        "SegmentMessagesDelivered": [3.0],
        "SegmentMessagesRetried": [0.0],
        "SegmentRequests": [1.0],
        "ImpressionsDeadLettered": [3.0],  # the unreadable body counts as one, with d and e
        "SqsMessagesDeadLettered": [2.0],
        "SqsMessagesRetried": [0.0],
    }
    assert len(sink.messages) == 3
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "FmeSegmentBridge"


def test_metrics_count_the_retries_of_a_request(
    production: dict[str, Any], sink: SegmentSink, context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    sink.fail_next(2, status=500)
    capsys.readouterr()
    assert app.lambda_handler(event(json.dumps(webhook())), context) == {"batchItemFailures": []}
    [emf] = published_metrics(capsys.readouterr().out)
    assert (emf["SegmentRequests"], emf["SegmentRequestRetries"]) == ([1.0], [2.0])
