"""DynamoDB throttling and 5xx during webhook ingest: 503s, Segment's retries, exactly-once storage.

Faults are injected with botocore's event system ahead of moto, so botocore's own retries and the
table modules' handling of unprocessed items run as they do against DynamoDB. The sender behaves
like Segment: any non-2xx answer is retried with the same body. Bodies overlap (Segment delivers
at least once), so the same message also arrives in different requests.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

import boto3
import pytest

from shared import aws
from tests.integration.ingest_support import Answer, Webhook, segment_message
from tests.reliability import scale
from tests.reliability.faults import DynamoDbFaults, LambdaKilled

MESSAGES = scale.count(200, 2000)
BODY_SIZE = 50
MAX_ATTEMPTS = 40


def messages(count: int) -> list[dict[str, Any]]:
    """Tracks with both identities (two events each) and identifies, each with its own messageId."""
    track = segment_message("track")
    identify = segment_message("identify")
    out = []
    for number in range(count):
        if number % 4 == 3:
            message = copy.deepcopy(identify)
            message["traits"] = {**message["traits"], "logins": number}
        else:
            message = copy.deepcopy(track)
            message["anonymousId"] = f"anon-{number}"
            message["timestamp"] = (
                f"2026-11-25T10:{number // 3600 % 60:02d}:{number // 60 % 60:02d}.{number % 1000:03d}Z"
            )
        message["userId"] = f"user-{number}"
        message["messageId"] = f"ajs-reliability-{number:06d}"
        out.append(message)
    return out


def overlapping_bodies(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Bodies of BODY_SIZE messages; every other body repeats the last 10 messages of the one before."""
    bodies = []
    for start in range(0, len(items), BODY_SIZE):
        body = items[start : start + BODY_SIZE]
        if bodies and len(bodies) % 2:
            body = bodies[-1][-10:] + body
        bodies.append(body)
    return bodies


def stored_events(table: str) -> list[dict[str, Any]]:
    client = boto3.client("dynamodb", region_name="us-east-1")
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=table):
        items.extend(page["Items"])
    return items


def deliver_like_segment(webhook: Webhook, body: list[dict[str, Any]], statuses: Counter[int]) -> Answer:
    for _ in range(MAX_ATTEMPTS):
        answer = webhook.post(body)
        statuses[answer.status] += 1
        if answer.status == 200:
            return answer
        assert answer.status == 503, answer
        assert answer.body["error"] == "unavailable"
        assert answer.headers.get("Retry-After")
    raise AssertionError(f"still failing after {MAX_ATTEMPTS} attempts")


def test_throttling_and_server_errors_store_every_message_once(
    webhook: Webhook, botocore_waits: list[float]
) -> None:
    faults = DynamoDbFaults(throttle=0.25, server_error=0.15, unprocessed=0.2)
    faults.install(aws.client("dynamodb"))
    items = messages(MESSAGES)
    bodies = overlapping_bodies(items)
    statuses: Counter[int] = Counter()
    for body in bodies:
        deliver_like_segment(webhook, body, statuses)
    faults.enabled = False

    events = stored_events(webhook.env["EVENTS_TABLE"])
    per_message = Counter((item["pk"]["S"], item["messageId"]["S"]) for item in events)
    tracks = [m for m in items if m["type"] == "track"]
    identifies = [m for m in items if m["type"] == "identify"]
    # The faults reached every kind of call the webhook makes; most are outlasted inside the request
    # (botocore's retries, then the webhook's own), the rest answered 503 and retried like Segment.
    kinds = {name.split(":")[0] for name in faults.injected}
    assert kinds >= {"BatchGetItem", "BatchWriteItem", "PutItem"}
    assert botocore_waits
    assert len(events) == 2 * len(tracks)  # one event per mapped identity
    assert set(per_message.values()) == {1}
    for message in identifies:
        identity = webhook.identity("user", message["userId"])
        assert identity is not None
        assert int(identity["attributes"]["logins"]) == message["traits"]["logins"]

    scale.record(
        "dynamodb_faults",
        {
            "messages": len(items),
            "requests_distinct": len(bodies),
            "messages_sent_including_overlap": sum(len(b) for b in bodies),
            "http_answers": {str(status): count for status, count in sorted(statuses.items())},
            "faults_injected": dict(faults.injected),
            "botocore_retries": len(botocore_waits),
            "events_expected": 2 * len(tracks),
            "events_stored": len(events),
            "events_stored_more_than_once": sum(1 for n in per_message.values() if n > 1),
            "identities_expected": len(identifies),
            "identities_stored": sum(1 for m in identifies if webhook.identity("user", m["userId"])),
        },
    )


def test_single_message_requests_under_throttling_store_every_event_once(
    webhook: Webhook, botocore_waits: list[float]
) -> None:
    """Classic Webhooks: one message per request, so the conditional-put path, each message delivered
    until it gets a 200 and then once more (a redelivery after success)."""
    faults = DynamoDbFaults(throttle=0.25, server_error=0.15, seed=5)
    faults.install(aws.client("dynamodb"))
    items = [m for m in messages(scale.count(80, 400)) if m["type"] == "track"]
    statuses: Counter[int] = Counter()
    first, again = [], []
    for message in items:
        first.append(deliver_like_segment(webhook, message, statuses))
        again.append(deliver_like_segment(webhook, message, statuses))
    faults.enabled = False

    events = stored_events(webhook.env["EVENTS_TABLE"])
    per_key = Counter((item["pk"]["S"], item["sk"]["S"]) for item in events)
    assert statuses[503] > 0
    assert faults.injected["PutItem:throttled"] > 0
    assert len(events) == 2 * len(items)
    assert set(per_key.values()) == {1}
    # Every delivery is answered with the message counted once; a redelivery is a duplicate.
    assert all(a.body["stored"] + a.body["duplicate"] == 1 for a in first + again)
    assert all((a.body["stored"], a.body["duplicate"], a.body["events"]) == (0, 1, 0) for a in again)
    # Events written by a request that then answered 503 are not counted again by its retry.
    assert sum(a.body["events"] for a in first) <= len(events)


def test_a_message_killed_between_its_puts_is_completed_by_the_retry(webhook: Webhook) -> None:
    message = messages(1)[0]  # a track: one user event and one anonymous event
    faults = DynamoDbFaults(kill_after_writes=1)
    faults.install(aws.client("dynamodb"))
    with pytest.raises(LambdaKilled):
        webhook.post(message)
    assert len(stored_events(webhook.env["EVENTS_TABLE"])) == 1

    faults.enabled = False
    answer = webhook.post(message)
    assert answer.status == 200
    assert (answer.body["stored"], answer.body["duplicate"], answer.body["events"]) == (1, 0, 1)
    events = stored_events(webhook.env["EVENTS_TABLE"])
    assert len({(e["pk"]["S"], e["sk"]["S"]) for e in events}) == len(events) == 2


def test_a_request_killed_mid_write_is_completed_by_the_retry(webhook: Webhook) -> None:
    """The function dies (Lambda timeout) after part of a body is written; API Gateway answers 503,
    Segment sends the same body again, and nothing is stored twice."""
    items = messages(400)
    body = [m for m in items if m["type"] == "track"][:250]  # 500 events: 20 BatchWriteItem calls
    faults = DynamoDbFaults(kill_after_writes=7)
    faults.install(aws.client("dynamodb"))
    with pytest.raises(LambdaKilled):
        webhook.post(body)
    partial = len(stored_events(webhook.env["EVENTS_TABLE"]))
    assert 0 < partial < 500

    faults.enabled = False
    answer = webhook.post(body)
    assert answer.status == 200
    assert answer.body["stored"] + answer.body["duplicate"] == len(body)
    events = stored_events(webhook.env["EVENTS_TABLE"])
    assert len(events) == 500
    assert len({(e["pk"]["S"], e["sk"]["S"]) for e in events}) == 500

    scale.record(
        "ingest_killed_mid_write",
        {"events_in_body": 500, "events_stored_before_kill": partial, "events_after_retry": len(events)},
    )


def test_the_answer_is_json_with_retry_after(webhook: Webhook, botocore_waits: list[float]) -> None:
    faults = DynamoDbFaults(throttle=1.0)
    faults.install(aws.client("dynamodb"))
    answer = webhook.post(segment_message("track"))
    assert answer.status == 503
    assert answer.body == {
        "error": "unavailable",
        "message": "storage or configuration is temporarily unavailable; retry later",
    }
    assert answer.headers["Retry-After"] == "5"
    assert json.dumps(answer.body).find("ProvisionedThroughput") == -1  # no internals to the caller
