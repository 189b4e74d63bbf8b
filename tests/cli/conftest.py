"""The CLI against moto, with the template's resources named the way operators name them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fme_bridge.cli import app
from fme_bridge.target import Target
from fme_bridge.template import Stack

PREFIX = "/fme-segment-bridge/test"

Cli = Callable[..., Result]


@pytest.fixture
def cli(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run ``fme-bridge`` in-process; resources come from the environment variables operators set."""
    monkeypatch.setenv("CONFIG_PREFIX", PREFIX)
    monkeypatch.setenv("IMPRESSIONS_QUEUE_URL", stack.queues["ImpressionsQueue"])
    monkeypatch.setenv("IMPRESSIONS_DLQ_URL", stack.queues["ImpressionsDeadLetterQueue"])
    monkeypatch.setenv("LAST_TREATMENTS_QUEUE_URL", stack.queues["LastTreatmentsQueue"])
    monkeypatch.setenv("LAST_TREATMENTS_DLQ_URL", stack.queues["LastTreatmentsDeadLetterQueue"])
    monkeypatch.setenv("EVENTS_TABLE", stack.tables["EventsTable"])
    monkeypatch.setenv("IDENTITIES_TABLE", stack.tables["IdentitiesTable"])

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(app, list(args), input=input)

    return run


def wrap_clients(monkeypatch: pytest.MonkeyPatch, service: str, wrapper: Callable[[Any], Any]) -> None:
    """Every ``service`` client the CLI makes, wrapped: to answer as AWS may and moto does not."""
    original = Target.client
    monkeypatch.setattr(
        Target,
        "client",
        lambda self, name: wrapper(original(self, name)) if name == service else original(self, name),
    )


def deny(monkeypatch: pytest.MonkeyPatch, service: str, *methods: str) -> None:
    """The CLI's ``service`` clients refuse ``methods`` (boto3's names) as IAM does: AccessDenied."""
    from botocore.exceptions import ClientError

    class Denying:
        def __init__(self, client: Any) -> None:
            self._client = client

        def __getattr__(self, name: str) -> Any:
            if name not in methods:
                return getattr(self._client, name)

            def refuse(**kwargs: Any) -> None:
                error = {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}
                raise ClientError(error, name)

            return refuse

    wrap_clients(monkeypatch, service, Denying)
