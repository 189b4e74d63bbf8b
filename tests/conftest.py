"""Fixtures shared by every test: moto for AWS, with the resources template.yaml declares."""

from __future__ import annotations

import hmac
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto import mock_aws

from fme_bridge.template import Stack, create_stack
from shared import aws, config, http_session, secret_versions

if TYPE_CHECKING:
    from tests.integration.ingest_support import Webhook

ROOT = Path(__file__).resolve().parents[1]
EVENTS_DIR = Path(__file__).parent / "events"
REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _isolated_aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test may reach a real account: fake credentials, a fixed region, no endpoint override."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "FmeSegmentBridge")
    monkeypatch.setenv("POWERTOOLS_DEV", "0")
    aws.reset_clients()
    config.clear_caches()
    secret_versions.clear_caches()
    yield
    aws.reset_clients()
    config.clear_caches()
    secret_versions.clear_caches()
    http_session.close()  # no HTTP client or connection outlives its test


@pytest.fixture
def stack() -> Iterator[Stack]:
    """moto, with the template's tables and queues created."""
    with mock_aws():
        yield create_stack(
            boto3.client("dynamodb", region_name=REGION), boto3.client("sqs", region_name=REGION)
        )


@pytest.fixture
def function_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], dict[str, str]]:
    """Set the environment template.yaml gives a function (by logical id) and return it."""

    def apply(logical_id: str) -> dict[str, str]:
        env = stack.function_environment(logical_id)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return apply


@pytest.fixture
def lambda_context() -> Any:
    """A Lambda context with the attributes Powertools reads and a remaining-time clock."""

    class Context:
        function_name = "test-function"
        function_version = "$LATEST"
        memory_limit_in_mb = 512
        invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:test-function"
        aws_request_id = "00000000-0000-0000-0000-000000000000"
        log_group_name = "/aws/lambda/test-function"
        log_stream_name = "stream"

        def __init__(self) -> None:
            self.remaining_ms = 30_000

        def get_remaining_time_in_millis(self) -> int:
            return self.remaining_ms

    return Context()


@pytest.fixture
def webhook(function_env: Callable[[str], dict[str, str]], lambda_context: Any) -> Webhook:
    """The ingest function with one configured connection."""
    from tests.integration import ingest_support  # imported here: it imports this module

    return ingest_support.Webhook.create(function_env, lambda_context)


@pytest.fixture
def compared_digests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every ``hmac.compare_digest`` call made while the test runs, as (presented, secret) bytes."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return compared


def load_event(name: str) -> Any:
    return json.loads((EVENTS_DIR / name).read_text())


def after_fresh_import(module: str, expression: str, **environment: str) -> Any:
    """``expression`` (JSON) in a fresh interpreter on this checkout once it imported ``module`` (as
    ``m``): what an import loads, as a function starts. The Lambda and Powertools settings of this
    process are left out; ``environment`` sets them."""
    code = (
        "import importlib, json, sys\n"
        f"m = importlib.import_module({module!r})\n"
        f"print(json.dumps({expression}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "LAMBDA_", "AWS_SAM"))}
    env.update(PYTHONPATH=str(ROOT), AWS_DEFAULT_REGION=REGION, **environment)
    completed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def put_config(name: str, document: dict[str, Any]) -> None:
    """Write an SSM config parameter under the prefix the function environment names."""
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=f"{os.environ['CONFIG_PREFIX']}/{name}",
        Value=json.dumps(document),
        Type="String",
        Overwrite=True,
    )


def put_secret(name: str, value: str) -> None:
    """Create or rotate a secret: an existing secret's current version becomes AWSPREVIOUS."""
    client = boto3.client("secretsmanager", region_name=REGION)
    full = f"{os.environ['CONFIG_PREFIX']}/{name}"
    try:
        client.put_secret_value(SecretId=full, SecretString=value)
    except client.exceptions.ResourceNotFoundException:
        client.create_secret(Name=full, SecretString=value)


def published_metrics(output: str) -> list[dict[str, Any]]:
    """The CloudWatch embedded-metric documents among a function's printed lines (``capsys``)."""
    return [json.loads(line) for line in output.splitlines() if '"_aws"' in line]


def table_rows(output: str) -> list[list[str]]:
    """The rows of the tables in a command's ``output`` (printed wide enough for them), as cells."""
    rows = [line for line in output.splitlines() if line.startswith("│")]
    return [[cell.strip() for cell in row.split("│")[1:-1]] for row in rows]


def pages_cut_at(client: Any, operation: str, items: int) -> None:
    """Have ``client``'s ``operation`` (``"dynamodb.Query"``, ``"dynamodbstreams.GetRecords"``) return
    at most ``items`` a page, as DynamoDB cuts a page at 1 MB: a smaller Limit asked for is kept."""

    def cut(params: dict[str, Any], **_: Any) -> None:
        params["Limit"] = min(params.get("Limit", items), items)

    client.meta.events.register(f"provide-client-params.{operation}", cut)
