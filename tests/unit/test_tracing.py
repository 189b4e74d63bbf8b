"""The functions' tracer: X-Ray only when tracing is on, the same decorators either way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools import Tracer

from shared import tracing
from tests.conftest import after_fresh_import


@pytest.fixture(autouse=True)
def _fresh_tracer_config() -> Iterator[None]:
    # Powertools keeps one Tracer configuration per process (provider, disabled) across instances.
    Tracer._reset_config()
    yield
    Tracer._reset_config()


def _loaded_after_import(module: str, **environment: str) -> dict[str, Any]:
    """Import ``module`` in a fresh interpreter; which X-Ray modules did it load, what is its provider."""
    expression = (
        "{'xray_core': 'aws_xray_sdk.core' in sys.modules,"
        " 'provider': type(m.tracer.provider).__name__, 'disabled': bool(m.tracer.disabled)}"
    )
    return dict(after_fresh_import(module, expression, **environment))


@pytest.mark.parametrize(
    "environment",
    [
        {"POWERTOOLS_TRACE_DISABLED": "true", "LAMBDA_TASK_ROOT": "/var/task"},  # Tracing=Disabled
        {"POWERTOOLS_TRACE_DISABLED": "false"},  # outside Lambda: Powertools would not trace either
        {"POWERTOOLS_TRACE_DISABLED": "false", "LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"},
    ],
)
def test_without_tracing_a_handler_never_loads_the_xray_sdk(environment: dict[str, str]) -> None:
    loaded = _loaded_after_import("functions.ingest.app", **environment)
    assert loaded == {"xray_core": False, "provider": "UnrecordedProvider", "disabled": True}


def test_with_tracing_in_lambda_the_handler_traces_with_xray() -> None:
    loaded = _loaded_after_import(
        "functions.impressions.app", POWERTOOLS_TRACE_DISABLED="false", LAMBDA_TASK_ROOT="/var/task"
    )
    assert loaded["xray_core"] is True
    assert loaded["provider"] == "AsyncAWSXRayRecorder"
    assert loaded["disabled"] is False


def test_tracing_enabled_follows_powertools_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "false")
    monkeypatch.delenv("LAMBDA_TASK_ROOT", raising=False)
    assert tracing.tracing_enabled() is False
    monkeypatch.setenv("LAMBDA_TASK_ROOT", "/var/task")
    assert tracing.tracing_enabled() is True
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    assert tracing.tracing_enabled() is False


def test_unrecorded_tracer_keeps_every_decorator_working(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    tracer = tracing.lambda_tracer()
    assert isinstance(tracer.provider, tracing.UnrecordedProvider)

    @tracer.capture_method(capture_response=False)
    def double(x: int) -> int:
        tracer.put_annotation("x", x)
        tracer.put_metadata("x", {"value": x})
        return 2 * x

    @tracer.capture_method
    async def triple(x: int) -> int:
        return 3 * x

    @tracer.capture_method
    def count(n: int) -> Iterator[int]:
        yield from range(n)

    @tracer.capture_lambda_handler(capture_response=False)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"double": double(event["x"]), "triple": asyncio.run(triple(event["x"])), "n": list(count(3))}

    @tracer.capture_lambda_handler
    def failing(event: dict[str, Any], context: Any) -> None:
        raise ValueError("boom")

    assert handler({"x": 2}, None) == {"double": 4, "triple": 6, "n": [0, 1, 2]}
    with pytest.raises(ValueError, match="boom"):
        failing({}, None)
