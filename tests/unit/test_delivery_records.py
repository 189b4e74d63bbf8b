"""Stream records of the events and identities tables, turned into what FME takes."""

from __future__ import annotations

import json
from decimal import Decimal

import boto3
import pytest
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from botocore.config import Config

from fme_bridge.template import Stack
from shared.delivery.failure_queue import MAX_MESSAGE_BYTES, Refusal, messages
from shared.delivery.records import (
    MalformedItem,
    ack_id,
    attribute_value,
    identity_change,
    identity_values,
    read_stream_batch,
    refused_changes,
    stored_event,
)
from shared.dynamodb import table_of, to_python
from tests.conftest import pages_cut_at
from tests.delivery_support import dynamodb_json, event_item, identity_item, identity_record, stream_record


def record(raw: dict) -> DynamoDBRecord:
    return DynamoDBRecord(raw)


def test_stored_event_becomes_the_events_api_shape() -> None:
    item = event_item("u1", value=12.5, properties={"plan": "pro", "count": 3, "ok": False, "none": None})
    stored = stored_event(record(stream_record("events", item)))
    assert stored.connection_id == "webshop"
    assert stored.received_at == item["receivedAt"]
    assert stored.ack_id == ack_id(item["pk"], item["sk"])
    assert stored.event.model_dump() == {
        "eventTypeId": "checkout",
        "trafficTypeName": "user",
        "key": "u1",
        "value": 12.5,
        "timestamp": 1764061200000,
        "environmentName": "Production",
        "properties": {"plan": "pro", "count": 3, "ok": False, "none": None},
    }


def test_an_event_without_a_value_has_value_null() -> None:
    assert stored_event(record(stream_record("events", event_item("u1")))).event.value is None


@pytest.mark.parametrize("missing", ["eventTypeId", "connectionId", "timestamp", "environment"])
def test_an_item_missing_what_delivery_needs_is_malformed(missing: str) -> None:
    item = event_item("u1")
    del item[missing]
    with pytest.raises(MalformedItem, match=missing):
        stored_event(record(stream_record("events", item)))


@pytest.mark.parametrize("name", ["eventTypeId", "trafficTypeName", "key", "environment", "connectionId"])
def test_an_item_with_an_empty_text_attribute_is_malformed(name: str) -> None:
    with pytest.raises(MalformedItem, match=name):
        stored_event(record(stream_record("events", {**event_item("u1"), name: ""})))


def test_a_boolean_is_no_timestamp() -> None:
    with pytest.raises(MalformedItem, match="timestamp"):
        stored_event(record(stream_record("events", {**event_item("u1"), "timestamp": True})))


@pytest.mark.parametrize("value", [True, "12", {"n": 1}])
def test_a_stored_value_that_is_not_a_number_goes_as_null(value: object) -> None:
    item = {**event_item("u1"), "value": value}
    assert stored_event(record(stream_record("events", item))).event.value is None


def test_ack_ids_hold_no_user_key_and_differ_per_event() -> None:
    a, b = (
        ack_id("Production#user#alice@example.com", "1#m1"),
        ack_id("Production#user#alice@example.com", "1#m2"),
    )
    assert a != b
    assert "alice" not in a
    assert len(a) == 40


def test_ack_ids_stay_the_same_across_versions() -> None:
    """The log keeps acknowledgements for 15 days: an upgrade that derived other ids would not find
    them, and a retried batch would send FME (which does not deduplicate) its events again."""
    assert ack_id("Production#user#u1", "1764061200000#msg-1") == "1ce8ee3b8090333a3fafd1f29c093340d4789b9e"


def test_to_python_turns_dynamodb_numbers_into_json_numbers() -> None:
    assert to_python({"a": Decimal("3"), "b": Decimal("2.5"), "c": [Decimal("1")], "d": {"y", "x"}}) == {
        "a": 3,
        "b": 2.5,
        "c": [1],
        "d": ["x", "y"],
    }


def test_table_of_a_stream_arn() -> None:
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/my-EventsTable-1/stream/2026-11-25T09:00:00.000"
    assert table_of(arn) == "my-EventsTable-1"
    assert table_of(None) is None
    assert table_of("arn:aws:sqs:us-east-1:1:q") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("pro", "pro"),
        (True, "true"),
        (False, "false"),
        (Decimal("5"), "5"),
        (Decimal("2.5"), "2.5"),
        (None, None),
        ({"name": "Initech", "employees": Decimal("329")}, '{"name":"Initech","employees":329}'),
        (["a", "b"], '["a","b"]'),
        ({"city": "Zürich"}, '{"city":"Zürich"}'),
    ],
)
def test_attribute_values_are_strings(value: object, expected: str | None) -> None:
    assert attribute_value(value) == expected


def test_attribute_names_fme_refuses_are_dropped_and_reported() -> None:
    values = identity_values({"plan": "pro", "first name": "Ann", "$email": "a@b", "ok-1_x": "y"})
    assert values.values == {"plan": "pro", "ok-1_x": "y"}
    assert sorted(values.dropped) == ["$email", "first name"]


def test_an_attribute_set_to_null_is_left_out_of_the_values() -> None:
    """Save Identities overwrites the values: one left out is one FME no longer has."""
    values = identity_values({"plan": None, "name": "Ann"})
    assert values.values == {"name": "Ann"}
    assert values.dropped == []


@pytest.mark.parametrize(
    "name", ["1st_plan", "_plan", "-plan", "plan.tier", "plan:tier", "plän", "", "plan\n"]
)
def test_attribute_ids_start_with_a_letter_then_letters_digits_dashes_underscores(name: str) -> None:
    values = identity_values({name: "x", "Plan-2_b": "y"})
    assert values.values == {"Plan-2_b": "y"}
    assert values.dropped == [name]


def test_identity_change_carries_all_current_values_when_one_changed() -> None:
    old = identity_item("u1", {"plan": "free", "name": "Ann"}, updated_at=1)
    new = identity_item("u1", {"plan": "pro", "name": "Ann"}, updated_at=2)
    change = identity_change(record(identity_record("ids", new, old)))
    assert change is not None
    assert change.identity.model_dump() == {"key": "u1", "values": {"plan": "pro", "name": "Ann"}}
    assert (change.environment, change.traffic_type, change.connection_id) == (
        "Production",
        "user",
        "webshop",
    )


def test_an_identity_change_names_the_attributes_fme_would_refuse() -> None:
    old = identity_item("u1", {"plan": "free", "First Name": "Ann"}, updated_at=1)
    new = identity_item("u1", {"plan": "pro", "First Name": "Ann"}, updated_at=2)
    change = identity_change(record(identity_record("ids", new, old)))
    assert change is not None
    assert change.identity.values == {"plan": "pro"}
    assert change.dropped_attributes == ["First Name"]


def test_identity_versions_have_distinct_ack_ids() -> None:
    def change(plan: str, at: int):
        item = identity_item("u1", {"plan": plan}, updated_at=at)
        return identity_change(record(identity_record("ids", item)))

    assert change("pro", 1).ack_id == change("pro", 1).ack_id
    assert change("pro", 1).ack_id != change("pro", 3).ack_id  # the same values again later
    assert change("pro", 1).ack_id != change("free", 1).ack_id


@pytest.mark.parametrize(
    "where", [{"connection_id": "app"}, {"environment": "Staging"}, {"traffic_type": "account"}]
)
def test_the_same_identity_version_elsewhere_has_another_ack_id(where: dict[str, str]) -> None:
    """One identify can reach two connections or traffic types with the same key, values and time:
    saving it in one place must not count it saved in the other."""
    item = identity_item("u1", {"plan": "pro"}, updated_at=1)
    elsewhere = identity_item("u1", {"plan": "pro"}, updated_at=1, **where)
    here = identity_change(record(identity_record("ids", item)))
    there = identity_change(record(identity_record("ids", elsewhere)))
    assert here is not None
    assert there is not None
    assert here.ack_id != there.ack_id


def test_identity_removal_and_unchanged_attributes_are_not_changes() -> None:
    item = identity_item("u1", {"plan": "pro"})
    assert identity_change(record(identity_record("ids", None, item, event_name="REMOVE"))) is None
    touched = {**item, "updatedAt": item["updatedAt"] + 1}
    assert identity_change(record(identity_record("ids", touched, item))) is None


def test_refused_attribute_names_count_when_a_record_sets_or_changes_them() -> None:
    inserted = identity_item("u1", {"First Name": "Ann", "$plan": "pro", "plan": "pro"})
    assert sorted(refused_changes(record(identity_record("ids", inserted)))) == ["$plan", "First Name"]
    changed = identity_item("u1", {"First Name": "Bob", "$plan": "pro", "$new": 1, "plan": "max"})
    refused = refused_changes(record(identity_record("ids", changed, inserted)))
    assert sorted(refused) == ["$new", "First Name"]  # "$plan" kept its value


def test_failure_messages_stay_under_the_sqs_size_limit_and_keep_every_item() -> None:
    items = [
        {"ackId": str(i), "event": {"key": f"u{i}", "properties": {"pad": "x" * 30_000}}} for i in range(20)
    ]
    refusal = Refusal("events", "webshop", "HTTP 400: bad", 400, items)
    pairs = messages(refusal, failed_at=1_764_061_200_000)
    bodies = [body for _, body in pairs]
    assert len(bodies) > 1
    assert all(len(b.encode()) <= MAX_MESSAGE_BYTES for b in bodies)
    assert all(len(b.encode()) < 256 * 1024 - 10_000 for b in bodies)  # SQS's limit, room for attributes
    decoded = [json.loads(b) for b in bodies]
    assert [i["ackId"] for d in decoded for i in d["items"]] == [str(i) for i in range(20)]
    assert {(d["kind"], d["connectionId"], d["reason"], d["status"], d["failedAt"]) for d in decoded} == {
        ("events", "webshop", "HTTP 400: bad", 400, 1_764_061_200_000)
    }
    # Each message has its own failure id, as its body says.
    assert [d["failureId"] for d in decoded] == [failure_id for failure_id, _ in pairs]
    assert len({failure_id for failure_id, _ in pairs}) == len(pairs)


def test_many_small_items_fill_each_message_up_to_the_bound_and_never_past_it() -> None:
    items = [{"ackId": f"{i:05d}", "event": {"key": f"u{i}"}} for i in range(6_000)]
    bodies = [body for _, body in messages(Refusal("events", "webshop", "HTTP 400: bad", 400, items), 1)]
    sizes = [len(body.encode()) for body in bodies]
    assert len(bodies) == 2
    assert all(size <= MAX_MESSAGE_BYTES for size in sizes)
    assert sizes[0] > MAX_MESSAGE_BYTES - 100  # filled, not cut short
    assert [i["ackId"] for b in bodies for i in json.loads(b)["items"]] == [i["ackId"] for i in items]


def test_an_item_over_the_message_bound_goes_alone_and_no_message_is_empty() -> None:
    items = [{"ackId": "big", "item": {"pad": "x" * MAX_MESSAGE_BYTES}}, {"ackId": "small", "item": {}}]
    bodies = [json.loads(body) for _, body in messages(Refusal("events", "webshop", "bad", None, items), 1)]
    assert [[i["ackId"] for i in b["items"]] for b in bodies] == [["big"], ["small"]]


def test_a_given_up_stream_batch_is_read_again_across_pages_and_not_past_its_end(stack: Stack) -> None:
    """A batch of up to 10,000 records spans several GetRecords pages: each is read, up to its last."""
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    table = stack.tables["EventsTable"]
    for n in range(7):
        ddb.put_item(TableName=table, Item=dynamodb_json(event_item(f"u{n}")))
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    streams = boto3.client(
        "dynamodbstreams", region_name="us-east-1", config=Config(account_id_endpoint_mode="disabled")
    )
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    first = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    sequences = [
        r["dynamodb"]["SequenceNumber"]
        for r in streams.get_records(ShardIterator=first["ShardIterator"])["Records"]
    ]

    pages_cut_at(streams, "dynamodbstreams.GetRecords", 2)
    pages: list[str] = []
    streams.meta.events.register(
        "provide-client-params.dynamodbstreams.GetRecords", lambda params, **_: pages.append("page")
    )
    info = {
        "streamArn": arn,
        "shardId": shard,
        "startSequenceNumber": sequences[1],
        "endSequenceNumber": sequences[5],
    }

    records = read_stream_batch(streams, info)

    assert [r["dynamodb"]["SequenceNumber"] for r in records] == sequences[1:6]
    assert {r["eventSourceARN"] for r in records} == {arn}
    # The page holding the batch's last record is the last read: a stream holds up to 24 hours of
    # records after it.
    assert len(pages) == 3
