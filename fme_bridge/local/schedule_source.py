"""Scheduled functions, as EventBridge runs them: a ``Schedule`` or ``ScheduleV2`` event with a
``rate(…)`` expression invokes its function once per period (the first time one period after the
start), with a scheduled event. ``cron(…)`` expressions are not run locally.
"""

from __future__ import annotations

import re
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.markup import escape

from fme_bridge.local.poller import Poller
from fme_bridge.local.runtime import LocalFunction
from fme_bridge.template import Stack, function_events

_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"rate\(\s*([1-9]\d*)\s+(minute|hour|day)s?\s*\)")  # EventBridge: at least 1


def rate_seconds(expression: str) -> int | None:
    """``rate(15 minutes)`` → 900; None for anything else (a ``cron(…)``)."""
    match = _RATE.fullmatch(expression.strip())
    return int(match[1]) * _SECONDS[match[2]] if match else None


@dataclass
class ScheduleMapping:
    function: LocalFunction
    name: str  # the event's key under the function's Events
    period_s: float
    kind: str = "ScheduleV2"


def mappings_from_template(stack: Stack, function: Callable[[str], LocalFunction]) -> list[ScheduleMapping]:
    mappings = []
    for kind in ("Schedule", "ScheduleV2"):  # an EventBridge rule, an EventBridge Scheduler schedule
        for event in function_events(kind):
            period = rate_seconds(str(event.properties.get("ScheduleExpression", "")))
            enabled = event.properties.get("State", "ENABLED") == "ENABLED" and event.properties.get(
                "Enabled", True
            )
            if period is not None and enabled:
                mappings.append(ScheduleMapping(function(event.function), event.name, period, kind))
    return mappings


def scheduled_event(region: str, account: str, rule: str, kind: str = "ScheduleV2") -> dict[str, Any]:
    """What EventBridge hands a scheduled target: from a Scheduler schedule (``ScheduleV2``) or a rule."""
    if kind == "ScheduleV2":
        source, resource = "aws.scheduler", f"arn:aws:scheduler:{region}:{account}:schedule/default/{rule}"
    else:
        source, resource = "aws.events", f"arn:aws:events:{region}:{account}:rule/{rule}"
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": source,
        "account": account,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [resource],
        "detail": {},
    }


class SchedulePoller(Poller):
    """Invokes one function every period, until :meth:`stop`."""

    def __init__(
        self,
        mapping: ScheduleMapping,
        region: str,
        account: str,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(f"schedule-{mapping.function.logical_id}", log)
        self.mapping = mapping
        self.region = region
        self.account = account
        self._clock = clock
        self.next_run = clock() + mapping.period_s
        self.idle_seconds = min(1.0, mapping.period_s)

    def poll_once(self) -> bool:
        """The scheduled run, if it is due; False when it is not."""
        now = self._clock()
        if now < self.next_run:
            return False
        # The next scheduled time still ahead: runs missed meanwhile are not made up back to back.
        while self.next_run <= now:
            self.next_run += self.mapping.period_s
        self.invocations += 1
        logical = self.mapping.function.logical_id
        event = scheduled_event(
            self.region, self.account, f"{logical}-{self.mapping.name}", self.mapping.kind
        )
        try:
            self.mapping.function.invoke(event)
        except Exception:  # EventBridge's retry policy here is none: the next period runs it again
            self.log(f"[red]{logical} raised on its schedule[/red]\n{escape(traceback.format_exc())}")
        else:
            self.log(f"{logical}: scheduled run ({self.mapping.name})")
        return True
