"""``fme-bridge delivery status|redrive``: delivery of stored events and identities into FME.

``status`` shows, per connection, what FME acknowledged and refused, how far behind delivery is and
the last error (from the delivery log), and how many messages wait in the failure queue.
``redrive`` sends the failure queue's messages again — after the cause is fixed (a revoked key, a
misconfigured connection, an FME outage longer than the stream's retries): refused items are
re-sent, events FME already acknowledged are skipped, and stream batches Lambda gave up on are read
again from the stream (while it still holds them: 24 hours). A message stays in the queue until
everything in it is delivered. What it delivers is counted in the same per-connection status the
function keeps (refused items move to delivered), so ``status`` shows it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer
from botocore.config import Config
from rich.table import Table
from rich.text import Text

from fme_bridge.commands.common import out, stored_parameter, styled, target
from fme_bridge.commands.queue_messages import make_visible, peeked, queue_depth, receive_all
from fme_bridge.target import Target
from shared import config
from shared.delivery.delivery_log import ConnectionStatus, DeliveryLog
from shared.delivery.failure_queue import FailureQueue
from shared.delivery.records import held_back, read_stream_batch
from shared.http_retry import Deadline

if TYPE_CHECKING:
    # Imported where used: the local stack loads this module before the delivery function's
    # environment is set, and the service's Powertools child logger takes its service name from it.
    from shared.delivery.service import ConnectionDelivery

FAILURE_QUEUE = "DeliveryFailureQueue"
LOG_TABLE = "DeliveryLogTable"
# Time one message's re-send may take (retries included).
_REDRIVE_SECONDS_PER_MESSAGE = 30


def register(app: typer.Typer) -> None:
    delivery_app = typer.Typer(
        help="Delivery of stored events and identities into FME.", no_args_is_help=True
    )
    delivery_app.command("status")(status)
    delivery_app.command("redrive")(redrive)
    app.add_typer(delivery_app, name="delivery")


def _ago(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    seconds = max(0, (now_ms - ms) // 1000)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def lag(status: ConnectionStatus, now_ms: int, given_up_until: int | None = None) -> str:
    """How far behind delivery is: since when records have been retried, else the last latency.

    ``given_up_until``: the latest record of the connection in the stream batches Lambda gave up
    on (in the failure queue). Records it was behind on that are among them are no longer retried:
    they wait for ``redrive``. Unless the stream is retrying newer records of the connection: it is
    still behind.
    """
    if status.retrying_since is not None:
        newest = status.retrying_newest if status.retrying_newest is not None else status.retrying_since
        if given_up_until is not None and newest <= given_up_until:
            return "given up, in the failure queue"
        return f"behind since {_ago(status.retrying_since, now_ms)}"
    if status.last_latency_ms is not None:
        return f"up to date ({status.last_latency_ms / 1000:.1f}s latency)"
    return "up to date"


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def _status_json(status: ConnectionStatus, now_ms: int, failures: FailureCounts) -> dict[str, Any]:
    """One connection in ``status --json``: camelCase keys, as in the delivery log and the other commands."""
    return {
        **{_camel(name): value for name, value in vars(status).items()},
        "lag": lag(status, now_ms, failures.given_up_until.get(status.connection_id)),
        "failureMessages": failures.per_connection.get(status.connection_id, 0),
    }


def _streams(tgt: Target) -> Any:
    # Regional endpoint: DynamoDB's account-based endpoints do not serve the Streams API.
    return tgt.session.client(
        "dynamodbstreams", endpoint_url=tgt.endpoint_url, config=Config(account_id_endpoint_mode="disabled")
    )


@dataclass
class FailureCounts:
    """Messages in the failure queue: the total, and per connection among those peeked at (a stream
    batch Lambda gave up on counts for each connection among its records, read again from the
    stream; ``(stream batch)`` once the stream no longer holds them), with the latest record of each
    connection in those batches."""

    total: int = 0
    per_connection: dict[str, int] = field(default_factory=dict)
    given_up_until: dict[str, int] = field(default_factory=dict)

    def add(self, connection_id: str) -> None:
        self.per_connection[connection_id] = self.per_connection.get(connection_id, 0) + 1

    def add_stream_batch(self, records: list[dict[str, Any]]) -> None:
        latest = _held_back_until(records)
        for connection_id, at in latest.items():
            self.add(connection_id)
            self.given_up_until[connection_id] = max(self.given_up_until.get(connection_id, at), at)
        if not latest:
            self.add("(stream batch)")


def _held_back_until(records: list[dict[str, Any]]) -> dict[str, int]:
    """The connections whose records a stream batch holds, each with its latest record's time."""
    latest: dict[str, int] = {}
    for record in records:
        held = held_back(record)
        if held is not None:
            latest[held[0]] = max(latest.get(held[0], held[1]), held[1])
    return latest


def _failure_counts(tgt: Target) -> FailureCounts:
    """What waits in the failure queue (:class:`FailureCounts`)."""
    sqs = tgt.client("sqs")
    url = tgt.queue_url(FAILURE_QUEUE)
    total = queue_depth(sqs, url)
    counts = FailureCounts(total)
    streams = None  # one client for every stream batch, made for the first
    with peeked(sqs, url, min(total, 200)) as messages:
        for message in messages:
            attributes = message.get("MessageAttributes") or {}
            connection = (attributes.get("connectionId") or {}).get("StringValue")
            if connection:
                counts.add(connection)
                continue
            try:
                info = json.loads(message["Body"])["DDBStreamBatchInfo"]
                streams = streams or _streams(tgt)
                records = read_stream_batch(streams, info)
            except Exception:  # not a stream batch, or the stream no longer holds it (24 h)
                records = []
            counts.add_stream_batch(records)
    return counts


def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Per connection: delivered, refused, lag, last error, and messages in the failure queue."""
    tgt = target(ctx)
    statuses = DeliveryLog(tgt.table(LOG_TABLE)).statuses()
    counts = _failure_counts(tgt)
    total, failures = counts.total, counts.per_connection
    now_ms = int(time.time() * 1000)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "connections": [_status_json(s, now_ms, counts) for s in statuses],
                    "failureQueueMessages": total,
                }
            )
        )
        return
    if not statuses and not total:
        out.print("nothing delivered yet, and the failure queue is empty")
        return
    table = Table(title="delivery into FME")
    table.add_column("connection", no_wrap=True)
    table.add_column("events sent / refused")
    table.add_column("identities sent / refused")
    table.add_column("skipped")
    table.add_column("last delivery")
    table.add_column("lag")
    table.add_column("failure queue")
    ordered = sorted(statuses, key=lambda s: s.connection_id)
    for s in ordered:
        table.add_row(
            s.connection_id,
            f"{s.events_delivered} / {s.events_refused}",
            f"{s.identities_delivered} / {s.identities_refused}",
            str(s.skipped),
            _ago(s.last_delivered_at, now_ms),
            lag(s, now_ms, counts.given_up_until.get(s.connection_id)),
            str(failures.get(s.connection_id, 0)),
        )
    out.print(table)
    for s in ordered:  # a line each, unwrapped: errors are too long for a cell
        if s.last_error:
            out.print(
                styled(
                    "{}: [red]last error[/red] ({}): {}",
                    s.connection_id,
                    _ago(s.last_error_at, now_ms),
                    s.last_error,
                ),
                soft_wrap=True,
            )
    others = {c: n for c, n in failures.items() if c not in {s.connection_id for s in statuses}}
    for connection, count in sorted(others.items()):
        out.print(f"failure queue: {count} message(s) of {connection}")
    if total:
        out.print(f"failure queue: {total} message(s) in all; fme-bridge delivery redrive re-sends them")
    else:
        out.print("failure queue: empty")


def _resolver(tgt: Target) -> Any:
    """Connection settings read through the CLI's own clients (its endpoint, region and prefix)."""
    from shared.delivery.service import resolve_connection

    ssm, secrets = tgt.client("ssm"), tgt.client("secretsmanager")

    def fetch(call: Any, name: str) -> str:
        try:
            return str(call(name))
        except (ssm.exceptions.ParameterNotFound, secrets.exceptions.ResourceNotFoundException):
            raise config.ConfigNotFound(name) from None

    def resolve(connection_id: str) -> ConnectionDelivery:
        return resolve_connection(
            connection_id,
            get_parameter=lambda name: fetch(
                lambda n: ssm.get_parameter(Name=n, WithDecryption=True)["Parameter"]["Value"], name
            ),
            get_secret=lambda name: fetch(
                lambda n: secrets.get_secret_value(SecretId=n)["SecretString"], name
            ),
        )

    return resolve


def redrive(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(min=1, help="Re-send at most this many messages.")] = None,
    connection: Annotated[
        str | None,
        typer.Option(help="Only this connection's messages (and the stream batches holding its records)."),
    ] = None,
) -> None:
    """Re-send the failure queue's messages to FME; delivered messages leave the queue."""
    from shared.delivery.service import Delivery, now_ms

    tgt = target(ctx)
    if connection is not None:  # an unknown one is an error, as for config inbound get
        stored_parameter(tgt, "inbound", "connection", connection)
    sqs = tgt.client("sqs")
    url = tgt.queue_url(FAILURE_QUEUE)
    os.environ["CONFIG_PREFIX"] = tgt.prefix  # connection names are built under the target's prefix
    delivery = Delivery(
        events_table=tgt.table_name("EventsTable"),
        identities_table=tgt.table_name("IdentitiesTable"),
        log=DeliveryLog(tgt.table(LOG_TABLE)),
        failures=FailureQueue(sqs, url),
        resolve=_resolver(tgt),
        resolve_fresh=None,  # the CLI's reads are fresh already
        dynamodb=tgt.client("dynamodb"),
    )
    streams = _streams(tgt)
    # An error recorded without what it is about (by an earlier version) is cleared only if older.
    started = now_ms()
    # Every message received and not removed stays hidden until the run ends, then is made visible
    # (also when the run is cut short): made visible at once, kept messages would come back at the
    # head of the queue and hide the ones behind them from the next receive.
    hidden: dict[str, dict[str, Any]] = {}
    done = kept = gone = 0
    why: list[tuple[str, str, str]] = []  # of each message kept: its id, connection and reasons
    rows = Table("message", "connection", "kind", "re-sent", "already delivered", "result", title="redrive")
    try:
        while limit is None or done + kept < limit:
            received = receive_all(sqs, url, 10, visibility=_REDRIVE_SECONDS_PER_MESSAGE * 10)
            if not received:
                break
            # Seen before and visible again (a long run): hidden again, under its newest handle.
            batch = [m for m in received if m["MessageId"] not in hidden]
            hidden.update((m["MessageId"], m) for m in received)
            for message in batch:
                try:
                    body = json.loads(message["Body"])
                except ValueError:
                    body = {}
                owner = str(
                    body.get("connectionId") or ("(stream batch)" if "DDBStreamBatchInfo" in body else "?")
                )
                # With --connection: its refused items, and the stream batches that hold its records.
                if (
                    connection
                    and owner != connection
                    and not (owner == "(stream batch)" and _holds_records_of(streams, body, connection))
                ):
                    continue
                if limit is not None and done + kept >= limit:
                    continue
                result = asyncio.run(
                    delivery.redrive(
                        body,
                        Deadline.after(_REDRIVE_SECONDS_PER_MESSAGE),
                        streams=streams,
                        started_at=started,
                    )
                )
                kind = str(body.get("kind") or ("stream batch" if "DDBStreamBatchInfo" in body else "?"))
                gone += result.superseded
                if result.done:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    del hidden[message["MessageId"]]
                    done += 1
                    verdict = Text("delivered, removed", style="green")
                else:
                    kept += 1
                    verdict = Text("kept", style="red")
                    why.append((message["MessageId"][:8], owner, "; ".join(result.problems)))
                rows.add_row(
                    message["MessageId"][:8],
                    owner,
                    kind,
                    str(result.resent),
                    str(result.already_delivered),
                    verdict,
                )
    finally:
        make_visible(sqs, url, list(hidden.values()))
    _report_redrive(rows, why, done, kept, gone, connection)
    if kept:
        raise typer.Exit(1)


def _holds_records_of(streams: Any, body: dict[str, Any], connection_id: str) -> bool:
    """Whether a stream batch Lambda gave up on holds records of the connection, as ``status``
    counts it (not once the stream no longer holds the batch: nothing could re-send it then)."""
    try:
        records = read_stream_batch(streams, body["DDBStreamBatchInfo"])
    except Exception:
        return False
    return connection_id in _held_back_until(records)


def _report_redrive(
    rows: Table, why: list[tuple[str, str, str]], done: int, kept: int, gone: int, connection: str | None
) -> None:
    if done + kept == 0:
        out.print("the failure queue has nothing to re-send" + (f" for {connection}" if connection else ""))
        return
    out.print(rows)
    for message_id, owner, reasons in why:  # a line each, unwrapped: reasons are too long for a cell
        out.print(
            styled("[red]kept[/red] {} ({}): {}", message_id, owner.strip("()"), reasons), soft_wrap=True
        )
    out.print(f"{done} message(s) delivered and removed, {kept} kept")
    if gone:
        out.print(f"{gone} identity(ies) deleted since: not sent")
