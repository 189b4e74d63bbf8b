"""Delivery function: DynamoDB Streams of the events and identities tables → FME (docs/delivery.md).

Thin handler: the batch goes to :class:`shared.delivery.service.Delivery` in one call; records it
could not deliver yet come back as batch item failures (``ReportBatchItemFailures``), so the
stream retries from the first of them and the delivery log keeps the rest from being sent twice.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

# Powertools' batch utility is imported before the bridge's modules load pydantic: with pydantic
# loaded, its types import every event model of Powertools' parser, tens of milliseconds of each
# cold start (tests/unit/test_import_weight.py).
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared import aws, http_session
from shared.delivery.delivery_log import DeliveryLog
from shared.delivery.failure_queue import FailureQueue
from shared.delivery.service import Delivery
from shared.http_retry import Deadline, prepare_tls_context
from shared.lambda_context import completed_context, remaining_time_ms
from shared.metrics import lambda_metrics
from shared.tracing import lambda_tracer

# Ready by the first request to Segment / FME: built while the cold start goes on.
prepare_tls_context()
logger = Logger()
metrics = lambda_metrics()
tracer = lambda_tracer()
# Records still failing are reported, never raised: the function itself does not fail for them.
processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)


class NotYetDelivered(Exception):
    """FME did not take this record in this invocation; the stream retries it."""


@functools.cache
def delivery() -> Delivery:
    return Delivery(
        events_table=aws.env("EVENTS_TABLE"),
        identities_table=aws.env("IDENTITIES_TABLE"),
        log=DeliveryLog(aws.dynamodb_table(aws.env("DELIVERY_LOG_TABLE"))),
        failures=FailureQueue(aws.client("sqs"), aws.env("DELIVERY_FAILURE_QUEUE_URL")),
        http_timeout=float(os.environ.get("FME_TIMEOUT_SECONDS", "10")),
    )


def hold_before_retry(wait_s: float, deadline: Deadline) -> None:
    """FME asked for a wait that no attempt of this invocation followed: longer than it has left
    (a rate limit's reset of minutes), or answered to its last attempt.

    Lambda retries a stream batch at once, so handing the records back now would spend the
    ``MaximumRetryAttempts`` in seconds and send the batch to the failure queue: the invocation
    waits out as much of the wait as its time allows first (less the deadline's margin).
    """
    seconds = min(wait_s, deadline.seconds_left())
    if seconds > 0:
        logger.info(
            "waiting before the stream retries: FME asked to", extra={"wait_s": wait_s, "waiting_s": seconds}
        )
        _sleep(seconds)


_sleep = time.sleep
# What the stream's retries span when each waits out its invocation (template.yaml: the event
# sources' MaximumRetryAttempts 10 times the function's Timeout 60). A longer wait ends in the failure
# queue whatever is held, so it is not held: the shard's other records move on sooner.
STREAM_RETRY_SECONDS = 10 * 60


@completed_context
@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records") or []
    if not records:  # not what a stream sends, but a hand invocation may (Powertools refuses it)
        return {"batchItemFailures": []}
    deadline = Deadline(remaining_time_ms(context))
    report = http_session.run(delivery().deliver(records, deadline))
    for name, count in sorted(report.counts.items()):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
    # A wait longer than the stream's retries can span ends in the failure queue whatever is held:
    # only the others (another connection's shorter rate limit) are waited for.
    waits = [seconds for seconds in report.waits_s if seconds <= STREAM_RETRY_SECONDS]
    if report.retry and waits:
        hold_before_retry(max(waits), deadline)

    def record_handler(record: DynamoDBRecord) -> None:
        if record.dynamodb is not None and record.dynamodb.sequence_number in report.retry:
            raise NotYetDelivered(record.dynamodb.sequence_number)

    return dict(process_partial_response(event, record_handler, processor, context))
