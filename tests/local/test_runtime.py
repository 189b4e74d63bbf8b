"""Template functions run in-process as Lambda runs them: name, memory, ARN, timeout, one at a time."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from fme_bridge.local import runtime
from fme_bridge.local.runtime import LocalFunction
from fme_bridge.template import Stack, load_template


def test_the_context_and_environment_name_the_function_as_lambda_does(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(runtime, "time", SimpleNamespace(monotonic=lambda: now[0]))
    seen: dict[str, Any] = {}

    def handler(event: Any, context: Any) -> None:
        seen.update(vars(context), environment=dict(os.environ))
        seen["remaining"] = context.get_remaining_time_in_millis()
        now[0] += 61  # past the function's 60 s timeout
        seen["after_timeout"] = context.get_remaining_time_in_millis()

    LocalFunction(stack, "DeliveryFunction", handler=handler).invoke({})

    name = f"{stack.name}-DeliveryFunction"
    properties = load_template()["Resources"]["DeliveryFunction"]["Properties"]
    memory = properties.get("MemorySize", load_template()["Globals"]["Function"]["MemorySize"])
    assert seen["function_name"] == seen["environment"]["AWS_LAMBDA_FUNCTION_NAME"] == name
    assert seen["memory_limit_in_mb"] == memory
    assert seen["environment"]["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == str(memory)
    assert seen["invoked_function_arn"] == f"arn:aws:lambda:{stack.region}:{stack.account}:function:{name}"
    assert (seen["function_version"], seen["log_group_name"]) == ("$LATEST", f"/aws/lambda/{name}")
    assert seen["remaining"] == properties["Timeout"] * 1000
    assert seen["after_timeout"] == 0


def test_invocations_take_turns_and_each_sees_its_own_environment(stack: Stack) -> None:
    first_running, second_started = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def first(event: Any, context: Any) -> None:
        first_running.set()
        # The second invocation waits until this one returns: it cannot start meanwhile.
        seen["overlapped"] = second_started.wait(0.3)
        seen["first"] = os.environ["POWERTOOLS_SERVICE_NAME"]

    def second(event: Any, context: Any) -> None:
        second_started.set()
        seen["second"] = os.environ["POWERTOOLS_SERVICE_NAME"]

    thread = threading.Thread(target=LocalFunction(stack, "IngestFunction", handler=first).invoke, args=({},))
    thread.start()
    assert first_running.wait(10)
    LocalFunction(stack, "DeliveryFunction", handler=second).invoke({})
    thread.join(10)

    assert seen == {"overlapped": False, "first": "ingest", "second": "delivery"}
