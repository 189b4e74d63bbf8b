"""The impressions function's settings of its Segment client (docs/outbound.md)."""

from __future__ import annotations

import pytest

from shared.outbound.batch import SenderSettings

NAMES = ("SEGMENT_REQUEST_TIMEOUT", "SEGMENT_CONCURRENCY", "SEND_MARGIN_MS")


def test_without_the_environment_variables_the_documented_defaults_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    assert SenderSettings.from_env() == SenderSettings(request_timeout=10.0, concurrency=8, margin_ms=3000)


def test_the_environment_variables_override_each_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in zip(NAMES, ("2.5", "3", "700"), strict=True):
        monkeypatch.setenv(name, value)
    assert SenderSettings.from_env() == SenderSettings(request_timeout=2.5, concurrency=3, margin_ms=700)
