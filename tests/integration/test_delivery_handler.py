"""The delivery handler, invoked the way Lambda's DynamoDB Streams event source invokes it.

moto for AWS (tables, queue, SSM, Secrets Manager from template.yaml), the loopback FME sink for FME.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from fme_bridge.fme_sink import FmeSink
from fme_bridge.template import Stack
from tests.conftest import pages_cut_at, published_metrics, put_config, put_secret
from tests.delivery_support import (
    ADMIN_KEY,
    SDK_KEY,
    connect,
    deliver_one_by_one,
    delivery_app,
    event_item,
    events_table,
    failed_ids,
    failure_messages,
    identity_item,
    identity_record,
    invoke,
    sample_event,
    stream_event,
    stream_record,
)

# ---------------------------------------------------------------------------------------------
# Events


def test_sample_insert_reaches_fme_as_the_exact_events_bulk_payload(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    response = invoke(sample_event("dynamodb_stream_event_insert.json", events_table(stack)), lambda_context)

    assert response == {"batchItemFailures": []}
    assert [r.status for r in sink.requests] == [202]
    assert sink.requests[0].path == "/api/events/bulk"
    assert len(sink.events) == 1
    assert sink.events[0].sdk_key == SDK_KEY
    assert sink.events[0].event == {
        "eventTypeId": "Order_Completed",
        "trafficTypeName": "user",
        "key": "41e51150-6825-11e8-9f57-0acd31e5aef0",
        "value": 99.84,
        "timestamp": 1449947461152,
        "environmentName": "Production",
        "properties": {
            "checkout_id": "fksdjfsdjfisjf9sdfjsd9f",
            "order_id": "50314b8e9bcf000000000000",
            "total": 27.5,
            "coupon": None,
            "first_order": True,
            "products": '[{"product_id":"507f1f77bcf86cd799439011","quantity":1}]',
        },
    }


@pytest.mark.parametrize("source", [None, "arn:aws:dynamodb:us-east-1:123456789012:table/{logical}/stream/x"])
def test_a_record_whose_stream_arn_names_no_table_of_the_stack_is_told_apart_by_its_keys(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any, source: str | None
) -> None:
    """A hand-built stream event may name no table (or the template's logical name): an event has a
    sort key, an identity none."""
    connect(sink)
    samples = {
        "EventsTable": "dynamodb_stream_event_insert.json",
        "IdentitiesTable": "dynamodb_stream_identity_modify.json",
    }
    records = []
    for logical, sample in samples.items():
        [record] = sample_event(sample, stack.tables[logical])["Records"]
        if source is None:
            del record["eventSourceARN"]
        else:
            record["eventSourceARN"] = source.format(logical=logical)
        records.append(record)

    assert invoke({"Records": records}, lambda_context) == {"batchItemFailures": []}
    assert [e.event["key"] for e in sink.events] == ["41e51150-6825-11e8-9f57-0acd31e5aef0"]
    assert [u.key for u in sink.identity_updates] == ["97980cfea0067"]


def test_an_event_without_records_is_answered_with_no_failures(
    delivery_env: dict[str, str], sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    assert invoke({"Records": []}, lambda_context) == {"batchItemFailures": []}
    assert invoke({}, lambda_context) == {"batchItemFailures": []}
    assert sink.requests == []


def test_a_retried_batch_sends_only_what_fme_has_not_acknowledged(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    first = stream_record(events_table(stack), event_item("u1", timestamp=1764061200001))
    second = stream_record(events_table(stack), event_item("u2", timestamp=1764061200002))
    assert invoke(stream_event(first), lambda_context) == {"batchItemFailures": []}

    # The stream hands the batch back (e.g. after a later record failed): first comes round again.
    response = invoke(stream_event(first, second), lambda_context)

    assert response == {"batchItemFailures": []}
    assert sorted(e.event["key"] for e in sink.events) == ["u1", "u2"]


def failing_batch(stack: Stack, sink: FmeSink) -> list[dict[str, Any]]:
    """Three events' stream records, for a connection whose FME answers 503 until the faults are cleared."""
    connect(sink)
    sink.fail_next(1000, 503)
    return [
        stream_record(events_table(stack), event_item(f"u{i}", timestamp=1764061200000 + i)) for i in range(3)
    ]


def test_events_still_failing_at_the_deadline_are_batch_item_failures_and_sent_once_later(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    records = failing_batch(stack, sink)

    response = invoke(stream_event(*records), lambda_context, seconds=1.8)

    assert failed_ids(response) == [r["dynamodb"]["SequenceNumber"] for r in records]
    assert sink.events == []

    sink.clear_faults()
    assert invoke(stream_event(*records), lambda_context, seconds=10) == {"batchItemFailures": []}
    assert sorted(e.event["key"] for e in sink.events) == ["u0", "u1", "u2"]


def test_rate_limit_and_server_errors_are_retried_within_the_invocation(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    sink.rate_limit_next(1, reset_seconds=0)
    sink.fail_next(1, 500)
    record = stream_record(events_table(stack), event_item("u1"))

    assert invoke(stream_event(record), lambda_context, seconds=20) == {"batchItemFailures": []}

    assert [r.status for r in sink.requests] == [429, 500, 202]
    assert len(sink.events) == 1


def assert_rate_limit_waited_out(
    record: dict[str, Any], sink: FmeSink, lambda_context: Any, slept: list[float], **limit: str
) -> None:
    """A 429 asking for 5 minutes: the record is handed back after a wait of the rest of a 20 s
    invocation, less the deadline's margin."""
    sink.rate_limit_next(1, reset_seconds=300, **limit)

    response = invoke(stream_event(record), lambda_context, seconds=20)

    assert failed_ids(response) == [record["dynamodb"]["SequenceNumber"]]
    [waited] = slept
    assert 15 < waited <= 20 - 1.5  # the rest of the invocation, less the deadline's margin


def test_a_rate_limit_longer_than_the_invocation_is_waited_out_before_the_stream_retries(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lambda retries a stream batch at once: a reset of minutes would use up the retries in seconds."""
    connect(sink)
    slept: list[float] = []
    monkeypatch.setattr(delivery_app(), "_sleep", slept.append)
    record = stream_record(events_table(stack), event_item("u1"))

    assert_rate_limit_waited_out(record, sink, lambda_context, slept)

    # A reset longer than the stream's retries can span ends in the failure queue anyway: not held.
    slept.clear()
    sink.rate_limit_next(1, reset_seconds=3600)
    assert failed_ids(invoke(stream_event(record), lambda_context, seconds=20))
    assert slept == []

    # ... but it does not stop the hold for another connection's shorter one in the same batch.
    connect(sink, connection_id="app")
    other = stream_record(events_table(stack), {**event_item("u2"), "connectionId": "app"})
    sink.rate_limit_next(1, reset_seconds=3600)
    sink.rate_limit_next(1, reset_seconds=120)
    assert len(failed_ids(invoke(stream_event(record, other), lambda_context, seconds=20))) == 2
    [waited] = slept
    assert 15 < waited <= 20 - 1.5

    # A failure that asks for no wait (a server error past the retries) is handed back at once.
    slept.clear()
    sink.fail_next(50, 503)
    assert failed_ids(invoke(stream_event(record), lambda_context, seconds=3))
    assert slept == []


def test_an_identity_save_rate_limited_longer_than_the_invocation_is_waited_out_too(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connect(sink)
    slept: list[float] = []
    monkeypatch.setattr(delivery_app(), "_sleep", slept.append)
    record = identity_record(stack.tables["IdentitiesTable"], identity_item("u1", {"plan": "pro"}))

    assert_rate_limit_waited_out(record, sink, lambda_context, slept, path_contains="/identities")


def test_a_timed_out_request_is_retried(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    sink.hang_next(1, seconds=1.0)
    record = stream_record(events_table(stack), event_item("u1"))

    assert invoke(stream_event(record), lambda_context, seconds=20) == {"batchItemFailures": []}

    assert len(sink.events) == 1


def test_an_event_fme_refuses_goes_to_the_failure_queue_without_its_neighbours(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    good = [
        stream_record(events_table(stack), event_item(f"u{i}", timestamp=1764061200000 + i)) for i in range(3)
    ]
    bad = stream_record(events_table(stack), event_item("x" * 251))  # FME refuses keys over 250 characters
    batch = stream_event(good[0], bad, good[1], good[2])

    response = invoke(batch, lambda_context)

    assert response == {"batchItemFailures": []}  # permanent: not retried forever
    assert sorted(e.event["key"] for e in sink.events) == ["u0", "u1", "u2"]
    [message] = failure_messages(stack)
    assert message["kind"] == "events"
    assert message["connectionId"] == "webshop"
    assert message["status"] == 400
    assert "key is longer than 250" in message["reason"]
    assert [i["event"]["key"] for i in message["items"]] == ["x" * 251]

    # The stream retries the batch: nothing is sent or queued twice.
    requests_before = len(sink.requests)
    assert invoke(batch, lambda_context) == {"batchItemFailures": []}
    assert len(sink.requests) == requests_before
    assert failure_messages(stack) == []


def test_a_wrong_sdk_key_is_permanent_and_keeps_the_events(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink, keys={"sdkKey": "revoked-key", "adminKey": ADMIN_KEY})
    record = stream_record(events_table(stack), event_item("u1"))

    assert invoke(stream_event(record), lambda_context) == {"batchItemFailures": []}

    assert [r.status for r in sink.requests] == [401]  # not retried
    [message] = failure_messages(stack)
    assert message["status"] == 401
    assert message["items"][0]["event"]["key"] == "u1"
    assert "revoked-key" not in json.dumps(message)


def test_a_key_fme_keeps_refusing_is_read_again_within_the_secrets_read_budget(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Revoked in FME but still in the secret: every batch is refused, and each read past the cache
    would be a Secrets Manager call."""
    from shared import config, secret_versions

    monkeypatch.setattr(secret_versions, "SECRET_REFRESH_BURST", 2)
    monkeypatch.setattr(secret_versions, "SECRET_REFRESH_SECONDS", 3600.0)
    connect(sink, keys={"sdkKey": "revoked-key", "adminKey": ADMIN_KEY})
    fresh_reads: list[str] = []
    read = config.get_secret

    def counted(name: str, previous: bool = False, fresh: bool = False) -> str:
        if fresh:
            fresh_reads.append(name)
        return read(name, previous=previous, fresh=fresh)

    monkeypatch.setattr(config, "get_secret", counted)
    deliver_one_by_one(stack, lambda_context, [f"u{i}" for i in range(4)])

    assert fresh_reads == [config.inbound_name("webshop") + "/fme"] * 2
    assert [r.status for r in sink.requests] == [401] * 4
    assert len(failure_messages(stack)) == 4


def test_keys_revoked_first_and_rotated_soon_after_are_picked_up(
    delivery_env: dict[str, str], stack: Stack, lambda_context: Any
) -> None:
    with FmeSink(sdk_keys=["sdk-new"], admin_keys=[ADMIN_KEY]) as fme:
        connect(fme)  # the secret still holds the key FME revoked
        record = stream_record(events_table(stack), event_item("u0"))
        assert invoke(stream_event(record), lambda_context) == {"batchItemFailures": []}
        assert fme.events == []  # refused, read again: the same key, to the failure queue
        put_secret("inbound/webshop/fme", json.dumps({"sdkKey": "sdk-new", "adminKey": ADMIN_KEY}))
        record = stream_record(events_table(stack), event_item("u1", timestamp=1764061200001))
        assert invoke(stream_event(record), lambda_context) == {"batchItemFailures": []}
        assert [e.event["key"] for e in fme.events] == ["u1"]
        assert len(failure_messages(stack)) == 1


def test_every_rotation_is_picked_up_whatever_an_earlier_read_found(
    delivery_env: dict[str, str], stack: Stack, lambda_context: Any
) -> None:
    from shared import config

    with FmeSink(sdk_keys=["k1"], admin_keys=[ADMIN_KEY]) as fme:
        connect(fme, keys={"sdkKey": "k0", "adminKey": ADMIN_KEY})
        deliver_one_by_one(stack, lambda_context, ["a"])  # k0 refused, read again: still k0
        put_secret("inbound/webshop/fme", json.dumps({"sdkKey": "k1", "adminKey": ADMIN_KEY}))
        config.clear_caches()  # the cache expires: k1 from now on
        deliver_one_by_one(stack, lambda_context, ["b"])
        fme.sdk_keys = {"k2"}  # k1 revoked, k2 stored
        put_secret("inbound/webshop/fme", json.dumps({"sdkKey": "k2", "adminKey": ADMIN_KEY}))
        deliver_one_by_one(stack, lambda_context, ["c"])

        assert [e.event["key"] for e in fme.events] == ["b", "c"]
        assert len(failure_messages(stack)) == 1  # a, refused with k0 while the secret held it


def test_an_acknowledgement_the_log_refused_still_keeps_a_retry_from_sending_the_event_again(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Lambda retries a batch from its first failed record: an event behind it that FME accepted, and
    whose acknowledgement could not be written, comes round again with it."""
    from shared.delivery.delivery_log import DeliveryLog

    with FmeSink(sdk_keys=[SDK_KEY], admin_keys=[ADMIN_KEY]) as down:
        connect(down, connection_id="alpha")
        connect(sink, connection_id="beta")
        down.fail_next(1000, 503)
        record = DeliveryLog.record
        failures = [RuntimeError("ProvisionedThroughputExceededException")]

        def refused_once(log: Any, ack_ids: Any, state: str, at_ms: int, reason: str | None = None) -> None:
            if state == "delivered" and failures:
                raise failures.pop()
            record(log, ack_ids, state, at_ms, reason)

        monkeypatch.setattr(DeliveryLog, "record", refused_once)
        batch = stream_event(
            stream_record(events_table(stack), event_item("a1", connection_id="alpha")),
            stream_record(
                events_table(stack), event_item("b1", connection_id="beta", timestamp=1764061200001)
            ),
        )
        capsys.readouterr()
        first = invoke(batch, lambda_context, seconds=5)  # beta delivered well within, even on a busy machine
        assert len(failed_ids(first)) == 1  # alpha's, and so the batch from it on
        (metrics,) = published_metrics(capsys.readouterr().out)
        assert metrics["AcknowledgementsNotRecorded"] == [1.0]
        down.clear_faults()
        assert invoke(batch, lambda_context, seconds=10) == {"batchItemFailures": []}

        assert [e.event["key"] for e in sink.events] == ["b1"]  # once
        assert [e.event["key"] for e in down.events] == ["a1"]
        # Written on the retry: a third delivery of the batch, from any container, skips it too.
        delivery_app().delivery()._unrecorded.clear()
        assert invoke(batch, lambda_context, seconds=10) == {"batchItemFailures": []}
        assert len(sink.events) == 1


def test_a_container_keeps_the_newest_acknowledgements_the_log_refused_up_to_its_bound(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/delivery.md: the container keeps the acknowledgements it could not write, up to a bound
    (MAX_UNRECORDED); past it the oldest go, and only their events are sent again."""
    from shared.delivery import service
    from shared.delivery.delivery_log import DeliveryLog

    monkeypatch.setattr(service, "MAX_UNRECORDED", 2)
    connect(sink)
    record = DeliveryLog.record
    broken = [True]

    def refused_while_broken(
        log: Any, ack_ids: Any, state: str, at_ms: int, reason: str | None = None
    ) -> None:
        if state == "delivered" and broken:
            raise RuntimeError("ProvisionedThroughputExceededException")
        record(log, ack_ids, state, at_ms, reason)

    monkeypatch.setattr(DeliveryLog, "record", refused_while_broken)
    records = [
        stream_record(events_table(stack), event_item(f"u{i}", timestamp=1764061200000 + i)) for i in range(3)
    ]
    for one in records:
        assert invoke(stream_event(one), lambda_context) == {"batchItemFailures": []}
    broken.clear()

    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}

    # u0's acknowledgement, the oldest, went when u2's came: only u0 is sent again.
    assert [e.event["key"] for e in sink.events] == ["u0", "u1", "u2", "u0"]


@pytest.mark.parametrize("kind", ["events", "identities"])
def test_connections_without_delivery_keep_their_records_local(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    connect(sink, connection_id="nodelivery", enabled=False)
    if kind == "events":
        records = [
            stream_record(events_table(stack), event_item("u1", connection_id="nodelivery")),
            stream_record(events_table(stack), event_item("u2", connection_id="deleted-connection")),
        ]
    else:
        records = [
            stream_record(
                stack.tables["IdentitiesTable"],
                identity_item("u1", {"plan": "pro"}, connection_id="nodelivery"),
                view="NEW_AND_OLD_IMAGES",
                key_names=("pk",),
            )
        ]

    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}

    assert sink.requests == []
    assert failure_messages(stack) == []
    (metrics,) = published_metrics(capsys.readouterr().out)
    skipped = "EventsSkippedDeliveryOff" if kind == "events" else "IdentitiesSkippedDeliveryOff"
    assert metrics[skipped] == [float(len(records))]


@pytest.mark.usefixtures("delivery_env")
def test_attributes_fme_would_refuse_are_counted_even_when_nothing_else_changed(
    stack: Stack, sink: FmeSink, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    connect(sink)
    table = stack.tables["IdentitiesTable"]
    inserted = identity_item("u1", {"First Name": "Ann", "$plan": "pro"})
    renamed = identity_item("u1", {"First Name": "Bob", "$plan": "pro"}, updated_at=1764061300000)
    touched = identity_item("u1", {"First Name": "Bob", "$plan": "pro"}, updated_at=1764061400000)
    records = [
        identity_record(table, inserted),
        identity_record(table, renamed, inserted),
        identity_record(table, touched, renamed),
    ]

    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}

    assert sink.requests == []  # FME would see nothing
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert metrics["IdentitiesUnchanged"] == [3.0]
    assert metrics["IdentityAttributesDropped"] == [3.0]  # both names set, one changed; none touched


@pytest.mark.parametrize("first", ["events", "identities"])
@pytest.mark.parametrize("refusal", [401, 403])
def test_rotated_keys_are_read_again_when_fme_refuses_the_cached_ones(
    delivery_env: dict[str, str], stack: Stack, lambda_context: Any, first: str, refusal: int
) -> None:
    """The keys secret is cached like the configs; a key FME no longer takes (401, or 403) is not
    the last word, for events and identities alike."""
    with FmeSink(sdk_keys=[SDK_KEY], admin_keys=[ADMIN_KEY]) as fme:
        connect(fme)
        invoke(stream_event(stream_record(events_table(stack), event_item("u0"))), lambda_context)
        assert len(fme.events) == 1  # the keys are cached now
        # Rotation: new keys in the secret, the old ones revoked in FME.
        put_secret("inbound/webshop/fme", json.dumps({"sdkKey": "sdk-new", "adminKey": "admin-new"}))
        fme.sdk_keys, fme.admin_keys = {"sdk-new"}, {"admin-new"}
        if refusal == 403:  # the sink answers a revoked key 401; FME may answer 403
            fme.fail_next(1, 403)

        records = [
            stream_record(events_table(stack), event_item("u1", timestamp=1764061200001)),
            stream_record(
                stack.tables["IdentitiesTable"],
                identity_item("u1", {"plan": "pro"}),
                view="NEW_AND_OLD_IMAGES",
                key_names=("pk",),
            ),
        ]
        for record in records if first == "events" else records[::-1]:
            assert invoke(stream_event(record), lambda_context) == {"batchItemFailures": []}

        assert [e.event["key"] for e in fme.events] == ["u0", "u1"]
        assert [u.key for u in fme.identity_updates] == ["u1"]
        assert failure_messages(stack) == []


def test_delivery_on_without_keys_is_a_visible_permanent_failure(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink, with_keys=False)
    record = stream_record(events_table(stack), event_item("u1"))

    assert invoke(stream_event(record), lambda_context) == {"batchItemFailures": []}

    assert sink.requests == []
    [message] = failure_messages(stack)
    assert "/inbound/webshop/fme does not exist" in message["reason"]


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("sdk-key-not-json", "not valid JSON"),
        (json.dumps({"adminKey": "admin-key-only"}), "sdkKey: Field required"),
        (json.dumps({"sdkKey": ""}), "sdkKey: String should have at least 1 character"),
        (json.dumps({"sdkKey": "k", "sdk_key": "k"}), "sdk_key: Extra inputs are not permitted"),
    ],
)
def test_fme_keys_that_do_not_validate_are_a_visible_permanent_failure(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any, secret: str, problem: str
) -> None:
    connect(sink, with_keys=False)
    put_secret("inbound/webshop/fme", secret)
    record = stream_record(events_table(stack), event_item("u1"))

    assert invoke(stream_event(record), lambda_context) == {"batchItemFailures": []}

    assert sink.requests == []
    [message] = failure_messages(stack)
    assert message["reason"].startswith(f"{os.environ['CONFIG_PREFIX']}/inbound/webshop/fme: {problem}")
    assert secret not in message["reason"]
    assert [i["event"]["key"] for i in message["items"]] == ["u1"]


def test_a_connection_whose_config_is_invalid_is_a_visible_permanent_failure(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    put_config(
        "inbound/webshop", {"environment": "Production", "delivery": {"enabled": True}}
    )  # no identities
    record = stream_record(events_table(stack), event_item("u1"))

    assert invoke(stream_event(record), lambda_context) == {"batchItemFailures": []}

    assert sink.requests == []
    [message] = failure_messages(stack)
    assert message["reason"].startswith("invalid connection config")
    assert [i["event"]["key"] for i in message["items"]] == ["u1"]


def test_updates_of_event_items_are_never_resent(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    item = event_item("u1")
    changed = {**item, "properties": {"late": "update"}}
    modify = stream_record(events_table(stack), changed, old=None, event_name="MODIFY")
    remove = stream_record(events_table(stack), None, old=item, event_name="REMOVE", view="NEW_IMAGE")

    assert invoke(stream_event(modify, remove), lambda_context) == {"batchItemFailures": []}

    assert sink.requests == []


def test_many_events_go_in_size_bounded_requests(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.delivery import fme_client

    monkeypatch.setattr(fme_client, "MAX_EVENTS_PER_REQUEST", 40)
    connect(sink)
    records = [
        stream_record(events_table(stack), event_item(f"u{i}", timestamp=1764061200000 + i))
        for i in range(100)
    ]

    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}

    assert sorted(r.items for r in sink.requests) == [20, 40, 40]
    assert len({(e.event["key"], e.event["timestamp"]) for e in sink.events}) == 100
    assert len(sink.events) == 100


# ---------------------------------------------------------------------------------------------
# Identities


def test_sample_identity_change_is_saved_with_all_current_values(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    event = sample_event("dynamodb_stream_identity_modify.json", stack.tables["IdentitiesTable"])

    assert invoke(event, lambda_context) == {"batchItemFailures": []}

    [request] = sink.requests
    assert request.path == "/internal/api/v2/trafficTypes/user/environments/Production/identities"
    [update] = sink.identity_updates
    assert update.key == "97980cfea0067"
    # Save Identities overwrites an identity's values, so all of them are sent, as strings.
    assert update.values == {
        "name": "Peter Gibbons",
        "email": "peter@example.com",
        "plan": "premium",
        "logins": "5",
        "trial": "false",
        "company": '{"name":"Initech","employees":329}',
    }


def test_events_and_identities_go_to_the_environment_they_were_stored_under(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink, environment="Staging")
    records = [
        stream_record(events_table(stack), event_item("u1", environment="Staging", value=3.5)),
        stream_record(
            stack.tables["IdentitiesTable"],
            identity_item("u1", {"plan": "pro"}, environment="Staging"),
            view="NEW_AND_OLD_IMAGES",
            key_names=("pk",),
        ),
    ]

    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}

    [event] = sink.events
    assert (event.event["environmentName"], event.event["key"], event.event["value"]) == (
        "Staging",
        "u1",
        3.5,
    )
    assert [r.path for r in sink.requests if "identities" in r.path] == [
        "/internal/api/v2/trafficTypes/user/environments/Staging/identities"
    ]
    [update] = sink.identity_updates
    assert (update.key, update.values) == ("u1", {"plan": "pro"})


def test_an_identity_item_that_is_not_deliverable_goes_to_the_failure_queue_with_the_item(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    table = stack.tables["IdentitiesTable"]
    broken = {k: v for k, v in identity_item("u1", {"plan": "pro"}).items() if k != "trafficTypeName"}
    records = [
        identity_record(table, broken),
        identity_record(table, identity_item("u2", {"plan": "free"})),
    ]

    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}  # permanent
    # A retry of the batch (for a record behind it, say) does not queue the item again.
    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}

    assert [u.key for u in sink.identity_updates] == ["u2"]  # its neighbour is delivered
    message = the_malformed_item_refused(stack, "trafficTypeName", "u1")
    assert (message["kind"], message["connectionId"]) == ("identities", "webshop")


def the_malformed_item_refused(stack: Stack, missing: str, key: str) -> dict[str, Any]:
    """The failure queue's one message: the item of ``key``, unreadable for lack of ``missing``."""
    [message] = failure_messages(stack)
    assert message["reason"].startswith("malformed item: ")
    assert missing in message["reason"]
    assert [i["item"]["key"] for i in message["items"]] == [key]
    return message


def test_an_unreadable_event_item_goes_to_the_failure_queue_once_whatever_the_stream_retries(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    records = failing_batch(stack, sink)  # FME answers 503: the batch is retried
    broken = {k: v for k, v in event_item("u9").items() if k != "eventTypeId"}
    batch = stream_event(*records, stream_record(events_table(stack), broken))

    assert failed_ids(invoke(batch, lambda_context, seconds=1.8)) == [
        r["dynamodb"]["SequenceNumber"] for r in records
    ]
    sink.clear_faults()
    assert invoke(batch, lambda_context, seconds=10) == {"batchItemFailures": []}

    assert sorted(e.event["key"] for e in sink.events) == ["u0", "u1", "u2"]
    the_malformed_item_refused(stack, "eventTypeId", "u9")


def test_removing_the_last_value_fme_takes_reaches_fme_as_removing_one_of_several_does(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    table = stack.tables["IdentitiesTable"]

    def change(key: str, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        return stream_record(
            table,
            identity_item(key, new, updated_at=2),
            identity_item(key, old, updated_at=1),
            view="NEW_AND_OLD_IMAGES",
            key_names=("pk",),
        )

    records = [change("u1", {"plan": "pro"}, {}), change("u2", {"plan": "pro", "age": 3}, {"age": 3})]
    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}
    assert sorted((u.key, u.values) for u in sink.identity_updates) == [("u1", {}), ("u2", {"age": "3"})]
    # A new identity without such a value has nothing to create.
    new = identity_record(table, identity_item("u3", {}))
    assert invoke(stream_event(new), lambda_context) == {"batchItemFailures": []}
    assert len(sink.identity_updates) == 2


def test_identity_records_without_attribute_changes_are_not_sent(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    table = stack.tables["IdentitiesTable"]
    old = identity_item("u1", {"plan": "pro"}, updated_at=1)
    new = identity_item("u1", {"plan": "pro"}, updated_at=2)  # only the timestamps moved

    assert invoke(
        stream_event(identity_record(table, new, old)),
        lambda_context,
    ) == {"batchItemFailures": []}

    assert sink.requests == []


def test_identities_are_grouped_per_traffic_type_and_coalesced(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    table = stack.tables["IdentitiesTable"]
    records = [
        identity_record(table, identity_item("u1", {"plan": "free"})),
        stream_record(
            table,
            identity_item("u1", {"plan": "pro"}, updated_at=2),
            identity_item("u1", {"plan": "free"}),
            view="NEW_AND_OLD_IMAGES",
            key_names=("pk",),
        ),
        stream_record(
            table,
            identity_item("acme", {"size": 40}, traffic_type="account"),
            view="NEW_AND_OLD_IMAGES",
            key_names=("pk",),
        ),
    ]

    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}

    assert sorted(r.path for r in sink.requests) == [
        "/internal/api/v2/trafficTypes/account/environments/Production/identities",
        "/internal/api/v2/trafficTypes/user/environments/Production/identities",
    ]
    assert sorted((u.traffic_type, u.key, tuple(u.values.items())) for u in sink.identity_updates) == [
        ("account", "acme", (("size", "40"),)),
        ("user", "u1", (("plan", "pro"),)),
    ]


def test_without_an_admin_key_identities_stay_local(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink, keys={"sdkKey": SDK_KEY})
    table = stack.tables["IdentitiesTable"]
    record = identity_record(table, identity_item("u1", {"plan": "pro"}))

    assert invoke(stream_event(record), lambda_context) == {"batchItemFailures": []}

    assert sink.requests == []
    assert failure_messages(stack) == []


def test_an_identity_fme_lists_as_failed_goes_to_the_failure_queue(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    sink.refuse_identity("u2", 400, "traffic type attribute limit reached")
    table = stack.tables["IdentitiesTable"]
    records = [identity_record(table, identity_item(k, {"plan": "pro"})) for k in ("u1", "u2")]

    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}

    assert [u.key for u in sink.identity_updates] == ["u1"]
    [message] = failure_messages(stack)
    assert message["kind"] == "identities"
    [item] = message["items"]
    assert isinstance(item.pop("ackId"), str)  # the version's id: redrive logs what it saves
    assert item == {
        "trafficType": "user",
        "environment": "Production",
        "identity": {"key": "u2", "values": {"plan": "pro"}},
    }
    assert "attribute limit" in message["reason"]

    # The stream retries the batch (a later record failed, say): nothing is saved or queued twice.
    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}
    assert [u.key for u in sink.identity_updates] == ["u1"]
    assert failure_messages(stack) == []


def test_identity_saves_failing_transiently_are_handed_back_to_the_stream(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    sink.fail_next(1000, 502)
    table = stack.tables["IdentitiesTable"]
    record = identity_record(table, identity_item("u1", {"plan": "pro"}))

    response = invoke(stream_event(record), lambda_context, seconds=1.8)

    assert failed_ids(response) == [record["dynamodb"]["SequenceNumber"]]
    assert sink.identity_updates == []


def test_a_connection_whose_identity_saves_keep_failing_is_behind_since_their_update(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any, delivery_log: Any
) -> None:
    connect(sink)
    sink.fail_next(1000, 502)
    record = identity_record(
        stack.tables["IdentitiesTable"], identity_item("u1", {"plan": "pro"}, updated_at=7)
    )

    # Time for the first attempt even on a loaded machine: its answer is the error recorded.
    assert failed_ids(invoke(stream_event(record), lambda_context, seconds=4))

    [status] = delivery_log.statuses()
    assert (status.retrying_since, status.retrying_newest) == (7, 7)
    assert "HTTP 502" in (status.last_error or "")


def test_what_the_log_skips_and_what_still_fails_are_counted(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    connect(sink)
    delivered = [
        stream_record(events_table(stack), event_item("u1")),
        identity_record(stack.tables["IdentitiesTable"], identity_item("u1", {"plan": "pro"})),
    ]
    assert invoke(stream_event(*delivered), lambda_context) == {"batchItemFailures": []}
    sink.fail_next(1000, 503)
    failing = stream_record(events_table(stack), event_item("u2", timestamp=1764061200002))

    # The stream hands the batch back with a new record behind it, which FME keeps failing.
    capsys.readouterr()
    assert failed_ids(invoke(stream_event(*delivered, failing), lambda_context, seconds=1.8))

    (metrics,) = published_metrics(capsys.readouterr().out)
    assert metrics["EventsAlreadyDelivered"] == [1.0]
    assert metrics["IdentitiesAlreadyDelivered"] == [1.0]
    assert metrics["EventsRetrying"] == [1.0]


def test_delivery_status_is_recorded_per_connection(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    from shared import aws
    from shared.delivery.delivery_log import DeliveryLog

    connect(sink)
    now_ms = int(time.time() * 1000)
    # Received a minute and a second ago: the latency is the older one's, from receipt to FME.
    records = [
        stream_record(
            events_table(stack),
            event_item(f"u{i}", timestamp=1764061200000 + i, received_at=now_ms - ago_ms),
        )
        for i, ago_ms in enumerate((1_000, 60_000))
    ]
    invoke(stream_event(*records), lambda_context)

    [status] = DeliveryLog(aws.dynamodb_table(stack.tables["DeliveryLogTable"])).statuses()
    assert status.connection_id == "webshop"
    assert status.events_delivered == 2
    assert status.last_delivered_at is not None
    assert status.retrying_since is None
    assert status.last_latency_ms is not None
    assert 60_000 <= status.last_latency_ms < 120_000


def test_the_delivery_log_finds_acknowledgements_beyond_one_batch_get(
    delivery_env: dict[str, str], stack: Stack
) -> None:
    """BatchGetItem takes 100 keys: a stream batch of more events is looked up in several requests."""
    from shared import aws
    from shared.delivery.delivery_log import DELIVERED, REFUSED, DeliveryLog

    table = aws.dynamodb_table(stack.tables["DeliveryLogTable"])
    log = DeliveryLog(table)
    delivered = [f"d{i:03d}" for i in range(180)]
    log.record(delivered, DELIVERED, 1_764_061_200_000)
    log.record(["r1"], REFUSED, 1_764_061_200_000, "HTTP 401")

    requests: list[dict[str, Any]] = []
    table.meta.client.meta.events.register(
        "provide-client-params.dynamodb.BatchGetItem", lambda params, **_: requests.append(params)
    )
    settled = log.settled([*delivered, "r1", "new", "d000"])

    assert settled == {**dict.fromkeys(delivered, DELIVERED), "r1": REFUSED}
    # Read consistently: the retry of a stream batch follows the acknowledgements' write at once.
    assert len(requests) == 2
    assert all(t["ConsistentRead"] for r in requests for t in r["RequestItems"].values())


@pytest.fixture
def delivery_log(delivery_env: dict[str, str], stack: Stack) -> Any:
    from shared import aws
    from shared.delivery.delivery_log import DeliveryLog

    return DeliveryLog(aws.dynamodb_table(stack.tables["DeliveryLogTable"]))


def last_error(log: Any) -> str | None:
    [status] = log.statuses()
    return status.last_error


def test_acknowledgements_expire_after_15_days_and_a_refusal_keeps_fme_s_reason(
    delivery_log: Any, stack: Stack
) -> None:
    from shared import aws
    from shared.delivery.delivery_log import DELIVERED, REFUSED

    at_ms = 1_764_061_200_000
    delivery_log.record(["a1"], DELIVERED, at_ms)
    delivery_log.record(["r1"], REFUSED, at_ms, "HTTP 400: " + "x" * 600)

    table = aws.dynamodb_table(stack.tables["DeliveryLogTable"])
    delivered = table.get_item(Key={"pk": "ack#a1", "sk": "event"})["Item"]
    refused = table.get_item(Key={"pk": "ack#r1", "sk": "event"})["Item"]
    assert (delivered["state"], delivered["at"], "reason" in delivered) == (DELIVERED, at_ms, False)
    assert delivered["expiresAt"] == at_ms // 1000 + 15 * 24 * 3600
    assert (refused["state"], refused["reason"]) == (REFUSED, "HTTP 400: " + "x" * 490)  # at most 500


def test_saved_identities_count_as_a_delivery_in_the_status(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any, delivery_log: Any
) -> None:
    connect(sink)
    record = identity_record(stack.tables["IdentitiesTable"], identity_item("u1", {"plan": "pro"}))

    assert invoke(stream_event(record), lambda_context) == {"batchItemFailures": []}

    [status] = delivery_log.statuses()
    assert (status.identities_delivered, status.events_delivered) == (1, 0)
    assert status.last_delivered_at is not None


def test_a_redrive_clears_the_last_error_once_it_delivered_all_the_error_is_about(delivery_log: Any) -> None:
    log = delivery_log
    # A refusal split into two messages.
    log.update_status("webshop", 1_000, events_refused=2, error="HTTP 400: bad", error_about=["f.1", "f.2"])
    log.clear_error("webshop", {"g.1"}, older_than_ms=5_000)  # another message
    assert last_error(log) == "HTTP 400: bad"
    log.clear_error("webshop", {"f.1"}, older_than_ms=5_000)
    assert last_error(log) == "HTTP 400: bad"  # f.2 still waits
    log.clear_error("webshop", {"f.2"}, older_than_ms=5_000)
    assert last_error(log) is None

    # As an earlier version recorded it: without what it is about, it goes if older than the redrive.
    log.update_status("webshop", 6_000, error="HTTP 401")
    log.clear_error("webshop", {"h.1"}, older_than_ms=6_000)
    assert last_error(log) == "HTTP 401"
    log.clear_error("webshop", set(), older_than_ms=6_001)
    assert last_error(log) is None


def test_delivering_with_nothing_left_to_retry_clears_an_error_about_stream_records_only(
    delivery_log: Any,
) -> None:
    from shared.delivery.delivery_log import record_key

    log = delivery_log
    log.update_status("webshop", 1_000, retrying_since=900, error="HTTP 502", error_about=[record_key("1")])
    log.update_status("webshop", 2_000, events_delivered=1, retrying_since=1_500)  # still retrying
    assert last_error(log) == "HTTP 502"
    log.update_status("webshop", 3_000, events_delivered=1, ends_retrying=False)  # a redrive of refused items
    assert last_error(log) == "HTTP 502"
    log.update_status("webshop", 4_000, events_delivered=1)
    assert last_error(log) is None

    # An error about a refusal waits for its redrive.
    log.update_status("webshop", 5_000, events_refused=1, error="HTTP 401", error_about=["f.1"])
    log.update_status("webshop", 6_000, events_delivered=1)
    assert last_error(log) == "HTTP 401"


def test_a_batch_that_delivers_nothing_does_not_end_the_retries(delivery_log: Any) -> None:
    """Only delivering with nothing left to retry ends them: a refusal or a skip of another record
    of the connection says nothing about the records the stream is retrying."""
    from shared.delivery.delivery_log import record_key

    log = delivery_log
    log.update_status("webshop", 1_000, retrying_since=900, error="HTTP 502", error_about=[record_key("1")])
    log.update_status("webshop", 2_000, events_refused=1, error="HTTP 400: bad", error_about=["f.1"])
    log.update_status("webshop", 3_000, skipped=1)

    [status] = log.statuses()
    assert (status.retrying_since, status.retrying_newest) == (900, 900)
    assert status.last_error == "HTTP 400: bad"


def test_a_connection_s_status_adds_up_its_batches(delivery_log: Any) -> None:
    """What ``delivery status`` shows: each count on its own counter, a redrive moving refused items to
    delivered, the oldest record retried kept while retries go on, the last error at most 500 long."""
    log = delivery_log
    log.update_status(
        "webshop", 1_000, events_delivered=3, events_refused=2, identities_refused=1, latency_ms=250
    )
    log.update_status("webshop", 2_000, skipped=5, retrying_since=900, error="HTTP 502: " + "x" * 600)
    log.update_status("webshop", 3_000, identities_delivered=4, retrying_since=1_500, retrying_newest=1_700)
    # A redrive delivers a refused event.
    log.update_status("webshop", 4_000, events_delivered=1, events_refused=-1, ends_retrying=False)

    [status] = log.statuses()
    assert (status.events_delivered, status.events_refused) == (4, 1)
    assert (status.identities_delivered, status.identities_refused, status.skipped) == (4, 1, 5)
    assert (status.last_delivered_at, status.last_latency_ms) == (4_000, 250)
    assert (status.retrying_since, status.retrying_newest) == (900, 1_700)
    assert (status.last_error, status.last_error_at) == ("HTTP 502: " + "x" * 490, 2_000)

    log.update_status("webshop", 5_000, events_delivered=1)  # nothing left to retry
    [status] = log.statuses()
    assert (status.retrying_since, status.retrying_newest) == (None, None)


def test_a_newer_error_about_nothing_a_redrive_resolves_outlives_the_redrive_of_an_older_refusal(
    delivery_log: Any,
) -> None:
    log = delivery_log
    log.update_status("webshop", 1_000, events_refused=1, error="HTTP 400: bad", error_about=["f.1"])
    log.update_status("webshop", 2_000, error="no keys secret")  # about no message
    log.clear_error("webshop", {"f.1"}, older_than_ms=1_500)  # a redrive that began before it
    assert last_error(log) == "no keys secret"


def test_status_lists_every_connection_across_query_pages(delivery_log: Any, stack: Stack) -> None:
    from shared import aws

    for connection_id in ("app", "webshop"):
        delivery_log.update_status(connection_id, 1_000, events_delivered=1)
    # The fixture's table: aws caches one per name.
    pages_cut_at(aws.dynamodb_table(stack.tables["DeliveryLogTable"]).meta.client, "dynamodb.Query", 1)

    assert sorted(s.connection_id for s in delivery_log.statuses()) == ["app", "webshop"]


def test_an_error_of_several_records_retried_in_one_batch_is_about_each_of_them(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    from shared import aws

    records = failing_batch(stack, sink)
    # The deadline keeps 1.5 s back, and a first invocation creates its SSM and Secrets Manager
    # clients (up to a second here, loading their models): 2.5 s more leave room for attempts.
    invoke(stream_event(*records), lambda_context, seconds=4.0)

    table = aws.dynamodb_table(stack.tables["DeliveryLogTable"])
    status = table.get_item(Key={"pk": "connection", "sk": "webshop"})["Item"]
    assert "HTTP 503" in status["lastError"]
    assert status["lastErrorAbout"] == {f"record {r['dynamodb']['SequenceNumber']}" for r in records}


def test_a_retried_identity_batch_does_not_save_the_same_version_again(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    table = stack.tables["IdentitiesTable"]
    first = identity_record(table, identity_item("u1", {"plan": "pro"}))
    assert invoke(stream_event(first), lambda_context) == {"batchItemFailures": []}
    # The plan goes back and forth: a later version with earlier values is a new version.
    second = stream_record(
        table,
        identity_item("u1", {"plan": "free"}, updated_at=1764061300000),
        identity_item("u1", {"plan": "pro"}),
        view="NEW_AND_OLD_IMAGES",
        key_names=("pk",),
    )
    third = stream_record(
        table,
        identity_item("u1", {"plan": "pro"}, updated_at=1764061400000),
        identity_item("u1", {"plan": "free"}, updated_at=1764061300000),
        view="NEW_AND_OLD_IMAGES",
        key_names=("pk",),
    )

    assert invoke(stream_event(first), lambda_context) == {"batchItemFailures": []}
    assert invoke(stream_event(second), lambda_context) == {"batchItemFailures": []}
    assert invoke(stream_event(third), lambda_context) == {"batchItemFailures": []}

    assert [u.values["plan"] for u in sink.identity_updates] == ["pro", "free", "pro"]


# ---------------------------------------------------------------------------------------------
# The delivery's own AWS dependencies failing: records are handed back to the stream, never dropped


def _break(fault: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make one of the delivery's dependencies fail; the returned function mends it."""
    from shared import config
    from shared.delivery.delivery_log import DeliveryLog
    from shared.delivery.failure_queue import FailureQueue

    broken = [True]
    if fault == "config":  # SSM / Secrets Manager throttling or down
        fetch = config._fetch

        def unavailable(kind: str, name: str, *args: Any, **kwargs: Any) -> str:
            if broken:
                raise config.ConfigUnavailable(f"{name}: ThrottlingException")
            return fetch(kind, name, *args, **kwargs)

        monkeypatch.setattr(config, "_fetch", unavailable)
    else:
        cls, method = (DeliveryLog, "settled") if fault == "delivery_log" else (FailureQueue, "send")
        original = getattr(cls, method)

        def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
            if broken:
                raise RuntimeError(f"{cls.__name__} unavailable: ServiceUnavailable")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, failing)
    return broken.clear


@pytest.mark.parametrize("kind", ["events", "identities"])
@pytest.mark.parametrize("fault", ["config", "delivery_log"])
def test_records_are_handed_back_while_the_config_or_the_delivery_log_cannot_be_read(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    connect(sink)
    if kind == "events":
        records = [
            stream_record(events_table(stack), event_item(f"u{i}", timestamp=1764061200000 + i))
            for i in range(2)
        ]
    else:
        identities = stack.tables["IdentitiesTable"]
        records = [
            stream_record(
                identities,
                identity_item(f"u{i}", {"plan": "pro"}),
                view="NEW_AND_OLD_IMAGES",
                key_names=("pk",),
            )
            for i in range(2)
        ]
    mend = _break(fault, monkeypatch)

    response = invoke(stream_event(*records), lambda_context)

    assert failed_ids(response) == [r["dynamodb"]["SequenceNumber"] for r in records]
    assert (sink.events, sink.identity_updates) == ([], [])
    (metrics,) = published_metrics(capsys.readouterr().out)  # never silent: a metric says why
    assert metrics[{"config": "ConfigUnavailable", "delivery_log": "DeliveryLogUnavailable"}[fault]] == [1.0]
    mend()
    assert invoke(stream_event(*records), lambda_context) == {"batchItemFailures": []}
    keys = [e.event["key"] for e in sink.events] + [u.key for u in sink.identity_updates]
    assert sorted(keys) == ["u0", "u1"]


@pytest.mark.parametrize("why", ["fme_refused", "malformed"])
def test_a_refused_event_is_handed_back_while_the_failure_queue_is_down_and_queued_once_it_is_up(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
    why: str,
) -> None:
    connect(sink)
    good = stream_record(events_table(stack), event_item("u0", timestamp=1764061200000))
    if why == "fme_refused":  # FME refuses keys over 250 characters
        bad = stream_record(events_table(stack), event_item("x" * 251))
    else:  # an item the bridge cannot read as an event
        item = {k: v for k, v in event_item("x" * 251).items() if k != "eventTypeId"}
        bad = stream_record(events_table(stack), item)
    mend = _break("failure_queue", monkeypatch)

    response = invoke(stream_event(good, bad), lambda_context)

    assert failed_ids(response) == [bad["dynamodb"]["SequenceNumber"]]
    assert [e.event["key"] for e in sink.events] == ["u0"]
    assert failure_messages(stack) == []
    mend()
    # Lambda retries from the failed record on.
    assert invoke(stream_event(bad), lambda_context) == {"batchItemFailures": []}
    [message] = failure_messages(stack)
    assert [(i.get("event") or i.get("item"))["key"] for i in message["items"]] == ["x" * 251]
    assert [e.event["key"] for e in sink.events] == ["u0"]
