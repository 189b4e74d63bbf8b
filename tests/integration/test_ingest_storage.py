"""What DynamoDB holds after webhooks: idempotency, identities, deletion, batching, failures."""

from __future__ import annotations

import json
import time
from collections import Counter
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from shared import config, dynamodb, events_table
from shared.identities_table import IdentitiesTable
from shared.inbound.ingest import CONDITIONAL_PUT_EVENTS, IDENTITY_ATTEMPTS, store
from shared.inbound.mapping import StoredIdentity, map_messages
from tests.conftest import REGION, pages_cut_at, published_metrics
from tests.integration.ingest_support import Webhook, segment_message


@pytest.fixture
def receipt_clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The time of receipt (``time.time_ns``), which a test moves on by changing its one element."""
    clock = [1_795_483_041_109_000_000]
    monkeypatch.setattr(time, "time_ns", lambda: clock[0])
    return clock


# A message without any time, which only hand-made requests send: it is keyed by its time of receipt.
NO_TIME = {"timestamp": None, "originalTimestamp": None, "receivedAt": None, "sentAt": None}


# The 503 of a request cut off by the deadline says so: its retry stores only what is missing.
OUT_OF_TIME = (
    "out of time before every message was stored; what was stored stays stored, and a retry stores the rest"
)


def tracks(count: int, user: str = "u-1", start: int = 0) -> list[dict[str, Any]]:
    return [
        segment_message(
            "track",
            userId=user,
            anonymousId=None,
            messageId=f"msg-{i}",
            event=f"step {i % 7}",
            timestamp=f"2026-11-25T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
        )
        for i in range(start, start + count)
    ]


# ---------------------------------------------------------------------------------------------
# Idempotency


def test_redelivered_message_is_a_duplicate_and_stores_nothing_new(webhook: Webhook) -> None:
    first = webhook.post(segment_message("track"))
    before = webhook.stored_events("user", "AiUGstSDIg")
    again = webhook.post(segment_message("track"))
    assert (first.body["stored"], first.body["duplicate"]) == (1, 0)
    assert (again.body["stored"], again.body["duplicate"], again.body["events"]) == (0, 1, 0)
    assert webhook.stored_events("user", "AiUGstSDIg") == before  # not even receivedAt rewritten
    assert webhook.count_events() == 2


def test_a_track_event_keeps_the_key_earlier_versions_gave_it(webhook: Webhook) -> None:
    """A retry that crosses an upgrade must find what the earlier version stored."""
    message = segment_message("track", anonymousId=None)
    webhook.post(message)
    [stored] = webhook.stored_events("user", "AiUGstSDIg")
    client = boto3.client("dynamodb", region_name=REGION)
    [item] = client.scan(TableName=webhook.env["EVENTS_TABLE"])["Items"]
    assert item["sk"]["S"] == f"{int(stored['timestamp']):013d}#{message['messageId']}"
    assert webhook.post(message).body["duplicate"] == 1


def test_a_message_without_a_time_is_found_by_its_message_id_when_redelivered(
    webhook: Webhook, receipt_clock: list[int]
) -> None:
    """Its events are keyed by the time of receipt, which differs on every delivery."""
    untimed = segment_message("track", **NO_TIME)
    first = webhook.post(untimed)
    receipt_clock[0] += 3_600_000_000_000  # an hour later
    calls: Counter[str] = Counter()
    dynamodb.client().meta.events.register(
        "before-call.dynamodb.Query", lambda model, **_: calls.update([model.name])
    )
    again = webhook.post([untimed, {**untimed, "messageId": "another-untimed"}])
    assert calls == {"Query": 2}  # one per identity (user and anonymous), whatever its messages
    assert (first.body["stored"], first.body["duplicate"]) == (1, 0)
    assert (again.body["stored"], again.body["duplicate"], again.body["events"]) == (1, 1, 2)
    events = webhook.stored_events("user", "AiUGstSDIg")
    assert [(e["messageId"], e["timestamp"]) for e in events] == [
        (untimed["messageId"], 1_795_483_041_109),
        ("another-untimed", 1_795_486_641_109),
    ]


def test_a_message_without_a_time_is_found_behind_many_newer_events_of_its_user(
    webhook: Webhook, receipt_clock: list[int]
) -> None:
    """Looked for among the identity's newest 10,000 events of the window, not only the newest few."""
    untimed = segment_message("track", anonymousId=None, **NO_TIME)
    assert webhook.post(untimed).body["stored"] == 1
    newer = [
        segment_message(
            "track", anonymousId=None, messageId=f"newer-{n}", timestamp=f"2026-11-24T02:{n:02d}:00Z"
        )
        for n in range(40)
    ]
    assert webhook.post(newer).body["stored"] == 40
    receipt_clock[0] += 3_600_000_000_000  # an hour later
    again = webhook.post(untimed)
    assert (again.body["stored"], again.body["duplicate"]) == (0, 1)
    assert len(webhook.stored_events("user", untimed["userId"])) == 41


def test_a_message_without_a_time_redelivered_a_day_later_stores_nothing_new(
    webhook: Webhook, receipt_clock: list[int]
) -> None:
    """Idempotent on messageId for 24 hours at least, for events and for traits."""
    track = segment_message("track", anonymousId=None, **NO_TIME)
    identify = segment_message("identify", anonymousId=None, traits={"plan": "free"}, **NO_TIME)
    first = webhook.post([track, identify])
    receipt_clock[0] += 24 * 3_600_000_000_000  # a day later
    again = webhook.post([track, identify])
    assert (first.body["stored"], first.body["duplicate"]) == (2, 0)
    assert (again.body["stored"], again.body["duplicate"], again.body["events"]) == (0, 2, 0)
    assert len(webhook.stored_events("user", track["userId"])) == 1
    identity = webhook.identity("user", identify["userId"])
    assert identity is not None
    assert identity["updatedAt"] == Decimal(1_795_483_041_109)


def test_a_message_whose_other_identity_was_dropped_counts_as_stored_and_then_as_duplicate(
    webhook: Webhook,
) -> None:
    message = segment_message("track", userId="u" * 300)  # a key FME refuses; the anonymousId is fine
    first = webhook.post(message).body
    again = webhook.post(message).body
    assert (first["stored"], first["duplicate"], first["dropped"]) == (1, 0, 0)
    assert (again["stored"], again["duplicate"], again["dropped"]) == (0, 1, 0)
    assert [(d["index"], d["reason"]) for d in again["drops"]] == [(0, "invalid_key")]


def test_a_message_without_a_time_is_looked_for_among_the_newest_events_of_its_user(
    webhook: Webhook, receipt_clock: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only so many events of an identity are read: the newest, where a recent redelivery is."""
    monkeypatch.setattr(events_table, "MAX_LOOKUP_EVENTS", 5)
    received = receipt_clock[0] // 1_000_000
    older = [
        segment_message("track", anonymousId=None, messageId=f"older-{n}", timestamp=received - n * 60_000)
        for n in range(1, 11)
    ]
    assert webhook.post(older).body["stored"] == 10
    untimed = segment_message("track", anonymousId=None, **NO_TIME)
    assert webhook.post(untimed).body["stored"] == 1
    receipt_clock[0] += 3_600_000_000_000  # an hour later
    again = webhook.post(untimed).body
    assert (again["stored"], again["duplicate"]) == (0, 1)


def test_batch_retried_after_half_succeeding_loses_nothing_and_duplicates_nothing(webhook: Webhook) -> None:
    batch = tracks(60)
    webhook.post(batch[:25])  # the part that got through before the failure
    answer = webhook.post(batch)
    assert (answer.body["stored"], answer.body["duplicate"]) == (35, 25)
    assert webhook.count_events() == 60


def test_same_message_twice_in_one_body(webhook: Webhook) -> None:
    answer = webhook.post([segment_message("track"), segment_message("track")])
    assert (answer.body["stored"], answer.body["duplicate"]) == (1, 1)
    assert webhook.count_events() == 2


def test_partial_duplicates_in_a_small_body_are_counted_per_message(webhook: Webhook) -> None:
    # The user's event of this message was stored before; its anonymous one was not.
    webhook.post(segment_message("track", anonymousId=None))
    answer = webhook.post(segment_message("track"))
    assert (answer.body["stored"], answer.body["duplicate"], answer.body["events"]) == (1, 0, 1)
    assert len(webhook.stored_events("anonymous", "23adfd82-aa0f-45a7-a756-24f2a7a4c895")) == 1
    # One message of the body was stored before, the other was not.
    stored_before, new = tracks(2)
    webhook.post(stored_before)
    answer = webhook.post([stored_before, new])
    assert (answer.body["stored"], answer.body["duplicate"], answer.body["events"]) == (1, 1, 1)
    assert webhook.count_events() == 4


def test_small_bodies_write_with_conditional_puts_and_larger_ones_in_batches(webhook: Webhook) -> None:
    calls: Counter[str] = Counter()
    dynamodb.client().meta.events.register(
        "before-call.dynamodb.*", lambda model, **_: calls.update([model.name])
    )
    assert webhook.post(segment_message("track")).body["events"] == 2
    assert calls == {"PutItem": 2}  # no existence check: the condition is the check
    calls.clear()
    assert webhook.post(tracks(CONDITIONAL_PUT_EVENTS)).body["events"] == CONDITIONAL_PUT_EVENTS
    assert calls == {"PutItem": CONDITIONAL_PUT_EVENTS}
    calls.clear()
    answer = webhook.post(tracks(CONDITIONAL_PUT_EVENTS + 1))
    assert (answer.body["events"], answer.body["duplicate"]) == (1, CONDITIONAL_PUT_EVENTS)
    assert calls == {"BatchGetItem": 1, "BatchWriteItem": 1}


def test_a_concurrent_delivery_that_stores_first_makes_this_one_a_duplicate(webhook: Webhook) -> None:
    """Two deliveries of one message at once: the one whose write lands second counts it a duplicate.

    The other delivery's write is made to land between this request's mapping and its own write —
    where an existence check read before writing would still have seen nothing.
    """
    message = segment_message("track", anonymousId=None)
    competitor = boto3.client("dynamodb", region_name=REGION)
    landed: list[dict[str, Any]] = []

    def other_delivery_first(params: dict[str, Any], **_: Any) -> None:
        if not landed:
            item = {**params["Item"], "receivedAt": {"N": "1"}}
            competitor.put_item(TableName=params["TableName"], Item=item)
            landed.append(item)

    dynamodb.client().meta.events.register("before-parameter-build.dynamodb.PutItem", other_delivery_first)
    answer = webhook.post(message)
    assert (answer.body["stored"], answer.body["duplicate"], answer.body["events"]) == (0, 1, 0)
    (event,) = webhook.stored_events("user", "AiUGstSDIg")
    assert event["receivedAt"] == 1  # the first write stays; this one wrote nothing


def test_redelivered_identify_is_a_duplicate(webhook: Webhook) -> None:
    assert webhook.post(segment_message("identify")).body["stored"] == 1
    answer = webhook.post(segment_message("identify"))
    assert (answer.body["stored"], answer.body["duplicate"], answer.body["identities"]) == (0, 1, 0)


def test_an_identify_redelivered_after_many_newer_ones_is_a_duplicate(webhook: Webhook) -> None:
    # A server-side source sets one trait per identify, 25 over time; the first comes again.
    messages = [
        segment_message(
            "identify",
            messageId=f"m{i}",
            anonymousId=None,
            traits={f"t{i}": i},
            timestamp=f"2015-02-23T10:00:{i:02d}.{i:03d}Z",
        )
        for i in range(25)
    ]
    for message in messages:
        webhook.post(message)
    again = webhook.post(messages[0]).body
    assert (again["duplicate"], again["identities"]) == (1, 0), again


def test_an_identify_redelivered_after_a_later_one_of_its_millisecond_changes_nothing(
    webhook: Webhook,
) -> None:
    """Two identifies called in a row share a timestamp: the later one wins, and stays the winner."""
    at = "2026-11-24T01:00:00.000Z"
    first = segment_message(
        "identify", anonymousId=None, messageId="A", traits={"plan": "free"}, timestamp=at
    )
    second = segment_message(
        "identify", anonymousId=None, messageId="B", traits={"plan": "pro"}, timestamp=at
    )
    assert webhook.post(first).body["stored"] == 1
    assert webhook.post(second).body["stored"] == 1
    assert webhook.identity("user", first["userId"])["attributes"]["plan"] == "pro"

    again = webhook.post(first)  # Segment sends A again: its first answer was lost

    assert (again.body["stored"], again.body["duplicate"], again.body["identities"]) == (0, 1, 0)
    assert webhook.identity("user", first["userId"])["attributes"]["plan"] == "pro"


def test_an_untimed_identify_redelivered_after_a_newer_one_is_a_duplicate_and_changes_nothing(
    webhook: Webhook, receipt_clock: list[int]
) -> None:
    """Stamped with its time of receipt, it would otherwise win over the newer message on its retry."""
    untimed = segment_message("identify", anonymousId=None, traits={"plan": "free"}, **NO_TIME)
    assert webhook.post(untimed).body["stored"] == 1
    again = webhook.post(untimed)
    assert (again.body["stored"], again.body["duplicate"], again.body["identities"]) == (0, 1, 0)
    newer = segment_message(
        "identify",
        anonymousId=None,
        messageId="newer",
        traits={"plan": "pro"},
        timestamp="2026-11-24T01:30:00Z",
    )
    assert webhook.post(newer).body["stored"] == 1
    receipt_clock[0] += 3_600_000_000_000  # Segment retries an hour later
    retried = webhook.post(untimed)
    assert (retried.body["stored"], retried.body["duplicate"]) == (0, 1)
    identity = webhook.identity("user", untimed["userId"])
    assert identity is not None
    assert identity["attributes"]["plan"] == "pro"
    assert identity["untimedMessageIds"] == {untimed["messageId"]: 1_795_483_041_109}


# ---------------------------------------------------------------------------------------------
# Events in time order


def test_a_users_events_are_one_query_in_time_order(webhook: Webhook) -> None:
    messages = tracks(5)
    webhook.post(list(reversed(messages)))
    events = webhook.stored_events("user", "u-1")
    assert [e["messageId"] for e in events] == [f"msg-{i}" for i in range(5)]
    newest = webhook.events.events_of("Production", "user", "u-1", newest_first=True, limit=2)
    assert [e["messageId"] for e in newest] == ["msg-4", "msg-3"]


def test_a_limited_read_of_a_users_events_stops_at_the_limit_across_pages(webhook: Webhook) -> None:
    webhook.post(tracks(5))
    pages_cut_at(webhook.events.client, "dynamodb.Query", 2)
    newest = webhook.events.events_of("Production", "user", "u-1", newest_first=True, limit=3)
    assert [e["messageId"] for e in newest] == ["msg-4", "msg-3", "msg-2"]


def test_time_order_holds_for_events_from_before_epoch_ms_had_13_digits(webhook: Webhook) -> None:
    """Epoch milliseconds gained their 13th digit on 2001-09-09T01:46:40Z: a message from before
    that still comes first when a user's events are read in time order."""
    times = {
        "after": "2001-09-09T01:46:40.000Z",  # 1_000_000_000_000
        "long-before": "1999-12-31T23:59:59.000Z",  # 946_684_799_000
        "just-before": "2001-09-09T01:46:39.999Z",  # 999_999_999_999
    }
    messages = [
        segment_message(kind, userId="u-1", anonymousId=None, name="home", messageId=name, timestamp=at)
        for (name, at), kind in zip(times.items(), ("track", "page", "track"), strict=True)
    ]
    assert webhook.post(messages).body["stored"] == 3

    events = webhook.stored_events("user", "u-1")
    assert [(e["messageId"], e["timestamp"]) for e in events] == [
        ("long-before", Decimal(946_684_799_000)),
        ("just-before", Decimal(999_999_999_999)),
        ("after", Decimal(1_000_000_000_000)),
    ]
    newest = webhook.events.events_of("Production", "user", "u-1", newest_first=True, limit=1)
    assert [e["messageId"] for e in newest] == ["after"]


def test_stored_value_and_properties(webhook: Webhook) -> None:
    webhook.post(
        segment_message(
            "track",
            anonymousId=None,
            properties={"revenue": 19.99, "cart": {"n": 2}, "split": [{"account": "a-1"}]},
        ),
    )
    assert webhook.count_events() == 2
    config.clear_caches()
    webhook_with_value = Webhook.create(
        lambda _: webhook.env, webhook.context, valueField="properties.revenue"
    )
    webhook_with_value.post(
        segment_message("track", messageId="with-value", anonymousId=None, properties={"revenue": 19.99})
    )
    by_id = {e["messageId"]: e for e in webhook.stored_events("user", "AiUGstSDIg")}
    assert "value" not in by_id["ajs-f8ca1e4de5024d9430b3928bd8ac6b96"]
    assert by_id["with-value"]["value"] == Decimal("19.99")
    account_event = webhook.stored_events("account", "a-1")[0]
    assert account_event["properties"] == {"revenue": Decimal("19.99"), "cart": '{"n":2}'}


@pytest.mark.parametrize(("days", "expected"), [(None, 90), ("7", 7)], ids=["default", "EventRetentionDays"])
def test_a_stored_event_expires_its_retention_days_after_it_was_received(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch, days: str | None, expected: int
) -> None:
    if days is None:
        monkeypatch.delenv("EVENT_RETENTION_DAYS", raising=False)
    else:
        monkeypatch.setenv("EVENT_RETENTION_DAYS", days)
    webhook.post(segment_message("track", anonymousId=None))
    [event] = webhook.stored_events("user", "AiUGstSDIg")
    assert event["expiresAt"] == event["receivedAt"] // 1000 + expected * 86_400


# ---------------------------------------------------------------------------------------------
# Identities


def test_identify_then_newer_and_older_traits(webhook: Webhook) -> None:
    webhook.post(segment_message("identify", anonymousId=None))
    newer = segment_message(
        "identify",
        anonymousId=None,
        messageId="n",
        timestamp="2015-03-01T00:00:00Z",
        traits={"plan": "enterprise"},
    )
    older = segment_message(
        "identify",
        anonymousId=None,
        messageId="o",
        timestamp="2015-01-01T00:00:00Z",
        traits={"plan": "free", "age": 40},
    )
    webhook.post([newer, older])
    identity = webhook.identity("user", "97980cfea0067")
    assert identity is not None
    assert identity["attributes"]["plan"] == "enterprise"
    assert identity["attributes"]["age"] == 40  # new attribute, even from an older message
    assert identity["attributes"]["name"] == "Peter Gibbons"
    assert json.loads(identity["attributes"]["address"])["city"] == "San Francisco"
    assert set(identity) >= {"environment", "trafficTypeName", "key", "attributes", "updatedAt"}
    assert isinstance(identity["updatedAt"], Decimal)
    assert identity["updatedAt"] > Decimal(1_700_000_000_000)  # epoch ms of receipt
    assert identity["environment"] == "Production"
    assert identity["trafficTypeName"] == "user"


def test_group_with_traits_split_identifies_the_account(webhook: Webhook) -> None:
    answer = webhook.post(segment_message("group_split"))
    assert answer.body["identities"] == 1
    identity = webhook.identity("account", "4d3405a0-9ca5-11e5-9706-16a11fb02dec")
    assert identity is not None
    assert identity["attributes"] == {
        "name": "Initech",
        "industry": "Technology",
        "employees": 329,
        "plan": "enterprise",
    }


@pytest.mark.parametrize("one_body", [False, True], ids=["two-requests", "one-body"])
def test_an_identify_and_a_group_with_one_message_id_and_time_both_apply(
    webhook: Webhook, one_body: bool
) -> None:
    """Segment's spec examples give an identify and a group call one messageId and timestamp: the
    group's traits are not taken for a redelivery of the identify."""
    identify = segment_message("identify", anonymousId=None)
    group = segment_message("group_split", traits={"split": {"user": identify["userId"]}, "industry": "Tech"})
    assert (identify["messageId"], identify["timestamp"]) == (group["messageId"], group["timestamp"])

    if one_body:
        answer = webhook.post([identify, group]).body
        assert (answer["stored"], answer["duplicate"], answer["identities"]) == (2, 0, 1), answer
    else:
        webhook.post(identify)
        answer = webhook.post(group).body
        assert (answer["stored"], answer["duplicate"], answer["identities"]) == (1, 0, 1), answer

    attributes = webhook.identity("user", identify["userId"])["attributes"]
    assert attributes["industry"] == "Tech"
    assert attributes["email"] == identify["traits"]["email"]
    # Each is still recognised when Segment sends it again.
    again = webhook.post([identify, group]).body
    assert (again["stored"], again["duplicate"], again["identities"]) == (0, 2, 0), again


class RacingIdentitiesTable(IdentitiesTable):
    """Something comes between this request's read and its write, after each of its first ``races``
    reads: ``competitor``, another request updating the identity (or a read failing, when it raises)."""

    def __init__(self, name: str, competitor: Any, races: int = 1) -> None:
        super().__init__(name)
        self.competitor = competitor
        self.races = races
        self.reads = 0

    def get_many(self, pks: Any) -> dict[str, StoredIdentity]:
        found = super().get_many(pks)
        self.reads += 1
        if self.reads <= self.races:
            self.competitor()
        return found


def test_concurrent_identity_updates_are_both_kept(webhook: Webhook) -> None:
    from shared.inbound.ingest import store
    from shared.inbound.mapping import map_messages

    webhook.post(segment_message("identify", anonymousId=None, traits={"plan": "pro"}))
    competing = segment_message(
        "identify", anonymousId=None, messageId="c", timestamp="2015-03-01T00:00:00Z", traits={"seats": 10}
    )
    mine = segment_message(
        "identify",
        anonymousId=None,
        messageId="m",
        timestamp="2015-03-02T00:00:00Z",
        traits={"plan": "enterprise"},
    )
    racing = RacingIdentitiesTable(
        webhook.env["IDENTITIES_TABLE"], competitor=lambda: webhook.post(competing)
    )
    connection = config.load_inbound("acme-production")
    report = store(
        map_messages([mine], connection, 1_795_625_347_000),
        "acme-production",
        1_795_625_347_000,
        webhook.events,
        racing,
    )
    assert report.stored == 1
    assert racing.reads == 2  # the conditional write failed once, then merged again
    identity = webhook.identity("user", "97980cfea0067")
    assert identity is not None
    assert identity["attributes"] == {"plan": "enterprise", "seats": 10}
    assert identity["version"] == 3


def test_a_race_on_one_of_a_few_identities_retries_only_that_one(webhook: Webhook) -> None:
    from shared.inbound.ingest import store
    from shared.inbound.mapping import map_messages

    competing = segment_message(
        "identify",
        userId="racer-1",
        anonymousId=None,
        messageId="c",
        traits={"seats": 10},
        timestamp="2015-03-01T00:00:00Z",
    )
    mine = [
        segment_message(
            "identify",
            userId=f"racer-{i}",
            anonymousId=None,
            messageId=f"m-{i}",
            traits={"plan": "pro"},
            timestamp="2015-03-02T00:00:00Z",
        )
        for i in range(3)
    ]
    pending: list[list[str]] = []

    class Recording(RacingIdentitiesTable):
        def get_many(self, pks: Any) -> dict[str, StoredIdentity]:
            pending.append(sorted(pks))
            return super().get_many(pks)

    racing = Recording(webhook.env["IDENTITIES_TABLE"], competitor=lambda: webhook.post(competing))
    connection = config.load_inbound("acme-production")
    now = 1_795_625_347_000
    report = store(map_messages(mine, connection, now), "acme-production", now, webhook.events, racing)
    assert report.identities == 3
    assert len(pending) == 2
    assert len(pending[0]) == 3
    assert pending[1] == [pk for pk in pending[0] if pk.endswith("racer-1")]  # the others were written
    racer = webhook.identity("user", "racer-1") or {}
    assert (racer["attributes"], racer["version"]) == ({"plan": "pro", "seats": 10}, 2)
    assert (webhook.identity("user", "racer-0") or {})["version"] == 1


def failing_read(code: str) -> Any:
    """An identity read failing with ``code`` (after every retry below it)."""

    def fail() -> None:
        raise ClientError({"Error": {"Code": code, "Message": "injected"}}, "BatchGetItem")

    return fail


def test_an_identity_read_still_throttled_is_read_again_and_a_refused_one_fails_the_request(
    webhook: Webhook,
) -> None:
    now = 1_795_625_347_000
    connection = config.load_inbound("acme-production")
    mapped = map_messages([segment_message("identify", anonymousId=None)], connection, now)

    throttled = RacingIdentitiesTable(webhook.env["IDENTITIES_TABLE"], failing_read("ThrottlingException"))
    assert store(mapped, "acme-production", now, webhook.events, throttled).identities == 1
    assert throttled.reads == 2
    refused = RacingIdentitiesTable(webhook.env["IDENTITIES_TABLE"], failing_read("ValidationException"))
    with pytest.raises(ClientError, match="ValidationException"):
        store(mapped, "acme-production", now, webhook.events, refused)
    assert refused.reads == 1


@pytest.mark.parametrize("races", [IDENTITY_ATTEMPTS - 1, IDENTITY_ATTEMPTS])
def test_an_identity_write_that_keeps_losing_races_is_retried_and_then_a_store_unavailable(
    webhook: Webhook, races: int
) -> None:
    """Never a 200 for an identity left unwritten: after the last attempt Segment is told to retry."""
    now = 1_795_625_347_000

    def compete() -> None:
        competing = segment_message(
            "identify", anonymousId=None, messageId=f"c-{racing.reads}", traits={"seats": racing.reads}
        )
        assert webhook.post(competing).body["identities"] == 1

    racing = RacingIdentitiesTable(webhook.env["IDENTITIES_TABLE"], competitor=compete, races=races)
    mine = segment_message("identify", anonymousId=None, messageId="mine", traits={"plan": "pro"})
    mapped = map_messages([mine], config.load_inbound("acme-production"), now)
    if races < IDENTITY_ATTEMPTS:
        assert store(mapped, "acme-production", now, webhook.events, racing).identities == 1
        assert (webhook.identity("user", mine["userId"]) or {})["attributes"]["plan"] == "pro"
    else:
        with pytest.raises(dynamodb.StoreUnavailable, match="kept conflicting"):
            store(mapped, "acme-production", now, webhook.events, racing)
    assert racing.reads == IDENTITY_ATTEMPTS


# ---------------------------------------------------------------------------------------------
# Deletion


def test_delete_removes_the_users_identity_and_events_in_every_mapped_traffic_type(webhook: Webhook) -> None:
    user = "97980cfea0067"
    webhook.post([segment_message("identify", anonymousId=None), *tracks(30, user=user)])
    # the same id used as an anonymous key too
    webhook.post(segment_message("track", userId=None, anonymousId=user, messageId="anon"))
    webhook.post(segment_message("track", messageId="other-user", anonymousId=None, userId="someone-else"))
    assert len(webhook.stored_events("user", user)) == 30
    answer = webhook.post(segment_message("delete"))
    assert answer.body["deleted"] == 1
    assert webhook.stored_events("user", user) == []
    assert webhook.stored_events("anonymous", user) == []
    assert webhook.identity("user", user) is None
    assert len(webhook.stored_events("user", "someone-else")) == 1


def test_delete_removes_the_flags_the_user_saw_and_leaves_audiences_to_exit(webhook: Webhook) -> None:
    from shared import profiles_table
    from shared.profiles_table import LastTreatment, Membership

    user = "97980cfea0067"
    for traffic_type, who, split in [("user", user, "f"), ("user", user, "g"), ("anonymous", user, "f")]:
        profiles_table.write_last_treatment(LastTreatment("Production", traffic_type, who, split, "on", 5))
    profiles_table.write_last_treatment(LastTreatment("Production", "user", "someone-else", "f", "off", 5))
    # The audiences function exits this membership from the deletion's stream records (and tells
    # Segment), so it is not the webhook's to delete.
    pk = profiles_table.profile_pk("Production", "user", user)
    profiles_table.put_membership(Membership(pk, "fans", True, 1, 5), expected_transitions=None)

    assert webhook.post(segment_message("delete")).body["deleted"] == 1

    def treatments(traffic_type: str, key: str) -> dict[str, Any]:
        items = profiles_table.profile_items(profiles_table.profile_pk("Production", traffic_type, key))
        return profiles_table.treatments_of(items)

    assert treatments("user", user) == {}
    assert treatments("anonymous", user) == {}
    assert set(treatments("user", "someone-else")) == {"f"}
    assert set(profiles_table.memberships_of(profiles_table.profile_items(pk))) == {"fans"}


def test_a_body_takes_effect_in_order_around_a_deletion(webhook: Webhook) -> None:
    """What precedes a user's deletion in the body goes with it; what follows it is kept."""
    user = "97980cfea0067"
    webhook.post(segment_message("track", userId=user, anonymousId=None, messageId="earlier-request"))
    answer = webhook.post(
        [
            segment_message("track", userId=user, anonymousId="anon-1", messageId="before"),
            segment_message("identify", userId=user, anonymousId=None, traits={"plan": "basic"}),
            segment_message("delete", userId=user),
            segment_message("track", userId=user, anonymousId=None, messageId="after"),
            segment_message("identify", userId=user, anonymousId=None, messageId="id-2", traits={"seats": 3}),
            segment_message("track", userId="someone-else", anonymousId=None, messageId="other"),
        ]
    )
    assert answer.status == 200
    assert {k: answer.body[k] for k in ("received", "stored", "duplicate", "deleted")} == {
        "received": 6,
        "stored": 5,
        "duplicate": 0,
        "deleted": 1,
    }
    assert [e["messageId"] for e in webhook.stored_events("user", user)] == ["after"]
    # the anonymous identity of the message before the deletion is another identity: kept
    assert [e["messageId"] for e in webhook.stored_events("anonymous", "anon-1")] == ["before"]
    identity = webhook.identity("user", user)
    assert identity is not None
    assert identity["attributes"] == {"seats": 3}
    assert [e["messageId"] for e in webhook.stored_events("user", "someone-else")] == ["other"]


def test_a_body_that_tracks_and_then_deletes_a_user_leaves_nothing_of_them(webhook: Webhook) -> None:
    user = "97980cfea0067"
    answer = webhook.post(
        [
            segment_message("identify", userId=user, anonymousId=None),
            *tracks(3, user=user),
            segment_message("delete", userId=user),
        ]
    )
    assert (answer.body["stored"], answer.body["deleted"], answer.body["events"]) == (4, 1, 0)
    assert webhook.stored_events("user", user) == []
    assert webhook.identity("user", user) is None


def test_a_body_deleting_one_user_twice_deletes_them_once(webhook: Webhook) -> None:
    """DynamoDB refuses a BatchWriteItem whose keys repeat: the two deletions are one."""
    user = "97980cfea0067"
    webhook.post([segment_message("identify", userId=user, anonymousId=None), *tracks(2, user=user)])
    answer = webhook.post(
        [segment_message("delete", userId=user), segment_message("delete", userId=user, messageId="again")]
    )
    assert answer.status == 200
    assert (answer.body["received"], answer.body["deleted"]) == (2, 2)
    assert webhook.stored_events("user", user) == []
    assert webhook.identity("user", user) is None


# ---------------------------------------------------------------------------------------------
# Batching: requests per stored event


def test_an_identity_too_large_for_dynamodb_is_dropped_and_the_others_are_stored(webhook: Webhook) -> None:
    # Merged, its attributes would exceed DynamoDB's 400 KB item limit: DynamoDB would refuse it,
    # and with it the request, on every retry.
    huge_traits = {f"trait_{i:04d}": "x" * 255 for i in range(1_500)}
    body = [
        segment_message("track", messageId="the-track"),
        segment_message(
            "identify", messageId="huge", userId="huge-user", anonymousId=None, traits=huge_traits
        ),
        segment_message(
            "identify", messageId="fine", userId="fine-user", anonymousId=None, traits={"plan": "pro"}
        ),
        segment_message("track", messageId="no-event", event=None),
    ]
    answer = webhook.post(body)
    assert answer.status == 200, answer.body
    assert (answer.body["stored"], answer.body["dropped"]) == (2, 2)
    # in the order of the body, though the mapping dropped the later message first
    assert [(d["index"], d["reason"]) for d in answer.body["drops"]] == [
        (1, "identity_too_large"),
        (3, "missing_event_type_id"),
    ]
    assert webhook.identity("user", "huge-user") is None
    assert (webhook.identity("user", "fine-user") or {})["attributes"]["plan"] == "pro"
    assert webhook.post(body).status == 200  # and so does Segment's retry


def test_large_body_uses_batched_requests(webhook: Webhook) -> None:
    calls: Counter[str] = Counter()
    client = dynamodb.client()
    client.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.update([model.name]))
    messages = tracks(1000)
    answer = webhook.post(messages)
    assert answer.body["events"] == 1000
    assert calls == {"BatchGetItem": 10, "BatchWriteItem": 40}
    assert sum(calls.values()) / answer.body["events"] <= 0.05


def test_every_identity_is_one_conditional_put(webhook: Webhook) -> None:
    """One write unit per identity (a transaction costs two), and a lost race refuses only its own."""
    calls: Counter[str] = Counter()
    dynamodb.client().meta.events.register(
        "before-call.dynamodb.*", lambda model, **_: calls.update([model.name])
    )

    def identifies(count: int, plan: str) -> list[dict[str, Any]]:
        return [
            segment_message(
                "identify",
                messageId=f"{plan}-{i}",
                userId=f"user-{i}",
                anonymousId=None,
                traits={"plan": plan},
            )
            for i in range(count)
        ]

    webhook.post(segment_message("identify", anonymousId=None, traits={"plan": "pro"}))
    assert calls == {"BatchGetItem": 1, "PutItem": 1}
    calls.clear()
    assert webhook.post(identifies(120, "free")).body["stored"] == 120
    assert calls == {"BatchGetItem": 2, "PutItem": 120}
    assert (webhook.identity("user", "user-119") or {})["version"] == 1
    calls.clear()
    assert webhook.post(identifies(120, "team")).body["stored"] == 120
    assert calls == {"BatchGetItem": 2, "PutItem": 120}
    updated = webhook.identity("user", "user-119") or {}
    assert (updated["version"], updated["attributes"]["plan"]) == (2, "team")


def test_identities_are_read_strongly_consistent_because_their_versions_feed_the_conditions(
    webhook: Webhook,
) -> None:
    """An eventually consistent read could return the version before a write just made, and every
    conditional put built on it would fail until the read caught up."""
    reads: list[tuple[str, Any]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "BatchGetItem":
            reads.extend(
                (table, read.get("ConsistentRead")) for table, read in params["RequestItems"].items()
            )

    events = dynamodb.client().meta.events
    events.register("provide-client-params.dynamodb.*", record)
    try:
        webhook.post(segment_message("identify", anonymousId=None, traits={"plan": "pro"}))
        webhook.post(segment_message("identify", anonymousId=None, messageId="m2", traits={"plan": "team"}))
    finally:
        events.unregister("provide-client-params.dynamodb.*", record)
    assert reads == [(webhook.env["IDENTITIES_TABLE"], True)] * 2
    assert (webhook.identity("user", "97980cfea0067") or {})["version"] == 2


def test_unprocessed_items_are_retried(webhook: Webhook) -> None:
    from shared import dynamodb

    real = dynamodb.client()

    class Throttling:
        """The real client, except that the first write leaves half of its items unprocessed."""

        def __init__(self) -> None:
            self.writes = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
            self.writes += 1
            if self.writes > 1:
                return real.batch_write_item(RequestItems=RequestItems)
            ((table, requests),) = RequestItems.items()
            half = len(requests) // 2
            real.batch_write_item(RequestItems={table: requests[:half]})
            return {"UnprocessedItems": {table: requests[half:]}}

    throttling = Throttling()
    sleeps: list[float] = []
    dynamodb.batch_write(
        throttling,
        webhook.env["EVENTS_TABLE"],
        [{"PutRequest": {"Item": {"pk": {"S": "p"}, "sk": {"S": f"{i:03d}"}}}} for i in range(20)],
        sleep=sleeps.append,
    )
    assert throttling.writes == 2
    assert len(sleeps) == 1
    assert webhook.count_events() == 20


# ---------------------------------------------------------------------------------------------
# Failures: 503, never 500, and a retry afterwards stores everything once


def test_dynamodb_failure_is_a_503_and_the_retry_stores_once(webhook: Webhook) -> None:
    client = boto3.client("dynamodb", region_name=REGION)
    table = webhook.env["IDENTITIES_TABLE"]
    description = client.describe_table(TableName=table)["Table"]
    client.delete_table(TableName=table)
    body = [*tracks(40), segment_message("identify", anonymousId=None)]
    failed = webhook.post(body)
    assert failed.status == 503
    assert failed.body["error"] == "unavailable"
    assert "Traceback" not in json.dumps(failed.body)
    client.create_table(
        TableName=table,
        KeySchema=description["KeySchema"],
        AttributeDefinitions=description["AttributeDefinitions"],
        BillingMode="PAY_PER_REQUEST",
    )
    retried = webhook.post(body)
    assert retried.status == 200
    assert (retried.body["stored"], retried.body["duplicate"]) == (1, 40)  # events made it the first time
    assert webhook.count_events() == 40


def test_configuration_store_failure_is_a_503(webhook: Webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(name: str, previous: bool = False) -> str:
        raise config.ConfigUnavailable(f"{name}: ThrottlingException")

    monkeypatch.setattr(config, "get_secret", unavailable)
    answer = webhook.post(segment_message("track"))
    assert answer.status == 503
    assert "ThrottlingException" not in json.dumps(answer.body)


def test_invalid_connection_config_is_a_503_naming_the_fields(
    webhook: Webhook, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import put_config

    put_config("inbound/acme-production", {"environment": "Production", "identities": [], "enableTrak": True})
    config.clear_caches()
    answer = webhook.post(segment_message("track"))
    assert answer.status == 503
    assert answer.body["error"] == "config_invalid"
    # The authenticated caller learns which fields are wrong, not where the config is stored.
    assert "identities" in answer.body["message"]
    assert "enableTrak" in answer.body["message"]
    assert "/inbound/" not in answer.body["message"]
    # Counted apart from an outage (the log names the field for the operator).
    metrics = published_metrics(capsys.readouterr().out)
    assert [m.get("ConfigInvalid") for m in metrics] == [[1.0]]
    assert metrics[0]["Unavailable"] == [1.0]


def test_throttling_near_the_lambda_timeout_answers_503_in_time(webhook: Webhook) -> None:
    from botocore.awsrequest import AWSResponse

    def always_unprocessed(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        request_items = json.loads(params["body"])["RequestItems"]
        return AWSResponse("https://dynamodb", 200, {}, None), {"UnprocessedItems": request_items}

    dynamodb.client().meta.events.register("before-call.dynamodb.BatchWriteItem", always_unprocessed)
    webhook.context.remaining_ms = 1_700  # the handler keeps a 1.5 s margin
    answer = webhook.post(tracks(30))
    assert answer.status == 503
    assert answer.headers["Retry-After"] == "5"
    assert answer.body == {"error": "unavailable", "message": OUT_OF_TIME}


def test_a_request_that_hangs_is_answered_503_before_the_lambda_times_out(webhook: Webhook) -> None:
    """A DynamoDB call that never answers waits botocore's read timeout on every attempt; a Lambda
    timeout would reach Segment as a 500. The handler answers 503 at its deadline instead, and a
    request after hung ones does not wait behind them."""
    import threading
    import time

    release = threading.Event()

    def hang(**_: Any) -> None:
        release.wait(timeout=10)

    dynamodb.client().meta.events.register("before-call.dynamodb.PutItem", hang)
    webhook.context.remaining_ms = 2_000  # 1.5 s margin: 0.5 s to store
    for n in range(3):
        started = time.monotonic()
        answer = webhook.post(segment_message("track", messageId=f"hung-{n}"))
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "5"
        assert answer.body == {"error": "unavailable", "message": OUT_OF_TIME}
        # About 0.5 s, not the 10 s a hung call takes: bounded loosely for a loaded machine.
        assert time.monotonic() - started < 5

    # DynamoDB answers again while those three are still stuck: the next request is stored at once.
    dynamodb.client().meta.events.unregister("before-call.dynamodb.PutItem", hang)
    answer = webhook.post(segment_message("track", messageId="after"))
    assert answer.status == 200
    assert answer.body["stored"] == 1

    # The hung requests end on their own and store their messages; Segment's retries find them stored.
    release.set()
    deadline = time.monotonic() + 30  # a loaded machine runs the three late threads slowly
    while webhook.count_events() < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert webhook.count_events() == 8  # each hung request stored its two events
    webhook.context.remaining_ms = 60_000
    retried = webhook.post([segment_message("track", messageId=f"hung-{n}") for n in range(3)])
    assert retried.status == 200
    assert (retried.body["stored"], retried.body["duplicate"]) == (0, 3)
    assert webhook.count_events() == 8
