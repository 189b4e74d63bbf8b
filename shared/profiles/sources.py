"""Reads of the inbound tables a profile is built from: identity attributes and stored events.

Both tables share the profile key ``{environment}#{trafficTypeName}#{key}``; events sort by
``{timestamp:013d}#{messageId}…`` (docs/data-model.md), so a user's events in a time
range, newest first, are one ``Query`` without a scan.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared import aws
from shared.dynamodb import deserialize_item, python_item
from shared.profiles_table import typed

EVENT_FIELDS = (
    "environment",
    "trafficTypeName",
    "key",
    "eventTypeId",
    "value",
    "timestamp",
    "properties",
    "messageId",
    "segmentType",
    "receivedAt",
)
_MAX_IN_OPERANDS = 99  # DynamoDB allows 100 values in IN; one more is the key
# shared.events_table.event_sk: the time, a messageId (up to the webhook's 200 characters, any of
# them), then the type of a page or screen call.
_EVENT_SK = re.compile(r"\d{13}#.{1,200}(?:#page|#screen)?", re.DOTALL)


class InvalidCursor(ValueError):
    """A ``cursor`` that this API did not hand out."""


# The process's one DynamoDB client, not a boto3 resource per table: each resource brings a client
# of its own, and a cold start pays for every client it creates.


def identity_item(pk: str, consistent: bool = False) -> dict[str, Any] | None:
    response = aws.client("dynamodb").get_item(
        TableName=aws.env("IDENTITIES_TABLE"), Key=typed({"pk": pk}), ConsistentRead=consistent
    )
    item = response.get("Item")
    return python_item(item) if item else None


@dataclass(frozen=True)
class EventPage:
    events: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(sk: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"sk": sk}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        sk = json.loads(base64.urlsafe_b64decode(padded.encode()))["sk"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidCursor("cursor is not one this API returned") from None
    if not isinstance(sk, str) or not _EVENT_SK.fullmatch(sk):
        raise InvalidCursor("cursor is not one this API returned")
    return sk


def events_page(pk: str, limit: int, cursor: str | None = None) -> EventPage:
    """One page of a user's events, newest first; ``next_cursor`` is None on the last page."""
    request: dict[str, Any] = {
        "TableName": aws.env("EVENTS_TABLE"),
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": typed({":pk": pk}),
        "ScanIndexForward": False,
        # One more than asked for: a next cursor only when there really is a next page.
        "Limit": limit + 1,
    }
    if cursor is not None:
        request["ExclusiveStartKey"] = typed({"pk": pk, "sk": decode_cursor(cursor)})
    client = aws.client("dynamodb")
    items: list[dict[str, Any]] = []
    while len(items) <= limit:
        page = client.query(**request)
        items.extend(python_item(i) for i in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            break
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        request["Limit"] = limit + 1 - len(items)
    shown = items[:limit]
    next_cursor = encode_cursor(shown[-1]["sk"]) if len(items) > limit else None
    return EventPage([{k: i[k] for k in EVENT_FIELDS if k in i} for i in shown], next_cursor)


def has_events(pk: str, consistent: bool = False) -> bool:
    page = aws.client("dynamodb").query(
        TableName=aws.env("EVENTS_TABLE"),
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues=typed({":pk": pk}),
        Limit=1,
        ProjectionExpression="pk",
        ConsistentRead=consistent,
    )
    return bool(page.get("Items"))


def event_times(pk: str, since_ms: int, event_types: Iterable[str]) -> dict[str, list[int]]:
    """Timestamps of a user's events of the given types since ``since_ms``, by event type.

    Strongly consistent: audiences are evaluated right after a change, which an eventually
    consistent read could miss (an exit with no later change to find it again).
    """
    types = sorted(set(event_types))
    out: dict[str, list[int]] = defaultdict(list)
    if not types:
        return out
    client = aws.client("dynamodb")
    values: dict[str, Any] = {":pk": pk, ":since": f"{since_ms:013d}"}
    request: dict[str, Any] = {
        "TableName": aws.env("EVENTS_TABLE"),
        "KeyConditionExpression": "pk = :pk AND sk >= :since",
        "ExpressionAttributeNames": {"#ts": "timestamp"},
        "ProjectionExpression": "eventTypeId, #ts",
        "ConsistentRead": True,
    }
    if len(types) <= _MAX_IN_OPERANDS:
        # The filter saves transfer and memory, not read capacity (documented in docs/profiles.md).
        names = {f":t{i}": t for i, t in enumerate(types)}
        values.update(names)
        request["FilterExpression"] = f"eventTypeId IN ({', '.join(names)})"
    request["ExpressionAttributeValues"] = typed(values)
    wanted = set(types)
    while True:
        page = client.query(**request)
        for item in map(deserialize_item, page.get("Items", [])):
            if item["eventTypeId"] in wanted:
                out[str(item["eventTypeId"])].append(int(item["timestamp"]))
        if "LastEvaluatedKey" not in page:
            return out
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
