"""A DynamoDB Streams event source mapping, as Lambda runs it, for the tables template.yaml attaches.

For each ``DynamoDB`` event of a function: records are read from the table's stream in order
(``StartingPosition``), records that match none of the ``FilterCriteria`` patterns are skipped (Lambda
discards them), and batches of up to ``BatchSize`` are handed to the function. Then, as Lambda does:
- a normal return → the checkpoint moves past the batch; with ``ReportBatchItemFailures`` it moves
  only up to the lowest ``itemIdentifier`` (a sequence number) reported failed, and processing resumes
  from that record;
- an exception → the same batch is retried (halved first with ``BisectBatchOnFunctionError``);
- after ``MaximumRetryAttempts`` retries the batch is given up: its description goes to the
  ``DestinationConfig.OnFailure`` queue, as Lambda sends it, and the checkpoint moves past it.
Records keep their order; a failing batch holds back the records behind it, as on a real shard.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moto.events.models import EventPattern
from rich.markup import escape

from fme_bridge.local.poller import Poller
from fme_bridge.local.runtime import LocalFunction
from fme_bridge.template import Stack, function_events

_RETRY_BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0)


@dataclass
class StreamMapping:
    function: LocalFunction
    table_name: str
    batch_size: int = 100
    batching_window_s: float = 0.0
    starting_position: str = "LATEST"
    patterns: list[Any] = field(default_factory=list)  # moto's EventBridge-style matcher
    report_batch_item_failures: bool = False
    maximum_retry_attempts: int = -1  # -1: until the record expires, as in Lambda
    bisect_on_error: bool = False
    on_failure_queue_url: str | None = None

    def accepts(self, record: dict[str, Any]) -> bool:
        return not self.patterns or any(p.matches_event(record) for p in self.patterns)


def mappings_from_template(
    stack: Stack, make_function: Callable[[str], LocalFunction]
) -> list[StreamMapping]:
    mappings = []
    arn_to_url = {arn: stack.queues[logical] for logical, arn in stack.queue_arns.items()}
    for event in function_events("DynamoDB"):
        props = event.properties
        stream = props["Stream"]
        logical = stream["Fn::GetAtt"][0] if isinstance(stream, dict) and "Fn::GetAtt" in stream else None
        if logical is None or logical not in stack.tables:
            raise ValueError(
                f"{event.function}.{event.name}: stream {stream!r} is not a table of the template"
            )
        filters = (props.get("FilterCriteria") or {}).get("Filters") or []
        destination = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        on_failure_url = None
        if destination is not None:
            on_failure_url = arn_to_url.get(str(stack.resolve(destination)))
        mappings.append(
            StreamMapping(
                function=make_function(event.function),
                table_name=stack.tables[logical],
                batch_size=int(stack.resolve(props.get("BatchSize", 100))),
                batching_window_s=float(stack.resolve(props.get("MaximumBatchingWindowInSeconds", 0))),
                starting_position=str(stack.resolve(props.get("StartingPosition", "LATEST"))),
                patterns=[EventPattern.load(str(stack.resolve(f["Pattern"]))) for f in filters],
                report_batch_item_failures="ReportBatchItemFailures"
                in (props.get("FunctionResponseTypes") or []),
                maximum_retry_attempts=int(stack.resolve(props.get("MaximumRetryAttempts", -1))),
                bisect_on_error=bool(stack.resolve(props.get("BisectBatchOnFunctionError", False))),
                on_failure_queue_url=on_failure_url,
            )
        )
    return mappings


def to_event_record(record: dict[str, Any], stream_arn: str) -> dict[str, Any]:
    """A GetRecords record as Lambda delivers it: epoch seconds, and the stream's ARN added."""
    out = json.loads(json.dumps(record, default=str))
    created = record.get("dynamodb", {}).get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        out["dynamodb"]["ApproximateCreationDateTime"] = int(created.timestamp())
    out["eventSourceARN"] = stream_arn
    return out


def first_failed_index(response: Any, records: list[dict[str, Any]]) -> int | None:
    """Index of the first record to retry after a normal return, or None when all succeeded."""
    if not isinstance(response, dict) or not response.get("batchItemFailures"):
        return None
    positions = {r["dynamodb"]["SequenceNumber"]: i for i, r in enumerate(records)}
    indexes = []
    for failure in response["batchItemFailures"]:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if identifier not in positions:
            return 0  # an unknown or empty identifier fails the whole batch
        indexes.append(positions[identifier])
    return min(indexes)


class StreamPoller(Poller):
    """Reads one table's stream (a single shard locally) and invokes one function, until :meth:`stop`."""

    idle_seconds = 0.2

    def __init__(
        self,
        mapping: StreamMapping,
        dynamodb: Any,
        streams: Any,
        sqs: Any,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(f"stream-{mapping.function.logical_id}", log)
        self.mapping = mapping
        self.streams = streams
        self.sqs = sqs
        self.stream_arn = dynamodb.describe_table(TableName=mapping.table_name)["Table"]["LatestStreamArn"]
        self._shard_id = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"][
            "Shards"
        ][0]["ShardId"]
        # Taken now, so that LATEST means "written after the stack started", not "after this thread ran".
        self._iterator = self._new_iterator(mapping.starting_position)
        self._pending: list[dict[str, Any]] = []  # read from the stream, not yet checkpointed
        self._attempts = 0
        self._batch_limit = mapping.batch_size
        self._window_opened: float | None = None  # when the oldest pending record was read

    def _new_iterator(self, kind: str, sequence_number: str | None = None) -> str:
        kwargs: dict[str, Any] = {
            "StreamArn": self.stream_arn,
            "ShardId": self._shard_id,
            "ShardIteratorType": kind,
        }
        if sequence_number is not None:
            kwargs["SequenceNumber"] = sequence_number
        return str(self.streams.get_shard_iterator(**kwargs)["ShardIterator"])

    def poll_once(self) -> bool:
        """Read and process what the stream holds; False when there was nothing to do."""
        if len(self._pending) < self.mapping.batch_size:
            result = self.streams.get_records(ShardIterator=self._iterator, Limit=1000)
            self._iterator = result["NextShardIterator"]
            self._pending.extend(to_event_record(r, self.stream_arn) for r in result["Records"])
        if not self._pending:
            return False
        self._pending = [r for r in self._pending if self.mapping.accepts(r)]
        if not self._pending:
            return True
        # Like Lambda, wait for a full batch or the end of the batching window (retries do not wait).
        now = time.monotonic()
        if self._window_opened is None:
            self._window_opened = now
        if (
            self._attempts == 0
            and len(self._pending) < self.mapping.batch_size
            and now - self._window_opened < self.mapping.batching_window_s
        ):
            return False
        self._window_opened = None
        batch = self._pending[: self._batch_limit]
        done = self._invoke(batch)
        if done == len(batch):
            self._pending = self._pending[done:]
            self._attempts = 0
            self._batch_limit = self.mapping.batch_size
            return True
        # Partial progress is checkpointed; the rest is retried.
        self._pending = self._pending[done:]
        self._attempts += 1
        limit = self.mapping.maximum_retry_attempts
        if limit >= 0 and self._attempts > limit:
            failed = self._pending[: len(batch) - done]
            self._send_to_on_failure(failed)
            self._pending = self._pending[len(failed) :]
            self._attempts = 0
            self._batch_limit = self.mapping.batch_size
            return True
        self._stopping.wait(_RETRY_BACKOFF_SECONDS[min(self._attempts, len(_RETRY_BACKOFF_SECONDS)) - 1])
        return True

    def _invoke(self, batch: list[dict[str, Any]]) -> int:
        """Invoke with ``batch``; the number of leading records that are done."""
        self.invocations += 1
        name = self.mapping.function.logical_id
        try:
            response = self.mapping.function.invoke({"Records": batch})
        except Exception:
            self.log(
                f"[red]{name} raised on {len(batch)} stream record(s); retrying[/red]\n"
                f"{escape(traceback.format_exc())}"
            )
            if self.mapping.bisect_on_error and len(batch) > 1:
                self._batch_limit = max(1, len(batch) // 2)
            return 0
        if not self.mapping.report_batch_item_failures:
            return len(batch)
        first_failed = first_failed_index(response, batch)
        if first_failed is None:
            self.log(f"{name}: {len(batch)} stream record(s), none to retry")
            return len(batch)
        self.log(f"{name}: {len(batch)} stream record(s), retrying from record {first_failed + 1}")
        return first_failed

    def _send_to_on_failure(self, records: list[dict[str, Any]]) -> None:
        name = self.mapping.function.logical_id
        self.log(
            f"[red]{name}: gave up on {len(records)} stream record(s) after "
            f"{self.mapping.maximum_retry_attempts} retries[/red]"
        )
        if self.mapping.on_failure_queue_url is None or not records:
            return
        first, last = records[0]["dynamodb"], records[-1]["dynamodb"]
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        invocation_record = {
            "requestContext": {
                "requestId": first["SequenceNumber"],
                "functionArn": self.mapping.function.arn,
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": self._attempts,
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "version": "1.0",
            "timestamp": now,
            "DDBStreamBatchInfo": {
                "shardId": self._shard_id,
                "startSequenceNumber": first["SequenceNumber"],
                "endSequenceNumber": last["SequenceNumber"],
                "approximateArrivalOfFirstRecord": _iso(first.get("ApproximateCreationDateTime")),
                "approximateArrivalOfLastRecord": _iso(last.get("ApproximateCreationDateTime")),
                "batchSize": len(records),
                "streamArn": self.stream_arn,
            },
        }
        self.sqs.send_message(
            QueueUrl=self.mapping.on_failure_queue_url, MessageBody=json.dumps(invocation_record)
        )


def _iso(epoch_seconds: Any) -> str | None:
    if not isinstance(epoch_seconds, int | float):
        return None
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat().replace("+00:00", "Z")
