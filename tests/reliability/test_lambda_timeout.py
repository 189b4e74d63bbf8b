"""The impressions function stopped mid-batch: SQS re-delivers and the work completes, once.

Two ways a batch is cut short: the remaining time runs out while Segment hangs (the handler sees
its deadline and reports what it did not deliver), and the runtime kills the function before it
answers (nothing is reported, so the whole batch comes back after the visibility timeout).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from functions.impressions import app
from shared.http_retry import Deadline
from shared.outbound import batch
from tests.conftest import put_config, put_secret
from tests.reliability import scale
from tests.reliability.faults import VirtualClock
from tests.reliability.sqs_loop import SqsLoop
from tests.reliability.test_segment_faults import bodies

WRITE_KEY = "wk-timeout"
IMPRESSIONS = scale.count(200, 3000)


@pytest.fixture
def sink() -> Any:
    with SegmentSink(write_keys={WRITE_KEY}) as server:
        yield server


@pytest.fixture
def loop(
    stack: Stack,
    function_env: Callable[[str], dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    sink: SegmentSink,
) -> SqsLoop:
    function_env("ImpressionsFunction")
    monkeypatch.setenv("SEGMENT_REQUEST_TIMEOUT", "0.5")
    monkeypatch.setenv("SEGMENT_CONCURRENCY", "1")  # one request at a time: a cut falls between them
    put_config(
        "outbound/production",
        {"environments": ["Production"], "identities": {"user": "userId"}, "endpoint": sink.endpoint},
    )
    put_secret("outbound/production", WRITE_KEY)
    return SqsLoop(stack.queues["ImpressionsQueue"], stack.queue_arns["ImpressionsQueue"], 100)


def distinct_and_duplicates(sink: SegmentSink) -> tuple[int, int]:
    messages = sink.messages_for(WRITE_KEY)
    distinct = {m["messageId"] for m in messages}
    return len(distinct), len(messages) - len(distinct)


def test_deadline_reached_mid_batch(
    loop: SqsLoop, sink: SegmentSink, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = VirtualClock()
    monkeypatch.setattr(batch, "Deadline", functools.partial(Deadline, sleep=clock.sleep))
    loop.send(bodies(range(IMPRESSIONS), padding=""))
    # Segment hangs past the client's timeout on every other request of the first round, and
    # the function has only a few seconds left: the handler runs out of time mid-batch.
    sink.fail_fraction(0.5, kind="timeout", hang_seconds=0.7, seed=3)

    def short_lived(event: dict[str, Any]) -> dict[str, Any]:
        # A quarter of a short budget is kept back for dead letters: about 0.2 s is left to send.
        return dict(app.lambda_handler(event, clock.context(lambda_context, 0.27)))

    first = loop.round(short_lived)
    assert first.failed > 0  # some messages were cut off by the deadline

    sink.fail_fraction(0)
    while loop.approximate_messages() and len(loop.rounds) < 5:
        loop.round(lambda event: dict(app.lambda_handler(event, clock.context(lambda_context, 60))))
    distinct, duplicates = distinct_and_duplicates(sink)
    assert loop.approximate_messages() == 0
    assert distinct == IMPRESSIONS
    scale.record(
        "impressions_deadline_mid_batch",
        {
            "impressions": IMPRESSIONS,
            "messages_reported_failed_at_deadline": first.failed,
            "distinct_message_ids_received": distinct,
            "duplicates_by_message_id": duplicates,
            "rounds": len(loop.rounds),
        },
    )


def test_killed_before_answering(loop: SqsLoop, sink: SegmentSink, lambda_context: Any) -> None:
    loop.send(bodies(range(IMPRESSIONS), padding=""))
    invocations = 0

    def killed_every_other_time(event: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal invocations
        invocations += 1
        response = dict(app.lambda_handler(event, lambda_context))
        return None if invocations % 2 else response  # its work done, its answer lost

    first = loop.round(killed_every_other_time)
    assert first.killed > 0
    while loop.approximate_messages() and len(loop.rounds) < 5:
        loop.round(lambda event: dict(app.lambda_handler(event, lambda_context)))
    distinct, duplicates = distinct_and_duplicates(sink)
    assert loop.approximate_messages() == 0
    assert distinct == IMPRESSIONS
    assert duplicates > 0  # what the killed invocations had sent was sent again, with the same ids
    scale.record(
        "impressions_killed_before_answering",
        {
            "impressions": IMPRESSIONS,
            "invocations_killed": first.killed,
            "distinct_message_ids_received": distinct,
            "duplicates_by_message_id": duplicates,
            "rounds": len(loop.rounds),
        },
    )
