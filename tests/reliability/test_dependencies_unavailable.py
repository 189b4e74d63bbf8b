"""SSM and Secrets Manager unavailable: 503 (Segment retries), never 500 or 401; caches serve while fresh.

Three ways a service fails — throttling, a 500, no connection at all — for each of the two services
the webhook reads (the secret first, then the connection's config), on a cold container and on a
warm one. The impressions function, whose configs and write keys come from the same services,
reports every message for retry and dead-letters nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parameters import base as parameters_base

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from functions.impressions import app as impressions_app
from shared import aws, config
from tests.conftest import put_config, put_secret
from tests.integration.ingest_support import Webhook, segment_message
from tests.reliability.faults import AwsOutage
from tests.reliability.sqs_loop import SqsLoop
from tests.reliability.test_segment_faults import bodies

SERVICES = {"ssm": "AmazonSSM", "secretsmanager": "secretsmanager"}
MODES = ["throttled", "server", "unreachable"]
UNAVAILABLE = {
    "error": "unavailable",
    "message": "storage or configuration is temporarily unavailable; retry later",
}


class _Clock:
    """Powertools' parameter cache reads ``datetime.now()``; this one can be moved forward."""

    offset = timedelta()

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> type[_Clock]:
        clock = cls

        class ShiftedDatetime(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return datetime.now(tz) + clock.offset

        monkeypatch.setattr(parameters_base, "datetime", ShiftedDatetime)
        cls.offset = timedelta()
        return cls


@pytest.fixture
def webhook(aws_outage: AwsOutage, webhook: Webhook) -> Webhook:
    """The shared webhook, created after the outage is installed: it must come before any client."""
    return webhook


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("service", SERVICES)
def test_cold_container_answers_503_then_recovers(
    webhook: Webhook, aws_outage: AwsOutage, botocore_waits: list[float], service: str, mode: str
) -> None:
    aws_outage.down, aws_outage.mode = {SERVICES[service]}, mode
    # While Secrets Manager is down, an unknown connection cannot be told apart either: 503 too.
    connections = ["acme-production"] + (["no-such-connection"] if service == "secretsmanager" else [])
    for connection in connections:
        waited = len(botocore_waits)
        answer = webhook.post(segment_message("track"), connection=connection)
        assert answer.status == 503, answer
        assert answer.body == UNAVAILABLE
        assert answer.headers["Retry-After"]
        # Standard retries back off at most 1 + 2 + 4 s: the 503 comes inside the function's 9 s.
        assert sum(botocore_waits[waited:]) <= 7
    # Each lookup gives up after the bounded client's retries (4 attempts; botocore's default
    # client makes 5, with 60 s timeouts).
    assert sum(aws_outage.refused.values()) == 4 * len(connections)  # docs/inbound.md: 3 retries

    aws_outage.down = set()
    answer = webhook.post(segment_message("track"))
    assert answer.status == 200
    assert answer.body["stored"] == 1


def test_cached_config_serves_while_fresh_then_503(
    webhook: Webhook, aws_outage: AwsOutage, botocore_waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock.install(monkeypatch)
    assert webhook.post(segment_message("track", messageId="m-1")).status == 200  # warms the caches

    aws_outage.down = set(SERVICES.values())
    answer = webhook.post(segment_message("track", messageId="m-2"))
    assert answer.status == 200  # secret and config from the container's cache
    assert not aws_outage.refused

    clock.offset = timedelta(seconds=config.cache_seconds() - 1)  # the cache's whole life
    assert webhook.post(segment_message("track", messageId="m-2b")).status == 200
    assert not aws_outage.refused

    clock.offset = timedelta(seconds=config.cache_seconds() + 1)
    answer = webhook.post(segment_message("track", messageId="m-3"))
    assert answer.status == 503
    assert answer.body == UNAVAILABLE

    aws_outage.down = set()
    assert webhook.post(segment_message("track", messageId="m-3")).body["stored"] == 1


def test_the_clients_are_bounded() -> None:
    """Configs and secrets are read with the same short timeouts and retries as every other client
    (docs/inbound.md: 2 s to connect, 5 s to read, 3 retries)."""
    clients = [config._provider(kind).client for kind in ("ssm", "secret")] + [aws.client("dynamodb")]
    for client in clients:
        client_config = client.meta.config
        assert (client_config.connect_timeout, client_config.read_timeout) == (2, 5)
        assert client_config.retries["mode"] == "standard"
        # botocore reads max_attempts as retries and keeps the attempts in all
        assert client_config.retries["total_max_attempts"] == 4


@pytest.mark.parametrize("service", SERVICES)
def test_impressions_are_retried_not_dead_lettered(
    aws_outage: AwsOutage,
    botocore_waits: list[float],
    stack: Stack,
    function_env: Callable[[str], dict[str, str]],
    lambda_context: Any,
    service: str,
) -> None:
    function_env("ImpressionsFunction")
    with SegmentSink(write_keys={"wk-outage"}) as sink:
        put_config(
            "outbound/production",
            {"environments": ["Production"], "identities": {"user": "userId"}, "endpoint": sink.endpoint},
        )
        put_secret("outbound/production", "wk-outage")
        loop = SqsLoop(stack.queues["ImpressionsQueue"], stack.queue_arns["ImpressionsQueue"], 100)
        loop.send(bodies(range(40), padding=""))
        aws_outage.down, aws_outage.mode = {SERVICES[service]}, "server"

        def invoke(sqs_event: dict[str, Any]) -> dict[str, Any]:
            return dict(impressions_app.lambda_handler(sqs_event, lambda_context))

        down = loop.round(invoke)
        assert down.failed == down.received > 0
        assert not sink.messages

        aws_outage.down = set()
        config.clear_caches()  # the cache window passes
        loop.round(invoke)
        assert loop.approximate_messages() == 0
        assert loop.approximate_messages(stack.queues["ImpressionsDeadLetterQueue"]) == 0
        assert len({m["messageId"] for m in sink.messages}) == 40
