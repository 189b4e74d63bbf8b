"""Fixtures of the delivery tests: the loopback FME sink and the delivery function's environment."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fme_bridge.fme_sink import FmeSink
from fme_bridge.template import Stack
from tests.delivery_support import ADMIN_KEY, SDK_KEY, delivery_app
from tests.integration.policy_support import RawCall, recording_calls


@pytest.fixture
def sink() -> Iterator[FmeSink]:
    with FmeSink(sdk_keys=[SDK_KEY], admin_keys=[ADMIN_KEY]) as server:
        yield server


@pytest.fixture
def delivery_env(
    stack: Stack, function_env: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The DeliveryFunction's environment from template.yaml, with a short FME timeout for fault tests."""
    values = function_env("DeliveryFunction")
    monkeypatch.setenv("FME_TIMEOUT_SECONDS", "0.5")
    app = delivery_app()
    app.delivery.cache_clear()
    yield values
    app.delivery.cache_clear()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[RawCall]:
    """Every AWS call made through botocore from now on, from any thread: (service, operation, params)."""
    return recording_calls(monkeypatch)
