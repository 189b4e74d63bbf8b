"""Batched DynamoDB access: attribute values, bounded retries of unprocessed items, conditional puts."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from shared import dynamodb
from shared.events_table import event_sk


def test_batch_retries_stop_when_time_runs_out() -> None:
    class AlwaysThrottled:
        calls = 0

        def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
            self.calls += 1
            return {"UnprocessedItems": RequestItems}

    client = AlwaysThrottled()
    sleeps: list[float] = []
    with pytest.raises(dynamodb.StoreUnavailable, match="out of time"):
        dynamodb.batch_write(
            client, "t", [{"PutRequest": {"Item": {}}}], sleep=sleeps.append, time_left=lambda: 0.0
        )
    assert (client.calls, sleeps) == (1, [])


def test_writes_still_unprocessed_give_up_with_store_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dynamodb.random, "uniform", lambda low, high: high)  # the ceiling of each wait

    class AlwaysThrottled:
        def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
            return {"UnprocessedItems": RequestItems}

    sleeps: list[float] = []
    with pytest.raises(dynamodb.StoreUnavailable):
        dynamodb.batch_write(AlwaysThrottled(), "t", [{"PutRequest": {"Item": {}}}], sleep=sleeps.append)
    # MAX_ATTEMPTS waits, doubling from 25 ms and capped at a second.
    assert sleeps == [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert len(sleeps) == dynamodb.MAX_ATTEMPTS


class FailingFirst:
    """Batch calls that fail with ``code`` (after botocore's own retries) ``failures`` times, then work."""

    def __init__(self, code: str, failures: int) -> None:
        self.code, self.failures, self.calls = code, failures, 0

    def _call(self, operation: str) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ClientError({"Error": {"Code": self.code, "Message": "injected"}}, operation)

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self._call("BatchWriteItem")
        return {}

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self._call("BatchGetItem")
        return {"Responses": {"t": [{"pk": {"S": "a"}}]}}


@pytest.mark.parametrize(
    "code",
    [
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    ],
)
def test_batch_requests_still_throttled_or_failing_are_sent_again(code: str) -> None:
    writes, sleeps = FailingFirst(code, 2), []
    dynamodb.batch_write(writes, "t", [{"PutRequest": {"Item": {}}}], sleep=sleeps.append)
    assert (writes.calls, len(sleeps)) == (3, 2)
    reads = FailingFirst(code, 2)
    assert dynamodb.batch_get(reads, "t", [{"pk": {"S": "a"}}], sleep=sleeps.append) == [{"pk": {"S": "a"}}]
    assert reads.calls == 3


def test_batch_requests_refused_or_failing_every_time_raise() -> None:
    with pytest.raises(ClientError, match="ValidationException"):
        dynamodb.batch_write(FailingFirst("ValidationException", 1), "t", [{"PutRequest": {"Item": {}}}])
    always = FailingFirst("InternalServerError", dynamodb.MAX_ATTEMPTS)
    with pytest.raises(ClientError, match="InternalServerError"):
        dynamodb.batch_get(always, "t", [{"pk": {"S": "a"}}], sleep=lambda _: None)
    assert always.calls == dynamodb.MAX_ATTEMPTS


def test_attribute_values_round_trip() -> None:
    value = {
        "s": "x",
        "b": True,
        "i": 3,
        "f": 1.5,
        "d": Decimal("2.25"),
        "n": None,
        "l": [1, "a"],
        "m": {"k": False},
    }
    encoded = dynamodb.attribute_value(value)
    assert encoded["M"]["b"] == {"BOOL": True}
    assert encoded["M"]["i"] == {"N": "3"}
    assert dynamodb.deserialize_item({"v": encoded}) == {
        "v": {**value, "i": Decimal(3), "f": Decimal("1.5"), "l": [Decimal(1), "a"]}
    }
    with pytest.raises(TypeError):
        dynamodb.attribute_value(object())


class ConditionalPuts:
    """PutItem with ``attribute_not_exists``: ``stored`` keys fail the condition, ``failing`` throttle."""

    def __init__(self, stored: set[str] | None = None, failing: set[str] | None = None) -> None:
        self.stored = set(stored or ())
        self.failing = failing or set()
        self.calls: list[dict[str, Any]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def put_item(self, **request: Any) -> dict[str, Any]:
        key = request["Item"]["pk"]["S"]
        with self._lock:
            self.calls.append(request)
            self.threads.add(threading.current_thread().name)
            if key in self.failing:
                raise ClientError(
                    {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                    "PutItem",
                )
            if key in self.stored:
                raise ClientError(
                    {"Error": {"Code": "ConditionalCheckFailedException", "Message": "exists"}}, "PutItem"
                )
            self.stored.add(key)
        return {}


def items(*keys: str) -> list[dict[str, Any]]:
    return [{"pk": {"S": key}, "sk": {"S": "1"}} for key in keys]


def test_put_if_absent_tells_which_items_were_written() -> None:
    client = ConditionalPuts(stored={"b", "d"})
    assert dynamodb.put_if_absent(client, "t", items("a", "b", "c", "d")) == [True, False, True, False]
    assert client.stored == {"a", "b", "c", "d"}
    assert {call["ConditionExpression"] for call in client.calls} == {"attribute_not_exists(pk)"}
    assert {call["TableName"] for call in client.calls} == {"t"}
    assert len(client.threads) > 1  # the puts go out side by side


def test_put_if_absent_of_one_item_stays_in_the_calling_thread() -> None:
    client = ConditionalPuts()
    assert dynamodb.put_if_absent(client, "t", items("a")) == [True]
    assert dynamodb.put_if_absent(client, "t", []) == []
    assert client.threads == {threading.current_thread().name}


def test_put_if_absent_raises_other_errors_after_every_put_has_ended() -> None:
    client = ConditionalPuts(failing={"a"})
    with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
        dynamodb.put_if_absent(client, "t", items("a", "b", "c"))
    assert client.stored == {"b", "c"}  # written, found as duplicates when the request is retried


def test_query_items_follows_every_page(stack: Any) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1")
    table = stack.tables["EventsTable"]
    for n in range(5):
        client.put_item(TableName=table, Item={"pk": {"S": "p"}, "sk": {"S": f"s{n}"}})
    client.put_item(TableName=table, Item={"pk": {"S": "other"}, "sk": {"S": "s0"}})
    request = {
        "TableName": table,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": "p"}},
        "Limit": 2,  # three pages
    }

    items = list(dynamodb.query_items(client, request))

    assert [item["sk"]["S"] for item in items] == [f"s{n}" for n in range(5)]
    assert "ExclusiveStartKey" not in request  # the caller's request is left as it was


def test_to_python_turns_stored_numbers_into_ints_and_floats() -> None:
    stored = {"i": Decimal("3"), "f": Decimal("2.5"), "l": [Decimal("1"), "a"], "m": {"n": Decimal("-0")}}
    converted = dynamodb.to_python(
        {**stored, "s": {Decimal("4")}, "b": True, "none": None, "bin": b"Zo\xc3\xab"}
    )
    assert converted == {
        "i": 3,
        "f": 2.5,
        "l": [1, "a"],
        "m": {"n": 0},
        "s": [4],
        "b": True,
        "none": None,
        "bin": "Zoë",
    }
    assert [type(converted[name]) for name in ("i", "f")] == [int, float]
    assert type(converted["m"]["n"]) is int


def merged(key: str) -> Any:
    from shared.inbound.mapping import MergedIdentity

    return MergedIdentity(
        environment="Production",
        trafficTypeName="user",
        key=key,
        attributes={"plan": "pro"},
        attributeTimestamps={"plan": 1},
        expected_version=None,
        effective={0},
    )


def test_identities_are_put_one_by_one_and_a_lost_race_refuses_only_its_own() -> None:
    from shared.identities_table import IdentitiesTable

    client = ConditionalPuts(stored={"Production#user#b"})
    table = IdentitiesTable("t", client=client)
    assert table.put_conditional([merged(k) for k in "abc"], "web", 1) == {"Production#user#b"}
    assert client.stored == {"Production#user#a", "Production#user#b", "Production#user#c"}
    assert {call["ConditionExpression"] for call in client.calls} == {"attribute_not_exists(pk)"}


def test_identities_left_when_time_runs_out_are_returned_unwritten() -> None:
    from shared.identities_table import IdentitiesTable

    client = ConditionalPuts()
    table = IdentitiesTable("t", client=client, time_left=lambda: 0.0)
    assert table.put_conditional([merged(k) for k in "ab"], "web", 1) == {
        "Production#user#a",
        "Production#user#b",
    }
    assert client.calls == []


def test_identities_out_of_time_part_way_are_a_store_unavailable_and_the_retry_finishes(stack: Any) -> None:
    """No 200 for half-written identities: the request fails, and Segment's retry writes the rest."""
    import itertools

    from shared.identities_table import IdentitiesTable
    from shared.inbound.ingest import store_identities
    from shared.inbound.mapping import IdentityUpdate

    updates = [
        IdentityUpdate(
            index=i,
            environment="Production",
            trafficTypeName="user",
            key=f"u-{i}",
            attributes={"plan": "pro"},
            timestamp=1_000,
            messageId=f"m-{i}",
        )
        for i in range(60)
    ]
    name = stack.tables["IdentitiesTable"]
    calls = itertools.count()
    # The round's check, then 20 puts; then the clock has run out.
    table = IdentitiesTable(name, time_left=lambda: 1.0 if next(calls) < 21 else 0.0)
    with pytest.raises(dynamodb.StoreUnavailable, match="out of time"):
        store_identities(updates, table, "web", 2_000)
    client = boto3.client("dynamodb", region_name="us-east-1")
    assert client.scan(TableName=name, Select="COUNT")["Count"] == 20

    changed, effective, _ = store_identities(updates, IdentitiesTable(name), "web", 3_000)
    assert (changed, len(effective)) == (40, 40)  # the 20 written the first time are unchanged
    items = client.scan(TableName=name)["Items"]
    assert len(items) == 60
    assert {item["version"]["N"] for item in items} == {"1"}


def test_an_identity_still_throttled_is_written_again_and_a_refused_one_fails_the_request() -> None:
    from shared.identities_table import IdentitiesTable

    client = ConditionalPuts(failing={"Production#user#a"})
    assert IdentitiesTable("t", client=client).put_conditional([merged(k) for k in "ab"], "web", 1) == {
        "Production#user#a"
    }
    assert client.stored == {"Production#user#b"}

    class Refusing(ConditionalPuts):
        def put_item(self, **request: Any) -> dict[str, Any]:
            raise ClientError({"Error": {"Code": "ValidationException", "Message": "too large"}}, "PutItem")

    with pytest.raises(ClientError, match="ValidationException"):
        IdentitiesTable("t", client=Refusing()).put_conditional([merged("a")], "web", 1)


class HalfProcessed:
    """Batch reads and writes that leave the second half of a request unprocessed, once per first key."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.written: list[str] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def _split(self, entries: list[Any], first: str) -> tuple[list[Any], list[Any]]:
        with self._lock:
            if first in self._seen or len(entries) < 2:
                return entries, []
            self._seen.add(first)
        half = len(entries) // 2
        return entries[:half], entries[half:]

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        request = RequestItems["t"]
        with self._lock:
            self.requests.append(request)
        done, left = self._split(request["Keys"], request["Keys"][0]["pk"]["S"])
        response: dict[str, Any] = {"Responses": {"t": done}}
        if left:
            response["UnprocessedKeys"] = {"t": {**request, "Keys": left}}
        return response

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        entries = RequestItems["t"]
        with self._lock:
            self.requests.append({"Items": entries})
        done, left = self._split(entries, entries[0]["PutRequest"]["Item"]["pk"]["S"])
        with self._lock:
            self.written.extend(entry["PutRequest"]["Item"]["pk"]["S"] for entry in done)
        return {"UnprocessedItems": {"t": left}} if left else {}


def test_batch_get_asks_for_100_keys_at_a_time_and_reads_the_unprocessed_again() -> None:
    client = HalfProcessed()
    keys = [{"pk": {"S": f"k{n:03d}"}} for n in range(250)]

    found = dynamodb.batch_get(
        client, "t", keys, projection="pk, #v", names={"#v": "v"}, consistent=True, sleep=lambda _: None
    )

    assert sorted(item["pk"]["S"] for item in found) == [key["pk"]["S"] for key in keys]
    sizes = {r["Keys"][0]["pk"]["S"]: len(r["Keys"]) for r in client.requests}
    assert [sizes.get(first) for first in ("k000", "k100", "k200")] == [100, 100, 50]
    assert {(r["ConsistentRead"], r["ProjectionExpression"]) for r in client.requests} == {(True, "pk, #v")}
    assert all(r["ExpressionAttributeNames"] == {"#v": "v"} for r in client.requests)


def test_batch_write_sends_25_items_at_a_time_and_writes_the_unprocessed_again() -> None:
    client = HalfProcessed()
    requests = [{"PutRequest": {"Item": {"pk": {"S": f"k{n:03d}"}}}} for n in range(60)]

    dynamodb.batch_write(client, "t", requests, sleep=lambda _: None)

    sizes = {r["Items"][0]["PutRequest"]["Item"]["pk"]["S"]: len(r["Items"]) for r in client.requests}
    assert [sizes.get(first) for first in ("k000", "k025", "k050")] == [25, 25, 10]
    assert sorted(client.written) == [f"k{n:03d}" for n in range(60)]


def test_reads_still_unprocessed_give_up_with_store_unavailable() -> None:
    class AlwaysThrottled:
        def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
            return {"Responses": {"t": []}, "UnprocessedKeys": RequestItems}

    sleeps: list[float] = []
    with pytest.raises(dynamodb.StoreUnavailable, match="reads still unprocessed"):
        dynamodb.batch_get(AlwaysThrottled(), "t", [{"pk": {"S": "a"}}], sleep=sleeps.append)
    assert len(sleeps) == dynamodb.MAX_ATTEMPTS


def test_a_wait_longer_than_the_time_left_is_out_of_time_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dynamodb.random, "uniform", lambda low, high: high)
    sleeps: list[float] = []
    with pytest.raises(dynamodb.OutOfTime):
        dynamodb.batch_get(
            FailingFirst("ThrottlingException", 1),
            "t",
            [{"pk": {"S": "a"}}],
            sleep=sleeps.append,
            time_left=lambda: 0.01,  # less than the first wait (25 ms)
        )
    assert sleeps == []


def test_table_of_a_stream_arn() -> None:
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/bridge-Events/stream/2026-01-01T00:00:00.000"
    assert dynamodb.table_of(arn) == "bridge-Events"
    assert dynamodb.table_of("arn:aws:sqs:us-east-1:123456789012:queue") is None
    assert dynamodb.table_of(None) is None


def test_to_python_sorts_sets() -> None:
    letters = set("qwertyuiopasdfgh")
    assert dynamodb.to_python({"s": letters}) == {"s": sorted(letters)}


def test_a_stored_event_has_the_documented_attributes_and_key() -> None:
    from shared.events_table import event_item
    from shared.inbound.mapping import FmeEvent

    def stored(segment_type: str, value: float | None) -> dict[str, Any]:
        event = FmeEvent(
            index=0,
            environment="Production",
            trafficTypeName="user",
            key="u-1",
            eventTypeId="Order_Completed",
            value=value,
            timestamp=1_700_000_000_123,
            properties={"plan": "pro", "paid": True, "items": 2, "ratio": 0.5, "gone": None},
            messageId="m-1",
            segmentType=segment_type,
        )
        return dynamodb.python_item(event_item(event, "web", 1_700_000_000_999, 1_707_776_000))

    track = stored("track", 0)
    assert track == {
        "pk": "Production#user#u-1",
        "sk": "1700000000123#m-1",
        "environment": "Production",
        "trafficTypeName": "user",
        "key": "u-1",
        "eventTypeId": "Order_Completed",
        "value": 0,  # zero is a value, not its absence
        "timestamp": 1_700_000_000_123,
        "properties": {"plan": "pro", "paid": True, "items": 2, "ratio": 0.5, "gone": None},
        "messageId": "m-1",
        "segmentType": "track",
        "receivedAt": 1_700_000_000_999,
        "connectionId": "web",
        "expiresAt": 1_707_776_000,
    }
    assert stored("screen", None)["sk"] == "1700000000123#m-1#screen"
    assert "value" not in stored("page", None)
    assert event_sk(5, "m", "track") == "0000000000005#m"


def test_a_stored_identity_has_the_documented_attributes_and_its_next_version() -> None:
    from shared.identities_table import IdentitiesTable

    client = ConditionalPuts()
    IdentitiesTable("t", client=client).put_conditional([merged("u-1")], "web", 1_700_000_000_999)
    item = dynamodb.python_item(client.calls[0]["Item"])
    assert item == {
        "pk": "Production#user#u-1",
        "environment": "Production",
        "trafficTypeName": "user",
        "key": "u-1",
        "attributes": {"plan": "pro"},
        "attributeTimestamps": {"plan": 1},
        "updatedAt": 1_700_000_000_999,
        "connectionId": "web",
        "version": 1,
    }
