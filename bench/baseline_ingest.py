"""The reference for measurement 2: a webhook handler that does nothing but json.loads and the writes.

It stores exactly the items the real ingest function stores for track / page / screen messages (same
keys and attributes) and does nothing else: no authentication, no config, no validation, no logging,
no metrics. Whatever the real handler takes beyond this is the price of what it does beyond this.

Two ways to write, chosen by ``BASELINE_WRITES``:

- ``batch`` (the reference of the targets): BatchWriteItem with 25 items per request, unprocessed
  items retried, and no duplicate check — the fewest requests that store the items;
- ``conditional``: what the real handler sends for a body of one or two events, one conditional
  ``PutItem`` per event side by side (:func:`shared.dynamodb.put_if_absent`, the handler's own), so
  that the answer can say which were duplicates. Against it, what is left is the handler's own work.
"""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import datetime
from typing import Any

import boto3

_client: Any = None


def _dynamodb() -> Any:
    global _client
    if _client is None:
        _client = boto3.client("dynamodb")
    return _client


def _attribute(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, float):
        return {"N": repr(value)}
    if value is None:
        return {"NULL": True}
    return {"S": json.dumps(value, separators=(",", ":"))}


def _items(message: dict[str, Any], connection: str, now_ms: int, expires_at: int) -> list[dict[str, Any]]:
    kind = message["type"]
    if kind == "track":
        event_type = message["event"].replace(" ", "_")
    else:
        event_type = f"view_{message['name']}_{kind}".replace(" ", "_")
    stamp = int(datetime.fromisoformat(message["timestamp"]).timestamp() * 1000)
    properties = {k: _attribute(v) for k, v in (message.get("properties") or {}).items()}
    items = []
    for field, traffic_type in (("userId", "user"), ("anonymousId", "anonymous")):
        key = message.get(field)
        if not key:
            continue
        items.append(
            {
                "pk": {"S": f"Production#{traffic_type}#{key}"},
                "sk": {"S": f"{stamp:013d}#{message['messageId']}" + ("" if kind == "track" else f"#{kind}")},
                "environment": {"S": "Production"},
                "trafficTypeName": {"S": traffic_type},
                "key": {"S": key},
                "eventTypeId": {"S": event_type},
                "timestamp": {"N": str(stamp)},
                "properties": {"M": properties},
                "messageId": {"S": message["messageId"]},
                "segmentType": {"S": kind},
                "receivedAt": {"N": str(now_ms)},
                "connectionId": {"S": connection},
                "expiresAt": {"N": str(expires_at)},
            }
        )
    return items


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body
    data = json.loads(raw)
    messages = data if isinstance(data, list) else data.get("batch", [data])
    now_ms = time.time_ns() // 1_000_000
    expires_at = now_ms // 1000 + 90 * 86_400
    connection = event["pathParameters"]["connectionId"]
    items = [item for m in messages for item in _items(m, connection, now_ms, expires_at)]
    table = os.environ["EVENTS_TABLE"]
    if os.environ.get("BASELINE_WRITES") == "conditional":
        from shared.dynamodb import put_if_absent

        written = put_if_absent(_dynamodb(), table, items)
        body = {"stored": len(messages), "events": sum(written)}
        return {"statusCode": 200, "body": json.dumps(body)}
    for start in range(0, len(items), 25):
        pending = {table: [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]}
        while pending:
            pending = _dynamodb().batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
    return {"statusCode": 200, "body": json.dumps({"stored": len(messages), "events": len(items)})}
