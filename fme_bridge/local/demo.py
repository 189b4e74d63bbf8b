"""``fme-bridge local --demo``: a demo connection and outbound config, and real-shaped traffic through both.

Inbound, Segment calls as the Webhooks destination sends them (the examples of Segment's spec) go
to the webhook; outbound, impressions in each body shape of docs/outbound.md go to the queue. The summary
shows what the bridge stored (events, identities, and the last treatments the last-treatments
function recorded from the impressions) and what the local Segment and FME sinks received.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from boto3.dynamodb.conditions import Key
from rich.console import Console
from rich.table import Column, Table

from fme_bridge.local.stack import LocalStack
from shared.profiles_table import profile_pk

CONNECTION_ID = "demo"
WEBHOOK_SECRET = "demo-webhook-secret"  # a local, public demo value
PROFILES_SECRET = "demo-profiles-secret"  # the profile API's bearer secret, as public
IMPRESSIONS_TOKEN = "demo-impressions-token"  # the impressions webhook's URL secret, as public
OUTBOUND_NAME = "demo"
WRITE_KEY = "demo-write-key"
# Keys of the demo connection's delivery into the local FME sink (local, public demo values).
FME_KEYS = {"sdkKey": "demo-fme-sdk-key", "adminKey": "demo-fme-admin-key"}
ENVIRONMENT = "Production"
USER_ID = "97980cfea0067"
ANONYMOUS_ID = "507f191e810c19729de860ea"

INBOUND_CONFIG = {
    "environment": ENVIRONMENT,
    "identities": [
        {"segmentId": "userId", "trafficType": "user"},
        {"segmentId": "anonymousId", "trafficType": "anonymous"},
    ],
    "valueField": "properties.revenue",
}


def outbound_config(endpoint: str) -> dict[str, Any]:
    return {
        "environments": [ENVIRONMENT],
        "identities": {"user": "userId", "anonymous": "anonymousId"},
        "defaultTrafficType": "user",
        "endpoint": endpoint,
    }


def _context() -> dict[str, Any]:
    return {
        "ip": "8.8.8.8",
        "library": {"name": "analytics.js", "version": "2.11.1"},
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_12_5) AppleWebKit/537.36",
    }


def segment_calls(now_ms: int) -> list[tuple[str, Any]]:
    """(label, body) of the webhook calls: one per Segment call type, and a batch."""

    def at(offset_s: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now_ms / 1000 - 60 + offset_s))

    common = {"anonymousId": ANONYMOUS_ID, "userId": USER_ID, "context": _context()}
    identify = {
        **common,
        "type": "identify",
        "messageId": "demo-identify-1",
        "timestamp": at(0),
        "traits": {
            "name": "Peter Gibbons",
            "email": "peter@example.com",
            "plan": "premium",
            "logins": 5,
            "address": {"city": "Austin", "country": "USA"},
        },
    }
    track = {
        **common,
        "type": "track",
        "messageId": "demo-track-1",
        "timestamp": at(1),
        "event": "Order Completed",
        "properties": {
            "orderId": "50314b8e9bcf000000000000",
            "revenue": 25.0,
            "currency": "USD",
            "split": [{"account": "initech"}],
        },
    }
    page = {
        **common,
        "type": "page",
        "messageId": "demo-page-1",
        "timestamp": at(2),
        "name": "Signup",
        "properties": {"title": "Sign up", "url": "https://example.com/signup", "path": "/signup"},
    }
    group = {
        **common,
        "type": "group",
        "messageId": "demo-group-1",
        "timestamp": at(3),
        "groupId": "0e8c78ea9d97a7b8185e8632",
        "traits": {
            "name": "Initech",
            "industry": "Technology",
            "employees": 329,
            "plan": "enterprise",
            "split": {"account": "initech"},
        },
    }
    batch = {
        "batch": [
            {
                **common,
                "type": "track",
                "messageId": "demo-track-2",
                "timestamp": at(4),
                "event": "Checkout Started",
                "properties": {"revenue": 25.0},
            },
            {**common, "type": "screen", "messageId": "demo-screen-1", "timestamp": at(5), "name": "Cart"},
            {"type": "alias", "messageId": "demo-alias-1", "previousId": ANONYMOUS_ID, "userId": USER_ID},
        ]
    }
    return [("identify", identify), ("track", track), ("page", page), ("group", group), ("batch of 3", batch)]


def impression_messages(now_ms: int) -> list[tuple[str, Any]]:
    """(label, SQS body) in each of the three body shapes the queue accepts."""
    webhook_shape = {
        "key": USER_ID,
        "split": "new_checkout",
        "environmentId": "env-prod-1",
        "environmentName": ENVIRONMENT,
        "treatment": "on",
        "time": now_ms - 3000,
        "bucketingKey": None,
        "label": "default rule",
        "machineName": "web-1",
        "machineIp": "10.0.0.1",
        "splitVersionNumber": 1795483041109,
        "sdk": "nodejs",
        "sdkVersion": "10.27.0",
        "properties": None,
    }
    listener_shape = {
        "impression": {
            "feature": "pricing_page",
            "keyName": USER_ID,
            "treatment": "v2",
            "time": now_ms - 2000,
            "bucketingKey": None,
            "label": "in segment beta_users",
            "changeNumber": 1795483041200,
            "properties": None,
        },
        "attributes": {"plan": "premium"},
        "ip": "10.0.0.2",
        "hostname": "api-1",
        "sdkLanguageVersion": "python-10.5.1",
        "environmentName": ENVIRONMENT,
    }
    envelope = {
        "environmentName": ENVIRONMENT,
        "trafficType": "anonymous",
        "impressions": [
            {
                "key": ANONYMOUS_ID,
                "split": "new_checkout",
                "environmentId": "env-prod-1",
                "environmentName": ENVIRONMENT,
                "treatment": "off",
                "time": now_ms - 1000,
                "label": "default rule",
                "splitVersionNumber": 1795483041109,
                "machineName": "web-2",
                "machineIp": "10.0.0.3",
                "sdk": "javascript",
                "sdkVersion": "11.0.0",
                "bucketingKey": None,
                "properties": None,
            },
        ],
    }
    return [("webhook shape", webhook_shape), ("listener shape", listener_shape), ("envelope", envelope)]


def inbound_config(stack: LocalStack) -> dict[str, Any]:
    """The demo connection; with the local FME sink running, its events and identities go there."""
    if stack.fme_sink is None:
        return INBOUND_CONFIG
    delivery = {
        "enabled": True,
        "eventsEndpoint": stack.fme_sink.events_endpoint,
        "identitiesEndpoint": stack.fme_sink.identities_endpoint,
    }
    return {**INBOUND_CONFIG, "delivery": delivery}


def seed(stack: LocalStack) -> None:
    """The demo connection, outbound config, their secrets and the profile API's secret (a config
    edit takes effect in seconds)."""
    prefix = stack.config_prefix
    ssm, secrets = stack.client("ssm"), stack.client("secretsmanager")
    endpoint = stack.sink.endpoint if stack.sink is not None else "http://127.0.0.1:3001/v1"
    documents: list[tuple[str, Any, str]] = [
        (f"{prefix}/inbound/{CONNECTION_ID}", inbound_config(stack), WEBHOOK_SECRET),
        (f"{prefix}/outbound/{OUTBOUND_NAME}", outbound_config(endpoint), WRITE_KEY),
    ]
    if stack.fme_sink is not None:
        documents.append((f"{prefix}/inbound/{CONNECTION_ID}/fme", None, json.dumps(FME_KEYS)))
    documents.append((f"{prefix}/profiles", None, PROFILES_SECRET))
    documents.append((f"{prefix}/impressions-webhook", None, IMPRESSIONS_TOKEN))
    for name, document, secret in documents:
        if document is None:
            _put_secret(secrets, name, secret)
            continue
        ssm.put_parameter(Name=name, Value=json.dumps(document), Type="String", Overwrite=True)
        _put_secret(secrets, name, secret)


def _put_secret(secrets: Any, name: str, secret: str) -> None:
    try:
        secrets.put_secret_value(SecretId=name, SecretString=secret)
    except secrets.exceptions.ResourceNotFoundException:
        secrets.create_secret(Name=name, SecretString=secret)


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


def run_demo(stack: LocalStack, console: Console) -> None:
    console.rule("demo")
    seed(stack)
    console.print(
        f"seeded inbound connection [bold]{CONNECTION_ID}[/bold] "
        f"(webhook secret [bold]{WEBHOOK_SECRET}[/bold]) "
        f"and outbound config [bold]{OUTBOUND_NAME}[/bold] → the local Segment sink; "
        f"profile API secret [bold]{PROFILES_SECRET}[/bold]; "
        f"impressions webhook token [bold]{IMPRESSIONS_TOKEN}[/bold]"
    )
    now_ms = int(time.time() * 1000)
    webhook = f"{stack.api_url}/segment/{CONNECTION_ID}"
    sent = _table("webhook calls", "Segment call", "status", "answer")
    with httpx.Client(timeout=15) as client:
        for label, body in segment_calls(now_ms):
            response = client.post(webhook, json=body, headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"})
            sent.add_row(label, str(response.status_code), _compact(response.text))
    console.print(sent)

    sqs = stack.client("sqs")
    assert stack.stack is not None
    queue_url = stack.stack.queues["ImpressionsQueue"]
    for _label, body in impression_messages(now_ms):
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))
    console.print(
        "sent 3 impression messages (webhook shape, listener shape, envelope) to the impressions queue"
    )

    expected = 3  # one track call per impression
    with console.status("waiting for the impressions function to deliver to Segment…"):
        if stack.sink is not None:
            wait_until(lambda: len(stack.sink.messages) >= expected, timeout_s=45)
        else:
            wait_until(lambda: False, timeout_s=1)
    # The impressions function forwards the newest impression per user and flag to the
    # last-treatments queue, whose function records them (after its batching window).
    with console.status("waiting for the last-treatments function to record the last treatments…"):
        wait_until(lambda: len(last_treatments(stack)) >= EXPECTED_LAST_TREATMENTS, timeout_s=45)
    if stack.fme_sink is not None:
        with console.status("waiting for the delivery function to deliver to FME…"):
            wait_until(lambda: _delivered_everything(stack), timeout_s=45)
    print_summary(stack, console)


# The demo's impressions: the user sees new_checkout and pricing_page, the anonymous visitor new_checkout.
EXPECTED_LAST_TREATMENTS = 3
PROFILE_IDENTITIES = (("user", USER_ID), ("anonymous", ANONYMOUS_ID))


def last_treatments(stack: LocalStack) -> list[tuple[str, str, dict[str, Any]]]:
    """(traffic type, key, ProfilesTable item) of the demo identities' last treatments."""
    table = stack.resource_table("ProfilesTable")
    found: list[tuple[str, str, dict[str, Any]]] = []
    for traffic_type, key in PROFILE_IDENTITIES:
        items = table.query(
            KeyConditionExpression=Key("pk").eq(profile_pk(ENVIRONMENT, traffic_type, key))
            & Key("sk").begins_with("treatment#")
        )["Items"]
        found.extend((traffic_type, key, item) for item in items)
    return found


def _delivered_everything(stack: LocalStack) -> bool:
    """Every stored event reached the FME sink, and at least one identity did."""
    assert stack.stack is not None
    stored = stack.client("dynamodb").scan(TableName=stack.stack.tables["EventsTable"], Select="COUNT")[
        "Count"
    ]
    return bool(stored) and len(stack.fme_sink.events) >= stored and bool(stack.fme_sink.identity_updates)


def _table(title: str, *headers: str) -> Table:
    """A table whose cells fold rather than being cut in a narrow terminal: keys, compact JSON and
    attribute values have no spaces to wrap at, and shown cut they could not be read or copied."""
    return Table(*(Column(header, overflow="fold") for header in headers), title=title, title_justify="left")


def _compact(text: str) -> str:
    try:
        return json.dumps(json.loads(text), separators=(",", ":"))
    except ValueError:
        return text[:200]


def stored_events(stack: LocalStack, traffic_type: str, key: str) -> list[dict[str, Any]]:
    assert stack.stack is not None
    table = stack.resource_table("EventsTable")
    return list(
        table.query(KeyConditionExpression=Key("pk").eq(profile_pk(ENVIRONMENT, traffic_type, key)))["Items"]
    )


def print_fme_received(stack: LocalStack, console: Console) -> None:
    """What the delivery function sent to the local FME sink."""
    fme_events = _table("FME received: events", "trafficType", "key", "eventTypeId", "value", "environment")
    for received in stack.fme_sink.events:
        event = received.event
        value = event.get("value")
        fme_events.add_row(
            str(event.get("trafficTypeName")),
            str(event.get("key")),
            str(event.get("eventTypeId")),
            "" if value is None else str(value),
            str(event.get("environmentName")),
        )
    console.print(fme_events)
    fme_identities = _table("FME received: identities", "trafficType", "key", "values")
    for update in stack.fme_sink.identity_updates:
        values = ", ".join(f"{k}={v}" for k, v in sorted(update.values.items()))
        fme_identities.add_row(update.traffic_type, update.key, values)
    console.print(fme_identities)


def cli_command() -> str:
    """How to run the CLI from where the stack was started: ``fme-bridge`` when that is the one on
    PATH, else the script installed beside this interpreter (``.venv/bin/fme-bridge`` under ``make
    run``, whose virtualenv is not activated)."""
    beside = Path(sys.executable).parent / "fme-bridge"
    if not beside.exists():
        return "fme-bridge"
    on_path = shutil.which("fme-bridge")
    if on_path is not None and Path(on_path).resolve() == beside.resolve():
        return "fme-bridge"
    try:
        return os.path.relpath(beside)
    except ValueError:  # another drive (Windows)
        return str(beside)


def print_summary(stack: LocalStack, console: Console) -> None:
    events = _table("stored FME events", "trafficType", "key", "eventTypeId", "value", "from")
    for traffic_type, key in (("user", USER_ID), ("anonymous", ANONYMOUS_ID), ("account", "initech")):
        for item in stored_events(stack, traffic_type, key):
            value = item.get("value")
            events.add_row(
                traffic_type,
                key,
                str(item.get("eventTypeId")),
                "" if value is None else str(value),
                str(item.get("segmentType", "")),
            )
    console.print(events)

    identities = _table("stored identities", "trafficType", "key", "attributes")
    table = stack.resource_table("IdentitiesTable")
    for traffic_type, key in (("user", USER_ID), ("anonymous", ANONYMOUS_ID), ("account", "initech")):
        item = table.get_item(Key={"pk": profile_pk(ENVIRONMENT, traffic_type, key)}).get("Item")
        if item:
            attributes = ", ".join(f"{k}={v}" for k, v in sorted((item.get("attributes") or {}).items()))
            identities.add_row(traffic_type, key, attributes)
    console.print(identities)

    received = _table("Segment received (local sink)", "type", "event", "user", "split", "treatment")
    for message in stack.sink.messages if stack.sink is not None else []:
        properties = message.get("properties") or {}
        user = message.get("userId") or message.get("anonymousId") or ""
        received.add_row(
            str(message.get("type")),
            str(message.get("event", "")),
            str(user),
            str(properties.get("split", "")),
            str(properties.get("treatment", "")),
        )
    console.print(received)

    treatments = _table(
        "last treatments (recorded by the last-treatments function)",
        "trafficType",
        "key",
        "flag",
        "treatment",
    )
    for traffic_type, key, item in last_treatments(stack):
        treatments.add_row(traffic_type, key, str(item.get("split")), str(item.get("treatment")))
    console.print(treatments)
    if stack.fme_sink is not None:
        print_fme_received(stack, console)
    cli = cli_command()
    console.print("Try it yourself:")
    console.print(
        f"  curl -s -X POST {stack.api_url}/segment/{CONNECTION_ID} "
        f"-H 'Authorization: Bearer {WEBHOOK_SECRET}' "
        "-H 'Content-Type: application/json' "
        """-d '{"type":"track","event":"Signed Up","userId":"u-42","messageId":"m-1"}'""",
        soft_wrap=True,
    )
    console.print(
        f"  AWS_ENDPOINT_URL={stack.aws_endpoint} {cli} events u-42 --environment {ENVIRONMENT}",
        soft_wrap=True,
    )
    console.print(
        f"  AWS_ENDPOINT_URL={stack.aws_endpoint} {cli} profile {ENVIRONMENT} user {USER_ID}",
        soft_wrap=True,
    )
    console.print(
        "  gzip -c tests/events/impressions_webhook.json | curl -s -X POST --data-binary @- "
        f"-H 'Content-Encoding: gzip' {stack.api_url}/impressions/{IMPRESSIONS_TOKEN}",
        soft_wrap=True,
    )
    console.print(
        f"  curl -s {stack.api_url}/profiles/{ENVIRONMENT}/user/{USER_ID} "
        f"-H 'Authorization: Bearer {PROFILES_SECRET}'",
        soft_wrap=True,
    )
    if stack.fme_sink is not None:
        console.print(f"  AWS_ENDPOINT_URL={stack.aws_endpoint} {cli} delivery status", soft_wrap=True)
        console.print(f"  curl -s {stack.fme_sink.url}/_sink/state", soft_wrap=True)
