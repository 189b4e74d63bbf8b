"""The local DynamoDB Streams event source behaves like Lambda's: order, filters, partial failures."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config

from fme_bridge.local import stream_source
from fme_bridge.local.runtime import LocalFunction
from fme_bridge.local.stream_source import (
    StreamMapping,
    StreamPoller,
    first_failed_index,
    mappings_from_template,
)
from fme_bridge.template import Stack

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_source, "_RETRY_BACKOFF_SECONDS", (0.0,))


class FlakyHandler:
    """Records batches; fails the records whose key is in ``failing`` while ``failures_left`` lasts."""

    def __init__(
        self, failing: set[str] = frozenset(), failures_left: int = 1, raise_error: bool = False
    ) -> None:
        self.batches: list[list[str]] = []
        self.events: list[dict[str, Any]] = []
        self.failing = set(failing)
        self.failures_left = failures_left
        self.raise_error = raise_error

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.events.append(event)
        keys = [r["dynamodb"]["Keys"]["sk"]["S"] for r in event["Records"]]
        self.batches.append(keys)
        if self.failures_left <= 0:
            return {"batchItemFailures": []}
        if self.raise_error:
            self.failures_left -= 1
            raise RuntimeError("boom")
        failed = [r for r in event["Records"] if r["dynamodb"]["Keys"]["sk"]["S"] in self.failing]
        if failed:
            self.failures_left -= 1
        return {"batchItemFailures": [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in failed]}


def make_poller(stack: Stack, handler: FlakyHandler, **settings: Any) -> StreamPoller:
    mapping = StreamMapping(
        function=LocalFunction(stack, "IngestFunction", handler=handler),
        table_name=stack.tables["EventsTable"],
        **{"report_batch_item_failures": True, **settings},
    )
    return StreamPoller(
        mapping,
        boto3.client("dynamodb", region_name=REGION),
        # moto does not serve the account-based endpoints newer botocore picks for Streams.
        boto3.client(
            "dynamodbstreams", region_name=REGION, config=Config(account_id_endpoint_mode="disabled")
        ),
        boto3.client("sqs", region_name=REGION),
    )


def put(stack: Stack, *sks: str, kind: str = "event") -> None:
    table = boto3.resource("dynamodb", region_name=REGION).Table(stack.tables["EventsTable"])
    for sk in sks:
        table.put_item(Item={"pk": "Production#user#u1", "sk": sk, "kind": kind})


def drain(poller: StreamPoller, rounds: int = 20) -> None:
    for _ in range(rounds):
        if not poller.poll_once():
            return


def test_records_are_shaped_like_lambdas_stream_event_and_latest_skips_older_items(stack: Stack) -> None:
    put(stack, "before")
    handler = FlakyHandler(failures_left=0)
    poller = make_poller(stack, handler)
    put(stack, "a", "b")
    drain(poller)

    assert handler.batches == [["a", "b"]]
    record = handler.events[0]["Records"][0]
    assert record["eventName"] == "INSERT"
    assert record["eventSource"] == "aws:dynamodb"
    assert record["eventSourceARN"].startswith(f"arn:aws:dynamodb:{REGION}:")
    assert "/stream/" in record["eventSourceARN"]
    assert record["dynamodb"]["NewImage"]["kind"] == {"S": "event"}
    assert isinstance(record["dynamodb"]["ApproximateCreationDateTime"], int)


def test_trim_horizon_starts_at_the_oldest_record(stack: Stack) -> None:
    put(stack, "before")
    handler = FlakyHandler(failures_left=0)
    drain(make_poller(stack, handler, starting_position="TRIM_HORIZON"))
    assert handler.batches == [["before"]]


def test_batch_size_splits_batches_in_order(stack: Stack) -> None:
    handler = FlakyHandler(failures_left=0)
    poller = make_poller(stack, handler, batch_size=2)
    put(stack, "a", "b", "c", "d", "e")
    drain(poller)
    assert handler.batches == [["a", "b"], ["c", "d"], ["e"]]


def test_filter_criteria_discard_records_that_match_no_pattern(stack: Stack) -> None:
    pattern = {"eventName": ["INSERT"], "dynamodb": {"NewImage": {"kind": {"S": ["event"]}}}}
    handler = FlakyHandler(failures_left=0)
    poller = make_poller(stack, handler, patterns=[stream_source.EventPattern.load(json.dumps(pattern))])
    put(stack, "a")
    put(stack, "x", kind="delivery-marker")
    put(stack, "b")
    drain(poller)
    assert handler.batches == [["a", "b"]]


def test_partial_batch_failure_retries_from_the_first_failed_record(stack: Stack) -> None:
    handler = FlakyHandler(failing={"b"}, failures_left=1)
    poller = make_poller(stack, handler)
    put(stack, "a", "b", "c")
    drain(poller)
    assert handler.batches == [["a", "b", "c"], ["b", "c"]]


def test_without_report_batch_item_failures_a_normal_return_checkpoints_the_whole_batch(
    stack: Stack,
) -> None:
    handler = FlakyHandler(failing={"b"}, failures_left=1)
    poller = make_poller(stack, handler, report_batch_item_failures=False)
    put(stack, "a", "b", "c")
    drain(poller)
    assert handler.batches == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (None, None),
        ({"batchItemFailures": []}, None),
        ({"batchItemFailures": [{"itemIdentifier": "2"}]}, 1),
        ({"batchItemFailures": [{"itemIdentifier": "3"}, {"itemIdentifier": "2"}]}, 1),  # the lowest
        ({"batchItemFailures": [{"itemIdentifier": "3"}, {"itemIdentifier": "9"}]}, 0),  # unknown: all
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, 0),
    ],
)
def test_batch_item_failures_are_read_as_lambda_reads_them(response: Any, expected: int | None) -> None:
    records = [{"dynamodb": {"SequenceNumber": n}} for n in ("1", "2", "3")]
    assert first_failed_index(response, records) == expected


def test_a_retry_does_not_wait_for_the_batching_window(stack: Stack) -> None:
    handler = FlakyHandler(failing={"b"}, failures_left=1)
    poller = make_poller(stack, handler, batch_size=2, batching_window_s=60)
    put(stack, "a", "b")
    drain(poller)
    assert handler.batches == [["a", "b"], ["b"]]


def test_a_raising_function_retries_the_batch_halved_when_bisecting(stack: Stack) -> None:
    handler = FlakyHandler(raise_error=True, failures_left=1)
    poller = make_poller(stack, handler, bisect_on_error=True)
    put(stack, "a", "b", "c", "d")
    drain(poller)
    assert handler.batches == [["a", "b", "c", "d"], ["a", "b"], ["c", "d"]]


def test_exhausted_retries_go_to_the_on_failure_queue_and_processing_moves_on(stack: Stack) -> None:
    handler = FlakyHandler(failing={"b"}, failures_left=100)
    dlq_url = stack.queues["ImpressionsDeadLetterQueue"]
    poller = make_poller(stack, handler, batch_size=2, maximum_retry_attempts=2, on_failure_queue_url=dlq_url)
    put(stack, "a", "b", "c", "d")
    drain(poller)

    # The first try and two retries of the batch holding "b"; then Lambda gives the batch up.
    assert handler.batches == [["a", "b"], ["b", "c"], ["b", "c"], ["d"]]
    (message,) = boto3.client("sqs", region_name=REGION).receive_message(QueueUrl=dlq_url)["Messages"]
    info = json.loads(message["Body"])
    assert info["version"] == "1.0"
    assert datetime.fromisoformat(info["timestamp"])
    assert info["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert info["requestContext"]["functionArn"] == poller.mapping.function.arn
    assert info["requestContext"]["approximateInvokeCount"] == 3  # every invocation of the batch
    first, last = (record["dynamodb"] for record in handler.events[2]["Records"])
    batch_info = info["DDBStreamBatchInfo"]
    assert batch_info["shardId"].startswith("shardId-")
    assert (batch_info["startSequenceNumber"], batch_info["endSequenceNumber"]) == (
        first["SequenceNumber"],
        last["SequenceNumber"],
    )
    for name, record in (("First", first), ("Last", last)):
        arrival = datetime.fromisoformat(batch_info[f"approximateArrivalOf{name}Record"])
        assert arrival.timestamp() == record["ApproximateCreationDateTime"]
    assert batch_info["batchSize"] == 2
    assert batch_info["streamArn"] == poller.stream_arn


def test_with_no_retries_a_failed_batch_is_given_up_at_once_from_its_first_failed_record(
    stack: Stack,
) -> None:
    handler = FlakyHandler(failing={"b"}, failures_left=100)
    dlq_url = stack.queues["ImpressionsDeadLetterQueue"]
    poller = make_poller(stack, handler, batch_size=2, maximum_retry_attempts=0, on_failure_queue_url=dlq_url)
    put(stack, "a", "b", "c", "d")
    drain(poller)

    assert handler.batches == [["a", "b"], ["c", "d"]]
    (message,) = boto3.client("sqs", region_name=REGION).receive_message(QueueUrl=dlq_url)["Messages"]
    batch_info = json.loads(message["Body"])["DDBStreamBatchInfo"]
    failed = handler.events[0]["Records"][1]["dynamodb"]["SequenceNumber"]
    assert (batch_info["batchSize"], batch_info["startSequenceNumber"], batch_info["endSequenceNumber"]) == (
        1,
        failed,
        failed,
    )


def events_mapping(stack: Stack, logical_id: str) -> StreamMapping:
    """The template's mapping of the events table's stream to the function ``logical_id``."""
    mappings = mappings_from_template(
        stack, lambda logical: LocalFunction(stack, logical, handler=FlakyHandler())
    )
    table = stack.tables["EventsTable"]
    [mapping] = [m for m in mappings if m.function.logical_id == logical_id and m.table_name == table]
    return mapping


def test_mappings_come_from_the_templates_dynamodb_events(stack: Stack) -> None:
    mappings = mappings_from_template(
        stack, lambda logical: LocalFunction(stack, logical, handler=FlakyHandler())
    )
    by_table = {m.table_name: m for m in mappings if m.function.logical_id == "DeliveryFunction"}
    events = by_table[stack.tables["EventsTable"]]
    assert events.function.logical_id == "DeliveryFunction"
    assert (events.batch_size, events.batching_window_s, events.starting_position) == (
        500,
        2.0,
        "TRIM_HORIZON",
    )
    assert events.maximum_retry_attempts == 10
    assert events.bisect_on_error
    assert events.report_batch_item_failures
    assert events.on_failure_queue_url == stack.queues["DeliveryFailureQueue"]
    assert events.accepts({"eventName": "INSERT"})
    assert not events.accepts({"eventName": "MODIFY"})
    identities = by_table[stack.tables["IdentitiesTable"]]
    assert identities.accepts({"eventName": "MODIFY"})
    assert not identities.accepts({"eventName": "REMOVE"})

    audiences = events_mapping(stack, "AudiencesFunction")
    assert (audiences.batch_size, audiences.batching_window_s, audiences.starting_position) == (
        500,
        5.0,
        "LATEST",
    )
    assert audiences.maximum_retry_attempts == 10
    assert not audiences.bisect_on_error  # the template does not ask for it
    assert audiences.on_failure_queue_url == stack.queues["AudiencesDeadLetterQueue"]
    assert audiences.accepts({"eventName": "REMOVE"})  # a deletion
    ttl = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert not audiences.accepts({"eventName": "REMOVE", "userIdentity": ttl})  # an expiry


def test_a_stream_event_that_leaves_its_settings_out_gets_lambdas_defaults(
    stack: Stack, template_copy: dict[str, Any]
) -> None:
    source = template_copy["Resources"]["DeliveryFunction"]["Properties"]["Events"]["StoredEvents"]
    source["Properties"] = {
        "Stream": source["Properties"]["Stream"],
        "StartingPosition": "TRIM_HORIZON",
    }

    mapping = events_mapping(stack, "DeliveryFunction")
    assert (mapping.batch_size, mapping.batching_window_s) == (100, 0.0)
    assert mapping.maximum_retry_attempts == -1  # until the record expires
    assert not mapping.bisect_on_error
    assert not mapping.report_batch_item_failures
    assert mapping.on_failure_queue_url is None
    assert mapping.accepts({"eventName": "REMOVE"})  # no filter


def test_the_batching_window_waits_for_more_records(stack: Stack) -> None:
    handler = FlakyHandler(failures_left=0)
    poller = make_poller(stack, handler, batch_size=3, batching_window_s=60)
    put(stack, "a")
    assert poller.poll_once() is False  # window open, batch not full
    put(stack, "b", "c")
    drain(poller)
    assert handler.batches == [["a", "b", "c"]]
