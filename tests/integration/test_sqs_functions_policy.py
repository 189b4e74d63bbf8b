"""The impressions and last-treatments functions' IAM policies allow the AWS calls they make, and
nothing they never make: each call is matched to an Allow statement by action and resource ARN."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from shared import aws, config
from tests.conftest import put_config, put_secret
from tests.integration.policy_support import (
    RawCall,
    authorised_as,
    statements,
    unauthorised,
    unused,
)
from tests.integration.sqs_events import event, receive_event

WRITE_KEY = "wk-production"


@pytest.fixture
def sink() -> Iterator[SegmentSink]:
    with SegmentSink(write_keys={WRITE_KEY}) as server:
        yield server


@pytest.fixture
def context(lambda_context: Any) -> Any:
    end = time.monotonic() + 30.0
    lambda_context.get_remaining_time_in_millis = lambda: int((end - time.monotonic()) * 1000)
    return lambda_context


def impression(split: str, treatment: str) -> dict[str, Any]:
    return {
        "key": "user-1",
        "split": split,
        "environmentName": "Production",
        "treatment": treatment,
        "time": 1_795_483_041_109,
        "label": "default rule",
        "splitVersionNumber": 1,
    }


def test_impressions_and_last_treatments_functions_make_exactly_the_calls_their_policies_allow(
    stack: Stack,
    function_env: Callable[[str], dict[str, str]],
    sink: SegmentSink,
    context: Any,
    calls: list[RawCall],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    function_env("LastTreatmentsFunction")
    function_env("ImpressionsFunction")
    monkeypatch.setenv("SEND_MARGIN_MS", "500")
    from functions.impressions import app as impressions_app
    from functions.last_treatments import app as last_treatments_app

    last_treatments_app.last_treatments.forget()
    document = {
        "environments": ["Production"],
        "identities": {"user": "userId"},
        "endpoint": sink.endpoint,
        "computedTraits": {"enabled": True},
    }
    put_config("outbound/production", document)
    put_secret("outbound/production", WRITE_KEY)

    # A good message (track calls, last treatments forwarded) and a bad one (the dead-letter queue).
    good = json.dumps([impression("f", "on"), impression("g", "off")])
    calls.clear()
    answer = impressions_app.lambda_handler(event(good, "not json"), context)
    assert answer == {"batchItemFailures": []}
    impressions_calls = authorised_as(calls)

    config.clear_caches()  # another container: configs and write keys are read again
    aws.reset_clients()
    queue_url = stack.queues["LastTreatmentsQueue"]
    forwarded = receive_event(queue_url, stack.queue_arns["LastTreatmentsQueue"])
    assert forwarded["Records"]
    # And one that is not a forward at all: the dead-letter queue.
    forwarded["Records"] += event("not a forward")["Records"]
    calls.clear()
    assert last_treatments_app.lambda_handler(forwarded, context) == {"batchItemFailures": []}
    last_treatments_calls = authorised_as(calls)
    assert sorted(m["type"] for m in sink.messages) == ["identify", "identify", "track", "track"]

    for function, used in (
        ("ImpressionsFunction", impressions_calls),
        ("LastTreatmentsFunction", last_treatments_calls),
    ):
        allowed = statements(stack, function)
        assert unauthorised(used, allowed) == [], function
        assert unused(used, allowed) == [], function
