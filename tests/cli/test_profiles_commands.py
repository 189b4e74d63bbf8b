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
