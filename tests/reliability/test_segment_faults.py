"""Segment failing every way it can, through the real impressions handler and SQS re-delivery.

Faults per request: 30 % 500 (half of them after Segment stored the batch, so the answer is lost),
10 % 429 with ``Retry-After``, 5 % timeouts, 3 % dropped connections; then a full outage while
more impressions arrive, then recovery. The queue is moto's, with the template's redrive policy.
Nothing may be lost: every impression reaches every matching workspace with a distinct
``messageId``, and nothing transient reaches the dead-letter queue.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from fme_bridge.template import Stack, load_template
from functions.impressions import app
from shared.http_retry import Deadline
from shared.outbound import batch
from tests.conftest import put_config, put_secret
from tests.reliability import scale
from tests.reliability.faults import FaultMix, FaultySegment, VirtualClock
from tests.reliability.sqs_loop import SqsLoop, redrive_settings

WRITE_KEYS = {"workspace-a": "wk-reliability-a", "workspace-b": "wk-reliability-b"}
IMPRESSIONS = scale.count(240, 5000)
OUTAGE_ROUNDS = 2
PADDING = "p" * 1200  # custom impression properties: fewer messages fit a request, so more requests


def impression(number: int, padding: str = PADDING) -> dict[str, Any]:
    return {
        "key": f"user-{number}",
        "split": f"flag_{number % 7}",
        "environmentId": "env-prod-id",
        "environmentName": "Production",
        "treatment": "on" if number % 2 else "off",
        "time": 1795483041109 + number,
        "label": "default rule",
        "splitVersionNumber": 1795482000000,
        "sdk": "python",
        "sdkVersion": "10.7.0",
        "properties": {"padding": padding} if padding else None,
    }


def bodies(numbers: range, padding: str = PADDING) -> list[str]:
    """The three body shapes of docs/outbound.md, mixed: single objects, arrays, envelopes of 20."""
    out: list[str] = []
    items = list(numbers)
    position = 0
    while position < len(items):
        shape = (position // 20) % 3
        if shape == 0:
            out.append(json.dumps(impression(items[position], padding)))
            position += 1
        elif shape == 1:
            chunk = items[position : position + 5]
            out.append(json.dumps([impression(n, padding) for n in chunk]))
            position += len(chunk)
        else:
            chunk = items[position : position + 20]
            envelope = {
                "environmentName": "Production",
                "impressions": [impression(n, padding) for n in chunk],
            }
            out.append(json.dumps(envelope))
            position += len(chunk)
    return out


@pytest.fixture
def segment() -> Any:
    with FaultySegment(FaultMix(), write_keys=set(WRITE_KEYS.values()), check_message_size=False) as sink:
        yield sink


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    """Retry waits (backoff, Retry-After) pass on a virtual clock that Lambda's remaining time follows."""
    virtual = VirtualClock()
    monkeypatch.setattr(batch, "Deadline", functools.partial(Deadline, sleep=virtual.sleep))
    return virtual


@pytest.fixture
def queue(
    stack: Stack,
    function_env: Callable[[str], dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    segment: FaultySegment,
) -> SqsLoop:
    function_env("ImpressionsFunction")
    # Each attempt gives up after the shortest timeout the client allows; hangs last longer.
    monkeypatch.setenv("SEGMENT_REQUEST_TIMEOUT", "0.5")
    for name, key in WRITE_KEYS.items():
        put_config(
            f"outbound/{name}",
            {"environments": ["Production"], "identities": {"user": "userId"}, "endpoint": segment.endpoint},
        )
        put_secret(f"outbound/{name}", key)
    resources = load_template()["Resources"]
    batch_size = resources["ImpressionsFunction"]["Properties"]["Events"]["Impressions"]["Properties"][
        "BatchSize"
    ]
    return SqsLoop(stack.queues["ImpressionsQueue"], stack.queue_arns["ImpressionsQueue"], int(batch_size))


def test_faults_and_an_outage_lose_nothing(
    queue: SqsLoop, segment: FaultySegment, clock: VirtualClock, stack: Stack, lambda_context: Any
) -> None:
    max_receive_count, visibility_timeout = redrive_settings(load_template()["Resources"]["ImpressionsQueue"])
    timeout = float(load_template()["Resources"]["ImpressionsFunction"]["Properties"]["Timeout"])
    assert max_receive_count > OUTAGE_ROUNDS + 2  # the scenario stays inside the redrive budget

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        return dict(app.lambda_handler(event, clock.context(lambda_context, timeout)))

    first_half, second_half = range(IMPRESSIONS // 2), range(IMPRESSIONS // 2, IMPRESSIONS)
    started = time.monotonic()
    queue.send(bodies(first_half))
    queue.round(invoke)  # faults only

    segment.outage = True
    queue.send(bodies(second_half))
    for _ in range(OUTAGE_ROUNDS):
        outage = queue.round(invoke)
        assert outage.failed == outage.received  # nothing gets through an outage

    segment.outage = False
    recovered = time.monotonic()
    drain_rounds = 0
    while queue.approximate_messages() and drain_rounds < max_receive_count:
        queue.round(invoke)
        drain_rounds += 1
    drained = time.monotonic()

    expected = {(key, f"user-{n}") for key in WRITE_KEYS.values() for n in range(IMPRESSIONS)}
    received = [
        (key, message["messageId"], message["userId"])
        for key in WRITE_KEYS.values()
        for message in segment.messages_for(key)
    ]
    distinct = {(key, message_id) for key, message_id, _ in received}
    dead_letters = queue.approximate_messages(stack.queues["ImpressionsDeadLetterQueue"])
    requests = segment.requests

    assert queue.approximate_messages() == 0
    assert dead_letters == 0
    assert {(key, user) for key, _, user in received} == expected
    assert len(distinct) == len(expected)
    assert segment.injected["outage_503"] > 0
    assert segment.injected["500"] > 0

    scale.record(
        "segment_faults",
        {
            "impressions_sent": IMPRESSIONS,
            "workspaces": len(WRITE_KEYS),
            "segment_messages_expected": len(expected),
            "distinct_message_ids_received": len(distinct),
            "duplicates_by_message_id": len(received) - len(distinct),
            "dlq_messages": dead_letters,
            "segment_requests": len(requests),
            "faults_injected": dict(segment.injected),
            "sqs_rounds": len(queue.rounds),
            "invocations": sum(r.invocations for r in queue.rounds),
            "sqs_redeliveries": sum(r.failed for r in queue.rounds),
            "outage_rounds": OUTAGE_ROUNDS,
            "drain_rounds_after_recovery": drain_rounds,
            "drain_seconds_after_recovery": round(drained - recovered, 2),
            "visibility_timeout_seconds": visibility_timeout,
            "max_receive_count": max_receive_count,
            "retry_wait_seconds_virtual": round(clock.slept, 1),
            "wall_seconds": round(drained - started, 2),
        },
    )
