"""Fixtures of the reliability suite."""

from __future__ import annotations

import time
import types

import botocore.endpoint
import pytest


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
