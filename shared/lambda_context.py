"""The invocation's remaining time, also for callers whose context object has no clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Used when an invoker passes a context without ``get_remaining_time_in_millis`` (a minimal test
# context, a local runner): the smallest timeout any function in template.yaml has, less a little.
DEFAULT_BUDGET_MS = 8_000


def remaining_time_ms(context: Any, default_budget_ms: int = DEFAULT_BUDGET_MS) -> Callable[[], int]:
    """``context.get_remaining_time_in_millis``, or a clock counting down from now."""
    clock = getattr(context, "get_remaining_time_in_millis", None)
    if callable(clock):
        return clock
    end = time.monotonic() + default_budget_ms / 1000
    return lambda: int((end - time.monotonic()) * 1000)
