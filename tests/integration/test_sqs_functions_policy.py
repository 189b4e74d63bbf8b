"""The impressions and last-treatments functions' IAM policies allow the AWS calls they make, and
nothing they never make: each call is matched to an Allow statement by action and resource ARN."""

from __future__ import annotations

import fnmatch
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import botocore.client
import pytest

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack, load_template
from shared import aws, config
from tests.conftest import put_config, put_secret
from tests.integration.sqs_events import event, receive_event

WRITE_KEY = "wk-production"
REGION, ACCOUNT = "us-east-1", "123456789012"
# IAM authorises some API operations as another action.
AUTHORISED_AS = {"sqs:SendMessageBatch": "sqs:SendMessage"}

Call = tuple[str, str]  # (IAM action, resource ARN)
RawCall = tuple[str, str, dict[str, Any]]  # (service, operation, parameters)


def statements(stack: Stack, function: str) -> list[tuple[set[str], list[str]]]:
    """The function's Allow statements as (actions, resource ARN patterns), intrinsics resolved."""
    out = []
    for policy in stack.resolve(load_template()["Resources"][function]["Properties"]["Policies"]):
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow", statement
            actions, resources = statement["Action"], statement["Resource"]
            actions = actions if isinstance(actions, list) else [actions]
            resources = resources if isinstance(resources, list) else [resources]
            out.append((set(actions), [str(stack.resolve(r)) for r in resources]))
    return out


def resource_arn(service: str, params: dict[str, Any]) -> str:
    if service == "dynamodb":
        return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{params['TableName']}"
    if service == "sqs":
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{params['QueueUrl'].rsplit('/', 1)[-1]}"
    if service == "ssm":
        return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{params.get('Path') or params['Name']}"
    if service == "secretsmanager":
        # Secrets Manager appends six random characters to a secret's name in its ARN.
        return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{params['SecretId']}-AbCdEf"
    raise AssertionError(f"unexpected AWS service {service}")


def authorised_as(calls: list[RawCall]) -> list[Call]:
    """What IAM checks for each call: (action, resource ARN)."""
    out = []
    for service, operation, params in calls:
        action = f"{service}:{operation}"
        out.append((AUTHORISED_AS.get(action, action), resource_arn(service, params)))
    return out


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[RawCall]:
    """Every AWS call made through botocore, from any thread."""
    made: list[RawCall] = []
    lock = threading.Lock()
    original = botocore.client.BaseClient._make_api_call

    def recording(self: Any, operation: str, params: dict[str, Any]) -> Any:
        with lock:
            made.append((self.meta.service_model.endpoint_prefix, operation, dict(params)))
        return original(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return made


def unauthorised(used: list[Call], allowed: list[tuple[set[str], list[str]]]) -> list[Call]:
    return [
        (action, arn)
        for action, arn in used
        if not any(
            action in actions and any(fnmatch.fnmatchcase(arn, r) for r in resources)
            for actions, resources in allowed
        )
    ]


def unused(used: list[Call], allowed: list[tuple[set[str], list[str]]]) -> list[tuple[str, str]]:
    return [
        (action, resource)
        for actions, resources in allowed
        for action in sorted(actions)
        for resource in resources
        if not any(a == action and fnmatch.fnmatchcase(arn, resource) for a, arn in used)
    ]


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
