"""Segment webhook → ingest → DynamoDB Streams → delivery → FME, with every part real but FME.

The ingest handler stores an identify and a track posted as Segment's Webhooks destination posts
them; the tables' streams (moto) are read the way Lambda's event source reads them, and their
batches go through the delivery handler to the loopback FME sink — under FME faults, Segment
redelivering the webhook call, and the stream retrying batches.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
from botocore.config import Config

from fme_bridge.fme_sink import FmeSink
from fme_bridge.template import Stack
from tests.conftest import REGION, put_secret
from tests.delivery_support import ADMIN_KEY, SDK_KEY, failed_ids, invoke
from tests.integration.ingest_support import CONNECTION, Webhook, segment_message


class TableStream:
    """One table's stream, read from the start like an event source mapping with TRIM_HORIZON."""

    def __init__(self, table_name: str) -> None:
        ddb = boto3.client("dynamodb", region_name=REGION)
        self.arn = ddb.describe_table(TableName=table_name)["Table"]["LatestStreamArn"]
        self.client = boto3.client(
            "dynamodbstreams", region_name=REGION, config=Config(account_id_endpoint_mode="disabled")
        )
        shard = self.client.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"][0]["ShardId"]
        self.iterator = self.client.get_shard_iterator(
            StreamArn=self.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]

    def read(self) -> list[dict[str, Any]]:
        page = self.client.get_records(ShardIterator=self.iterator)
        self.iterator = page["NextShardIterator"]
        return [{**r, "eventSourceARN": self.arn} for r in page["Records"]]


def lambda_batch(records: list[dict[str, Any]], event_names: tuple[str, ...]) -> dict[str, Any]:
    """What the event source mapping invokes with, after the template's FilterCriteria."""
    return {"Records": [r for r in records if r["eventName"] in event_names]}


def test_an_identify_and_a_track_reach_fme_once_each_under_faults(
    function_env: Any, delivery_env: dict[str, str], stack: Stack, sink: FmeSink, lambda_context: Any
) -> None:
    webhook = Webhook.create(
        function_env,
        lambda_context,
        identities=[{"segmentId": "userId", "trafficType": "user"}],
        delivery={
            "enabled": True,
            "eventsEndpoint": sink.events_endpoint,
            "identitiesEndpoint": sink.identities_endpoint,
        },
    )
    function_env("DeliveryFunction")
    put_secret(f"inbound/{CONNECTION}/fme", json.dumps({"sdkKey": SDK_KEY, "adminKey": ADMIN_KEY}))
    identify = segment_message("identify")
    track = segment_message("track", userId=identify["userId"])

    # Segment posts both, then redelivers the same call (its first answer got lost).
    assert webhook.post([identify, track]).status == 200
    assert webhook.post([identify, track]).status == 200

    events = TableStream(stack.tables["EventsTable"]).read()
    identities = TableStream(stack.tables["IdentitiesTable"]).read()
    event_batch = lambda_batch(events, ("INSERT",))
    identity_batch = lambda_batch(identities, ("INSERT", "MODIFY"))
    assert len(event_batch["Records"]) == 1
    assert len(identity_batch["Records"]) >= 1

    # FME is down for the whole first invocation: everything is handed back to the stream.
    sink.fail_next(10_000, 503)
    assert failed_ids(invoke(event_batch, lambda_context, seconds=1.8))
    assert failed_ids(invoke(identity_batch, lambda_context, seconds=1.8))
    assert sink.events == []
    assert sink.identity_updates == []

    # FME recovers, rate-limiting first; the stream retries the batches.
    sink.clear_faults()
    sink.rate_limit_next(1, reset_seconds=0)
    sink.fail_next(1, 500)
    assert invoke(event_batch, lambda_context, seconds=20) == {"batchItemFailures": []}
    assert invoke(identity_batch, lambda_context, seconds=20) == {"batchItemFailures": []}

    # And retries them once more (a later record of the shard failed): nothing goes out twice.
    assert invoke(event_batch, lambda_context, seconds=20) == {"batchItemFailures": []}
    assert invoke(identity_batch, lambda_context, seconds=20) == {"batchItemFailures": []}

    [event] = sink.events
    assert event.sdk_key == SDK_KEY
    assert event.event["eventTypeId"] == "Course_Clicked"
    assert event.event["trafficTypeName"] == "user"
    assert event.event["key"] == "97980cfea0067"
    assert event.event["environmentName"] == "Production"
    assert event.event["timestamp"] == 1449947461249
    assert event.event["properties"] == {"title": "Intro to Analytics"}

    [update] = sink.identity_updates
    assert (update.traffic_type, update.environment, update.key) == ("user", "Production", "97980cfea0067")
    assert update.values["name"] == "Peter Gibbons"
    assert update.values["plan"] == "premium"
    assert update.values["logins"] == "5"
    assert json.loads(update.values["address"])["city"] == "San Francisco"
