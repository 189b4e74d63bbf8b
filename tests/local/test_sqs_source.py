"""The local SQS event source behaves like Lambda's: batching, partial batch responses, redrive."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from fme_bridge.local import sqs_source
from fme_bridge.local.runtime import LocalFunction
from fme_bridge.local.sqs_source import (
    MAX_PAYLOAD_BYTES,
    SqsMapping,
    SqsPoller,
    failed_message_ids,
    mappings_from_template,
)
from fme_bridge.template import Stack, load_template

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _no_long_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqs_source, "_POLL_SECONDS", 0)


class RecordingHandler:
    """A stand-in function: records each event and fails the messages whose body says so."""

    def __init__(self, raise_error: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.raise_error = raise_error

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.events.append(event)
        if self.raise_error:
            raise RuntimeError("boom")
        failures = [
            {"itemIdentifier": r["messageId"]} for r in event["Records"] if json.loads(r["body"]).get("fail")
        ]
        return {"batchItemFailures": failures}


def impressions_mapping(stack: Stack, handler: RecordingHandler) -> SqsMapping:
    mappings = mappings_from_template(stack, lambda logical: LocalFunction(stack, logical, handler=handler))
    [mapping] = [m for m in mappings if m.function.logical_id == "ImpressionsFunction"]
    return mapping


def poller_for(stack: Stack, handler: RecordingHandler, **overrides: Any) -> SqsPoller:
    mapping = impressions_mapping(stack, handler)
    for name, value in overrides.items():
        setattr(mapping, name, value)
    return SqsPoller(mapping, boto3.client("sqs", region_name=REGION))


def queue_depth(url: str) -> int:
    attrs = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_every_sqs_event_source_of_the_template_is_polled(stack: Stack) -> None:
    mappings = mappings_from_template(
        stack, lambda logical: LocalFunction(stack, logical, handler=RecordingHandler())
    )
    assert {(m.function.logical_id, m.queue_url) for m in mappings} == {
        ("ImpressionsFunction", stack.queues["ImpressionsQueue"]),
        ("LastTreatmentsFunction", stack.queues["LastTreatmentsQueue"]),
    }


def test_mapping_follows_the_template(stack: Stack) -> None:
    mapping = impressions_mapping(stack, RecordingHandler())
    assert mapping.queue_url == stack.queues["ImpressionsQueue"]
    source = load_template()["Resources"]["ImpressionsFunction"]["Properties"]["Events"]["Impressions"][
        "Properties"
    ]
    expected = (source["BatchSize"], float(source["MaximumBatchingWindowInSeconds"]))
    assert (mapping.batch_size, mapping.batching_window_s) == expected
    assert mapping.report_batch_item_failures is True
    assert mapping.function.timeout_s == 60
    assert mapping.function.environment["DEAD_LETTER_QUEUE_URL"] == stack.queues["ImpressionsDeadLetterQueue"]


def test_an_sqs_event_that_leaves_its_settings_out_gets_lambdas_defaults(
    stack: Stack, template_copy: dict[str, Any]
) -> None:
    source = template_copy["Resources"]["ImpressionsFunction"]["Properties"]["Events"]["Impressions"]
    source["Properties"] = {"Queue": source["Properties"]["Queue"]}

    mapping = impressions_mapping(stack, RecordingHandler())
    assert (mapping.batch_size, mapping.batching_window_s, mapping.report_batch_item_failures) == (
        10,
        0.0,
        False,
    )


def test_records_are_shaped_like_lambdas_sqs_event(stack: Stack) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    sent = sqs.send_message(
        QueueUrl=stack.queues["ImpressionsQueue"],
        MessageBody='{"n": 1}',
        MessageAttributes={
            "source": {"DataType": "String", "StringValue": "sdk"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xffgz"},
        },
    )
    handler = RecordingHandler()
    poller = poller_for(stack, handler, batching_window_s=0)
    records = poller.collect_batch()
    poller.deliver(records)

    (record,) = handler.events[0]["Records"]
    assert record["body"] == '{"n": 1}'
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == stack.queue_arns["ImpressionsQueue"]
    assert record["awsRegion"] == REGION
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert {"SentTimestamp", "ApproximateFirstReceiveTimestamp"} <= set(record["attributes"])
    assert record["messageAttributes"]["source"] == {
        "stringValue": "sdk",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }
    # Binary values base64, as Lambda's event carries them.
    assert record["messageAttributes"]["blob"] == {
        "binaryValue": "AP9neg==",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "Binary",
    }
    assert record["md5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert record["md5OfBody"] == sent["MD5OfMessageBody"]
    assert record["receiptHandle"]
    assert record["messageId"]


def test_batch_fills_up_to_batch_size(stack: Stack) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    for n in range(25):
        sqs.send_message(QueueUrl=stack.queues["ImpressionsQueue"], MessageBody=json.dumps({"n": n}))
    poller = poller_for(stack, RecordingHandler(), batch_size=12, batching_window_s=0.5)
    assert len(poller.collect_batch()) == 12


def test_a_batch_closes_at_lambdas_6_mb_payload_and_the_rest_goes_in_the_next(stack: Stack) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    large = json.dumps({"blob": "x" * 240_000})
    # 14.4 MB in all: the second batch starts with what did not fit in the first, and closes too.
    for _ in range(60):
        sqs.send_message(QueueUrl=stack.queues["ImpressionsQueue"], MessageBody=large)
    handler = RecordingHandler()
    poller = poller_for(stack, handler, batch_size=100, batching_window_s=0.5)
    while poller.poll_once():
        pass

    sizes = [len(json.dumps(event).encode()) for event in handler.events]
    assert len(handler.events) == 3
    assert all(size <= MAX_PAYLOAD_BYTES for size in sizes), sizes
    assert sum(len(event["Records"]) for event in handler.events) == 60
    assert queue_depth(stack.queues["ImpressionsQueue"]) == 0


def test_partial_batch_response_deletes_only_the_successful_messages(stack: Stack) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    url = stack.queues["ImpressionsQueue"]
    for body in ({"n": 1}, {"n": 2, "fail": True}, {"n": 3}):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    poller = poller_for(stack, RecordingHandler(), batching_window_s=0)
    records = poller.collect_batch()
    failed = poller.deliver(records)

    assert len(records) == 3
    assert len(failed) == 1
    assert queue_depth(url) == 1  # the failed one waits for its visibility timeout


def test_a_raising_function_deletes_nothing(stack: Stack) -> None:
    url = stack.queues["ImpressionsQueue"]
    boto3.client("sqs", region_name=REGION).send_message(QueueUrl=url, MessageBody="{}")
    poller = poller_for(stack, RecordingHandler(raise_error=True), batching_window_s=0)
    poller.deliver(poller.collect_batch())
    assert queue_depth(url) == 1


def test_failed_messages_reach_the_dead_letter_queue_after_max_receive_count(stack: Stack) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    url = stack.queues["ImpressionsQueue"]
    # Make failed messages visible again at once, instead of after the template's 360 s.
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "0"})
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"fail": True}))
    handler = RecordingHandler()
    poller = poller_for(stack, handler, batching_window_s=0)

    for _ in range(10):
        records = poller.collect_batch()
        if records:
            poller.deliver(records)

    counts = [r["attributes"]["ApproximateReceiveCount"] for e in handler.events for r in e["Records"]]
    assert counts == ["1", "2", "3", "4", "5"]  # maxReceiveCount in template.yaml
    assert queue_depth(url) == 0
    dead = sqs.receive_message(QueueUrl=stack.queues["ImpressionsDeadLetterQueue"])["Messages"]
    assert json.loads(dead[0]["Body"]) == {"fail": True}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (None, set()),
        ({"batchItemFailures": []}, set()),
        ({"batchItemFailures": [{"itemIdentifier": "b"}]}, {"b"}),
        ({"batchItemFailures": [{"itemIdentifier": "zzz"}]}, {"a", "b"}),  # unknown id: whole batch
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, {"a", "b"}),
    ],
)
def test_batch_item_failures_are_read_as_lambda_reads_them(response: Any, expected: set[str]) -> None:
    assert failed_message_ids(response, [{"messageId": "a"}, {"messageId": "b"}]) == expected


def test_without_report_batch_item_failures_a_normal_return_deletes_all(stack: Stack) -> None:
    url = stack.queues["ImpressionsQueue"]
    boto3.client("sqs", region_name=REGION).send_message(QueueUrl=url, MessageBody='{"fail": true}')
    poller = poller_for(stack, RecordingHandler(), batching_window_s=0)
    poller.mapping = SqsMapping(**{**poller.mapping.__dict__, "report_batch_item_failures": False})
    poller.deliver(poller.collect_batch())
    assert queue_depth(url) == 0
