"""Scheduled functions run locally on their rate, as EventBridge runs them."""

from __future__ import annotations

from typing import Any

import pytest

from fme_bridge.local.runtime import LocalFunction
from fme_bridge.local.schedule_source import SchedulePoller, mappings_from_template, rate_seconds
from fme_bridge.template import Stack


class RecordingHandler:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.events.append(event)
        return {}


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [
        ("rate(15 minutes)", 900),
        ("rate(1 minute)", 60),
        ("rate(2 hours)", 7200),
        ("rate(1 day)", 86400),
        ("cron(0 12 * * ? *)", None),
        ("rate(minutes)", None),
        ("rate(0 minutes)", None),
        ("rate(5 minutes) rate(1 minute)", None),
    ],
)
def test_rate_expressions(expression: str, seconds: int | None) -> None:
    assert rate_seconds(expression) == seconds


def test_the_audience_recheck_runs_every_fifteen_minutes_after_the_start(stack: Stack) -> None:
    handler = RecordingHandler()
    [mapping] = mappings_from_template(stack, lambda logical: LocalFunction(stack, logical, handler=handler))
    assert (mapping.function.logical_id, mapping.period_s) == ("AudienceRecheckFunction", 900)

    now = [1000.0]
    poller = SchedulePoller(mapping, stack.region, stack.account, clock=lambda: now[0])
    assert poller.poll_once() is False  # not at the start
    now[0] += 899
    assert poller.poll_once() is False
    now[0] += 1
    assert poller.poll_once() is True
    assert poller.poll_once() is False  # once per period
    now[0] += 900
    assert poller.poll_once() is True

    now[0] += 5000  # the runs it missed meanwhile: one run, then the next scheduled time
    assert poller.poll_once() is True
    assert poller.poll_once() is False
    now[0] = 1000 + 900 * 9  # start + nine periods
    assert poller.poll_once() is True

    assert len(handler.events) == 4
    event = handler.events[0]
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.scheduler"
    assert (event["account"], event["region"]) == (stack.account, stack.region)
    assert event["resources"] == [
        f"arn:aws:scheduler:{stack.region}:{stack.account}:schedule/default/AudienceRecheckFunction-Every15Minutes"
    ]


def test_rules_run_as_eventbridge_rules_and_disabled_schedules_do_not_run(
    stack: Stack, template_copy: dict[str, Any]
) -> None:
    events = template_copy["Resources"]["AudienceRecheckFunction"]["Properties"]["Events"]
    daily = {"ScheduleExpression": "rate(1 day)"}
    events["Hourly"] = {"Type": "Schedule", "Properties": {"ScheduleExpression": "rate(1 hour)"}}
    events["Off"] = {"Type": "ScheduleV2", "Properties": {**daily, "State": "DISABLED"}}
    events["RuleOff"] = {"Type": "Schedule", "Properties": {**daily, "Enabled": False}}
    handler = RecordingHandler()

    mappings = mappings_from_template(stack, lambda logical: LocalFunction(stack, logical, handler=handler))

    assert sorted((m.name, m.kind, m.period_s) for m in mappings) == [
        ("Every15Minutes", "ScheduleV2", 900),
        ("Hourly", "Schedule", 3600),
    ]
    [rule] = [m for m in mappings if m.name == "Hourly"]
    now = [0.0]
    poller = SchedulePoller(rule, stack.region, stack.account, clock=lambda: now[0])
    now[0] += 3600
    assert poller.poll_once() is True
    (event,) = handler.events
    assert event["source"] == "aws.events"
    assert event["resources"] == [
        f"arn:aws:events:{stack.region}:{stack.account}:rule/AudienceRecheckFunction-Hourly"
    ]
