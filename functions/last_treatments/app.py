"""Last-treatments queue → ProfilesTable last treatments and computed-trait identifies (docs/profiles.md).

The impressions function forwards the newest impression per identity and flag of each of its batches
(:mod:`shared.profiles.forwarding`); this function records them (one conditional write per identity
and flag, which DynamoDB refuses when it holds a newer impression; skipped when the container has
just written the same one) and, for every outbound config with ``computedTraits`` enabled, sends an
``identify`` when a user's treatment changed. Messages whose writes or identifies failed
transiently are reported as batch item failures and retried by SQS, and on their last receive go to
the dead-letter queue with the reason (``retries_exhausted``); a message that is not in the
forwarding format goes there at once (``invalid_body``).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared import aws
from shared.batch_response import PartialItemFailureResponse, partial_batch_response
from shared.http_retry import prepare_tls_context
from shared.lambda_context import completed_context, remaining_time_ms
from shared.metrics import lambda_metrics
from shared.outbound.dead_letters import log_dead_letters, retries_exhausted, send_dead_letters
from shared.outbound.delivery import DeadLetter
from shared.profiles.forwarding import ForwardedBodyError, decode_body
from shared.profiles.impression_profiles import LastTreatmentSync
from shared.profiles.last_treatment import LastTreatmentRecorder
from shared.sqs_batches import max_receives, receive_count
from shared.tracing import lambda_tracer

# Ready by the first request to Segment / FME: built while the cold start goes on.
prepare_tls_context()
logger = Logger()
tracer = lambda_tracer()
metrics = lambda_metrics()
INVALID_BODY = "invalid_body"
# Lives as long as the container: remembers last treatments already written and synced.
last_treatments = LastTreatmentRecorder()


@completed_context
@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    records = event.get("Records", [])
    step = LastTreatmentSync(last_treatments, remaining_time_ms(context))
    letters: list[DeadLetter] = []
    rows: dict[int, int] = {}  # last treatments per message, for a dead letter's count
    for index, record in enumerate(records):
        body = record.get("body") or ""
        try:
            impressions = decode_body(body)
        except ForwardedBodyError as exc:
            logger.error(
                "not a last-treatments message", extra={"messageId": record["messageId"], "reason": str(exc)}
            )
            metrics.add_metric(name="LastTreatmentMessagesInvalid", unit=MetricUnit.Count, value=1)
            letters.append(DeadLetter(index, record["messageId"], body, (INVALID_BODY,), str(exc), 0))
            continue
        rows[index] = len(impressions)
        step.observe(index, impressions)
    failed: dict[str, str] = {}
    last_receive = max_receives()
    for index, reason in step.finish().items():
        record = records[index]
        receives = receive_count(record)
        if last_receive is not None and receives >= last_receive:
            letters.append(
                retries_exhausted(index, record["messageId"], record["body"], receives, reason, rows[index])
            )
        else:
            failed[record["messageId"]] = reason
    step.publish(metrics)
    if letters:
        undelivered = send_dead_letters(aws.env("LAST_TREATMENTS_DEAD_LETTER_QUEUE_URL"), letters)
        for index, reason in undelivered.items():
            failed[records[index]["messageId"]] = reason
        dead_lettered = len(letters) - len(undelivered)
        metrics.add_metric(
            name="LastTreatmentMessagesDeadLettered", unit=MetricUnit.Count, value=dead_lettered
        )
        log_dead_letters(logger, [letter for letter in letters if letter.record not in undelivered])
    if failed:
        logger.warning("messages to retry", extra={"retry": failed})
    return partial_batch_response(event, failed)
