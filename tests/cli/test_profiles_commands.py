"""`config audience put|get|list` and `profile ENV TRAFFIC_TYPE KEY`, against moto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from fme_bridge.template import Stack
from shared.profiles_table import LastTreatment, Membership, put_membership, write_last_treatment
from tests.cli.conftest import PREFIX, Cli
from tests.conftest import table_rows
from tests.delivery_support import event_item

REGION = "us-east-1"
AUDIENCE = {
    "environment": "Production",
    "trafficType": "user",
    "rule": {
        "all": [
            {"performed": {"event": "checkout", "atLeast": 1, "withinDays": 7}},
            {"treatment": {"split": "new_checkout", "is": "on"}},
        ]
    },
    "sync": ["segment-prod"],
}


def write(tmp_path: Path, document: Any, name: str = "doc.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


@pytest.fixture
def outbound() -> None:
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=f"{PREFIX}/outbound/segment-prod",
        Value=json.dumps({"environments": ["Production"], "identities": {"user": "userId"}}),
        Type="String",
    )


def stored(name: str) -> str | None:
    ssm = boto3.client("ssm", region_name=REGION)
    try:
        return str(ssm.get_parameter(Name=f"{PREFIX}/audiences/{name}")["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        return None


def test_put_get_and_list_an_audience(cli: Cli, tmp_path: Path, outbound: None) -> None:
    result = cli("config", "audience", "put", "checkout_fans", "-f", write(tmp_path, AUDIENCE))
    assert result.exit_code == 0, result.output
    assert json.loads(stored("checkout_fans") or "") == AUDIENCE

    got = cli("config", "audience", "get", "checkout_fans")
    assert got.exit_code == 0, got.output
    assert '"new_checkout"' in got.stdout
    assert "invalid" not in got.stdout

    listed = cli("config", "audience", "list")
    assert listed.exit_code == 0, listed.output
    assert "checkout_fans" in listed.stdout
    assert "segment-prod" in listed.stdout


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {**AUDIENCE, "rule": {"perfomed": {"event": "x"}}},
            "rule: a rule is an object with exactly one key",
        ),
        ({**AUDIENCE, "rule": {"treatment": {"split": "f"}}}, "rule.treatment.is: Field required"),
        ({**AUDIENCE, "sync": ["nowhere"]}, "sync: no outbound config 'nowhere'"),
        ({**AUDIENCE, "trafficType": "account"}, "maps no Segment identity for traffic type 'account'"),
    ],
)
def test_malformed_audiences_are_rejected_at_put_naming_the_problem(
    cli: Cli, tmp_path: Path, outbound: None, document: dict[str, Any], message: str
) -> None:
    result = cli("config", "audience", "put", "a", "-f", write(tmp_path, document))
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert stored("a") is None  # nothing written


def test_an_audience_name_that_cannot_be_a_trait_is_rejected(
    cli: Cli, tmp_path: Path, outbound: None
) -> None:
    result = cli("config", "audience", "put", "bad name", "-f", write(tmp_path, AUDIENCE))
    assert result.exit_code == 1
    assert "audience name 'bad name'" in result.output


def test_profile_shows_what_the_api_answers(cli: Cli, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILES_TABLE", stack.tables["ProfilesTable"])
    boto3.resource("dynamodb", region_name=REGION).Table(stack.tables["IdentitiesTable"]).put_item(
        Item={"pk": "Production#user#u1", "attributes": {"plan": "pro"}, "updatedAt": 1}
    )
    write_last_treatment(
        LastTreatment("Production", "user", "u1", "new_checkout", "on", 1_795_483_041_109, 17)
    )
    put_membership(Membership("Production#user#u1", "checkout_fans", True, 1, 1), None)

    result = cli("profile", "Production", "user", "u1", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["attributes"] == {"plan": "pro"}
    assert document["treatments"] == {
        "new_checkout": {"treatment": "on", "time": 1_795_483_041_109, "splitVersionNumber": 17}
    }
    assert document["audiences"] == {"checkout_fans": True}
    assert (document["events"], document["next"]) == ([], None)

    table = cli("profile", "Production", "user", "u1")
    assert table.exit_code == 0, table.output
    assert "new_checkout" in table.stdout
    assert "checkout_fans" in table.stdout
    # Whose profile it is, on one line whatever the key's length (not wrapped as a table title).
    long_key = "7f244b10-9ca5-11e5-9706-16a11fb02dec"
    boto3.resource("dynamodb", region_name=REGION).Table(stack.tables["IdentitiesTable"]).put_item(
        Item={"pk": f"Production#user#{long_key}", "attributes": {"plan": "pro"}, "updatedAt": 1}
    )
    assert f"user {long_key} in Production" in cli("profile", "Production", "user", long_key).stdout

    missing = cli("profile", "Production", "user", "nobody")
    assert missing.exit_code == 1
    assert "no profile for user 'nobody' in Production" in missing.output


def test_get_of_an_audience_that_is_not_json_shows_it_and_says_why(cli: Cli) -> None:
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=f"{PREFIX}/audiences/notjson", Value="hello {", Type="String"
    )
    result = cli("config", "audience", "get", "notjson")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert result.stdout == "hello {\n"
    assert "invalid:" in result.stderr


def test_list_says_below_the_table_why_an_audience_is_invalid(
    cli: Cli, tmp_path: Path, outbound: None
) -> None:
    assert cli("config", "audience", "put", "checkout_fans", "-f", write(tmp_path, AUDIENCE)).exit_code == 0
    ssm = boto3.client("ssm", region_name=REGION)
    ssm.put_parameter(Name=f"{PREFIX}/audiences/notjson", Value="hello {", Type="String")
    unfinished = {**AUDIENCE, "rule": {"treatment": {"split": "f"}}}  # written around the CLI
    ssm.put_parameter(Name=f"{PREFIX}/audiences/unfinished", Value=json.dumps(unfinished), Type="String")

    listed = cli("config", "audience", "list")

    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert [line for line in lines if line.startswith("notjson: invalid: ")] == [
        "notjson: invalid: not valid JSON (Expecting value: line 1 column 1 (char 0))"
    ]
    [unfinished_line] = [line for line in lines if line.startswith("unfinished: invalid: ")]
    assert "rule.treatment.is: Field required" in unfinished_line
    assert not any(line.startswith("checkout_fans:") for line in lines)


def test_list_shows_each_audiences_environment_traffic_type_and_sync_targets(
    cli: Cli, tmp_path: Path, outbound: None
) -> None:
    staging = {**AUDIENCE, "environment": "Staging"}
    assert cli("config", "audience", "put", "checkout_fans", "-f", write(tmp_path, staging)).exit_code == 0

    listed = cli("config", "audience", "list")

    assert listed.exit_code == 0, listed.output
    [cells] = [row for row in table_rows(listed.stdout) if row[0] == "checkout_fans"]
    assert cells == ["checkout_fans", "Staging", "user", "segment-prod", "yes"]


def test_list_without_audiences_says_so(cli: Cli) -> None:
    result = cli("config", "audience", "list")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"no audiences under {PREFIX}\n"


def put_events(stack: Stack, count: int, key: str = "u1") -> None:
    """``count`` checkout events of ``key``, a second apart: the newest is number ``count - 1``."""
    table = boto3.resource("dynamodb", region_name=REGION).Table(stack.tables["EventsTable"])
    with table.batch_writer() as batch:
        for n in range(count):
            timestamp = 1_795_483_000_000 + n * 1000
            item = event_item(key, f"checkout_{n}", timestamp, message_id=f"m-{n}", received_at=timestamp)
            batch.put_item(Item=item)


def test_profile_pages_the_events_25_at_a_time_up_to_100(
    cli: Cli, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROFILES_TABLE", stack.tables["ProfilesTable"])
    put_events(stack, 101)

    first = json.loads(cli("profile", "Production", "user", "u1", "--json").stdout)
    assert [e["eventTypeId"] for e in first["events"]] == [f"checkout_{n}" for n in range(100, 75, -1)]
    assert first["next"] is not None

    table = cli("profile", "Production", "user", "u1", "--limit", "2")
    assert table.exit_code == 0, table.output
    assert "checkout_100" in table.stdout
    assert "checkout_99" in table.stdout
    assert "checkout_98" not in table.stdout
    [more] = [line for line in table.stdout.splitlines() if line.startswith("more events: --cursor ")]
    cursor = more.removeprefix("more events: --cursor ")
    second = cli("profile", "Production", "user", "u1", "--limit", "2", "--cursor", cursor, "--json")
    assert second.exit_code == 0, second.output
    assert [e["eventTypeId"] for e in json.loads(second.stdout)["events"]] == ["checkout_98", "checkout_97"]

    most = json.loads(cli("profile", "Production", "user", "u1", "--limit", "100", "--json").stdout)
    assert len(most["events"]) == 100
    last_page = cli("profile", "Production", "user", "u1", "--limit", "100", "--cursor", most["next"])
    assert last_page.exit_code == 0, last_page.output
    assert "checkout_0" in last_page.stdout
    assert "more events" not in last_page.stdout


@pytest.mark.parametrize("limit", ["0", "101"])
def test_profile_takes_1_to_100_events_a_page(cli: Cli, stack: Stack, limit: str) -> None:
    result = cli("profile", "Production", "user", "u1", "--limit", limit)
    assert result.exit_code == 2


def test_a_cursor_the_profile_did_not_hand_out_is_one_line(
    cli: Cli, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROFILES_TABLE", stack.tables["ProfilesTable"])
    put_events(stack, 3)
    result = cli("profile", "Production", "user", "u1", "--cursor", "not-a-cursor")
    assert result.exit_code == 1
    assert result.stderr == "error: cursor is not one this API returned\n"


def test_profile_tables_show_when_each_treatment_was_seen_and_audiences_left(
    cli: Cli, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROFILES_TABLE", stack.tables["ProfilesTable"])
    write_last_treatment(
        LastTreatment("Production", "user", "u1", "new_checkout", "on", 1_795_483_041_109, 17)
    )
    write_last_treatment(
        LastTreatment("Production", "user", "u1", "dark_mode", "off", 1_795_483_041_000, None)
    )
    put_membership(Membership("Production#user#u1", "checkout_fans", True, 1, 1), None)
    put_membership(Membership("Production#user#u1", "churned", False, 2, 2), None)

    result = cli("profile", "Production", "user", "u1")

    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells[1:] for cells in table_rows(result.stdout) if len(cells) > 1}
    assert rows["new_checkout"] == ["on", "2026-11-24 01:17:21.109Z", "17"]
    assert rows["dark_mode"] == ["off", "2026-11-24 01:17:21.000Z", ""]  # no split version known
    assert (rows["checkout_fans"], rows["churned"]) == (["yes"], ["no"])
