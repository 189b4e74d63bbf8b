"""Real-shaped DynamoDB Streams events for the delivery tests, built from items as Lambda delivers them."""

from __future__ import annotations

import copy
import itertools
import json
import os
import time
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeSerializer

from tests.conftest import load_event, put_config, put_secret

_serializer = TypeSerializer()
_sequence = itertools.count(300000000000000000000001)


def dynamodb_json(item: dict[str, Any]) -> dict[str, Any]:
    def native(value: Any) -> Any:
        if isinstance(value, float):
            return Decimal(str(value))
        if isinstance(value, dict):
            return {k: native(v) for k, v in value.items()}
        if isinstance(value, list):
            return [native(v) for v in value]
        return value

    return {k: _serializer.serialize(native(v)) for k, v in item.items()}


def stream_arn(table_name: str) -> str:
    return f"arn:aws:dynamodb:us-east-1:123456789012:table/{table_name}/stream/2026-11-25T09:00:00.000"


def stream_record(
    table_name: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None = None,
    event_name: str | None = None,
    view: str = "NEW_IMAGE",
    key_names: tuple[str, ...] = ("pk", "sk"),
) -> dict[str, Any]:
    """One record as Lambda's DynamoDB Streams event source delivers it."""
    image = new if new is not None else old
    assert image is not None
    body: dict[str, Any] = {
        "ApproximateCreationDateTime": 1764061200,
        "Keys": dynamodb_json({k: image[k] for k in key_names if k in image}),
        "SequenceNumber": str(next(_sequence)),
        "SizeBytes": 512,
        "StreamViewType": view,
    }
    if new is not None and view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
        body["NewImage"] = dynamodb_json(new)
    if old is not None and view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
        body["OldImage"] = dynamodb_json(old)
    name = event_name or ("INSERT" if old is None else "REMOVE" if new is None else "MODIFY")
    return {
        "eventID": body["SequenceNumber"][-12:],
        "eventName": name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": body,
        "eventSourceARN": stream_arn(table_name),
    }


def identity_record(
    table_name: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None = None,
    event_name: str | None = None,
) -> dict[str, Any]:
    """A record of the identities table's stream (keyed by ``pk``, new and old images)."""
    return stream_record(
        table_name, new, old, event_name=event_name, view="NEW_AND_OLD_IMAGES", key_names=("pk",)
    )


def stream_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def sample_event(name: str, table_name: str) -> dict[str, Any]:
    """A sample from tests/events with its eventSourceARN pointing at ``table_name``."""
    event = copy.deepcopy(load_event(name))
    for record in event["Records"]:
        record["eventSourceARN"] = stream_arn(table_name)
    return event


def event_item(
    key: str,
    event_type_id: str = "checkout",
    timestamp: int = 1764061200000,
    message_id: str | None = None,
    connection_id: str = "webshop",
    environment: str = "Production",
    traffic_type: str = "user",
    value: float | Decimal | None = None,
    properties: dict[str, Any] | None = None,
    received_at: int = 1764061201000,
) -> dict[str, Any]:
    """An event item in the shape docs/data-model.md documents."""
    message_id = message_id or f"msg-{key}-{event_type_id}-{timestamp}"
    item: dict[str, Any] = {
        "pk": f"{environment}#{traffic_type}#{key}",
        "sk": f"{timestamp:013d}#{message_id}",
        "environment": environment,
        "trafficTypeName": traffic_type,
        "key": key,
        "eventTypeId": event_type_id,
        "timestamp": timestamp,
        "properties": properties or {},
        "messageId": message_id,
        "segmentType": "track",
        "receivedAt": received_at,
        "connectionId": connection_id,
        "expiresAt": received_at // 1000 + 90 * 86400,
    }
    if value is not None:
        item["value"] = value
    return item


def store(table_name: str, item: dict[str, Any]) -> dict[str, Any]:
    """Put ``item`` in the table (moto), as the record of it implies; returns it."""
    boto3.client("dynamodb", region_name="us-east-1").put_item(TableName=table_name, Item=dynamodb_json(item))
    return item


def identity_item(
    key: str,
    attributes: dict[str, Any],
    updated_at: int = 1764061200000,
    connection_id: str = "webshop",
    environment: str = "Production",
    traffic_type: str = "user",
) -> dict[str, Any]:
    return {
        "pk": f"{environment}#{traffic_type}#{key}",
        "environment": environment,
        "trafficTypeName": traffic_type,
        "key": key,
        "attributes": attributes,
        "attributeTimestamps": dict.fromkeys(attributes, updated_at),
        "updatedAt": updated_at,
        "connectionId": connection_id,
    }


# ---------------------------------------------------------------------------------------------
# Driving the delivery function

SDK_KEY = "sdk-key-0123456789abcdef"
ADMIN_KEY = "admin-key-fedcba9876543210"


def delivery_app() -> Any:
    """The handler module; Powertools reads the metrics namespace (set by template.yaml) on import."""
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "FmeSegmentBridge")
    from functions.delivery import app

    return app


def connect(
    sink: Any,
    connection_id: str = "webshop",
    enabled: bool = True,
    keys: dict[str, str] | None = None,
    with_keys: bool = True,
    environment: str = "Production",
) -> None:
    """An inbound connection whose delivery goes to ``sink``, with its FME keys secret."""
    put_config(
        f"inbound/{connection_id}",
        {
            "environment": environment,
            "identities": [{"segmentId": "userId", "trafficType": "user"}],
            "delivery": {
                "enabled": enabled,
                "eventsEndpoint": sink.events_endpoint,
                "identitiesEndpoint": sink.identities_endpoint,
            },
        },
    )
    put_secret(f"inbound/{connection_id}", "webhook-secret")
    if with_keys:
        put_secret(
            f"inbound/{connection_id}/fme",
            json.dumps(keys if keys is not None else {"sdkKey": SDK_KEY, "adminKey": ADMIN_KEY}),
        )


def invoke(event: dict[str, Any], lambda_context: Any, seconds: float | None = None) -> dict[str, Any]:
    """Invoke the handler; ``seconds`` gives the context a real countdown of remaining time."""
    if seconds is not None:
        end = time.monotonic() + seconds
        lambda_context.get_remaining_time_in_millis = lambda: int((end - time.monotonic()) * 1000)
    return dict(delivery_app().lambda_handler(event, lambda_context))


def failed_ids(response: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def failure_messages(stack: Any) -> list[dict[str, Any]]:
    """Receive (and so take) every message of the failure queue."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    out = []
    while True:
        answer = sqs.receive_message(
            QueueUrl=stack.queues["DeliveryFailureQueue"],
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
        )
        if not answer.get("Messages"):
            return out
        out.extend(json.loads(m["Body"]) for m in answer["Messages"])


def events_table(stack: Any) -> str:
    return str(stack.tables["EventsTable"])


def deliver_one_by_one(
    stack: Any, lambda_context: Any, keys: list[str], connection_id: str = "webshop"
) -> None:
    """One stream batch per event of ``keys`` (a millisecond apart), each invoked as it comes."""
    for i, key in enumerate(keys):
        item = event_item(key, timestamp=1764061200000 + i, connection_id=connection_id)
        invoke(stream_event(stream_record(events_table(stack), item)), lambda_context)
