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
from shared.sqs_batches import MAX_CALL_BYTES


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
    assert stored == f"{reason[:MAX_REASON_CHARS]}… ({len(reason) - MAX_REASON_CHARS} more characters)"


@pytest.mark.parametrize("over", [0, 1])
def test_a_reason_is_cut_only_past_the_limit(sqs: Any, over: int) -> None:
    queue = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    reason = "r" * (MAX_REASON_CHARS + over)
    assert send_dead_letters(queue, [DeadLetter(0, "m-1", "[]", ("invalid_json",), reason, 1)]) == {}
    [message] = received(sqs, queue)
    stored = message["MessageAttributes"]["reason"]["StringValue"]
    assert stored == (f"{reason[:-1]}… (1 more characters)" if over else reason)


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


def test_a_letter_carries_its_codes_reason_source_and_count_as_attributes(sqs: Any) -> None:
    queue = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    letters = [
        DeadLetter(0, "m-1", "[]", ("no_matching_config", "message_too_large"), "impression 0: …", 3),
        DeadLetter(1, "", "{}", ("invalid_json",), "", 1),
    ]
    assert send_dead_letters(queue, letters) == {}
    first, second = sorted(received(sqs, queue), key=lambda m: m["Body"])
    assert first["MessageAttributes"] == {
        "errorCode": {"DataType": "String", "StringValue": "no_matching_config,message_too_large"},
        "reason": {"DataType": "String", "StringValue": "impression 0: …"},
        "sourceMessageId": {"DataType": "String", "StringValue": "m-1"},
        "failedImpressions": {"DataType": "Number", "StringValue": "3"},
    }
    # SQS refuses an empty attribute value.
    assert second["MessageAttributes"]["reason"]["StringValue"] == "-"
    assert second["MessageAttributes"]["sourceMessageId"]["StringValue"] == "-"


@pytest.mark.parametrize(("extra", "calls"), [(0, [2]), (1, [1, 1])])
def test_a_call_holds_what_sqs_counts_utf8_bytes_and_attribute_names_included(
    sqs: Any, extra: int, calls: list[int]
) -> None:
    """SQS counts a message's body and each attribute's name, data type and value, in UTF-8 bytes."""
    queue = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    seen: list[int] = []
    sqs.meta.events.register(
        "before-parameter-build.sqs.SendMessageBatch",
        lambda params, **_: seen.append(len(params["Entries"])),
    )
    attributes = sum(
        len(name) + len("String") + len(value.encode())  # "Number" is as long
        for name, value in (
            ("errorCode", "invalid_json"),
            ("reason", "…"),
            ("sourceMessageId", "m-0"),
            ("failedImpressions", "1"),
        )
    )
    body = "é" * ((MAX_CALL_BYTES // 2 - attributes) // 2)  # two bytes each
    assert 2 * (len(body.encode()) + attributes) == MAX_CALL_BYTES
    letters = [DeadLetter(n, f"m-{n}", body + "x" * extra * n, ("invalid_json",), "…", 1) for n in range(2)]
    assert send_dead_letters(queue, letters) == {}
    assert seen == calls
    assert len(received(sqs, queue)) == 2


def test_an_entry_the_queue_refuses_is_reported_for_its_own_record(sqs: Any) -> None:
    """Records 4, 7 and 9 go in one call; the queue refuses the second entry: record 7 is retried."""
    queue = sqs.create_queue(QueueName="dlq")["QueueUrl"]

    def refuse_the_second(params: dict[str, Any], **_: Any) -> None:
        params["Entries"][1]["DelaySeconds"] = 9999  # over SQS's 900: this entry alone fails

    sqs.meta.events.register("before-parameter-build.sqs.SendMessageBatch", refuse_the_second)
    letters = [DeadLetter(r, f"m-{r}", f"body {r}", ("invalid_json",), "r", 1) for r in (4, 7, 9)]
    assert send_dead_letters(queue, letters) == {7: "dead-letter queue: InvalidParameterValue"}
    assert sorted(m["Body"] for m in received(sqs, queue)) == ["body 4", "body 9"]
