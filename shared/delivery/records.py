"""DynamoDB Streams records of the events and identities tables, turned into what FME takes.

Stream images arrive in DynamoDB JSON; Powertools' ``DynamoDBRecord`` deserializes them (numbers
become ``Decimal``). The item shapes are those of docs/data-model.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)

from shared.delivery.fme_client import ATTRIBUTE_ID, FmeEvent, FmeIdentity
from shared.dynamodb import to_python


class MalformedItem(ValueError):
    """A stream image that lacks what delivery needs; the message says what."""


def ack_id(pk: str, sk: str) -> str:
    """The delivery log's id of an event item: a digest, so the log holds no user keys."""
    return hashlib.sha256(f"{pk}\x1f{sk}".encode()).hexdigest()[:40]


def _text(image: dict[str, Any], name: str) -> str:
    value = image.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedItem(f"attribute {name!r} is missing or not a string")
    return value


def _millis(image: dict[str, Any], name: str) -> int:
    value = image.get(name)
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float):
        raise MalformedItem(f"attribute {name!r} is missing or not a number")
    return int(value)


@dataclass(frozen=True)
class StoredEvent:
    """An event item as stored by ingest, ready for the Events API."""

    sequence_number: str
    connection_id: str
    ack_id: str
    received_at: int | None
    event: FmeEvent


def stored_event(record: DynamoDBRecord) -> StoredEvent:
    stream = record.dynamodb
    if stream is None or not stream.sequence_number:
        raise MalformedItem("record has no dynamodb section")
    image = stream.new_image
    keys = stream.keys
    pk, sk = keys.get("pk"), keys.get("sk")
    if not isinstance(pk, str) or not isinstance(sk, str):
        raise MalformedItem("record keys pk / sk are missing")
    value = image.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, Decimal | int | float)):
        value = None
    properties = image.get("properties")
    event = FmeEvent(
        eventTypeId=_text(image, "eventTypeId"),
        trafficTypeName=_text(image, "trafficTypeName"),
        key=_text(image, "key"),
        value=to_python(value),
        timestamp=_millis(image, "timestamp"),
        environmentName=_text(image, "environment"),
        properties=to_python(properties) if isinstance(properties, dict) else {},
    )
    received = image.get("receivedAt")
    return StoredEvent(
        sequence_number=stream.sequence_number,
        connection_id=_text(image, "connectionId"),
        ack_id=ack_id(pk, sk),
        received_at=int(received) if isinstance(received, Decimal | int) else None,
        event=event,
    )


def attribute_value(value: Any) -> str | None:
    """An identity attribute as FME stores it: a string (``true``/``false`` for booleans)."""
    value = to_python(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class IdentityValues:
    values: dict[str, str]
    dropped: list[str] = field(default_factory=list)  # attribute names FME would refuse


def identity_values(attributes: Any) -> IdentityValues:
    values: dict[str, str] = {}
    dropped: list[str] = []
    for name, raw in (attributes or {}).items() if isinstance(attributes, dict) else []:
        if not ATTRIBUTE_ID.fullmatch(str(name)):
            dropped.append(str(name))
            continue
        text = attribute_value(raw)
        if text is not None:
            values[str(name)] = text
    return IdentityValues(values, dropped)


@dataclass(frozen=True)
class IdentityChange:
    """An identity whose attributes changed, with all its current values (FME overwrites them)."""

    sequence_number: str
    connection_id: str
    environment: str
    traffic_type: str
    updated_at: int | None
    identity: FmeIdentity
    dropped_attributes: list[str]

    @property
    def identity_key(self) -> tuple[str, str, str, str]:
        return (self.connection_id, self.environment, self.traffic_type, self.identity.key)

    @property
    def ack_id(self) -> str:
        """The delivery log's id of this version of the identity (its key, update time and values)."""
        version = json.dumps([self.updated_at, self.identity.values], sort_keys=True, separators=(",", ":"))
        return ack_id("identity\x1f" + "\x1f".join(self.identity_key), version)


def refused_changes(record: DynamoDBRecord) -> list[str]:
    """The attributes FME refuses the names of (left out) that this INSERT or MODIFY set or changed."""
    stream = record.dynamodb
    if stream is None or record.event_name not in (
        DynamoDBRecordEventName.INSERT,
        DynamoDBRecordEventName.MODIFY,
    ):
        return []
    new = stream.new_image.get("attributes")
    old = stream.old_image.get("attributes") if record.event_name is DynamoDBRecordEventName.MODIFY else None
    new, old = (new if isinstance(new, dict) else {}), (old if isinstance(old, dict) else {})
    return [name for name in identity_values(new).dropped if name not in old or old[name] != new[name]]


def identity_change(record: DynamoDBRecord) -> IdentityChange | None:
    """The change a stream record carries, or None when no attribute FME would see changed."""
    stream = record.dynamodb
    if stream is None or not stream.sequence_number:
        raise MalformedItem("record has no dynamodb section")
    if record.event_name not in (DynamoDBRecordEventName.INSERT, DynamoDBRecordEventName.MODIFY):
        return None
    new = stream.new_image
    current = identity_values(new.get("attributes"))
    if record.event_name is DynamoDBRecordEventName.MODIFY:
        before = identity_values(stream.old_image.get("attributes"))
        if before.values == current.values:
            return None
    elif not current.values:  # a new identity without a value FME would take: nothing to create
        return None
    # A change that removed the last value is sent without values: Save Identities overwrites, so
    # FME drops them as it drops one of several.
    updated = new.get("updatedAt")
    return IdentityChange(
        sequence_number=stream.sequence_number,
        connection_id=_text(new, "connectionId"),
        environment=_text(new, "environment"),
        traffic_type=_text(new, "trafficTypeName"),
        updated_at=int(updated) if isinstance(updated, Decimal | int) else None,
        identity=FmeIdentity(key=_text(new, "key"), values=current.values),
        dropped_attributes=current.dropped,
    )


def read_stream_batch(streams: Any, info: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of a stream batch Lambda gave up on, read again from the stream (a
    ``dynamodbstreams`` client; ``info``: the on-failure record's ``DDBStreamBatchInfo``), shaped as
    Lambda delivers them. Raises when the stream no longer holds them (24 h) or is gone."""
    arn, end = str(info["streamArn"]), int(info["endSequenceNumber"])
    iterator = streams.get_shard_iterator(
        StreamArn=arn,
        ShardId=info["shardId"],
        ShardIteratorType="AT_SEQUENCE_NUMBER",
        SequenceNumber=info["startSequenceNumber"],
    )["ShardIterator"]
    records: list[dict[str, Any]] = []
    while iterator:
        page = streams.get_records(ShardIterator=iterator, Limit=1000)
        batch = [r for r in page.get("Records", []) if int(r["dynamodb"]["SequenceNumber"]) <= end]
        records.extend({**r, "eventSourceARN": arn} for r in batch)
        if not page.get("Records") or len(batch) < len(page["Records"]):
            break
        iterator = page.get("NextShardIterator")
    return records


def held_back(record: dict[str, Any]) -> tuple[str, int] | None:
    """The connection of a stream record (events or identities table) and the time its status
    counts it behind from (``receivedAt`` of an event, ``updatedAt`` of an identity); None if the
    record has neither."""
    image = DynamoDBRecord(record).dynamodb
    item = to_python(image.new_image) if image is not None and image.new_image else {}
    connection_id, at = item.get("connectionId"), item.get("receivedAt", item.get("updatedAt"))
    if not isinstance(connection_id, str) or not isinstance(at, int) or isinstance(at, bool):
        return None
    return connection_id, at
