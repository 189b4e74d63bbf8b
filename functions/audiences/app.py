"""DynamoDB Streams (events, identities, last treatments) -> audience entries and exits -> Segment.

Every stored change that an audience refers to (a ``performed`` event type, an ``attribute`` name, a
``treatment`` flag whose treatment changed) re-evaluates that profile's audiences once per batch.
A profile whose evaluation or sync failed fails its records (partial batch response), so the stream
retries them; the rest of the batch is checkpointed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

# Powertools' batch utility is imported before the bridge's modules load pydantic: with pydantic
# loaded, its types import every event model of Powertools' parser, tens of milliseconds of each
# cold start (tests/unit/test_import_weight.py).
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.dynamodb import table_of, to_python
from shared.http_retry import Outcome, prepare_tls_context
from shared.lambda_context import completed_context, remaining_time_ms
from shared.metrics import lambda_metrics
from shared.profiles.audience_sync import (
    AudienceEvaluator,
    StoredChange,
    SyncReport,
    load_audiences,
    profiles_to_evaluate,
)
from shared.profiles.identify_sender import IdentifySender
from shared.profiles_table import AUDIENCE_PREFIX, TREATMENT_PREFIX
from shared.tracing import lambda_tracer

# Ready by the first request to Segment / FME: built while the cold start goes on.
prepare_tls_context()
logger = Logger()
metrics = lambda_metrics()
tracer = lambda_tracer()
# A batch whose every profile failed is reported like any partial failure, not raised.
processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)

# The clock, replaceable by tests (withinDays windows) and the local stack.
now_ms: Callable[[], int] = lambda: int(time.time() * 1000)  # noqa: E731


class ProfileNotSynced(Exception):
    """This record's profile could not be evaluated or synced; the stream retries it."""


def _table_kind(event_source_arn: str | None, keys: dict[str, Any]) -> str:
    """Which table a record comes from: the one its stream ARN names, else the one its keys fit (an
    identity has no sort key; a last treatment's or membership's has its prefix)."""
    table = table_of(event_source_arn)
    kinds = {
        os.environ.get("EVENTS_TABLE"): "events",
        os.environ.get("IDENTITIES_TABLE"): "identities",
        os.environ.get("PROFILES_TABLE"): "profiles",
    }
    kind = kinds.get(table) if table else None
    if kind is not None:
        return kind
    sk = keys.get("sk")
    if sk is None:
        return "identities"
    return "profiles" if str(sk).startswith((TREATMENT_PREFIX, AUDIENCE_PREFIX)) else "events"


def stored_change(record: DynamoDBRecord) -> StoredChange | None:
    stream = record.dynamodb
    if stream is None:
        return None
    keys = stream.keys or {}
    pk = keys.get("pk")
    if not isinstance(pk, str):
        return None
    return StoredChange(
        table=_table_kind(record.event_source_arn, keys),
        pk=pk,
        old=to_python(stream.old_image or {}),
        new=to_python(stream.new_image or {}),
    )


def publish(report: SyncReport, log: Logger, sink: Metrics) -> None:
    for name, value in (
        ("AudienceProfilesEvaluated", report.evaluated),
        ("AudienceEntries", report.entered),
        ("AudienceExits", report.exited),
        ("AudienceIdentifiesSent", report.sent),
        ("AudienceMembershipsStored", report.stored),
        ("AudienceMembershipConflicts", report.conflicts),
        ("AudienceProfilesFailed", len(report.failed)),
        ("AudienceSyncNotSent", len(report.not_sent)),
    ):
        sink.add_metric(name=name, unit=MetricUnit.Count, value=value)
    for problem in report.not_sent:
        log.error("audience membership not sent", extra={"problem": problem})


def evaluator(context: LambdaContext) -> AudienceEvaluator:
    # An outbound config without its write key is a config error, as one missing altogether: a retry
    # would hold up the stream (docs/profiles.md).
    sender = IdentifySender(remaining_time_ms(context), missing_write_key=Outcome.PERMANENT)
    return AudienceEvaluator(load_audiences(), sender)


@completed_context
@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if not event.get("Records"):  # not what a stream sends, but a hand invocation may (Powertools refuses it)
        return {"batchItemFailures": []}
    audiences = evaluator(context)
    # One stream batch comes from one shard: sequence numbers identify its records.
    changes: dict[str | None, StoredChange] = {}
    for raw in event.get("Records", []):
        record = DynamoDBRecord(raw)
        change = stored_change(record)
        if change is not None and record.dynamodb is not None:
            changes[record.dynamodb.sequence_number] = change
    pks = profiles_to_evaluate(changes.values(), audiences.audiences)
    report = audiences.sync_profiles(pks, now_ms()) if pks else SyncReport()
    publish(report, logger, metrics)
    for name, problem in audiences.audiences.invalid.items():
        logger.error(
            "audience definition is invalid and is skipped", extra={"audience": name, "problem": problem}
        )

    def record_handler(record: DynamoDBRecord) -> None:
        change = changes.get(record.dynamodb.sequence_number if record.dynamodb else None)
        if change is not None and change.pk in report.failed:
            raise ProfileNotSynced(change.pk)

    return dict(
        process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    )
