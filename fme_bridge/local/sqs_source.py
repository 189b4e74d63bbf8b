"""An SQS event source mapping, as Lambda runs it, for the queues template.yaml attaches to functions.

Batches of up to ``BatchSize`` messages, gathered for at most ``MaximumBatchingWindowInSeconds``,
are handed to the function as a real-shaped SQS event, within Lambda's 6 MB invocation payload
(a message that would pass it waits for the next batch). Afterwards, as Lambda does:
- the function returned normally → every message is deleted, except, with
  ``ReportBatchItemFailures``, those named in ``batchItemFailures``;
- the function raised → nothing is deleted.
Messages not deleted become visible again after the queue's visibility timeout, and SQS itself (the
queue's redrive policy, implemented by moto) moves them to the dead-letter queue after
``maxReceiveCount`` receives.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from fme_bridge.local.poller import Poller
from fme_bridge.local.runtime import LocalFunction
from fme_bridge.template import Stack, function_events

# How long one receive call waits for messages; bounds how quickly the poller notices a stop.
_POLL_SECONDS = 1
# Lambda's limit on a synchronous invocation's payload, which closes an SQS batch early.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
_EVENT_ENVELOPE_BYTES = len('{"Records": []}')


@dataclass
class SqsMapping:
    function: LocalFunction
    queue_url: str
    queue_arn: str
    batch_size: int = 10
    batching_window_s: float = 0.0
    report_batch_item_failures: bool = False


def mappings_from_template(stack: Stack, make_function: Callable[[str], LocalFunction]) -> list[SqsMapping]:
    mappings = []
    for event in function_events("SQS"):
        queue = event.properties["Queue"]
        logical = queue["Fn::GetAtt"][0] if isinstance(queue, dict) and "Fn::GetAtt" in queue else None
        if logical is None or logical not in stack.queues:
            raise ValueError(f"{event.function}.{event.name}: queue {queue!r} is not a queue of the template")
        mappings.append(
            SqsMapping(
                function=make_function(event.function),
                queue_url=stack.queues[logical],
                queue_arn=stack.queue_arns[logical],
                batch_size=int(stack.resolve(event.properties.get("BatchSize", 10))),
                batching_window_s=float(
                    stack.resolve(event.properties.get("MaximumBatchingWindowInSeconds", 0))
                ),
                report_batch_item_failures="ReportBatchItemFailures"
                in (event.properties.get("FunctionResponseTypes") or []),
            )
        )
    return mappings


def to_event_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One record of a Lambda SQS event from a ReceiveMessage result."""
    attributes = {k: str(v) for k, v in (message.get("Attributes") or {}).items()}
    message_attributes = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        entry: dict[str, Any] = {
            "dataType": value["DataType"],
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": [base64.b64encode(v).decode() for v in value.get("BinaryListValues", [])],
        }
        if "StringValue" in value:
            entry["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            entry["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
        message_attributes[name] = entry
    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def body_record(
    body: str, queue_arn: str, region: str, message_id: str | None = None, receive_count: int = 1
) -> dict[str, Any]:
    """One record of a Lambda SQS event for a body that never went through a queue (tests, benchmarks):
    the message ReceiveMessage would have returned for it, made into a record like any other."""
    now = str(int(time.time() * 1000))
    message = {
        "MessageId": message_id or str(uuid.uuid4()),
        "ReceiptHandle": f"AQEB{uuid.uuid4().hex}",
        "Body": body,
        "Attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": now,
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": now,
        },
        "MD5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
    }
    return to_event_record(message, queue_arn, region)


def failed_message_ids(response: Any, records: list[dict[str, Any]]) -> set[str]:
    """The messages Lambda keeps after a normal return with ``ReportBatchItemFailures``.

    An empty or absent list means all succeeded; an entry naming no message of the batch makes
    Lambda treat the whole batch as failed.
    """
    if not isinstance(response, dict):
        return set()
    failures = response.get("batchItemFailures") or []
    ids = {r["messageId"] for r in records}
    failed = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not identifier or identifier not in ids:
            return ids
        failed.add(identifier)
    return failed


def _record_bytes(record: dict[str, Any]) -> int:
    return len(json.dumps(record, ensure_ascii=False).encode())


class SqsPoller(Poller):
    """Polls one queue and invokes one function, until :meth:`stop`."""

    idle_seconds = 0.0  # the receive call waited for messages already (_POLL_SECONDS)

    def __init__(self, mapping: SqsMapping, sqs: Any, log: Callable[[str], None] | None = None) -> None:
        super().__init__(f"sqs-{mapping.function.logical_id}", log)
        self.mapping = mapping
        self.sqs = sqs
        self.region = sqs.meta.region_name
        self._next_batch: list[dict[str, Any]] = []  # received, but past the last batch's payload

    def poll_once(self) -> bool:
        """One batch, delivered; False when the queue had none."""
        batch = self.collect_batch()
        if batch:
            self.deliver(batch)
        return bool(batch)

    def collect_batch(self) -> list[dict[str, Any]]:
        """Receive until the batch is full (``BatchSize`` or 6 MB of payload) or the batching window
        (from the first message) closes."""
        mapping = self.mapping
        records, self._next_batch = self._next_batch, []
        size = _EVENT_ENVELOPE_BYTES + sum(_record_bytes(r) + 2 for r in records)
        window_closes: float | None = time.monotonic() + mapping.batching_window_s if records else None
        while len(records) < mapping.batch_size and not self._next_batch and not self._stopping.is_set():
            if window_closes is not None and time.monotonic() >= window_closes:
                break
            wait = _POLL_SECONDS
            if window_closes is not None:
                wait = max(0, min(_POLL_SECONDS, int(window_closes - time.monotonic())))
            received = self.sqs.receive_message(
                QueueUrl=mapping.queue_url,
                MaxNumberOfMessages=min(10, mapping.batch_size - len(records)),
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not received and window_closes is None:
                return []
            for message in received:
                record = to_event_record(message, mapping.queue_arn, self.region)
                size += _record_bytes(record) + 2  # and its separator
                if self._next_batch or (records and size > MAX_PAYLOAD_BYTES):
                    self._next_batch.append(record)
                else:
                    records.append(record)
            if window_closes is None:
                window_closes = time.monotonic() + mapping.batching_window_s
            if not received and wait == 0:
                time.sleep(min(0.2, max(0.0, window_closes - time.monotonic())))
        return records

    def deliver(self, records: list[dict[str, Any]]) -> set[str]:
        """Invoke the function with ``records``; delete what succeeded. Returns the failed message ids."""
        mapping = self.mapping
        self.invocations += 1
        try:
            response = mapping.function.invoke({"Records": records})
        except Exception:
            self.log(
                f"[red]{mapping.function.logical_id} raised; {len(records)} message(s) will be retried "
                f"after the visibility timeout[/red]\n{escape(traceback.format_exc())}"
            )
            return {r["messageId"] for r in records}
        failed = failed_message_ids(response, records) if mapping.report_batch_item_failures else set()
        done = [r for r in records if r["messageId"] not in failed]
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            self.sqs.delete_message_batch(
                QueueUrl=mapping.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)],
            )
        outcome = f"{len(failed)} failed, retried after the visibility timeout" if failed else "none to retry"
        self.log(f"{mapping.function.logical_id}: {len(records)} message(s), {outcome}")
        return failed
