"""The partial batch response of the SQS consumers: exactly the messages they could not finish.

The impressions and last-treatments functions work on a whole batch at once and know, at the end,
which SQS messages to give back (message id → reason). Powertools' batch processor turns that into
``batchItemFailures``, with its logging and its guard against an empty or failed batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

# An all-failed batch is reported like any other (every message listed), not raised as an error.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def partial_batch_response(
    event: dict[str, Any],
    context: Any,
    failed: Mapping[str, str],
    error: Callable[[str], Exception],
) -> PartialItemFailureResponse:
    """``batchItemFailures`` listing the records whose message id is in ``failed``."""

    def record_handler(record: SQSRecord) -> None:
        reason = failed.get(record.message_id)
        if reason is not None:
            raise error(reason)

    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
