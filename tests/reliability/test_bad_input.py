"""Hostile and broken bodies: oversized, deeply nested, huge arrays, invalid UTF-8, wrong content
types, duplicate keys. Each gets a clear 4xx with a JSON error (or is dead-lettered with its reason)
and never a 5xx — a 503 would make Segment retry, forever, a body that can never succeed — and the
good messages beside a bad one are kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from shared.inbound.messages import MAX_MESSAGES
from tests.conftest import put_config, put_secret
from tests.integration.ingest_support import SECRET, Webhook, segment_message, signature
from tests.integration.sqs_events import event as sqs_event
from tests.reliability import scale
from tests.reliability.test_segment_faults import impression


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def test_webhook_bad_bodies(webhook: Webhook) -> None:
    track = segment_message("track")
    limit = int(webhook.env["MAX_BODY_BYTES"])  # the template's default
    cases: dict[str, tuple[bytes, int, dict[str, str]]] = {
        "empty": (b"", 400, {}),
        "whitespace": (b" \n\t", 400, {}),
        "null": (b"null", 400, {}),
        "number": (b"42", 400, {}),
        "empty array": (b"[]", 400, {}),
        "empty object": (b"{}", 400, {}),
        "batch not an array": (b'{"batch": {}}', 400, {}),
        "truncated": (json.dumps(track).encode()[:-5], 400, {}),
        "NaN": (b'{"type": "track", "event": "x", "userId": "u", "properties": {"v": NaN}}', 400, {}),
        "Infinity": (b'[{"type": "track", "event": "x", "userId": "u", "v": Infinity}]', 400, {}),
        "invalid UTF-8": (b'{"type": "track", "event": "\xff\xfe", "userId": "u"}', 400, {}),
        "form encoded": (
            b"type=track&event=x&userId=u",
            400,
            {"content-type": "application/x-www-form-urlencoded"},
        ),
        "deeply nested array": (nested(100_000).encode(), 400, {}),
        "deeply nested object": (('{"a":' * 50_000 + "1" + "}" * 50_000).encode(), 400, {}),
        "too many messages": (json.dumps([{"type": "alias"}] * (MAX_MESSAGES + 1)).encode(), 413, {}),
        "over the size limit": (json.dumps({**track, "pad": "x" * limit}).encode(), 413, {}),
    }
    figures: dict[str, int] = {}
    for case, (raw, expected, headers) in cases.items():
        answer = webhook.post(
            raw, base64_encoded=True, headers={"authorization": f"Bearer {SECRET}", **headers}
        )
        assert answer.status == expected, (case, answer)
        assert answer.body["error"], case
        assert answer.body["message"], case
        assert answer.headers.get("Content-Type") == "application/json", case
        figures[f"{case} -> {answer.status}"] = 1
    too_large = webhook.post(json.dumps({**track, "pad": "x" * limit}).encode())
    assert too_large.body["limit"] == limit
    assert f"the limit is {limit} bytes" in too_large.body["message"]
    assert webhook.count_events() == 0
    scale.record("bad_webhook_bodies", {"cases": len(cases), "answers": figures, "events_stored": 0})


def test_deep_nesting_inside_a_message_never_503(webhook: Webhook) -> None:
    """Nesting just under and over what the parser takes, inside properties and traits."""
    for depth in (10, 100, 500, 900, 950, 990, 1000, 2000):
        for field in ("properties", "traits"):
            message = (
                f'"type": "track", "event": "nested", "userId": "u-{depth}", "messageId": "n-{depth}-{field}"'
            )
            raw = f'{{{message}, "{field}": {{"deep": {nested(depth)}}}}}'
            answer = webhook.post(raw.encode(), base64_encoded=True)
            assert answer.status in (200, 400), (depth, field, answer)


def test_unauthenticated_deep_body_is_a_401(webhook: Webhook) -> None:
    raw = nested(100_000).encode()
    answer = webhook.post(raw, base64_encoded=True, headers={"x-signature": signature("wrong", raw)})
    assert answer.status == 401


def test_content_type_is_not_what_decides(webhook: Webhook) -> None:
    """Segment sends application/json; a proxy may change it. The body is what is parsed."""
    for number, content_type in enumerate(
        ["text/plain", "application/octet-stream", "", "application/json; charset=latin-1"]
    ):
        message = segment_message("track", messageId=f"content-type-{number}")
        answer = webhook.post(
            message, headers={"authorization": f"Bearer {SECRET}", "content-type": content_type}
        )
        assert (answer.status, answer.body["stored"]) == (200, 1), content_type


def test_duplicate_keys_last_one_wins_as_in_javascript(webhook: Webhook) -> None:
    raw = b'{"type": "track", "event": "first", "userId": "dup", "messageId": "dup-1", "event": "second"}'
    answer = webhook.post(raw, base64_encoded=True, headers={"x-signature": signature(SECRET, raw)})
    assert answer.status == 200
    (stored,) = webhook.stored_events("user", "dup")
    assert stored["eventTypeId"] == "second"


def test_huge_array_at_the_limit_is_answered(webhook: Webhook) -> None:
    count = scale.count(MAX_MESSAGES, MAX_MESSAGES)
    body = [segment_message("alias", messageId=f"alias-{n}") for n in range(count)]
    answer = webhook.post(body)
    assert (answer.status, answer.body["received"], answer.body["ignored"]) == (200, count, count)


# ---------------------------------------------------------------------------------------------
# Impressions


@pytest.fixture
def impressions(stack: Stack, function_env: Callable[[str], dict[str, str]], lambda_context: Any) -> Any:
    from functions.impressions import app

    function_env("ImpressionsFunction")
    with SegmentSink(write_keys={"wk-bad-input"}) as sink:
        put_config(
            "outbound/production",
            {"environments": ["Production"], "identities": {"user": "userId"}, "endpoint": sink.endpoint},
        )
        put_secret("outbound/production", "wk-bad-input")
        yield sink, lambda *bodies: app.lambda_handler(sqs_event(*bodies), lambda_context)


def test_bad_impression_messages_are_dead_lettered_and_the_good_ones_delivered(
    impressions: Any, stack: Stack
) -> None:
    sink, invoke = impressions
    good = json.dumps(impression(1, padding=""))
    bad = {
        "deeply nested": nested(100_000),
        "deeply nested envelope": '{"environmentName": "Production", "impressions": ' + nested(50_000) + "}",
        "properties nested too deeply": json.dumps(impression(4, padding=""))[:-1]
        + ', "properties": {"a": '
        + nested(100_000)
        + "}}",
        "not JSON": "{impression",
        "null": "null",
        "over 32 KB as a Segment message": json.dumps(impression(2, padding="x" * 40_000)),
        "duplicate keys": (
            '{"key": "a", "split": "s", "environmentName": "Production", "treatment": "on", "time": 1,'
            ' "key": "b"}'
        ),
    }
    # Custom properties as the JSON string of something nested far too deep to decode: kept as text.
    deep_properties = {**impression(3, padding=""), "properties": nested(5000, '{"a": 1}')}
    response = invoke(good, *bad.values(), json.dumps(deep_properties))
    assert response == {"batchItemFailures": []}
    delivered = {m["userId"] for m in sink.messages}
    assert {"user-1", "user-3"} <= delivered
    sqs = boto3.client("sqs", region_name="us-east-1")
    letters = []
    while got := sqs.receive_message(
        QueueUrl=stack.queues["ImpressionsDeadLetterQueue"],
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
    ).get("Messages", []):
        letters.extend(got)
    codes = sorted(m["MessageAttributes"]["errorCode"]["StringValue"] for m in letters)
    assert len(letters) == len(bad) - 1  # duplicate keys: the last "key" wins, and it is delivered
    assert "b" in delivered
    scale.record("bad_impression_messages", {"messages": len(bad) + 2, "dead_lettered": codes, "retried": 0})


def test_a_deep_but_valid_impression_beside_a_refused_one(impressions: Any, stack: Stack) -> None:
    """Properties nested deeper than pydantic-core decodes (a few hundred levels) are delivered, and
    the refused impression beside them is dead-lettered alone."""
    sink, invoke = impressions
    deep = {**impression(5, padding=""), "properties": {"a": json.loads(nested(200))}}
    staging = {**impression(6, padding=""), "environmentName": "Staging", "environmentId": "env-staging-id"}
    body = json.dumps([deep, staging]).replace(nested(200), nested(3000))
    assert invoke(body) == {"batchItemFailures": []}
    [message] = sink.messages
    assert message["userId"] == "user-5"
    assert json.dumps(message["properties"]["a"], separators=(",", ":")) == nested(3000)
    [letter] = boto3.client("sqs", region_name="us-east-1").receive_message(
        QueueUrl=stack.queues["ImpressionsDeadLetterQueue"], MessageAttributeNames=["All"]
    )["Messages"]
    assert letter["MessageAttributes"]["errorCode"]["StringValue"] == "no_matching_config"
    assert json.loads(letter["Body"]) == [staging]


def test_a_huge_envelope_is_delivered_in_several_requests(impressions: Any) -> None:
    sink, invoke = impressions
    count = scale.count(6000, 20_000)
    envelope = {
        "environmentName": "Production",
        "impressions": [impression(n, padding="") for n in range(count)],
    }
    body = json.dumps(envelope)
    assert invoke(body) == {"batchItemFailures": []}
    assert len({m["messageId"] for m in sink.messages}) == count
    assert len(sink.requests) >= 2


def test_the_same_user_deleted_twice_in_one_body(webhook: Webhook) -> None:
    """Found by the property tests: two deletions of one user made BatchWriteItem refuse the request."""
    webhook.post(segment_message("track", userId="97980cfea0067"))
    deletion = segment_message("delete")
    answer = webhook.post([deletion, {**deletion, "messageId": "api-again"}])
    assert (answer.status, answer.body["deleted"]) == (200, 2)
    assert webhook.stored_events("user", "97980cfea0067") == []
