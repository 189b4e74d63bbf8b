"""Handlers invoked with a partial or missing context (a test's minimal object, ``None``) answer as
they do on Lambda instead of failing in Powertools' logger."""

from __future__ import annotations

import copy
import importlib
import json
import types
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest

from fme_bridge.template import functions
from shared.lambda_context import PartialContext, completed_context, context_clock
from tests.conftest import EVENTS_DIR


def seen_by_handler(context: Any) -> Any:
    return completed_context(lambda event, context: context)({}, context)


def test_a_complete_context_is_passed_as_it_is(lambda_context: Any) -> None:
    assert seen_by_handler(lambda_context) is lambda_context


def test_a_missing_context_is_completed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "ingest")
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    context = seen_by_handler(None)
    assert isinstance(context, PartialContext)
    assert (context.function_name, context.memory_limit_in_mb) == ("ingest", 128)
    assert context.invoked_function_arn.endswith(":function:ingest")
    assert context.aws_request_id != seen_by_handler(None).aws_request_id
    # No clock is made up: the functions fall back to their own budget (remaining_time_ms).
    assert not hasattr(context, "get_remaining_time_in_millis")
    assert copy.deepcopy(context).function_name == "ingest"  # copies, as a logger's may


def test_a_partial_context_keeps_what_it_has() -> None:
    context = seen_by_handler(
        types.SimpleNamespace(aws_request_id="req-1", get_remaining_time_in_millis=lambda: 1234)
    )
    assert (context.aws_request_id, context.get_remaining_time_in_millis()) == ("req-1", 1234)
    assert context.function_name
    with pytest.raises(AttributeError):
        _ = context.no_such_attribute


@pytest.mark.parametrize(("logical_id", "props"), sorted(functions().items()))
@pytest.mark.parametrize(
    "context", [None, types.SimpleNamespace(), mock.MagicMock()], ids=["none", "empty", "mock"]
)
def test_every_handler_answers_without_a_complete_context(
    logical_id: str, props: dict[str, Any], context: Any, function_env: Callable[[str], dict[str, str]]
) -> None:
    function_env(logical_id)
    module, name = props["Handler"].rsplit(".", 1)
    handler = getattr(importlib.import_module(module), name)
    kind = next(iter(props["Events"].values()))["Type"]
    if kind == "HttpApi":
        sample = "profiles_get.json" if "profiles" in module else "apigw_http_segment_webhook.json"
        event = json.loads((EVENTS_DIR / sample).read_text())
        event["headers"].pop("authorization", None)
        assert handler(event, context)["statusCode"] == 401
    elif kind == "ScheduleV2":
        assert handler({}, context)["finished"] is True  # no audience to re-check
    else:
        assert handler({"Records": []}, context) == {"batchItemFailures": []}


def test_a_clock_that_tells_no_number_is_not_used() -> None:
    from shared.lambda_context import remaining_time_ms

    assert context_clock(mock.MagicMock()) is None
    assert context_clock(types.SimpleNamespace(get_remaining_time_in_millis=lambda: 5_000)) is not None
    assert 0 < remaining_time_ms(mock.MagicMock())() <= 8_000


def test_a_clock_that_raises_or_tells_a_bool_is_not_used() -> None:
    def broken() -> int:
        raise RuntimeError("no deadline")

    assert context_clock(types.SimpleNamespace(get_remaining_time_in_millis=broken)) is None
    assert context_clock(types.SimpleNamespace(get_remaining_time_in_millis=lambda: True)) is None
    assert context_clock(types.SimpleNamespace(get_remaining_time_in_millis=1_000)) is None


def test_the_lambda_environment_names_the_completed_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "bridge-Ingest")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "ingest")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    context = seen_by_handler(None)
    assert (context.function_name, context.memory_limit_in_mb) == ("bridge-Ingest", 1024)
    assert context.invoked_function_arn == "arn:aws:lambda:eu-west-1:000000000000:function:bridge-Ingest"


def test_a_context_without_a_request_id_is_completed() -> None:
    original = types.SimpleNamespace(
        function_name="f",
        memory_limit_in_mb=256,
        invoked_function_arn="arn:aws:lambda:us-east-1:1:function:f",
    )
    context = seen_by_handler(original)
    assert isinstance(context, PartialContext)
    assert (context.function_name, context.memory_limit_in_mb) == ("f", 256)
    assert context.aws_request_id
