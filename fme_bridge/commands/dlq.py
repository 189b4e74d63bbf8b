"""``fme-bridge dlq show|redrive``: the impressions, last-treatments or audiences dead-letter queue.

Two kinds of messages land in the impressions one: those the impressions function sends itself on a
permanent error (the reason in a message attribute), and those SQS moves after ``maxReceiveCount``
failed receives (transient failures that never cleared; no reason attribute, a high receive count).
The last-treatments dead-letter queue (``--queue last-treatments``) has both kinds too, the
last-treatments function's own with ``errorCode`` ``invalid_body`` or ``retries_exhausted``; its
redrive sends them back to the last-treatments queue. The audiences one (``--queue audiences``)
holds Lambda's descriptions of the stream batches the audiences function gave up on; its redrive
evaluates every audience again for every stored identity
(:func:`fme_bridge.commands.profiles.reevaluate_every_audience`), then removes them.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from fme_bridge.commands.common import out, styled, target
from fme_bridge.commands.profiles import conclude, reevaluate_every_audience
from fme_bridge.commands.queue_messages import delete, make_visible, peeked, queue_depth, receive_all
from fme_bridge.target import Target
from shared.sqs_batches import batch_calls


class Queue(StrEnum):
    impressions = "impressions"
    last_treatments = "last-treatments"
    audiences = "audiences"


# (dead-letter queue, the queue it is redriven to), by logical id in template.yaml
QUEUES = {
    Queue.impressions: ("ImpressionsDeadLetterQueue", "ImpressionsQueue"),
    Queue.last_treatments: ("LastTreatmentsDeadLetterQueue", "LastTreatmentsQueue"),
    Queue.audiences: ("AudiencesDeadLetterQueue", None),  # stream batches: evaluated again instead
}
QueueOption = Annotated[Queue, typer.Option("--queue", help="Which dead-letter queue.")]


# errorCodes of messages whose body, not a config or a service, was the problem: a redrive alone
# brings them back (unless a new version of the function reads what the old one could not).
BODY_ERRORS = frozenset({"invalid_json", "invalid_body", "invalid_impression", "no_environment"})


def register(app: typer.Typer) -> None:
    dlq_app = typer.Typer(
        help="The impressions, last-treatments and audiences dead-letter queues.", no_args_is_help=True
    )
    dlq_app.command("show")(show)
    dlq_app.command("redrive")(redrive)
    app.add_typer(dlq_app, name="dlq")


# What the impressions and last-treatments functions record with a dead letter
# (shared.outbound.dead_letters).
FAILURE_ATTRIBUTES = ("errorCode", "reason", "sourceMessageId", "failedImpressions")


def _attribute(message: dict[str, Any], name: str) -> str | None:
    value = (message.get("MessageAttributes") or {}).get(name) or {}
    text = value.get("StringValue")
    return None if text in (None, "-") else str(text)


def _receive_count(message: dict[str, Any]) -> int | None:
    """SQS's ApproximateReceiveCount (a string in its answer) as a number."""
    count = message.get("Attributes", {}).get("ApproximateReceiveCount")
    return None if count is None else int(count)


def failure_reason(message: dict[str, Any]) -> str:
    """The reason recorded with a message, or what SQS's redrive implies."""
    reason = _attribute(message, "reason") or _attribute(message, "errorCode")
    if reason:
        return reason
    stream_batch = _stream_batch(message)
    if stream_batch is not None:
        context, info = stream_batch
        return (
            f"{context.get('condition', 'failed')}: a stream batch of {info.get('batchSize', '?')} record(s) "
            f"the audiences function gave up on (shard {info.get('shardId')}, sequence "
            f"{info.get('startSequenceNumber')} to {info.get('endSequenceNumber')}, first record "
            f"{info.get('approximateArrivalOfFirstRecord')})"
        )
    # No count: the dead-letter queue's own receive count grows with every look at it, this one too.
    return "retries exhausted (moved by SQS after maxReceiveCount receives; no reason recorded)"


def _stream_batch(message: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Lambda's on-failure record of a stream batch: its ``requestContext`` and ``DDBStreamBatchInfo``."""
    try:
        body = json.loads(message["Body"])
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("DDBStreamBatchInfo"), dict):
        return None
    context = body.get("requestContext")
    return (context if isinstance(context, dict) else {}), body["DDBStreamBatchInfo"]


def show(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many messages.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the messages as a JSON array.")] = False,
    queue: QueueOption = Queue.impressions,
) -> None:
    """Show the messages in the dead-letter queue with their failure reasons (they stay there)."""
    tgt = target(ctx)
    sqs = tgt.client("sqs")
    queue_url = tgt.queue_url(QUEUES[queue][0])
    with peeked(sqs, queue_url, limit) as messages:
        if as_json:
            out.print_json(
                json.dumps(
                    [
                        {
                            "messageId": message["MessageId"],
                            "errorCode": _attribute(message, "errorCode"),
                            "reason": failure_reason(message),
                            "sourceMessageId": _attribute(message, "sourceMessageId"),
                            "receiveCount": _receive_count(message),
                            "body": message["Body"],
                        }
                        for message in messages
                    ]
                )
            )
            return
        if not messages:
            out.print(f"the dead-letter queue is empty ({queue_url})", soft_wrap=True)
            return
        table = Table(
            "messageId", "errorCode", "reason", "body", title=f"dead-letter queue: {len(messages)} message(s)"
        )
        for message in messages:
            body = message["Body"]
            table.add_row(
                message["MessageId"],
                _attribute(message, "errorCode") or "",
                failure_reason(message),
                body if len(body) < 120 else body[:117] + "…",
            )
        out.print(table)


def redrive(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(min=1, help="Move at most this many messages.")] = None,
    queue: QueueOption = Queue.impressions,
) -> None:
    """Move the dead-letter queue's messages back to the queue they came from (after fixing the cause).

    For the audiences queue, every audience is evaluated again for every stored identity instead
    (entries and exits synced and stored as the functions do it), and the dead letters that were
    there before it began are removed (--limit does not apply).
    """
    tgt = target(ctx)
    sqs = tgt.client("sqs")
    dead_letters, source = QUEUES[queue]
    dlq_url = tgt.queue_url(dead_letters)
    source_url = tgt.queue_url(source) if source is not None else None
    total = queue_depth(sqs, dlq_url)
    if total == 0:
        out.print(f"the dead-letter queue is empty ({dlq_url})", soft_wrap=True)
        return
    if source_url is None:
        _settle_audiences(tgt, sqs, dlq_url)
        return
    wanted = min(total, limit) if limit else total
    moved = 0
    seen: set[str] = set()
    for_their_body: Counter[str] = Counter()
    with Progress(TextColumn("redriving"), BarColumn(), MofNCompleteColumn(), console=out) as progress:
        task = progress.add_task("redrive", total=wanted)
        while moved < wanted:
            batch = [
                m
                for m in receive_all(sqs, dlq_url, min(10, wanted - moved), visibility=60)
                if m["MessageId"] not in seen
            ]
            if not batch:
                break
            seen.update(m["MessageId"] for m in batch)
            for_their_body.update(  # a message's codes are comma-separated (one per kind of failure)
                code
                for m in batch
                for code in (_attribute(m, "errorCode") or "").split(",")
                if code in BODY_ERRORS
            )
            # Ten large dead letters exceed what one SendMessageBatch carries: packed by size.
            for call in batch_calls(batch, _resent_bytes):
                done, failure = _move(sqs, dlq_url, source_url, call)
                moved += len(done)
                progress.advance(task, len(done))
                if failure:
                    out.print(
                        styled("[red]{} message(s) not moved: {}[/red]", len(call) - len(done), failure)
                    )
                    raise typer.Exit(1)
    out.print(styled("[green]moved[/green] {} message(s) back to {}", moved, source_url))
    if for_their_body:
        codes = ", ".join(f"{count} {code}" for code, count in sorted(for_their_body.items()))
        out.print(
            styled(
                "[yellow]of them, {}: dead-lettered for their body, they come back to the dead-letter "
                "queue unless the function now reads it (replay --environment gives impressions without "
                "one an environment)[/yellow]",
                codes,
            ),
            soft_wrap=True,
        )


def _settle_audiences(tgt: Target, sqs: Any, dlq_url: str) -> None:
    started_ms = int(time.time() * 1000)
    with out.status("evaluating every audience for every stored identity…"):
        report = reevaluate_every_audience(tgt)
    out.print(
        f"{report.evaluated} identities evaluated: {report.entered} entered, {report.exited} left; "
        f"identify calls sent to Segment: {report.sent}",
        soft_wrap=True,
    )
    conclude(report, "the dead letters stay: run the redrive again (what was done is not done twice)")
    # What failed before the evaluation began is settled by it; what came since waits for the next.
    settled: list[dict[str, Any]] = []
    waiting: list[dict[str, Any]] = []
    for message in receive_all(sqs, dlq_url, queue_depth(sqs, dlq_url) + 10, visibility=60):
        sent_ms = int(message.get("Attributes", {}).get("SentTimestamp", 0))
        (settled if sent_ms <= started_ms else waiting).append(message)
    delete(sqs, dlq_url, settled)
    make_visible(sqs, dlq_url, waiting)
    out.print(styled("[green]removed[/green] {} dead letter(s) from {}", len(settled), dlq_url))


def _move(
    sqs: Any, dlq_url: str, source_url: str, messages: list[dict[str, Any]]
) -> tuple[list[Any], str | None]:
    """Send the messages to their queue, then delete those sent from the dead-letter queue: a failure
    in between duplicates a message, never loses one. Returns those moved and the first failure."""
    result = sqs.send_message_batch(
        QueueUrl=source_url,
        Entries=[
            {
                "Id": str(i),
                "MessageBody": m["Body"],
                **({"MessageAttributes": _resendable(m)} if _resendable(m) else {}),
            }
            for i, m in enumerate(messages)
        ],
    )
    ok = {int(entry["Id"]) for entry in result.get("Successful", [])}
    done = [m for i, m in enumerate(messages) if i in ok]
    delete(sqs, dlq_url, done)
    if len(done) == len(messages):
        return done, None
    return done, str(result.get("Failed", [{}])[0].get("Code"))


def _resent_bytes(message: dict[str, Any]) -> int:
    """What a message counts towards SendMessageBatch's limit: its body and resent attributes."""
    size = len(message["Body"].encode())
    for name, value in _resendable(message).items():
        size += len(name.encode()) + len(value.get("DataType", "").encode())
        raw = value.get("StringValue") or value.get("BinaryValue") or ""
        size += len(raw if isinstance(raw, bytes) else raw.encode())
    return size


def _resendable(message: dict[str, Any]) -> dict[str, Any]:
    """Message attributes other than the failure's (a redriven message starts afresh)."""
    return {
        name: {k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")}
        for name, value in (message.get("MessageAttributes") or {}).items()
        if name not in FAILURE_ATTRIBUTES
    }
