"""Drives the ingest handler the way API Gateway does: real-shaped HTTP API v2 events, moto behind."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3

from shared import secret_versions
from shared.events_table import EventsTable
from shared.identities_table import IdentitiesTable
from tests.conftest import REGION, load_event, put_config, put_secret

CONNECTION = "acme-production"
SECRET = "whsec-3f9a1c0b7d2e4a6b"
CONFIG: dict[str, Any] = {
    "environment": "Production",
    "identities": [
        {"segmentId": "userId", "trafficType": "user"},
        {"segmentId": "anonymousId", "trafficType": "anonymous"},
    ],
}


def segment_message(fixture: str, /, **changes: Any) -> dict[str, Any]:
    """A Segment spec example payload from tests/events/segment/, with fields replaced."""
    message: dict[str, Any] = load_event(f"segment/{fixture}.json")
    message.update(changes)
    return message


def signature(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha1).hexdigest()


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class Webhook:
    """The ingest function with one configured connection."""

    def __init__(self, env: dict[str, str], context: Any) -> None:
        self.env = env
        self.context = context
        self.events = EventsTable(env["EVENTS_TABLE"])
        self.identities = IdentitiesTable(env["IDENTITIES_TABLE"])
        secret_versions.clear_caches()

    @classmethod
    def create(cls, function_env: Callable[[str], dict[str, str]], context: Any, **config: Any) -> Webhook:
        env = function_env("IngestFunction")
        put_config(f"inbound/{CONNECTION}", {**CONFIG, **config})
        put_secret(f"inbound/{CONNECTION}", SECRET)
        return cls(env, context)

    def event(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        connection: str = CONNECTION,
        base64_encoded: bool = False,
    ) -> dict[str, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        event: dict[str, Any] = copy.deepcopy(load_event("apigw_http_segment_webhook.json"))
        event["headers"]["authorization"] = f"Bearer {SECRET}"
        if headers is not None:
            event["headers"].pop("authorization")
            event["headers"].update(headers)
        event["headers"]["content-length"] = str(len(raw))
        event["rawPath"] = event["requestContext"]["http"]["path"] = f"/segment/{connection}"
        event["pathParameters"] = {"connectionId": connection}
        event["isBase64Encoded"] = base64_encoded
        event["body"] = base64.b64encode(raw).decode() if base64_encoded else raw.decode()
        return event

    def post(self, body: Any, **options: Any) -> Answer:
        return self.invoke(self.event(body, **options))

    def invoke(self, event: dict[str, Any]) -> Answer:
        # Imported here, after the function's environment is set: Powertools reads it at import.
        from functions.ingest import app as ingest_app

        response = ingest_app.lambda_handler(event, self.context)
        return Answer(
            status=response["statusCode"],
            body=json.loads(response["body"]) if response.get("body") else {},
            headers=response.get("headers") or {},
        )

    def stored_events(
        self, traffic_type: str, key: str, environment: str = "Production"
    ) -> list[dict[str, Any]]:
        return self.events.events_of(environment, traffic_type, key)

    def identity(self, traffic_type: str, key: str, environment: str = "Production") -> dict[str, Any] | None:
        return self.identities.get(environment, traffic_type, key)

    def count_events(self) -> int:
        client = boto3.client("dynamodb", region_name=REGION)
        return int(client.scan(TableName=self.env["EVENTS_TABLE"], Select="COUNT")["Count"])
