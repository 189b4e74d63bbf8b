"""Fixtures of the reliability suite."""

from __future__ import annotations

import time
import types
from collections.abc import Iterator

import botocore.endpoint
import pytest

from tests.reliability.faults import AwsOutage


@pytest.fixture
def botocore_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's retry backoff recorded instead of slept (its endpoint sleeps with ``time.sleep``)."""
    waits: list[float] = []
    shim = types.SimpleNamespace(
        **{name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    )
    shim.sleep = waits.append
    monkeypatch.setattr(botocore.endpoint, "time", shim)
    return waits


@pytest.fixture
def aws_outage() -> Iterator[AwsOutage]:
    """Install before any client is created (the suite's autouse fixture has just reset them)."""
    outage = AwsOutage()
    outage.install()
    yield outage
    outage.uninstall()
