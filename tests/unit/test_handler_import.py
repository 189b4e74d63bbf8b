"""A handler imported before its environment is set (as a test module's top-level import does) still
answers its requests once the environment is there."""

from __future__ import annotations

import json

import pytest

from fme_bridge.template import functions
from tests.conftest import EVENTS_DIR, after_fresh_import

HANDLER_MODULES = sorted({props["Handler"].rsplit(".", 1)[0] for props in functions().values()})


@pytest.mark.parametrize("module", HANDLER_MODULES)
def test_metrics_have_a_namespace_without_the_environment(module: str) -> None:
    assert after_fresh_import(module, "m.metrics.namespace") == "FmeSegmentBridge"


def test_a_request_to_a_handler_imported_before_its_environment_is_answered() -> None:
    event = json.loads((EVENTS_DIR / "profiles_get.json").read_text())
    del event["headers"]["authorization"]
    context = (
        "__import__('types').SimpleNamespace(function_name='f', memory_limit_in_mb=512,"
        " invoked_function_arn='a', aws_request_id='r', get_remaining_time_in_millis=lambda: 10_000)"
    )
    set_environment = (
        "__import__('os').environ.update(POWERTOOLS_METRICS_NAMESPACE='FmeSegmentBridge', CONFIG_PREFIX='/p')"
    )
    invoke = f"[{set_environment}, m.lambda_handler({event!r}, {context})['statusCode']][1]"
    status = after_fresh_import("functions.profiles.app", invoke)
    assert status == 401  # not "Must contain a metric namespace"
