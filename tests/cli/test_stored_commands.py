"""`events KEY` / `identity KEY`: what the bridge stored for a user (keys of docs/data-model.md)."""

from __future__ import annotations

import json
from decimal import Decimal

import boto3
import pytest
from typer.testing import CliRunner

from fme_bridge.cli import app
from fme_bridge.template import Stack
from tests.cli.conftest import Cli
from tests.delivery_support import event_item, events_table, store

REGION = "us-east-1"


def put_event(
    stack: Stack,
    key: str,
    event_type: str,
    timestamp: int,
    value: Decimal | None = None,
    properties: dict[str, str] | None = None,
) -> None:
    item = event_item(
        key,
        event_type,
        timestamp,
        message_id=f"m-{timestamp}",
        value=value,
        properties=properties or {"plan": "pro"},
        received_at=timestamp + 5,
    )
    store(events_table(stack), item)


def test_events_are_listed_newest_first(cli: Cli, stack: Stack) -> None:
    put_event(stack, "u1", "checkout", 1795483041000, Decimal("25.5"))
    put_event(stack, "u1", "view_signup_page", 1795483042000)
    put_event(stack, "u2", "other", 1795483043000)

    result = cli("events", "u1", "--environment", "Production", "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert [i["eventTypeId"] for i in items] == ["view_signup_page", "checkout"]
    assert items[1]["value"] == 25.5

    table = cli("events", "u1", "-e", "Production")
    assert table.exit_code == 0, table.output
    assert table.stdout.index("view_signup_page") < table.stdout.index("checkout")
    assert "2026-11-24 01:17:22.000Z" in table.stdout  # 1795483042000 ms, UTC


def test_events_past_one_query_page_are_all_listed(cli: Cli, stack: Stack) -> None:
    # 50 events of 30 KB: DynamoDB (and moto) answer a query with at most 1 MB, 33 of them.
    for n in range(50):
        put_event(stack, "u1", "checkout", 1795483041000 + n, properties={"cart": "x" * 30_000})

    result = cli("events", "u1", "-e", "Production", "--limit", "50", "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert [i["timestamp"] for i in items] == [1795483041000 + n for n in reversed(range(50))]
    fewer = json.loads(cli("events", "u1", "-e", "Production", "--limit", "40", "--json").stdout)
    assert len(fewer) == 40


def test_events_shows_the_20_newest_by_default_with_their_milliseconds(cli: Cli, stack: Stack) -> None:
    for n in range(21):
        put_event(stack, "u1", "checkout", 1795483042100 + n)

    items = json.loads(cli("events", "u1", "-e", "Production", "--json").stdout)
    assert [i["timestamp"] for i in items] == [1795483042100 + n for n in reversed(range(1, 21))]
    table = cli("events", "u1", "-e", "Production", "--limit", "21")
    assert table.exit_code == 0, table.output
    assert "2026-11-24 01:17:22.120Z" in table.stdout
    assert cli("events", "u1", "-e", "Production", "--limit", "1001").exit_code == 2


def test_events_of_an_unknown_user_as_json_are_an_empty_array(cli: Cli) -> None:
    result = cli("events", "nobody", "-e", "Production", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_identity_shows_the_stored_attributes(cli: Cli, stack: Stack) -> None:
    boto3.resource("dynamodb", region_name=REGION).Table(stack.tables["IdentitiesTable"]).put_item(
        Item={
            "pk": "Production#account#acme",
            "environment": "Production",
            "trafficTypeName": "account",
            "key": "acme",
            "attributes": {"plan": "enterprise", "employees": 329},
            "updatedAt": 1795483041000,
        }
    )
    result = cli("identity", "acme", "-e", "Production", "-t", "account")
    assert result.exit_code == 0, result.output
    assert "enterprise" in result.stdout
    assert "329" in result.stdout
    assert "2026-11-24 01:17:21.000Z" in result.stdout  # updatedAt

    stored = json.loads(cli("identity", "acme", "-e", "Production", "-t", "account", "--json").stdout)
    assert stored["attributes"] == {"plan": "enterprise", "employees": 329}
    assert stored["updatedAt"] == 1795483041000


def test_identity_says_when_it_has_no_attributes_and_shows_other_values_as_json(
    cli: Cli, stack: Stack
) -> None:
    table = boto3.resource("dynamodb", region_name=REGION).Table(stack.tables["IdentitiesTable"])
    item = {"environment": "Production", "trafficTypeName": "user", "updatedAt": 1795483041000}
    table.put_item(Item={**item, "pk": "Production#user#bare", "key": "bare", "attributes": {}})
    table.put_item(Item={**item, "pk": "Production#user#full", "key": "full", "attributes": {"admin": True}})

    assert "no attributes" in cli("identity", "bare", "-e", "Production").stdout
    assert "true" in cli("identity", "full", "-e", "Production").stdout


def test_brackets_in_user_data_print_as_they_are(cli: Cli, stack: Stack) -> None:
    """Keys, attributes and properties are text: "[/red]" is no markup to style with (or fail on)."""
    key = "u-[b]42:new:"
    put_event(stack, key, "cart:ok:add", 1795483041000, properties={"note": "[/b]x"})
    boto3.resource("dynamodb", region_name=REGION).Table(stack.tables["IdentitiesTable"]).put_item(
        Item={
            "pk": f"Production#user#{key}",
            "environment": "Production",
            "trafficTypeName": "user",
            "key": key,
            "attributes": {"name": "[/red]Zoë"},
            "updatedAt": 1795483041000,
        }
    )

    events = cli("events", key, "-e", "Production")
    assert events.exit_code == 0, events.output
    assert "[/b]x" in events.stdout
    assert key in events.stdout
    assert "cart:ok:add" in events.stdout  # no emoji codes either
    identity = cli("identity", key, "-e", "Production")
    assert identity.exit_code == 0, identity.output
    assert "[/red]Zoë" in identity.stdout

    missing = cli("events", "x[/y]:fire:", "-e", "Production")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: no events stored for user 'x[/y]:fire:' in Production")


def test_unknown_users_are_one_line(cli: Cli) -> None:
    result = cli("identity", "nobody", "-e", "Production")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: no identity stored for user 'nobody' in Production (environment, traffic type and key are "
        "case-sensitive)"
    )
    assert cli("events", "nobody", "-e", "Production").exit_code == 1


def test_aws_errors_are_one_line(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_TABLE", "no-such-table")
    result = cli("events", "u1", "-e", "Production")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: AWS Query failed: ResourceNotFoundException")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_endpoint_is_one_line() -> None:
    result = CliRunner().invoke(app, ["--endpoint-url", "http://127.0.0.1:9", "config", "inbound", "list"])
    assert result.exit_code == 1
    assert "Could not connect to the endpoint URL" in result.stderr
    assert "Traceback" not in result.output
