"""SQS → Segment: FME impressions become Segment ``get_treatment`` track calls (docs/outbound.md).

The whole batch is delivered first (concurrent requests need every message at hand); the response
then lists as ``batchItemFailures`` exactly the messages whose impressions are still
undelivered. Permanent failures were dead-lettered with their reason and count as processed.
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
from shared.outbound.batch import BatchOutcome, process_batch
from shared.outbound.dead_letters import log_dead_letters
from shared.outbound.delivery import QueuedMessage
from shared.profiles.forwarding import LastTreatmentForwarder
from shared.sqs_batches import max_receives, receive_count
from shared.tracing import lambda_tracer

# Ready by the first request to Segment / FME: built while the cold start goes on.
prepare_tls_context()
logger = Logger()
tracer = lambda_tracer()
metrics = lambda_metrics()


def _record_metrics(outcome: BatchOutcome) -> None:
    report = outcome.report
    metrics.add_metric("ImpressionsReceived", MetricUnit.Count, report.impressions)
    metrics.add_metric("SegmentMessagesDelivered", MetricUnit.Count, report.delivered)
    metrics.add_metric("SegmentMessagesRetried", MetricUnit.Count, report.failed_transient)
    metrics.add_metric("SegmentRequests", MetricUnit.Count, report.requests)
    metrics.add_metric("SegmentRequestRetries", MetricUnit.Count, report.attempts - report.requests)
    metrics.add_metric("ImpressionsDeadLettered", MetricUnit.Count, outcome.dead_lettered_impressions)
    metrics.add_metric("SqsMessagesDeadLettered", MetricUnit.Count, outcome.dead_lettered)
    metrics.add_metric("SqsMessagesRetried", MetricUnit.Count, len(outcome.retry))


@completed_context
@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    messages = [
        QueuedMessage(r["messageId"], r.get("body") or "", receive_count(r)) for r in event.get("Records", [])
    ]
    # Last treatments are recorded by their own function (docs/profiles.md): only forwarded here,
    # unless the stack leaves them out (LastTreatments=Disabled: no queue URL).
    queue_url = aws.env("LAST_TREATMENTS_QUEUE_URL")
    profiles = LastTreatmentForwarder(queue_url) if queue_url else None
    outcome = process_batch(
        messages,
        remaining_time_ms(context),
        aws.env("DEAD_LETTER_QUEUE_URL"),
        observers=[profiles] if profiles else [],
        max_receives=max_receives(),
    )
    _record_metrics(outcome)
    if profiles:
        profiles.publish(metrics)
    log_dead_letters(logger, outcome.sent_letters)
    if outcome.retry:
        logger.warning("messages to retry", extra={"retry": outcome.retry})
    return partial_batch_response(event, outcome.retry)
