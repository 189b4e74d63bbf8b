"""The invocation's context, also for invokers whose context object is partial or missing."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

# Used when an invoker passes a context without ``get_remaining_time_in_millis`` (a minimal test
# context, a local runner): the smallest timeout any function in template.yaml has, less a little.
DEFAULT_BUDGET_MS = 8_000

# What Powertools' logger reads of the context (``inject_lambda_context``).
_DESCRIBED_BY = ("function_name", "memory_limit_in_mb", "invoked_function_arn", "aws_request_id")

Handler = TypeVar("Handler", bound=Callable[..., Any])


def context_clock(context: Any) -> Callable[[], int] | None:
    """``context.get_remaining_time_in_millis`` when it tells a number of milliseconds (a mock's
    does not), else None."""
    clock = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(clock):
        return None
    try:
        first = clock()
    except Exception:
        return None
    return clock if isinstance(first, int | float) and not isinstance(first, bool) else None


def remaining_time_ms(context: Any, default_budget_ms: int = DEFAULT_BUDGET_MS) -> Callable[[], int]:
    """``context.get_remaining_time_in_millis``, or a clock counting down from now."""
    clock = context_clock(context)
    if clock is not None:
        return clock
    end = time.monotonic() + default_budget_ms / 1000
    return lambda: int((end - time.monotonic()) * 1000)


class PartialContext:
    """A context that lacks what Powertools reads (``None``, a test's minimal object), completed
    from the function's environment; whatever the original has is its own."""

    def __init__(self, original: Any) -> None:
        self._original = original
        name = (
            os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
            or os.environ.get("POWERTOOLS_SERVICE_NAME")
            or "function"
        )
        region = os.environ.get("AWS_REGION", "us-east-1")
        self._defaults = {
            "function_name": name,
            "memory_limit_in_mb": int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 128),
            "invoked_function_arn": f"arn:aws:lambda:{region}:000000000000:function:{name}",
            "aws_request_id": _request_id(),
        }

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # its own fields, and what copy and pickle look for
            raise AttributeError(name)
        try:
            return getattr(self._original, name)
        except AttributeError:
            if name in self._defaults:
                return self._defaults[name]
            raise


def _request_id() -> str:
    import uuid  # only for invokers without a context

    return str(uuid.uuid4())


def completed_context(handler: Handler) -> Handler:
    """Outermost decorator of a handler: an invoker's partial or missing context is completed
    (:class:`PartialContext`) instead of failing every invocation in Powertools' logger."""

    @functools.wraps(handler)
    def invoke(event: Any, context: Any) -> Any:
        if not all(hasattr(context, name) for name in _DESCRIBED_BY):
            context = PartialContext(context)
        return handler(event, context)

    return invoke  # type: ignore[return-value]
