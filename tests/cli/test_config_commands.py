"""`fme-bridge config`: validated with the functions' own models, secrets rotated, never printed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.cli.conftest import PREFIX, Cli, deny

REGION = "us-east-1"
INBOUND = {
    "environment": "Production",
    "identities": [{"segmentId": "userId", "trafficType": "user"}],
    "valueField": "properties.revenue",
}
OUTBOUND = {
    "environments": ["Production"],
    "identities": {"user": "userId"},
    "endpoint": "http://127.0.0.1:3001/v1",
}


def write(tmp_path: Path, name: str, content: object) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def put_inbound(
    cli: Cli, tmp_path: Path, name: str = "shop", document: object = INBOUND, secret: str = "k"
) -> Any:
    return cli(
        "config",
        "inbound",
        "put",
        name,
        "-f",
        write(tmp_path, "config.json", document),
        "--secret-file",
        "-",
        input=secret,
    )


def put_outbound(cli: Cli, tmp_path: Path, document: object = OUTBOUND, write_key: str = "wk-123") -> Any:
    return cli(
        "config",
        "outbound",
        "put",
        "eu",
        "-f",
        write(tmp_path, "eu.json", document),
        "--write-key-file",
        "-",
        input=write_key,
    )


def parameter(name: str) -> str | None:
    ssm = boto3.client("ssm", region_name=REGION)
    try:
        return str(ssm.get_parameter(Name=f"{PREFIX}/{name}")["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        return None


def secret(name: str, stage: str = "AWSCURRENT") -> str | None:
    client = boto3.client("secretsmanager", region_name=REGION)
    try:
        return str(client.get_secret_value(SecretId=f"{PREFIX}/{name}", VersionStage=stage)["SecretString"])
    except client.exceptions.ResourceNotFoundException:
        return None


def assert_restorable_for(name: str, days: int) -> None:
    """The secret ``name`` is scheduled for deletion ``days`` from now (to the hour): restorable, not gone."""
    described = boto3.client("secretsmanager", region_name=REGION).describe_secret(
        SecretId=f"{PREFIX}/{name}"
    )
    assert abs(described["DeletedDate"] - datetime.now(UTC) - timedelta(days=days)) < timedelta(hours=1), name


def test_inbound_put_writes_the_config_and_the_secret_without_printing_it(cli: Cli, tmp_path: Path) -> None:
    secret_file = write(tmp_path, "s", "s3cret-value\n")
    result = cli(
        "config",
        "inbound",
        "put",
        "shop",
        "--file",
        write(tmp_path, "c.json", INBOUND),
        "--secret-file",
        secret_file,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(parameter("inbound/shop") or "") == INBOUND
    assert secret("inbound/shop") == "s3cret-value"
    assert "s3cret-value" not in result.output


def test_a_new_secret_keeps_the_old_one_as_awsprevious(cli: Cli, tmp_path: Path) -> None:
    assert put_inbound(cli, tmp_path, secret="old").exit_code == 0
    result = put_inbound(cli, tmp_path, secret="new\n")
    assert result.exit_code == 0, result.output
    assert secret("inbound/shop") == "new"
    assert secret("inbound/shop", "AWSPREVIOUS") == "old"


def test_updating_a_config_alone_keeps_its_secret(cli: Cli, tmp_path: Path) -> None:
    put_inbound(cli, tmp_path)
    changed = {**INBOUND, "enableTrack": False}
    result = cli("config", "inbound", "put", "shop", "-f", write(tmp_path, "d.json", changed))
    assert result.exit_code == 0, result.output
    assert json.loads(parameter("inbound/shop") or "")["enableTrack"] is False
    assert secret("inbound/shop") == "k"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**INBOUND, "enableTrak": True}, "enableTrak: Extra inputs are not permitted"),
        ({"environment": "Production", "identities": []}, "identities: List should have at least 1 item"),
        (
            {**INBOUND, "valueField": "properties..revenue"},
            "valueField: String should match pattern",
        ),
        ('{"environment": ', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_an_invalid_inbound_config_is_one_clear_line_and_writes_nothing(
    cli: Cli, tmp_path: Path, document: object, message: str
) -> None:
    result = put_inbound(cli, tmp_path, document=document)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert parameter("inbound/shop") is None
    assert secret("inbound/shop") is None


def test_a_new_connection_needs_a_secret(cli: Cli, tmp_path: Path) -> None:
    result = cli("config", "inbound", "put", "shop", "-f", write(tmp_path, "c.json", INBOUND))
    assert result.exit_code == 1
    assert "no webhook secret yet: pass --secret-file" in result.stderr
    assert parameter("inbound/shop") is None


def test_an_unreadable_config_file_is_one_line(cli: Cli, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.json")
    result = cli("config", "outbound", "put", "eu", "-f", missing, "--write-key-file", "-", input="wk")
    assert result.exit_code == 1
    assert "cannot read" in result.stderr
    assert "No such file or directory" in result.stderr
    assert secret("outbound/eu") is None


@pytest.mark.parametrize(
    ("args", "options"),
    [
        (
            ["inbound", "put", "shop", "-f", "-", "--secret-file", "-"],
            "--file / --secret-file / --fme-keys-file",
        ),
        (
            ["inbound", "put", "shop", "-f", "c.json", "--secret-file", "-", "--fme-keys-file", "-"],
            "--file / --secret-file / --fme-keys-file",
        ),
        (["outbound", "put", "eu", "--file", "-", "--write-key-file", "-"], "--file / --write-key-file"),
    ],
)
def test_only_one_file_option_can_read_stdin(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], options: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "c.json", INBOUND)
    result = cli("config", *args, input=json.dumps(INBOUND))
    assert result.exit_code == 1
    assert result.stderr == f"error: only one of {options} can read stdin (-)\n"
    assert parameter("inbound/shop") is None
    assert secret("inbound/shop") is None
    assert secret("outbound/eu") is None


def test_outbound_put_validates_with_the_functions_model(cli: Cli, tmp_path: Path) -> None:
    result = put_outbound(cli, tmp_path, document={**OUTBOUND, "defaultTrafficType": "account"})
    assert result.exit_code == 1
    assert "defaultTrafficType 'account' is not a key of identities" in result.stderr
    assert parameter("outbound/eu") is None

    result = put_outbound(cli, tmp_path)
    assert result.exit_code == 0, result.output
    assert secret("outbound/eu") == "wk-123"


def test_get_shows_the_config_and_only_whether_the_secret_is_set(cli: Cli, tmp_path: Path) -> None:
    put_outbound(cli, tmp_path)
    result = cli("config", "outbound", "get", "eu")
    assert result.exit_code == 0, result.output
    assert '"environments"' in result.stdout
    assert "Segment write key: set (AWSCURRENT" in result.stderr
    assert "wk-123" not in result.output


@pytest.mark.parametrize("kind", ["inbound", "outbound"])
def test_what_get_prints_on_stdout_is_the_document_put_takes_back(
    cli: Cli, tmp_path: Path, kind: str
) -> None:
    """``get NAME > f.json``, edit, ``put NAME -f f.json``: the status lines are on stderr."""
    name = "shop" if kind == "inbound" else "eu"
    put_inbound(cli, tmp_path) if kind == "inbound" else put_outbound(cli, tmp_path)
    got = cli("config", kind, "get", name)
    assert got.exit_code == 0, got.output
    assert "set (AWSCURRENT" in got.stderr
    saved = tmp_path / "got.json"
    saved.write_text(got.stdout)
    again = cli("config", kind, "put", name, "-f", str(saved))
    assert again.exit_code == 0, again.output
    assert cli("config", kind, "get", name).stdout == got.stdout


def test_get_of_an_unknown_connection_is_one_line(cli: Cli) -> None:
    result = cli("config", "inbound", "get", "nope")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: no connection 'nope' under {PREFIX}"


def test_list_shows_every_config_and_flags_invalid_ones(cli: Cli, tmp_path: Path) -> None:
    put_inbound(cli, tmp_path, name="shop")
    put_inbound(cli, tmp_path, name="blog")
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=f"{PREFIX}/inbound/broken", Value="{}", Type="String"
    )
    result = cli("config", "inbound", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("shop" in line and "Production" in line and "yes" in line for line in lines)
    assert any("blog" in line for line in lines)
    assert any("broken" in line and "no" in line for line in lines)
    # A config whose secret is gone is flagged: it cannot work whatever it says.
    [shop] = [line for line in lines if "shop" in line]
    assert "not set" not in shop
    assert "set" in shop
    assert any("broken" in line and "not set" in line for line in lines)
    # Why it is invalid, whole, on a line of its own below the table: the field `get` would name.
    [why] = [line for line in lines if line.startswith("broken: invalid: ")]
    assert "environment" in why
    assert not any(line.startswith(("shop:", "blog:")) for line in lines)


def test_a_secret_scheduled_for_deletion_is_shown_as_such_and_restored_by_a_put(
    cli: Cli, tmp_path: Path
) -> None:
    """The functions cannot read such a secret (401s, or impressions retried): "set" would mislead."""
    put_inbound(cli, tmp_path, name="shop")
    client = boto3.client("secretsmanager", region_name=REGION)
    client.delete_secret(SecretId=f"{PREFIX}/inbound/shop", RecoveryWindowInDays=7)

    got = cli("config", "inbound", "get", "shop")
    assert got.exit_code == 0, got.output
    assert "scheduled for deletion" in got.stderr
    deletion = client.describe_secret(SecretId=f"{PREFIX}/inbound/shop")["DeletedDate"]  # in 7 days
    assert f"deleted for good after {deletion:%Y-%m-%d %H:%M:%S}" in " ".join(got.stderr.split())
    assert f"restore-secret --secret-id {PREFIX}/inbound/shop" in " ".join(got.stderr.split())
    listed = cli("config", "inbound", "list")
    [shop] = [line for line in listed.stdout.splitlines() if "shop" in line]
    assert "scheduled" in shop
    # Writing the config alone would leave it refused: one line saying what to do.
    alone = cli("config", "inbound", "put", "shop", "-f", write(tmp_path, "c.json", INBOUND))
    assert alone.exit_code == 1
    assert "scheduled for deletion" in alone.stderr

    written = put_inbound(cli, tmp_path, name="shop", secret="new-secret")
    assert written.exit_code == 0, written.output
    assert "restored" in written.stdout
    assert "DeletedDate" not in client.describe_secret(SecretId=f"{PREFIX}/inbound/shop")
    assert secret("inbound/shop") == "new-secret"


def test_list_get_and_put_go_on_without_permission_to_describe_secrets(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_inbound(cli, tmp_path, name="shop")
    deny(monkeypatch, "secretsmanager", "describe_secret")
    listed = cli("config", "inbound", "list")
    assert listed.exit_code == 0, listed.output
    [shop] = [line for line in listed.stdout.splitlines() if "shop" in line]
    assert "?" in shop
    document = {**INBOUND, "delivery": {"enabled": True}}
    written = put_inbound(cli, tmp_path, name="shop", document=document)
    assert written.exit_code == 0, written.output  # written; whether keys exist cannot be told
    # What get prints can be put back as it is: the secrets it cannot describe are a ? on stderr.
    shown = cli("config", "inbound", "get", "shop")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == document
    assert "webhook secret: ? (cannot describe it: AccessDeniedException)" in shown.stderr
    assert "FME keys: ? (cannot describe it: AccessDeniedException)" in shown.stderr
    config = write(tmp_path, "shown.json", json.loads(shown.stdout))
    updated = cli("config", "inbound", "put", "shop", "-f", config)
    assert updated.exit_code == 0, updated.output


@pytest.mark.parametrize("name", ["../x", "_prod", ".x", "a" * 129, "shop/eu"])
def test_a_connection_id_the_webhook_would_refuse_is_not_written(cli: Cli, tmp_path: Path, name: str) -> None:
    result = put_inbound(cli, tmp_path, name=name)
    assert result.exit_code == 1
    assert "start with a letter or digit" in result.stderr
    parameters = boto3.client("ssm", region_name=REGION).get_parameters_by_path(Path=f"{PREFIX}/inbound")
    assert parameters["Parameters"] == []


@pytest.mark.parametrize("name", ["zé", "eu/west", "eu west", ""])
def test_an_outbound_name_ssm_would_refuse_is_not_written(cli: Cli, tmp_path: Path, name: str) -> None:
    config = write(tmp_path, "eu.json", OUTBOUND)
    result = cli("config", "outbound", "put", name, "-f", config, "--write-key-file", "-", input="wk")
    assert result.exit_code == 1
    assert "use letters, digits, '-', '_' and '.' (ASCII)" in result.stderr
    parameters = boto3.client("ssm", region_name=REGION).get_parameters_by_path(Path=f"{PREFIX}/outbound")
    assert parameters["Parameters"] == []


def test_a_connection_id_of_128_characters_is_written(cli: Cli, tmp_path: Path) -> None:
    assert put_inbound(cli, tmp_path, name="a" * 128).exit_code == 0


@pytest.mark.parametrize("kind", ["inbound", "outbound"])
def test_get_of_a_document_that_is_not_json_shows_it_and_says_why(cli: Cli, kind: str) -> None:
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=f"{PREFIX}/{kind}/notjson", Value="hello {", Type="String"
    )
    result = cli("config", kind, "get", "notjson")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert result.stdout == "hello {\n"
    assert "invalid:" in result.stderr


def test_enabling_delivery_without_fme_keys_writes_and_warns(cli: Cli, tmp_path: Path) -> None:
    document = {**INBOUND, "delivery": {"enabled": True}}
    result = put_inbound(cli, tmp_path, document=document)
    assert result.exit_code == 0, result.output
    assert "warning: delivery into FME is enabled" in result.stdout
    assert f"{PREFIX}/inbound/shop/fme holds no FME keys" in result.stdout

    keys = write(tmp_path, "keys.json", {"sdkKey": "s", "adminKey": "a"})
    with_keys = cli(
        "config", "inbound", "put", "shop", "-f", write(tmp_path, "c.json", document), "--fme-keys-file", keys
    )
    assert with_keys.exit_code == 0, with_keys.output
    assert "warning" not in with_keys.stdout
    again = cli("config", "inbound", "put", "shop", "-f", write(tmp_path, "c.json", document))
    assert "warning" not in again.stdout  # the keys are there now


def test_disabled_delivery_without_fme_keys_is_no_warning(cli: Cli, tmp_path: Path) -> None:
    result = put_inbound(cli, tmp_path, document={**INBOUND, "delivery": {"enabled": False}}, secret="s" * 32)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stdout


@pytest.mark.parametrize(
    "keys", [{}, {"sdkKey": ""}, {"adminKey": "a"}], ids=["empty", "blank-sdk-key", "no-sdk-key"]
)
def test_fme_keys_without_an_sdk_key_are_refused_and_nothing_is_written(
    cli: Cli, tmp_path: Path, keys: dict[str, str]
) -> None:
    result = cli(
        "config", "inbound", "put", "shop", "-f", write(tmp_path, "c.json", INBOUND),
        "--fme-keys-file", write(tmp_path, "keys.json", keys),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "sdkKey" in result.stderr
    assert "Traceback" not in result.output
    assert parameter("inbound/shop") is None
    assert secret("inbound/shop/fme") is None


def test_a_secret_that_cannot_be_written_leaves_the_config_unwritten(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secret first, then the config: a webhook never points at a connection without its secret."""
    deny(monkeypatch, "secretsmanager", "put_secret_value", "create_secret")
    result = put_inbound(cli, tmp_path)
    assert result.exit_code == 1, result.output
    assert parameter("inbound/shop") is None


def test_get_and_list_read_secure_string_configs_decrypted(cli: Cli) -> None:
    document = {"environment": "Production", "identities": [{"segmentId": "userId", "trafficType": "user"}]}
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=f"{PREFIX}/inbound/vault", Value=json.dumps(document), Type="SecureString"
    )
    shown = cli("config", "inbound", "get", "vault")
    assert shown.exit_code == 0, shown.output
    assert '"Production"' in shown.stdout
    listed = cli("config", "inbound", "list")
    [vault] = [line for line in listed.stdout.splitlines() if "vault" in line]
    assert "Production" in vault


def test_outbound_list_shows_the_endpoint_a_config_sends_to(cli: Cli, tmp_path: Path) -> None:
    without_endpoint = {k: v for k, v in OUTBOUND.items() if k != "endpoint"}
    assert put_outbound(cli, tmp_path, without_endpoint).exit_code == 0
    listed = cli("config", "outbound", "list")
    # The endpoint column, wrapped in a narrow terminal, holds the default.
    endpoint = "".join(cell.strip() for line in listed.stdout.splitlines() for cell in line.split("│")[3:4])
    assert "https://api.segment.io/v1" in endpoint


def test_a_secure_string_config_stays_one_when_it_is_written_again(cli: Cli, tmp_path: Path) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    ssm.put_parameter(
        Name=f"{PREFIX}/outbound/eu", Value=json.dumps(OUTBOUND), Type="SecureString", KeyId="alias/mine"
    )
    assert put_outbound(cli, tmp_path, {**OUTBOUND, "environments": ["Staging"]}).exit_code == 0
    [stored] = ssm.describe_parameters(
        ParameterFilters=[{"Key": "Name", "Values": [f"{PREFIX}/outbound/eu"]}]
    )["Parameters"]
    assert (stored["Type"], stored["KeyId"]) == ("SecureString", "alias/mine")
    assert (
        "Staging"
        in ssm.get_parameter(Name=f"{PREFIX}/outbound/eu", WithDecryption=True)["Parameter"]["Value"]
    )
    # A new one is a plain String, as before.
    assert put_inbound(cli, tmp_path, name="fresh").exit_code == 0
    assert ssm.get_parameter(Name=f"{PREFIX}/inbound/fresh")["Parameter"]["Type"] == "String"


def test_deleting_a_connection_removes_its_config_and_schedules_its_secrets(cli: Cli, tmp_path: Path) -> None:
    keys = write(tmp_path, "fme.json", {"sdkKey": "sdk", "adminKey": "admin"})
    put_inbound(cli, tmp_path, name="shop")
    cli("config", "inbound", "put", "shop", "-f", write(tmp_path, "c.json", INBOUND), "--fme-keys-file", keys)

    result = cli("config", "inbound", "delete", "shop", "--yes", "--recovery-days", "10")
    assert result.exit_code == 0, result.output
    assert parameter("inbound/shop") is None
    for name in ("inbound/shop", "inbound/shop/fme"):
        assert_restorable_for(name, days=10)
        assert f"restore-secret --secret-id {PREFIX}/{name}" in " ".join(result.stdout.split())
        deletion = boto3.client("secretsmanager", region_name=REGION).describe_secret(
            SecretId=f"{PREFIX}/{name}"
        )["DeletedDate"]
        assert f"{PREFIX}/{name}: scheduled for deletion on {deletion:%Y-%m-%d}" in result.stdout
    assert cli("config", "inbound", "get", "shop").exit_code == 1
    # What the webhook reads is gone: the ingest function answers 401 (tests/integration).


def test_a_short_webhook_secret_is_written_with_a_warning(cli: Cli, tmp_path: Path) -> None:
    """Whoever guesses the secret can write events: a short one is the user's choice, but said."""
    short = put_inbound(cli, tmp_path, name="shop", secret="x" * 15)
    assert short.exit_code == 0, short.output
    assert secret("inbound/shop") == "x" * 15
    assert "warning: the webhook secret has 15 characters" in " ".join(short.stdout.split())
    enough = put_inbound(cli, tmp_path, name="shop", secret="x" * 16)
    assert enough.exit_code == 0, enough.output
    assert "warning" not in enough.output


def test_deleting_a_connection_keeps_its_secret_restorable_for_seven_days_by_default(
    cli: Cli, tmp_path: Path
) -> None:
    put_inbound(cli, tmp_path, name="shop")
    result = cli("config", "inbound", "delete", "shop", "--yes")
    assert result.exit_code == 0, result.output
    assert_restorable_for("inbound/shop", days=7)


def test_deleting_an_outbound_config_asks_first(cli: Cli, tmp_path: Path) -> None:
    put_outbound(cli, tmp_path)
    declined = cli("config", "outbound", "delete", "eu", input="n\n")
    assert declined.exit_code == 1
    assert "nothing deleted" in declined.stderr
    assert parameter("outbound/eu") is not None
    confirmed = cli("config", "outbound", "delete", "eu", input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert parameter("outbound/eu") is None
    assert_restorable_for("outbound/eu", days=7)  # the shortest window Secrets Manager allows


def test_deleting_an_unknown_config_is_one_line(cli: Cli) -> None:
    result = cli("config", "outbound", "delete", "nope", "--yes")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: no outbound config 'nope' under {PREFIX}"
    too_short = cli("config", "outbound", "delete", "nope", "--yes", "--recovery-days", "3")
    assert too_short.exit_code == 2  # Secrets Manager's window is 7 to 30 days


def test_an_outbound_config_an_audience_syncs_to_is_not_deleted_without_force(
    cli: Cli, tmp_path: Path
) -> None:
    put_outbound(cli, tmp_path)
    audience = {
        "environment": "Production",
        "trafficType": "user",
        "rule": {"attribute": {"name": "plan", "equals": "pro"}},
        "sync": ["eu"],
    }
    written = cli("config", "audience", "put", "pro-users", "-f", write(tmp_path, "a.json", audience))
    assert written.exit_code == 0, written.output

    refused = cli("config", "outbound", "delete", "eu", "--yes")
    assert refused.exit_code == 1
    assert "pro-users sync to outbound config 'eu'" in " ".join(refused.stderr.split())
    assert parameter("outbound/eu") is not None
    forced = cli("config", "outbound", "delete", "eu", "--yes", "--force")
    assert forced.exit_code == 0, forced.output
    assert parameter("outbound/eu") is None


def test_a_delete_that_stopped_after_the_config_is_finished_by_running_it_again(
    cli: Cli, tmp_path: Path
) -> None:
    put_outbound(cli, tmp_path)
    boto3.client("ssm", region_name=REGION).delete_parameter(Name=f"{PREFIX}/outbound/eu")
    again = cli("config", "outbound", "delete", "eu", "--yes")
    assert again.exit_code == 0, again.output
    assert_restorable_for("outbound/eu", days=7)  # the shortest window Secrets Manager allows
    # Nothing left: one line, as for a name that never existed.
    done = cli("config", "outbound", "delete", "eu", "--yes")
    assert done.exit_code == 1
    assert done.stderr.strip() == f"error: no outbound config 'eu' under {PREFIX}"


@pytest.mark.parametrize("days", ["6", "31"])
def test_a_recovery_window_outside_7_to_30_days_is_refused_and_nothing_is_deleted(
    cli: Cli, tmp_path: Path, days: str
) -> None:
    put_outbound(cli, tmp_path)
    result = cli("config", "outbound", "delete", "eu", "--yes", "--recovery-days", days)
    assert result.exit_code == 2  # Secrets Manager's window is 7 to 30 days
    assert parameter("outbound/eu") is not None
    assert secret("outbound/eu") == "wk-123"


def test_a_recovery_window_of_30_days_is_the_longest(cli: Cli, tmp_path: Path) -> None:
    put_inbound(cli, tmp_path, name="shop")
    result = cli("config", "inbound", "delete", "shop", "--yes", "--recovery-days", "30")
    assert result.exit_code == 0, result.output
    assert_restorable_for("inbound/shop", days=30)


def test_get_of_a_connection_says_whether_its_fme_keys_are_set_and_which_secret_versions_it_has(
    cli: Cli, tmp_path: Path
) -> None:
    put_inbound(cli, tmp_path, secret="old")
    before = cli("config", "inbound", "get", "shop")
    assert before.exit_code == 0, before.output
    assert "FME keys: not set" in before.stderr

    keys = write(tmp_path, "keys.json", {"sdkKey": "sdk-secret-value"})
    with_keys = cli(
        "config", "inbound", "put", "shop", "-f", write(tmp_path, "c.json", INBOUND), "--secret-file", "-",
        "--fme-keys-file", keys, input="new",
    )  # fmt: skip
    assert with_keys.exit_code == 0, with_keys.output
    after = cli("config", "inbound", "get", "shop")
    assert after.exit_code == 0, after.output
    stderr = " ".join(after.stderr.split())
    # Rotated: the previous webhook secret is still accepted, and get says so (and when it changed).
    assert "webhook secret: set (AWSCURRENT, AWSPREVIOUS, last changed 20" in stderr
    assert "FME keys: set (AWSCURRENT, last changed 20" in stderr
    assert "sdk-secret-value" not in after.output


def test_list_shows_each_configs_environments_and_identity_mapping(cli: Cli, tmp_path: Path) -> None:
    document = {
        "environment": "Staging",
        "identities": [
            {"segmentId": "userId", "trafficType": "user"},
            {"segmentId": "anonymousId", "trafficType": "anonymous"},
        ],
    }
    assert put_inbound(cli, tmp_path, name="shop", document=document).exit_code == 0
    inbound = cli("config", "inbound", "list")
    assert inbound.exit_code == 0, inbound.output
    [shop] = [line for line in inbound.stdout.splitlines() if "shop" in line]
    assert "Staging" in shop
    assert "userId→user" in " ".join(inbound.stdout.split())
    assert "anonymousId→anonymous" in " ".join(inbound.stdout.split())

    assert put_outbound(cli, tmp_path, {**OUTBOUND, "environments": ["Production", "QA"]}).exit_code == 0
    outbound = cli("config", "outbound", "list")
    assert outbound.exit_code == 0, outbound.output
    [eu] = [line for line in outbound.stdout.splitlines() if line.startswith("│ eu ")]
    assert "Production, QA" in eu


@pytest.mark.parametrize("kind", ["inbound", "outbound"])
def test_list_with_no_configs_says_so(cli: Cli, kind: str) -> None:
    result = cli("config", kind, "list")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"no {kind} configs under {PREFIX}\n"


@pytest.mark.parametrize("kind", ["inbound", "outbound"])
def test_an_empty_secret_file_is_refused_and_nothing_is_written(cli: Cli, tmp_path: Path, kind: str) -> None:
    if kind == "inbound":
        result = put_inbound(cli, tmp_path, secret=" \n")
        label, name = "webhook secret", "inbound/shop"
    else:
        result = put_outbound(cli, tmp_path, write_key="\n")
        label, name = "Segment write key", "outbound/eu"
    assert result.exit_code == 1
    assert result.stderr == f"error: -: the {label} is empty\n"
    assert parameter(name) is None
    assert secret(name) is None


def test_a_new_outbound_config_needs_a_write_key(cli: Cli, tmp_path: Path) -> None:
    result = cli("config", "outbound", "put", "eu", "-f", write(tmp_path, "eu.json", OUTBOUND))
    assert result.exit_code == 1
    assert result.stderr == (
        "error: outbound config 'eu' has no Segment write key yet: pass --write-key-file\n"
    )
    assert parameter("outbound/eu") is None


def test_enabling_delivery_while_the_fme_keys_are_scheduled_for_deletion_warns(
    cli: Cli, tmp_path: Path
) -> None:
    """The functions cannot read a secret scheduled for deletion: delivery refuses as without keys."""
    keys = write(tmp_path, "keys.json", {"sdkKey": "s"})
    document = {**INBOUND, "delivery": {"enabled": True}}
    put_inbound(cli, tmp_path, document=document)
    config = write(tmp_path, "c.json", document)
    assert cli("config", "inbound", "put", "shop", "-f", config, "--fme-keys-file", keys).exit_code == 0
    boto3.client("secretsmanager", region_name=REGION).delete_secret(
        SecretId=f"{PREFIX}/inbound/shop/fme", RecoveryWindowInDays=7
    )

    result = cli("config", "inbound", "put", "shop", "-f", write(tmp_path, "c.json", document))
    assert result.exit_code == 0, result.output
    assert f"{PREFIX}/inbound/shop/fme holds no FME keys" in result.stdout


def test_delete_schedules_the_secrets_it_is_not_allowed_to_describe(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without secretsmanager:DescribeSecret, whether a secret is there cannot be told: it is deleted."""
    put_outbound(cli, tmp_path)
    deny(monkeypatch, "secretsmanager", "describe_secret")
    result = cli("config", "outbound", "delete", "eu", "--yes")
    assert result.exit_code == 0, result.output
    assert parameter("outbound/eu") is None
    monkeypatch.undo()
    assert_restorable_for("outbound/eu", days=7)


def test_audiences_that_do_not_validate_do_not_keep_an_outbound_config_from_being_deleted(
    cli: Cli, tmp_path: Path
) -> None:
    """Only a sync list naming the config holds it: not a document that is not JSON, nor a sync
    that is a string (which a substring check would take for a list)."""
    put_outbound(cli, tmp_path)
    ssm = boto3.client("ssm", region_name=REGION)
    ssm.put_parameter(Name=f"{PREFIX}/audiences/notjson", Value="hello {", Type="String")
    ssm.put_parameter(Name=f"{PREFIX}/audiences/list", Value="[1, 2]", Type="String")
    ssm.put_parameter(Name=f"{PREFIX}/audiences/astring", Value=json.dumps({"sync": "europe"}), Type="String")

    result = cli("config", "outbound", "delete", "eu", "--yes")

    assert result.exit_code == 0, result.output
    assert parameter("outbound/eu") is None
