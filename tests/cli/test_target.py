"""Where the CLI finds the prefix, queues and tables: variables, stack outputs, the local stack's names."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from typer.testing import CliRunner

from fme_bridge.cli import app, describe_error
from fme_bridge.loopback_server import LoopbackServer
from fme_bridge.target import Target, TargetError
from tests.conftest import after_fresh_import

REGION = "us-east-1"


def test_stack_outputs_name_the_prefix_queues_and_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("IMPRESSIONS_QUEUE_URL", "EVENTS_TABLE", "CONFIG_PREFIX"):
        monkeypatch.delenv(variable, raising=False)
    with mock_aws():
        queue_url = boto3.client("sqs", region_name=REGION).create_queue(QueueName="prod-impressions")[
            "QueueUrl"
        ]
        cfn_template = {
            "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {
                "ConfigPrefix": {"Value": "/fme-segment-bridge/prod"},
                "ImpressionsQueueUrl": {"Value": queue_url},
                "EventsTableName": {"Value": "bridge-prod-EventsTable-ABC123"},
            },
        }
        boto3.client("cloudformation", region_name=REGION).create_stack(
            StackName="bridge-prod", TemplateBody=json.dumps(cfn_template)
        )
        target = Target(region=REGION, stack_name="bridge-prod")
        assert target.prefix == "/fme-segment-bridge/prod"
        assert target.queue_url("ImpressionsQueue") == queue_url
        assert target.table_name("EventsTable") == "bridge-prod-EventsTable-ABC123"


def test_variables_win_over_stack_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_TABLE", "from-variable")
    target = Target(stack_name="bridge-prod", prefix_option="/from/option/")
    target.__dict__["stack_outputs"] = {"EventsTableName": "from-stack", "ConfigPrefix": "/from/stack"}
    assert target.table_name("EventsTable") == "from-variable"
    assert target.prefix == "/from/option"


@pytest.mark.parametrize(
    ("logical_id", "cli_name", "function_name"),
    [
        ("ImpressionsDeadLetterQueue", "IMPRESSIONS_DLQ_URL", "DEAD_LETTER_QUEUE_URL"),
        ("LastTreatmentsDeadLetterQueue", "LAST_TREATMENTS_DLQ_URL", "LAST_TREATMENTS_DEAD_LETTER_QUEUE_URL"),
    ],
)
def test_a_dead_letter_queue_is_found_by_the_functions_name_for_it_too(
    monkeypatch: pytest.MonkeyPatch, logical_id: str, cli_name: str, function_name: str
) -> None:
    """A function's environment copied into a shell is enough; the CLI's own name wins."""
    from fme_bridge.template import load_template

    [function] = [
        r
        for r in load_template()["Resources"].values()
        if function_name in r["Properties"].get("Environment", {}).get("Variables", {})
    ]
    assert function["Properties"]["Environment"]["Variables"][function_name] == {"Ref": logical_id}
    monkeypatch.delenv(cli_name, raising=False)
    monkeypatch.setenv(function_name, "https://sqs.eu-west-1.amazonaws.com/1/from-function")
    target = Target()
    assert target.queue_url(logical_id).endswith("/from-function")
    monkeypatch.setenv(cli_name, "https://sqs.eu-west-1.amazonaws.com/1/from-cli")
    assert target.queue_url(logical_id).endswith("/from-cli")
    # With a stack named, its outputs win over the generic name another application may have set.
    monkeypatch.delenv(cli_name)
    named = Target(stack_name="bridge-prod")
    named.__dict__["stack_outputs"] = {f"{logical_id}Url": "https://sqs.eu-west-1.amazonaws.com/1/from-stack"}
    assert named.queue_url(logical_id).endswith("/from-stack")


@pytest.mark.parametrize("url", ["http://127.0.0.1:4566", "http://localhost:4566", "http://[::1]:4566"])
def test_a_local_endpoint_means_the_local_stacks_names(url: str) -> None:
    target = Target(endpoint_url=url)
    assert target.is_local
    assert target.prefix == "/fme-segment-bridge/local"
    assert target.table_name("EventsTable") == "fme-segment-bridge-local-EventsTable"


def test_the_local_stack_needs_no_credentials_of_ones_own(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert boto3.session.Session().get_credentials() is None
    credentials = Target(endpoint_url="http://127.0.0.1:4566").session.get_credentials()
    assert credentials is not None
    assert credentials.access_key == "local"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("NoCredentialsError", "no AWS credentials found (configure them as for the AWS CLI, "),
        ("NoRegionError", "no AWS region set (pass --region or set AWS_REGION)"),
    ],
)
def test_missing_credentials_or_region_says_what_to_do(error: str, message: str) -> None:
    import botocore.exceptions

    assert (describe_error(getattr(botocore.exceptions, error)()) or "").startswith(message)


def test_without_any_hint_the_error_says_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTS_TABLE", raising=False)
    target = Target()
    local = "on the local stack (make run): --endpoint-url http://127.0.0.1:4566"
    with pytest.raises(TargetError, match="pass --prefix") as prefix_error:
        _ = target.prefix
    assert str(prefix_error.value).endswith(local)
    with pytest.raises(TargetError, match="set EVENTS_TABLE or pass --stack-name") as table_error:
        target.table_name("EventsTable")
    assert str(table_error.value).endswith(local)


def test_loading_the_cli_leaves_the_delivery_service_to_the_function() -> None:
    """The local stack loads the CLI before it sets the delivery function's environment: the service's
    Powertools child logger must be created under the function's service name, not before it."""
    assert after_fresh_import("fme_bridge.cli", "'shared.delivery.service' in sys.modules") is False


@pytest.mark.parametrize(
    "url", ["127.0.0.1:4566", "localhost:4566", "ftp://127.0.0.1:4566", "http://", " http://127.0.0.1:4566"]
)
def test_an_endpoint_url_that_is_not_an_http_url_is_refused_with_the_form_it_takes(url: str) -> None:
    result = CliRunner().invoke(app, ["--endpoint-url", url, "config", "inbound", "list"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: --endpoint-url (or AWS_ENDPOINT_URL) {url!r} is not an http:// or https:// URL "
        "(e.g. http://127.0.0.1:4566)\n"
    )


def test_a_command_that_does_not_reach_aws_ignores_a_malformed_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "localhost:4566")  # the local stack sets its own
    result = CliRunner().invoke(app, ["local", "--help"])
    assert result.exit_code == 0, result.output


class _NotFound(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(404)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"Not Found")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_aws() -> Iterator[str]:
    """An HTTP server on loopback that is not AWS (as the local stack's webhook port is not)."""
    server = LoopbackServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_endpoint_that_does_not_answer_as_aws_does_is_named_as_the_likely_mistake(not_aws: str) -> None:
    result = CliRunner().invoke(app, ["--endpoint-url", not_aws, "config", "inbound", "list"])
    assert result.exit_code == 1
    line = " ".join(result.output.split())
    assert f"AWS GetParametersByPath failed: 404: Not Found ({not_aws} did not answer as AWS does: " in line
    assert "is it the AWS endpoint, the local stack's --aws-port, and not its HTTP API?)" in line


def test_a_bare_status_from_aws_itself_gets_no_endpoint_hint() -> None:
    error = ClientError({"Error": {"Code": "503", "Message": "Service Unavailable"}}, "GetParametersByPath")
    assert describe_error(error) == "AWS GetParametersByPath failed: 503: Service Unavailable"


def test_help_wraps_each_paragraph_of_a_docstring_to_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A docstring's own line breaks do not reach the help: its paragraphs are wrapped to the width."""
    monkeypatch.setenv("COLUMNS", "300")
    result = CliRunner().invoke(app, ["config", "audience", "backfill", "--help"])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert (
        "Entries and exits are synced to Segment and stored as the audiences functions do it; running it "
        "again changes nothing that is already right. Finding the identities scans the events, identities "
        "and profiles tables once."
    ) in lines
