"""``fme-bridge delivery status|redrive`` against moto and the loopback FME sink."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import boto3
import pytest
from botocore.config import Config
from typer.testing import CliRunner

from fme_bridge.cli import app
from fme_bridge.fme_sink import FmeSink
from fme_bridge.template import Stack
from tests.conftest import put_config, put_secret, table_rows
from tests.delivery_support import (
    ADMIN_KEY,
    SDK_KEY,
    connect,
    deliver_one_by_one,
    delivery_app,
    dynamodb_json,
    event_item,
    failure_messages,
    identity_item,
    identity_record,
    invoke,
    store,
    stream_arn,
    stream_event,
    stream_record,
)

runner = CliRunner()


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_status_shows_delivered_refused_and_queued_per_connection(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connect(sink)
    table = stack.tables["EventsTable"]
    good = stream_record(table, event_item("u1"))
    bad = stream_record(table, event_item("x" * 251, timestamp=1764061200005))
    invoke(stream_event(good, bad), lambda_context)

    result = cli("delivery", "status", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    [connection] = document["connections"]
    assert connection["connectionId"] == "webshop"
    assert connection["eventsDelivered"] == 1
    assert connection["eventsRefused"] == 1
    assert connection["failureMessages"] == 1
    assert "key is longer than 250" in connection["lastError"]
    assert document["failureQueueMessages"] == 1
    # camelCase throughout, as the bridge's other JSON outputs
    assert set(connection) == {
        "connectionId",
        "eventsDelivered",
        "eventsRefused",
        "identitiesDelivered",
        "identitiesRefused",
        "skipped",
        "lastDeliveredAt",
        "lastLatencyMs",
        "retryingSince",
        "retryingNewest",
        "lastError",
        "lastErrorAt",
        "lag",
        "failureMessages",
    }

    from fme_bridge.commands.common import out

    monkeypatch.setattr(out, "width", 60)  # a narrow terminal
    table_output = cli("delivery", "status")
    assert table_output.exit_code == 0
    assert "webshop" in table_output.output
    # The error on a line of its own, whole, whatever the width: too long for a cell of the table.
    [error] = [line for line in table_output.output.splitlines() if line.startswith("webshop: last error")]
    assert f"): {connection['lastError']}" in error


def test_redrive_resends_refused_events_once_the_key_is_fixed(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink, keys={"sdkKey": "revoked-key", "adminKey": ADMIN_KEY})
    record = stream_record(stack.tables["EventsTable"], event_item("u1"))
    invoke(stream_event(record), lambda_context)
    assert sink.events == []

    still_wrong = cli("delivery", "redrive")
    assert still_wrong.exit_code == 1
    assert "HTTP 401" in still_wrong.output

    put_secret("inbound/webshop/fme", json.dumps({"sdkKey": SDK_KEY, "adminKey": ADMIN_KEY}))
    fixed = cli("delivery", "redrive")

    assert fixed.exit_code == 0, fixed.output
    assert [e.event["key"] for e in sink.events] == ["u1"]
    # Removed, not merely hidden until the redrive's visibility timeout runs out.
    left = boto3.client("sqs", region_name="us-east-1").get_queue_attributes(
        QueueUrl=stack.queues["DeliveryFailureQueue"], AttributeNames=["All"]
    )["Attributes"]
    assert (left["ApproximateNumberOfMessages"], left["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")
    # The event is now acknowledged: the stream retrying the batch does not send it again.
    invoke(stream_event(record), lambda_context)
    assert len(sink.events) == 1


def test_a_message_redriven_again_does_not_resend_the_events_fme_accepted_the_first_time(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    """FME does not deduplicate: of a message kept for one refused event, a second redrive sends
    only that one again."""
    connect(sink, keys={"sdkKey": "revoked-key", "adminKey": ADMIN_KEY})
    table = stack.tables["EventsTable"]
    good = stream_record(table, event_item("u1"))
    bad = stream_record(table, event_item("x" * 251, timestamp=1764061200001))  # FME refuses it
    invoke(stream_event(good, bad), lambda_context)
    put_secret("inbound/webshop/fme", json.dumps({"sdkKey": SDK_KEY, "adminKey": ADMIN_KEY}))

    first = cli("delivery", "redrive")
    assert first.exit_code == 1  # the message is kept for the refused event
    assert [e.event["key"] for e in sink.events] == ["u1"]
    again = cli("delivery", "redrive")
    assert again.exit_code == 1
    assert "0 message(s) delivered and removed, 1 kept" in again.output
    assert [e.event["key"] for e in sink.events] == ["u1"]


def test_redrive_reaches_the_messages_behind_those_it_keeps(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    """Twelve messages it cannot deliver (more than one receive returns) ahead of one it can."""
    connect(sink, keys={"sdkKey": "revoked-key", "adminKey": ADMIN_KEY})
    deliver_one_by_one(stack, lambda_context, [f"w{i}" for i in range(12)])
    connect(sink, connection_id="outlet")
    sink.fail_next(1, 401)  # refused once: to the failure queue, behind the twelve
    deliver_one_by_one(stack, lambda_context, ["o1"], connection_id="outlet")
    assert sink.events == []

    only = cli("delivery", "redrive", "--connection", "outlet")
    assert only.exit_code == 0, only.output
    assert [e.event["key"] for e in sink.events] == ["o1"]
    assert "1 message(s) delivered and removed, 0 kept" in only.output

    every = cli("delivery", "redrive")
    assert every.exit_code == 1  # the revoked key's messages are kept
    assert "0 message(s) delivered and removed, 12 kept" in every.output
    assert len(failure_messages(stack)) == 12


def test_a_redrive_cut_short_leaves_every_message_it_did_not_remove_visible(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.delivery.service import Delivery

    connect(sink, keys={"sdkKey": "revoked-key", "adminKey": ADMIN_KEY})
    deliver_one_by_one(stack, lambda_context, [f"u{i}" for i in range(5)])
    put_secret("inbound/webshop/fme", json.dumps({"sdkKey": SDK_KEY, "adminKey": ADMIN_KEY}))
    redrive = Delivery.redrive
    calls: list[int] = []

    async def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("cut short")
        return await redrive(self, *args, **kwargs)

    monkeypatch.setattr(Delivery, "redrive", interrupted)
    with pytest.raises(RuntimeError, match="cut short"):
        cli("delivery", "redrive")

    assert len(sink.events) == 1
    assert len(failure_messages(stack)) == 4  # the other four, visible at once


def refused(stack: Stack, sink: FmeSink, lambda_context: Any, key: str = "u1") -> None:
    """An event of ``key`` that FME refuses (401): it waits in the failure queue for a redrive."""
    sink.fail_next(1, 401)
    invoke(stream_event(stream_record(stack.tables["EventsTable"], event_item(key))), lambda_context)


def connection_status(connection_id: str = "webshop") -> dict[str, Any]:
    result = cli("delivery", "status", "--json")
    assert result.exit_code == 0, result.output
    [status] = [c for c in json.loads(result.output)["connections"] if c["connectionId"] == connection_id]
    return dict(status)


def test_status_counts_what_redrive_delivered(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink, keys={"sdkKey": "revoked-key", "adminKey": ADMIN_KEY})
    invoke(stream_event(stream_record(stack.tables["EventsTable"], event_item("u1"))), lambda_context)
    before = connection_status()
    assert (before["eventsDelivered"], before["eventsRefused"]) == (0, 1)
    assert "HTTP 401" in before["lastError"]
    assert before["lastDeliveredAt"] is None

    put_secret("inbound/webshop/fme", json.dumps({"sdkKey": SDK_KEY, "adminKey": ADMIN_KEY}))
    assert cli("delivery", "redrive").exit_code == 0

    after = connection_status()
    assert (after["eventsDelivered"], after["eventsRefused"]) == (1, 0)
    assert after["lastDeliveredAt"] is not None
    assert after["lastError"] is None
    assert after["lastErrorAt"] is None
    assert after["failureMessages"] == 0
    table = cli("delivery", "status").output
    assert "1 / 0" in table
    assert "HTTP 401" not in table


def test_a_redrive_leaves_the_error_of_records_the_stream_is_retrying(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connect(sink, keys={"sdkKey": "revoked-key", "adminKey": ADMIN_KEY})
    table = stack.tables["EventsTable"]
    invoke(stream_event(stream_record(table, event_item("u1"))), lambda_context)  # refused: 401
    put_secret("inbound/webshop/fme", json.dumps({"sdkKey": SDK_KEY, "adminKey": ADMIN_KEY}))
    monkeypatch.setattr(delivery_app(), "_sleep", lambda _seconds: None)
    sink.rate_limit_next(1, reset_seconds=600)
    invoke(stream_event(stream_record(table, event_item("u2"))), lambda_context, seconds=5)
    assert "HTTP 429" in connection_status()["lastError"]

    assert cli("delivery", "redrive").exit_code == 0  # u1 delivered now

    status = connection_status()
    assert (status["eventsDelivered"], status["eventsRefused"]) == (1, 0)
    assert status["retryingSince"] is not None
    assert "HTTP 429" in status["lastError"]  # still live: u2 waits for the stream's retry


def test_the_stream_delivering_the_records_it_retried_clears_their_error(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    table = stack.tables["EventsTable"]
    refused(stack, sink, lambda_context)
    sink.fail_next(1000, 502)
    u2 = stream_record(table, event_item("u2"))
    invoke(stream_event(u2), lambda_context, seconds=1.8)
    assert "HTTP 502" in connection_status()["lastError"]
    sink.clear_faults()
    invoke(stream_event(u2), lambda_context, seconds=10)  # the stream's retry gets through

    assert cli("delivery", "redrive").exit_code == 0  # u1 delivered now

    status = connection_status()
    assert (status["eventsDelivered"], status["eventsRefused"]) == (2, 0)
    assert status["lag"].startswith("up to date")
    assert status["failureMessages"] == 0
    assert status["lastError"] is None
    assert status["lastErrorAt"] is None


def test_a_redrive_leaves_the_error_of_a_message_it_did_not_deliver(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    table = stack.tables["EventsTable"]
    refused(stack, sink, lambda_context)  # message A
    invoke(stream_event(stream_record(table, event_item("x" * 251))), lambda_context)  # message B
    assert "key is longer than 250" in connection_status()["lastError"]

    assert cli("delivery", "redrive", "--limit", "1").exit_code == 0  # A delivered, B not tried

    status = connection_status()
    assert (status["eventsDelivered"], status["eventsRefused"]) == (1, 1)
    assert "key is longer than 250" in status["lastError"]  # about B, which still waits
    assert status["failureMessages"] == 1


def test_a_message_redrive_keeps_records_its_reason_as_the_last_error(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    table = stack.tables["EventsTable"]
    invoke(stream_event(stream_record(table, event_item("x" * 251))), lambda_context)
    refused(stack, sink, lambda_context)
    assert connection_status()["eventsRefused"] == 2

    result = cli("delivery", "redrive")

    assert result.exit_code == 1
    status = connection_status()
    assert (status["eventsDelivered"], status["eventsRefused"]) == (1, 1)
    assert "key is longer than 250" in status["lastError"]
    assert status["failureMessages"] == 1


@pytest.mark.parametrize("written_with_ack_ids", [True, False])
def test_redrive_counts_each_identity_it_saves_once(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any, written_with_ack_ids: bool
) -> None:
    connect(sink)
    sink.refuse_identity("u2", 400, "attribute limit reached")
    sink.refuse_identity("u3", 400, "attribute limit reached")
    table = stack.tables["IdentitiesTable"]
    records = [
        stream_record(
            table,
            store(table, identity_item(k, {"plan": "pro"})),
            view="NEW_AND_OLD_IMAGES",
            key_names=("pk",),
        )
        for k in ("u2", "u3")
    ]
    invoke(stream_event(*records), lambda_context)
    assert connection_status()["identitiesRefused"] == 2
    if not written_with_ack_ids:  # as a version that did not give identity items an ackId wrote it
        sqs, url = boto3.client("sqs", region_name="us-east-1"), stack.queues["DeliveryFailureQueue"]
        [message] = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        body = json.loads(message["Body"])
        for item in body["items"]:
            del item["ackId"]
        sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps(body),
            MessageAttributes=message.get("MessageAttributes") or {},
        )

    del sink.refused_identity_keys["u2"]
    assert cli("delivery", "redrive").exit_code == 1  # u3 is still refused: the message stays
    del sink.refused_identity_keys["u3"]
    assert cli("delivery", "redrive").exit_code == 0

    assert [u.key for u in sink.identity_updates] == ["u2", "u3"]  # u2 was not saved again
    status = connection_status()
    assert (status["identitiesDelivered"], status["identitiesRefused"]) == (2, 0)
    assert status["lastError"] is None
    assert failure_messages(stack) == []


def test_identities_refused_for_two_connections_in_messages_without_ack_ids_are_both_redriven(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink
) -> None:
    """As a version that gave identity items no ackId wrote them: the same identity and values,
    refused for two connections, are two items to deliver, not one delivered twice over."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    store(stack.tables["IdentitiesTable"], identity_item("u1", {"plan": "pro"}))
    for connection_id in ("webshop", "app"):
        connect(sink, connection_id=connection_id)
        body = {
            "kind": "identities",
            "connectionId": connection_id,
            "reason": "HTTP 400: attribute limit reached",
            "status": 400,
            "failedAt": 1_795_483_041_109,
            "items": [
                {
                    "trafficType": "user",
                    "environment": "Production",
                    "identity": {"key": "u1", "values": {"plan": "pro"}},
                }
            ],
        }
        sqs.send_message(QueueUrl=stack.queues["DeliveryFailureQueue"], MessageBody=json.dumps(body))

    assert cli("delivery", "redrive").exit_code == 0

    assert [u.key for u in sink.identity_updates] == ["u1", "u1"]
    assert failure_messages(stack) == []


def give_up_on(stack: Stack, *items: dict[str, Any], table_id: str = "EventsTable", record: int = -1) -> None:
    """Store ``items`` in the table, and send what Lambda sends to the on-failure destination when the
    stream batch of as many stream records, ending with the table's ``record``-th (the last item's,
    by default), exhausts its retries."""
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    table = stack.tables[table_id]
    for item in items:
        ddb.put_item(TableName=table, Item=dynamodb_json(item))
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    streams = boto3.client(
        "dynamodbstreams", region_name="us-east-1", config=Config(account_id_endpoint_mode="disabled")
    )
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]
    iterator = streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )
    records = streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    last = record % len(records)
    first = records[last - len(items) + 1]["dynamodb"]["SequenceNumber"]
    end = records[last]["dynamodb"]["SequenceNumber"]
    boto3.client("sqs", region_name="us-east-1").send_message(
        QueueUrl=stack.queues["DeliveryFailureQueue"],
        MessageBody=json.dumps(
            {
                "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": 11},
                "responseContext": {"statusCode": 200, "functionError": None},
                "version": "1.0",
                "timestamp": "2026-11-25T09:00:00.000Z",
                "DDBStreamBatchInfo": {
                    "shardId": shard["ShardId"],
                    "startSequenceNumber": first,
                    "endSequenceNumber": end,
                    "approximateArrivalOfFirstRecord": "2026-11-25T08:59:00Z",
                    "approximateArrivalOfLastRecord": "2026-11-25T08:59:00Z",
                    "batchSize": len(items),
                    "streamArn": arn,
                },
            }
        ),
    )


def test_redrive_reads_a_stream_batch_lambda_gave_up_on(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    give_up_on(stack, event_item("u7"))

    result = cli("delivery", "redrive")

    assert result.exit_code == 0, result.output
    assert [e.event["key"] for e in sink.events] == ["u7"]
    assert failure_messages(stack) == []


def test_a_redrive_of_one_connection_resends_the_stream_batches_holding_its_records(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    """status counts a given-up stream batch for each connection among its records: a redrive of
    one of them re-sends it, a redrive of another connection leaves it."""
    connect(sink)
    connect(sink, connection_id="app")
    give_up_on(stack, event_item("u7"))  # webshop's

    other = cli("delivery", "redrive", "--connection", "app")
    assert other.exit_code == 0, other.output
    assert "the failure queue has nothing to re-send for app" in other.output
    assert sink.events == []

    result = cli("delivery", "redrive", "--connection", "webshop")
    assert result.exit_code == 0, result.output
    assert "1 message(s) delivered and removed, 0 kept" in result.output
    assert [e.event["key"] for e in sink.events] == ["u7"]
    assert failure_messages(stack) == []


def test_a_given_up_stream_batch_still_failing_on_redrive_is_kept_until_it_is_delivered(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fme_bridge.commands import delivery as delivery_commands

    monkeypatch.setattr(delivery_commands, "_REDRIVE_SECONDS_PER_MESSAGE", 2)  # FME's 503s until then
    connect(sink)
    give_up_on(stack, event_item("u7"))
    sink.fail_next(1000, 503)

    failing = cli("delivery", "redrive")

    assert failing.exit_code == 1
    assert "0 message(s) delivered and removed, 1 kept" in failing.output
    # Why, as status would say it: the connection and FME's answer.
    [why] = [line for line in failing.output.splitlines() if line.startswith("kept ")]
    assert "(stream batch): 1 record(s) still failing (webshop: HTTP 503" in why
    assert sink.events == []
    sink.clear_faults()
    delivered = cli("delivery", "redrive")
    assert delivered.exit_code == 0, delivered.output
    assert [e.event["key"] for e in sink.events] == ["u7"]
    assert failure_messages(stack) == []


def test_a_kept_stream_batch_names_the_connections_it_waits_for_not_those_fme_refused(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch holding records of two connections: FME refuses app's event for good (it goes to the
    failure queue on its own) and answers webshop's with 503s. The batch is kept for webshop alone."""
    from fme_bridge.commands import delivery as delivery_commands

    monkeypatch.setattr(delivery_commands, "_REDRIVE_SECONDS_PER_MESSAGE", 2)  # FME's 503s until then
    connect(sink)
    connect(sink, connection_id="app")
    put_config(  # webshop's events on a path of their own, so that only they get the 503s
        "inbound/webshop",
        {
            "environment": "Production",
            "identities": [{"segmentId": "userId", "trafficType": "user"}],
            "delivery": {"enabled": True, "eventsEndpoint": f"{sink.url}/webshop/api"},
        },
    )
    sink.fail_next(1000, 503, path_contains="/webshop/")
    give_up_on(stack, event_item("u7"), event_item("x" * 251, connection_id="app"))  # FME: key too long

    failing = cli("delivery", "redrive")

    assert failing.exit_code == 1
    [why] = [
        line for line in failing.output.splitlines() if line.startswith("kept ") and "stream batch" in line
    ]
    # app's record is settled (refused, and recorded so): neither counted nor named.
    assert "1 record(s) still failing (webshop: HTTP 503" in why
    assert "app:" not in why
    assert "key is longer than 250" in connection_status("app")["lastError"]
    sink.clear_faults()
    delivered = cli("delivery", "redrive", "--connection", "webshop")
    assert delivered.exit_code == 0, delivered.output
    assert [e.event["key"] for e in sink.events] == ["u7"]


def test_status_shows_a_stream_batch_lambda_gave_up_on_as_failed_for_its_connection(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    connect(sink, connection_id="app")
    item = event_item("u7")
    sink.fail_next(1000, 502)
    invoke(stream_event(stream_record(stack.tables["EventsTable"], item)), lambda_context, seconds=1.8)
    assert connection_status()["lag"].startswith("behind since")
    # Newer records of another connection the stream is still retrying.
    later = event_item("u8", connection_id="app", received_at=item["receivedAt"] + 60_000)
    invoke(stream_event(stream_record(stack.tables["EventsTable"], later)), lambda_context, seconds=1.8)

    give_up_on(stack, item)  # the stream's retries of u7 ran out

    status = connection_status()
    assert status["lag"] == "given up, in the failure queue"
    assert status["failureMessages"] == 1
    assert connection_status("app")["lag"].startswith("behind since")
    assert connection_status("app")["failureMessages"] == 0
    table = cli("delivery", "status").output
    assert "given" in table  # the lag column, wrapped
    assert "(stream batch)" not in table


def test_status_shows_a_connection_behind_while_newer_records_than_a_given_up_batch_are_retried(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    table = stack.tables["EventsTable"]
    item = event_item("u7")
    sink.fail_next(1000, 502)
    invoke(stream_event(stream_record(table, item)), lambda_context, seconds=1.8)
    give_up_on(stack, item)  # the stream's retries of u7 ran out
    assert connection_status()["lag"] == "given up, in the failure queue"

    # A newer record of the same connection, still failing: the stream is retrying it.
    later = event_item("u8", received_at=item["receivedAt"] + 60_000)
    invoke(stream_event(stream_record(table, later)), lambda_context, seconds=1.8)

    status = connection_status()
    assert status["lag"].startswith("behind since")
    assert status["failureMessages"] == 1


def test_status_judges_a_connections_lag_by_the_latest_of_its_records_in_every_given_up_batch(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    """Two batches given up, the newer one first in the failure queue: the stream retrying a record
    older than the newer batch's is not behind, whichever batch status reads last."""
    connect(sink)
    older = event_item("u7")
    retried = event_item("u8", received_at=older["receivedAt"] + 60_000)
    newer = event_item("u9", received_at=older["receivedAt"] + 120_000)
    sink.fail_next(1000, 502)
    invoke(stream_event(stream_record(stack.tables["EventsTable"], retried)), lambda_context, seconds=1.8)
    assert connection_status()["lag"].startswith("behind since")

    give_up_on(stack, newer)
    give_up_on(stack, older)

    status = connection_status()
    assert status["lag"] == "given up, in the failure queue"
    assert status["failureMessages"] == 2


def test_status_reads_the_stream_batches_it_counts_with_one_streams_client(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fme_bridge.commands import delivery

    connect(sink)
    invoke(stream_event(stream_record(stack.tables["EventsTable"], event_item("u1"))), lambda_context)
    for key in ("u7", "u8", "u9"):
        give_up_on(stack, event_item(key))
    made: list[Any] = []
    streams = delivery._streams
    monkeypatch.setattr(delivery, "_streams", lambda tgt: made.append(streams(tgt)) or made[-1])

    status = connection_status()

    assert status["failureMessages"] == 3
    assert len(made) == 1


def test_status_shows_a_stream_batch_the_stream_no_longer_holds_on_a_line_of_its_own(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink)
    invoke(stream_event(stream_record(stack.tables["EventsTable"], event_item("u1"))), lambda_context)
    info = {
        "shardId": "shardId-00000001764061200000-trimmed",
        "startSequenceNumber": "100",
        "endSequenceNumber": "100",
        "batchSize": 1,
        "streamArn": stream_arn(stack.tables["EventsTable"]),
    }
    boto3.client("sqs", region_name="us-east-1").send_message(
        QueueUrl=stack.queues["DeliveryFailureQueue"], MessageBody=json.dumps({"DDBStreamBatchInfo": info})
    )

    assert connection_status()["failureMessages"] == 0
    document = json.loads(cli("delivery", "status", "--json").output)
    assert document["failureQueueMessages"] == 1
    table = cli("delivery", "status").output
    assert "failure queue: 1 message(s) of (stream batch)" in table
    assert "failure queue: 1 message(s) in all" in table


def refuse_then_change(stack: Stack, sink: FmeSink, lambda_context: Any) -> None:
    """FME refuses the first version of u1 (plan free); the second (plan pro) is saved after the fix."""
    connect(sink)
    table = stack.tables["IdentitiesTable"]
    old = store(table, identity_item("u1", {"plan": "free"}, updated_at=1764061200000))
    sink.fail_next(1, 403, path_contains="identities")
    invoke(stream_event(identity_record(table, old)), lambda_context)
    new = store(table, identity_item("u1", {"plan": "pro"}, updated_at=1764061300000))
    record = identity_record(table, new, old=old)
    invoke(stream_event(record), lambda_context)
    assert [u.values for u in sink.identity_updates] == [{"plan": "pro"}]


def test_redrive_sends_an_identity_as_it_is_now_not_as_fme_refused_it(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    """Save Identities overwrites every value: the refused, older version must not undo the newer."""
    refuse_then_change(stack, sink, lambda_context)

    result = cli("delivery", "redrive")

    assert result.exit_code == 0, result.output
    assert [u.values for u in sink.identity_updates] == [{"plan": "pro"}, {"plan": "pro"}]
    assert failure_messages(stack) == []


def test_redrive_does_not_send_an_identity_deleted_since(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    refuse_then_change(stack, sink, lambda_context)
    boto3.client("dynamodb", region_name="us-east-1").delete_item(
        TableName=stack.tables["IdentitiesTable"], Key={"pk": {"S": "Production#user#u1"}}
    )

    result = cli("delivery", "redrive")

    assert result.exit_code == 0, result.output
    assert "1 identity(ies) deleted since: not sent" in result.output
    assert [u.values for u in sink.identity_updates] == [{"plan": "pro"}]  # nothing more
    assert failure_messages(stack) == []


def test_redrive_sends_an_identity_left_without_values_as_an_empty_overwrite(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    refuse_then_change(stack, sink, lambda_context)
    boto3.client("dynamodb", region_name="us-east-1").update_item(
        TableName=stack.tables["IdentitiesTable"],
        Key={"pk": {"S": "Production#user#u1"}},
        UpdateExpression="SET #a = :none",
        ExpressionAttributeNames={"#a": "attributes"},
        ExpressionAttributeValues={":none": {"M": {}}},
    )

    result = cli("delivery", "redrive")

    assert result.exit_code == 0, result.output
    assert [u.values for u in sink.identity_updates][-1] == {}
    assert failure_messages(stack) == []


def test_a_redriven_stream_batch_sends_identities_as_they_are_now(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink
) -> None:
    connect(sink)
    table = stack.tables["IdentitiesTable"]
    store(table, identity_item("u5", {"plan": "free"}, updated_at=1764061200000))
    # Lambda gave up on the batch of the first version; the second is stored by now.
    give_up_on(
        stack,
        identity_item("u5", {"plan": "pro"}, updated_at=1764061300000),
        table_id="IdentitiesTable",
        record=0,
    )

    result = cli("delivery", "redrive")

    assert result.exit_code == 0, result.output
    assert [(u.key, u.values) for u in sink.identity_updates] == [("u5", {"plan": "pro"})]
    assert failure_messages(stack) == []


def test_a_redriven_stream_batch_does_not_send_an_identity_deleted_since(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink
) -> None:
    connect(sink)
    give_up_on(stack, identity_item("u6", {"plan": "free"}), table_id="IdentitiesTable")
    boto3.client("dynamodb", region_name="us-east-1").delete_item(
        TableName=stack.tables["IdentitiesTable"], Key={"pk": {"S": "Production#user#u6"}}
    )

    result = cli("delivery", "redrive")

    assert result.exit_code == 0, result.output
    assert "1 identity(ies) deleted since: not sent" in result.output
    assert sink.identity_updates == []


def test_redrive_with_an_empty_queue_says_so(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink
) -> None:
    result = cli("delivery", "redrive")
    assert result.exit_code == 0
    assert "nothing to re-send" in result.output


def test_redrive_keeps_a_message_it_cannot_read_and_says_why(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink
) -> None:
    """Neither the function's refused items nor a stream batch Lambda gave up on: nothing to send."""
    connect(sink)
    boto3.client("sqs", region_name="us-east-1").send_message(
        QueueUrl=stack.queues["DeliveryFailureQueue"], MessageBody=json.dumps({"hello": "world"})
    )

    result = cli("delivery", "redrive")

    assert result.exit_code == 1
    [why] = [line for line in result.output.splitlines() if line.startswith("kept ")]
    assert why.endswith("(?): unknown message kind None")
    assert len(failure_messages(stack)) == 1


def test_redrive_of_an_unknown_connection_is_an_error(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink
) -> None:
    connect(sink)

    unknown = cli("delivery", "redrive", "--connection", "nope")

    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == f"error: no connection 'nope' under {os.environ['CONFIG_PREFIX']}"
    known = cli("delivery", "redrive", "--connection", "webshop")
    assert known.exit_code == 0, known.output
    assert "nothing to re-send for webshop" in known.output


def status_rows(monkeypatch: pytest.MonkeyPatch) -> tuple[list[list[str]], list[str]]:
    """``delivery status`` on a wide terminal: the table's rows as cells, and every line printed."""
    from fme_bridge.commands.common import out

    monkeypatch.setattr(out, "width", 200)
    result = cli("delivery", "status")
    assert result.exit_code == 0, result.output
    return table_rows(result.output), result.output.splitlines()


def test_status_table_shows_each_connections_counts_sorted_by_connection(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connect(sink)
    connect(sink, connection_id="app", keys={"sdkKey": SDK_KEY})  # no Admin API key: identities skipped
    events, identities = stack.tables["EventsTable"], stack.tables["IdentitiesTable"]
    good = stream_record(events, event_item("u1"))
    bad = stream_record(events, event_item("x" * 251, timestamp=1764061200005))  # FME refuses it
    invoke(stream_event(good, bad), lambda_context)
    sink.refuse_identity("u3", 400, "attribute limit reached")
    saved, refused_item = (store(identities, identity_item(k, {"plan": "pro"})) for k in ("u2", "u3"))
    skipped = store(identities, identity_item("u4", {"plan": "pro"}, connection_id="app"))
    invoke(
        stream_event(*(identity_record(identities, item) for item in (saved, refused_item, skipped))),
        lambda_context,
    )

    rows, _ = status_rows(monkeypatch)

    [app_row, webshop_row] = rows
    assert app_row[:5] == ["app", "0 / 0", "0 / 0", "1", "-"]  # never delivered anything
    assert webshop_row[:4] == ["webshop", "1 / 1", "1 / 1", "0"]
    assert re.fullmatch(r"\d+s ago", webshop_row[4])
    assert (app_row[6], webshop_row[6]) == ("0", "2")  # the refused event and the refused identity


def test_status_shows_the_latency_of_an_up_to_date_connection_and_an_empty_failure_queue(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connect(sink)
    invoke(stream_event(stream_record(stack.tables["EventsTable"], event_item("u1"))), lambda_context)

    status = connection_status()
    assert status["lastLatencyMs"] is not None
    assert status["lag"] == f"up to date ({status['lastLatencyMs'] / 1000:.1f}s latency)"
    [row], lines = status_rows(monkeypatch)
    assert row[5] == status["lag"]
    assert lines[-1] == "failure queue: empty"


def test_status_before_anything_was_delivered_says_so(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink
) -> None:
    result = cli("delivery", "status")
    assert result.exit_code == 0, result.output
    assert result.output == "nothing delivered yet, and the failure queue is empty\n"
    document = json.loads(cli("delivery", "status", "--json").output)
    assert document == {"connections": [], "failureQueueMessages": 0}


def test_the_redrive_table_says_what_each_message_delivered_now_and_before(
    delivery_env: dict[str, str],
    stack: Stack,
    sink: FmeSink,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fme_bridge.commands.common import out

    monkeypatch.setattr(out, "width", 200)
    connect(sink, keys={"sdkKey": "revoked-key", "adminKey": ADMIN_KEY})
    table = stack.tables["EventsTable"]
    good = stream_record(table, event_item("u1"))
    bad = stream_record(table, event_item("x" * 251, timestamp=1764061200001))  # FME refuses it
    invoke(stream_event(good, bad), lambda_context)
    put_secret("inbound/webshop/fme", json.dumps({"sdkKey": SDK_KEY, "adminKey": ADMIN_KEY}))

    first = cli("delivery", "redrive")
    assert first.exit_code == 1
    [row] = table_rows(first.output)
    assert row[1:] == ["webshop", "events", "1", "0", "kept"]  # u1 accepted, the other refused again
    again = cli("delivery", "redrive")
    assert again.exit_code == 1
    [row] = table_rows(again.output)
    assert row[1:] == ["webshop", "events", "0", "1", "kept"]  # u1 is not sent twice


def test_a_redrive_limit_counts_the_messages_it_keeps(
    delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    connect(sink, keys={"sdkKey": "revoked-key", "adminKey": ADMIN_KEY})
    deliver_one_by_one(stack, lambda_context, ["u1", "u2"])

    result = cli("delivery", "redrive", "--limit", "1")

    assert result.exit_code == 1
    assert "0 message(s) delivered and removed, 1 kept" in result.output
    assert len(failure_messages(stack)) == 2
    assert cli("delivery", "redrive", "--limit", "0").exit_code == 2


@pytest.mark.parametrize("command", ["status", "redrive"])
def test_commands_are_registered(command: str) -> None:
    assert runner.invoke(app, ["delivery", command, "--help"]).exit_code == 0
