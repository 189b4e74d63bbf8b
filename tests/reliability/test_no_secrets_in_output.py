"""No secret, write key or FME key in any log line, answer, metric or dead letter of any handler.

Each handler runs its success paths and its failure paths (wrong credentials, refused keys,
dependency failures, bad input) with logging at DEBUG; everything it wrote — Powertools log lines,
standard-library log records, EMF metrics on stdout, HTTP answers, dead-letter and failure-queue
messages — is searched for every secret in plain and in Basic-auth form.
"""

from __future__ import annotations

import base64
import copy
import functools
import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from fme_bridge.fme_sink import FmeSink
from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from shared import aws, config
from shared.http_retry import Deadline
from shared.outbound import batch
from tests.conftest import load_event, put_config, put_secret
from tests.delivery_support import ADMIN_KEY, SDK_KEY, connect, event_item, stream_event, stream_record
from tests.integration.ingest_support import SECRET, Webhook, segment_message, signature
from tests.integration.sqs_events import event as sqs_event
from tests.reliability.faults import DynamoDbFaults, VirtualClock
from tests.reliability.test_segment_faults import impression

WRITE_KEY = "wk-live-8f1e2d3c4b5a6978"
REFUSED_WRITE_KEY = "wk-revoked-0a9b8c7d6e5f"
WRONG_SDK_KEY = "sdk-key-revoked-1122334455"
PROFILES_SECRET = "profiles-secret-4e5f6a7b8c"
SECRETS = [SECRET, WRITE_KEY, REFUSED_WRITE_KEY, SDK_KEY, ADMIN_KEY, WRONG_SDK_KEY, PROFILES_SECRET]


def forms(secret: str) -> list[str]:
    return [secret, base64.b64encode(f"{secret}:".encode()).decode()]


class Output:
    """Everything the handlers wrote or answered."""

    def __init__(self) -> None:
        self.streams: list[io.StringIO] = []
        self.texts: list[str] = []

    def add(self, value: Any) -> None:
        self.texts.append(value if isinstance(value, str) else json.dumps(value, default=str))

    def all(self) -> str:
        return "\n".join([*self.texts, *(s.getvalue() for s in self.streams)])


@pytest.fixture
def output(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[Output]:
    from functions.delivery import app as delivery
    from functions.impressions import app as impressions
    from functions.ingest import app as ingest
    from functions.profiles import app as profiles

    captured = Output()
    levels: dict[Any, int] = {}
    for module in (ingest, impressions, delivery, profiles):
        handler = module.logger.registered_handler
        stream = io.StringIO()
        monkeypatch.setattr(handler, "stream", stream)
        levels[module] = module.logger.log_level
        module.logger.setLevel("DEBUG")
        captured.streams.append(stream)
    caplog.set_level(logging.DEBUG, logger="shared")
    caplog.set_level(logging.DEBUG, logger="functions")
    caplog.set_level(logging.INFO)
    yield captured
    for module, level in levels.items():
        module.logger.setLevel(level)


def run_ingest(function_env: Callable[[str], dict[str, str]], context: Any, out: Output) -> None:
    webhook = Webhook.create(function_env, context)
    body = segment_message("track")
    raw = json.dumps(body).encode()
    for options in (
        {},
        {"headers": {"authorization": f"Basic {base64.b64encode(f'{SECRET}:'.encode()).decode()}"}},
        {"headers": {"x-signature": signature(SECRET, raw)}},
        {"headers": {"authorization": "Bearer wrong"}},
        {"headers": {"authorization": "Basic !!!"}},
        {"headers": {"authorization": f"Bearer {SECRET}"}, "connection": "unknown-connection"},
        {"headers": {"authorization": f"Bearer {SECRET}", "x-signature": "00" * 20}},
    ):
        out.add(webhook.post(body, **options).__dict__)
    out.add(webhook.post(b"{not json").__dict__)
    out.add(webhook.post(b"\xff\xfe", base64_encoded=True).__dict__)
    faults = DynamoDbFaults(throttle=1.0)
    faults.install(aws.client("dynamodb"))
    out.add(webhook.post({**body, "messageId": "throttled"}).__dict__)
    faults.enabled = False


def run_impressions(
    stack: Stack,
    function_env: Callable[[str], dict[str, str]],
    context: Any,
    out: Output,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from functions.impressions import app

    function_env("ImpressionsFunction")
    clock = VirtualClock()  # retry waits pass virtually
    monkeypatch.setattr(batch, "Deadline", functools.partial(Deadline, sleep=clock.sleep))
    context = clock.context(context, 60)
    with SegmentSink(write_keys={WRITE_KEY}) as sink:
        for name, key in (("live", WRITE_KEY), ("revoked", REFUSED_WRITE_KEY)):
            put_config(
                f"outbound/{name}",
                {"environments": ["Production"], "identities": {"user": "userId"}, "endpoint": sink.endpoint},
            )
            put_secret(f"outbound/{name}", key)
        sink.fail_next(2, status=500)
        records = sqs_event(json.dumps(impression(1, padding="")), json.dumps([impression(2, padding="")]))
        out.add(app.lambda_handler(records, context))
        sink.fail_fraction(1.0, status=503)
        out.add(app.lambda_handler(sqs_event(json.dumps(impression(3, padding=""))), context))
    sqs = boto3.client("sqs", region_name="us-east-1")
    letters = sqs.receive_message(
        QueueUrl=stack.queues["ImpressionsDeadLetterQueue"],
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    assert letters  # the revoked key's impressions were dead-lettered, with Segment's reason
    out.add(letters)


def run_delivery(
    stack: Stack, function_env: Callable[[str], dict[str, str]], context: Any, out: Output
) -> None:
    from functions.delivery import app

    function_env("DeliveryFunction")
    app.delivery.cache_clear()
    with FmeSink(sdk_keys=[SDK_KEY], admin_keys=[ADMIN_KEY]) as sink:
        connect(sink, "webshop")
        connect(sink, "revoked-shop", keys={"sdkKey": WRONG_SDK_KEY})
        table = stack.tables["EventsTable"]
        records = [
            stream_record(table, event_item("user-1", connection_id="webshop")),
            stream_record(table, event_item("user-2", connection_id="revoked-shop")),
        ]
        out.add(app.lambda_handler(stream_event(*records), context))
    sqs = boto3.client("sqs", region_name="us-east-1")
    out.add(sqs.receive_message(QueueUrl=stack.queues["DeliveryFailureQueue"], MaxNumberOfMessages=10))


def run_profiles(function_env: Callable[[str], dict[str, str]], context: Any, out: Output) -> None:
    from functions.profiles import app

    function_env("ProfilesFunction")
    put_secret("profiles", PROFILES_SECRET)
    for authorization in (f"Bearer {PROFILES_SECRET}", "Bearer wrong", PROFILES_SECRET, None):
        event = copy.deepcopy(load_event("profiles_get.json"))
        if authorization is None:
            event["headers"].pop("authorization", None)
        else:
            event["headers"]["authorization"] = authorization
        out.add(app.lambda_handler(event, context))


def test_no_secret_anywhere_in_what_the_handlers_write(
    stack: Stack,
    function_env: Callable[[str], dict[str, str]],
    lambda_context: Any,
    output: Output,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    botocore_waits: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_ingest(function_env, lambda_context, output)
    run_impressions(stack, function_env, lambda_context, output, monkeypatch)
    config.clear_caches()
    run_delivery(stack, function_env, lambda_context, output)
    run_profiles(function_env, lambda_context, output)

    stdout, stderr = capsys.readouterr()
    everything = "\n".join([output.all(), caplog.text, stdout, stderr])
    assert '"_aws"' in everything  # EMF metrics were captured
    assert "webhook processed" in everything  # and the handlers' log lines
    assert "dead-lettered" in everything
    leaks = [form for secret in SECRETS for form in forms(secret) if form in everything]
    assert not leaks
