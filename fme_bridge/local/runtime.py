"""Run a template function in this process the way Lambda would: its handler, environment and timeout.

Every function sees the environment template.yaml gives it (``Stack.function_environment``) plus the
endpoint of the local AWS. Environment variables are process-wide, so invocations take turns (one
at a time, like a function with reserved concurrency 1): each sees exactly its own variables.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from fme_bridge.template import Stack, function_setting

Handler = Callable[[Any, Any], Any]

_INVOCATION_LOCK = threading.RLock()


class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    def __init__(self, function_name: str, memory_mb: int, timeout_s: float, arn: str) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = arn
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class LocalFunction:
    """A function of the template, invoked in-process with its own environment."""

    def __init__(
        self,
        stack: Stack,
        logical_id: str,
        handler: Handler | None = None,
    ) -> None:
        self.logical_id = logical_id
        self.handler_path = str(function_setting(logical_id, "Handler"))
        self.timeout_s = float(stack.resolve(function_setting(logical_id, "Timeout", 3)))
        self.memory_mb = int(stack.resolve(function_setting(logical_id, "MemorySize", 128)))
        self.name = f"{stack.name}-{logical_id}"
        self.arn = f"arn:aws:lambda:{stack.region}:{stack.account}:function:{self.name}"
        self.environment = {
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            **stack.function_environment(logical_id),
        }
        self._handler = handler

    def _load(self) -> Handler:
        if self._handler is None:
            module_name, _, attribute = self.handler_path.rpartition(".")
            self._handler = getattr(importlib.import_module(module_name), attribute)
        return self._handler

    def invoke(self, event: Any) -> Any:
        """Call the handler with ``event`` and a fresh context; exceptions propagate to the caller."""
        with _INVOCATION_LOCK, _environment(self.environment):
            handler = self._load()  # imported under the function's environment (service name…)
            context = LambdaContext(self.name, self.memory_mb, self.timeout_s, self.arn)
            return handler(event, context)
