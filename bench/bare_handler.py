"""The reference for measurement 3: a handler that imports only boto3 and json.

Its first invocation does what every real first invocation does at the least: decode the body,
create a DynamoDB client, make one request.
"""

from __future__ import annotations

import json
import os
from typing import Any

import boto3

_client: Any = None


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _client
    body = json.loads(event.get("body") or "{}")
    if _client is None:
        _client = boto3.client("dynamodb")
    _client.describe_table(TableName=os.environ["EVENTS_TABLE"])
    return {"statusCode": 200, "body": json.dumps({"received": 1 if body else 0})}
