"""Last-treatments queue → ProfilesTable last treatments and computed-trait identifies (SPEC section 4).

The impressions function forwards the newest impression per identity and flag of each of its batches
(:mod:`shared.profiles.forwarding`); this function records them (one conditional write per identity
and flag, skipped when the container already knows a newer one) and, for every outbound config with
``computedTraits`` enabled, sends an ``identify`` when a user's treatment changed. Messages whose
writes or identifies failed transiently are reported as batch item failures and retried by SQS; a
message that is not in the forwarding format is logged, counted and left to reach the DLQ.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.lambda_context import remaining_time_ms
from shared.profiles.forwarding import ForwardedBodyError, decode_body
from shared.profiles.impression_profiles import LastTreatmentSync
from shared.profiles.last_treatment import LastTreatmentRecorder
from shared.tracing import lambda_tracer

logger = Logger()
tracer = lambda_tracer()
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "FmeSegmentBridge"))
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
# Lives as long as the container: remembers last treatments already written and synced.
last_treatments = LastTreatmentRecorder()


class LastTreatmentsNotRecorded(Exception):
    """The message's last treatments are not (all) recorded and synced yet; SQS retries it."""


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    records = event.get("Records", [])
    step = LastTreatmentSync(last_treatments, remaining_time_ms(context))
    failed: dict[str, str] = {}
    for index, record in enumerate(records):
        try:
            step.observe(index, decode_body(record.get("body") or ""))
        except ForwardedBodyError as exc:
            logger.error(
                "not a last-treatments message", extra={"messageId": record["messageId"], "reason": str(exc)}
            )
            metrics.add_metric(name="LastTreatmentMessagesInvalid", unit=MetricUnit.Count, value=1)
            failed[record["messageId"]] = str(exc)
    for index, reason in step.finish().items():
        failed.setdefault(records[index]["messageId"], reason)
    step.publish(metrics)
    if failed:
        logger.warning("messages to retry", extra={"retry": failed})

    def record_handler(record: SQSRecord) -> None:
        reason = failed.get(record.message_id)
        if reason is not None:
            raise LastTreatmentsNotRecorded(reason)

    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
