"""Dead letters: every letter reaches the queue with its reason, within SQS's size limits."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from shared.outbound import dead_letters
from shared.outbound.dead_letters import MAX_REASON_CHARS, retries_exhausted, send_dead_letters
from shared.outbound.delivery import DeadLetter


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Any:
    with mock_aws():
        client = boto3.client("sqs", region_name="us-east-1")
        monkeypatch.setattr(dead_letters, "aws", SimpleNamespace(client=lambda service: client))
        yield client


def received(sqs: Any, queue: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while got := sqs.receive_message(
        QueueUrl=queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", []):
        out += got
        for message in got:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return out


def test_a_long_reason_is_cut_with_a_count_of_the_rest(sqs: Any) -> None:
    queue = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    reason = "; ".join(f"impression {n}: no_matching_config: no outbound config matches" for n in range(500))
    letter = DeadLetter(0, "m-1", "[]", ("no_matching_config",), reason, 500)
    assert send_dead_letters(queue, [letter]) == {}
    [message] = received(sqs, queue)
    stored = message["MessageAttributes"]["reason"]["StringValue"]
    assert stored.startswith(reason[:MAX_REASON_CHARS])
    assert stored.endswith(f"… ({len(reason) - MAX_REASON_CHARS} more characters)")


def test_calls_are_packed_with_the_attributes_counted(sqs: Any) -> None:
    """Two letters whose bodies fit one call together, but not with their attributes, go in two."""
    queue = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    calls: list[int] = []
    sqs.meta.events.register(
        "before-parameter-build.sqs.SendMessageBatch",
        lambda params, **_: calls.append(len(params["Entries"])),
    )
    body = "x" * (128 * 1024 - 100)
    letters = [retries_exhausted(n, f"m-{n}", body, 5, "Segment answered 503 " * 20, 1) for n in range(2)]
    assert send_dead_letters(queue, letters) == {}
    assert calls == [1, 1]
    assert sorted(m["MessageAttributes"]["sourceMessageId"]["StringValue"] for m in received(sqs, queue)) == [
        "m-0",
        "m-1",
    ]
