"""Scheduled re-check: audiences whose ``withinDays`` windows let members in or out with time alone.

Each stored membership knows the earliest time an event leaves a window it depends on
(``recheckAt``, on the sparse RecheckIndex). The sweep evaluates exactly the profiles that are due, so
its cost follows the number of windows that actually close, not the number of profiles. Profiles it
has no time left for stay due and are taken by the next run.

Every audience is looked at, not only those with a window: a transition stored before its identify
was sent (``identifyPending``, after a concurrent evaluation) is due at once in any audience, and
nothing else would send it before the identity's next change.
"""

from __future__ import annotations

import itertools
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.audiences import app as stream_app
from shared.http_retry import prepare_tls_context
from shared.lambda_context import completed_context, remaining_time_ms
from shared.metrics import lambda_metrics
from shared.profiles.audience_sync import PROFILES_PER_ROUND, SyncReport
from shared.profiles_table import due_for_recheck
from shared.tracing import lambda_tracer

# Ready by the first request to Segment / FME: built while the cold start goes on.
prepare_tls_context()
logger = Logger()
metrics = lambda_metrics()
tracer = lambda_tracer()

# Stop starting rounds when less than this is left: a round must finish its sends and stores.
RESERVE_MS = 15_000


@completed_context
@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    audiences = stream_app.evaluator(context)
    # Called without a clock (a script, a test), it still has time for a few rounds.
    remaining_ms = remaining_time_ms(context, default_budget_ms=RESERVE_MS + 45_000)
    now = stream_app.now_ms()
    total = SyncReport()
    finished = True
    for name in sorted(audiences.audiences.audiences):
        due = due_for_recheck(name, now)
        while chunk := list(itertools.islice(due, PROFILES_PER_ROUND)):
            if remaining_ms() < RESERVE_MS:
                finished = False
                break
            total.add(audiences.sync_profiles(chunk, now))
        if not finished:
            break
    stream_app.publish(total, logger, metrics)
    summary = {
        "evaluated": total.evaluated,
        "entered": total.entered,
        "exited": total.exited,
        "failed": len(total.failed),
        "finished": finished,
    }
    logger.info("audience re-check", extra=summary)
    if total.failed:
        # An error of the run (AudienceRecheckErrorsAlarm); the identities stay due for the next one.
        raise RecheckIncomplete(f"{len(total.failed)} identities could not be evaluated or synced")
    return summary


class RecheckIncomplete(Exception):
    """Some identities due for a re-check could not be evaluated or synced (DynamoDB or Segment failing)."""
