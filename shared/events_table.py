"""EventsTable: one item per FME event (docs/data-model.md).

``pk = {environment}#{trafficTypeName}#{key}``, ``sk = {timestamp:013d}#{messageId}`` for a track
call and ``{timestamp:013d}#{messageId}#{segmentType}`` for a page or screen call: a user's events are
one Query in time order, and a redelivered message maps to the same key, which is what makes storing
idempotent on ``messageId``. The type is in the key because Segment's own spec examples give one
messageId (and time, and user) to a track, a page and a screen call; a track call keeps the key that
versions before it had, so that a retry across an upgrade is still found.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from shared.dynamodb import (
    Table,
    batch_get,
    batch_write,
    deserialize_item,
    put_if_absent,
    query_items,
    run_parallel,
)
from shared.inbound.mapping import FmeEvent
from shared.profiles_table import profile_pk

DEFAULT_RETENTION_DAYS = 90
# Events of one identity read, newest first, when looking for a message that carries no time.
MAX_LOOKUP_EVENTS = 10_000


def event_sk(timestamp: int, message_id: str, segment_type: str) -> str:
    if segment_type == "track":
        return f"{timestamp:013d}#{message_id}"
    return f"{timestamp:013d}#{message_id}#{segment_type}"


def event_item(event: FmeEvent, connection_id: str, received_at: int, expires_at: int) -> dict[str, Any]:
    """The stored item, as attribute values; properties are already flat scalars (mapping rules)."""
    properties: dict[str, Any] = {}
    for name, value in event.properties.items():
        kind = type(value)
        if kind is str:
            properties[name] = {"S": value}
        elif kind is bool:
            properties[name] = {"BOOL": value}
        elif kind is int:
            properties[name] = {"N": str(value)}
        elif kind is float:
            properties[name] = {"N": repr(value)}
        else:
            properties[name] = {"NULL": True}
    item: dict[str, Any] = {
        "pk": {"S": profile_pk(event.environment, event.trafficTypeName, event.key)},
        "sk": {"S": event_sk(event.timestamp, event.messageId, event.segmentType)},
        "environment": {"S": event.environment},
        "trafficTypeName": {"S": event.trafficTypeName},
        "key": {"S": event.key},
        "eventTypeId": {"S": event.eventTypeId},
        "timestamp": {"N": str(event.timestamp)},
        "properties": {"M": properties},
        "messageId": {"S": event.messageId},
        "segmentType": {"S": event.segmentType},
        "receivedAt": {"N": str(received_at)},
        "connectionId": {"S": connection_id},
        "expiresAt": {"N": str(expires_at)},
    }
    if event.value is not None:
        item["value"] = {"N": repr(event.value) if isinstance(event.value, float) else str(event.value)}
    return item


def retention_days() -> int:
    return int(os.environ.get("EVENT_RETENTION_DAYS", DEFAULT_RETENTION_DAYS))


class EventsTable(Table):
    table_env = "EVENTS_TABLE"

    def existing(self, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of the (pk, sk) keys are already stored."""
        requests = [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in keys]
        found = batch_get(
            self.client, self.name, requests, projection="pk, sk", sleep=self.sleep, time_left=self.time_left
        )
        return {(item["pk"]["S"], item["sk"]["S"]) for item in found}

    def put(self, items: Sequence[dict[str, Any]]) -> None:
        batch_write(
            self.client,
            self.name,
            [{"PutRequest": {"Item": item}} for item in items],
            self.sleep,
            self.time_left,
        )

    def put_new(self, items: Sequence[dict[str, Any]]) -> set[tuple[str, str]]:
        """Write the items whose key is not stored yet; returns the (pk, sk) of those already stored."""
        written = put_if_absent(self.client, self.name, items)
        return {
            (item["pk"]["S"], item["sk"]["S"]) for item, new in zip(items, written, strict=True) if not new
        }

    def stored_messages(
        self, messages: Iterable[tuple[str, str, str]], since_ms: int
    ) -> set[tuple[str, str, str]]:
        """Which (pk, messageId, segmentType) have an event stored at ``since_ms`` or later.

        For messages that carry no time, whose key holds the time of receipt: one Query per identity
        (side by side), newest first, of at most :data:`MAX_LOOKUP_EVENTS` events; a message beyond
        that many newer events of its identity is not found.
        """
        wanted: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for pk, message_id, segment_type in messages:
            wanted[pk].add((message_id, segment_type))
        pks = sorted(wanted)
        found = run_parallel(lambda pk: self._messages(pk, since_ms), pks)
        return {(pk, *m) for pk, stored in zip(pks, found, strict=True) for m in wanted[pk] & stored}

    def _messages(self, pk: str, since_ms: int) -> set[tuple[str, str]]:
        request = {
            "TableName": self.name,
            "KeyConditionExpression": "pk = :pk AND sk >= :since",
            "ExpressionAttributeValues": {":pk": {"S": pk}, ":since": {"S": f"{max(0, since_ms):013d}"}},
            "ProjectionExpression": "messageId, segmentType",
            "ScanIndexForward": False,
        }
        items = itertools.islice(query_items(self.client, request), MAX_LOOKUP_EVENTS)
        return {
            (item["messageId"]["S"], item["segmentType"]["S"])
            for item in items
            if "messageId" in item and "segmentType" in item
        }

    def keys_of(self, pk: str) -> list[tuple[str, str]]:
        """Every (pk, sk) of one identity's events."""
        request = {
            "TableName": self.name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ProjectionExpression": "pk, sk",
        }
        return [(item["pk"]["S"], item["sk"]["S"]) for item in query_items(self.client, request)]

    def delete(self, keys: Sequence[tuple[str, str]]) -> None:
        requests = [{"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"S": sk}}}} for pk, sk in keys]
        batch_write(self.client, self.name, requests, self.sleep, self.time_left)

    def events_of(
        self,
        environment: str,
        traffic_type: str,
        key: str,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """One identity's events in time order (oldest first unless ``newest_first``), as Python values."""
        request: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": profile_pk(environment, traffic_type, key)}},
            "ScanIndexForward": not newest_first,
        }
        events: list[dict[str, Any]] = []
        while True:
            if limit is not None:
                request["Limit"] = limit - len(events)
            page = self.client.query(**request)
            events.extend(deserialize_item(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page or (limit is not None and len(events) >= limit):
                return events
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
