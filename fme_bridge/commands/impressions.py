"""``fme-bridge send-impressions`` and ``fme-bridge replay``: impressions into the impressions queue.

Both read the whole file and check every item before sending anything. Replaying twice is safe:
the impressions function derives each Segment ``messageId`` from the impression itself, so Segment
drops the duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fme_bridge.commands.common import CliError, out, read_json_values, target

# SQS's limits: 256 KiB per message and per SendMessageBatch call, 10 entries per call.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_BATCH_ENTRIES = 10
QUEUE = "ImpressionsQueue"


def register(app: typer.Typer) -> None:
    app.command("send-impressions")(send_impressions)
    app.command("replay")(replay)


def shape_of(value: Any) -> str | None:
    """Which body shape (docs/outbound.md) ``value`` is: webhook, listener, envelope, or None."""
    if isinstance(value, dict):
        if isinstance(value.get("impressions"), list):
            return "envelope"
        if isinstance(value.get("impression"), dict):
            return "listener"
        if "split" in value and "key" in value:
            return "webhook"
    return None


def _check_message(value: Any, where: str) -> str:
    is_array = isinstance(value, list) and bool(value)
    if shape_of(value) is None and not (
        is_array and all(shape_of(i) in ("webhook", "listener") for i in value)
    ):
        raise CliError(
            f"{where}: not an impression, an array of impressions or an envelope (docs/outbound.md)"
        )
    body = json.dumps(value, separators=(",", ":"))
    if len(body.encode()) > MAX_MESSAGE_BYTES:
        raise CliError(f"{where}: {len(body.encode())} bytes, over SQS's 256 KiB message limit; use replay")
    return body


def send_impressions(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSON (one value or an array) or JSON Lines; - for stdin.")],
) -> None:
    """Send impressions to the queue as they are: each JSON value (array element, line) is one message."""
    bodies = [_check_message(value, where) for where, value in read_json_values(file)]
    tgt = target(ctx)
    queue_url = tgt.queue_url(QUEUE)
    sent = _send(tgt.client("sqs"), queue_url, bodies, lambda _n: None)
    out.print(f"[green]sent[/green] {sent} message(s) to {queue_url}")


def impressions_of(value: Any, where: str) -> Iterable[tuple[str | None, str | None, dict[str, Any]]]:
    """(environmentName, trafficType, impression) for each impression in a backfill item."""
    shape = shape_of(value)
    if shape == "envelope":
        for index, inner in enumerate(value["impressions"]):
            if shape_of(inner) not in ("webhook", "listener"):
                raise CliError(f"{where} impressions[{index}]: not an impression")
            yield (
                inner.get("environmentName", value.get("environmentName")),
                inner.get("trafficType", value.get("trafficType")),
                inner,
            )
    elif shape in ("webhook", "listener"):
        yield value.get("environmentName"), value.get("trafficType"), value
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from impressions_of(inner, f"{where}[{index}]")
    else:
        raise CliError(f"{where}: not an impression or an envelope (docs/outbound.md)")


def envelopes(
    items: list[tuple[str | None, str | None, dict[str, Any]]], per_message: int
) -> list[tuple[str, int]]:
    """Envelope bodies (with their impression counts) grouping impressions by environment and traffic type."""
    groups: dict[tuple[str | None, str | None], list[dict[str, Any]]] = {}
    for environment, traffic_type, impression in items:
        groups.setdefault((environment, traffic_type), []).append(impression)
    bodies: list[tuple[str, int]] = []
    for (environment, traffic_type), impressions in groups.items():
        head: dict[str, Any] = {}
        if environment is not None:
            head["environmentName"] = environment
        if traffic_type is not None:
            head["trafficType"] = traffic_type
        chunk: list[str] = []
        size = 0
        overhead = len(json.dumps({**head, "impressions": []}))
        for impression in impressions:
            encoded = json.dumps(impression, separators=(",", ":"))
            if overhead + len(encoded) + 1 > MAX_MESSAGE_BYTES:
                raise CliError(f"an impression of {len(encoded)} bytes does not fit in an SQS message")
            if chunk and (
                len(chunk) >= per_message or overhead + size + len(encoded) + 1 > MAX_MESSAGE_BYTES
            ):
                bodies.append((_envelope(head, chunk), len(chunk)))
                chunk, size = [], 0
            chunk.append(encoded)
            size += len(encoded) + 1
        if chunk:
            bodies.append((_envelope(head, chunk), len(chunk)))
    return bodies


def _envelope(head: dict[str, Any], encoded_impressions: list[str]) -> str:
    fields = json.dumps(head, separators=(",", ":"))[1:-1]
    return "{" + (fields + "," if fields else "") + '"impressions":[' + ",".join(encoded_impressions) + "]}"


def replay(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="Backfill file: JSON array or JSON Lines of impressions; - for stdin.")
    ],
    environment: Annotated[
        str | None, typer.Option(help="environmentName for impressions that carry none.")
    ] = None,
    traffic_type: Annotated[
        str | None, typer.Option(help="trafficType for impressions that carry none.")
    ] = None,
    per_message: Annotated[
        int, typer.Option(min=1, max=5000, help="Impressions per SQS message (envelope).")
    ] = 500,
) -> None:
    """Replay a backfill file into the queue, batched into envelopes."""
    items = []
    for where, value in read_json_values(file):
        for env, tt, impression in impressions_of(value, where):
            items.append((env or environment, tt or traffic_type, impression))
    if not items:
        raise CliError(f"{file}: no impressions")
    bodies = envelopes(items, per_message)
    tgt = target(ctx)
    queue_url = tgt.queue_url(QUEUE)
    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=out,
        transient=False,
    ) as progress:
        task = progress.add_task("replay", total=len(items))
        sent = _send(
            tgt.client("sqs"),
            queue_url,
            [b for b, _ in bodies],
            lambda body_index: progress.advance(task, bodies[body_index][1]),
        )
    out.print(f"[green]replayed[/green] {len(items)} impression(s) in {sent} message(s) to {queue_url}")


def _send(sqs: Any, queue_url: str, bodies: list[str], on_sent: Callable[[int], None]) -> int:
    """SendMessageBatch in chunks; failures are one error naming how far it got."""
    sent = 0
    batch: list[int] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal sent, batch, batch_bytes
        if not batch:
            return
        entries = [{"Id": str(i), "MessageBody": bodies[i]} for i in batch]
        result = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        failed = result.get("Failed") or []
        if failed:
            first = failed[0]
            raise CliError(
                f"SQS refused {len(failed)} message(s) ({first.get('Code')}: {first.get('Message')}); "
                f"{sent + len(batch) - len(failed)} of {len(bodies)} sent — sending again is safe"
            )
        for index in batch:
            on_sent(index)
        sent += len(batch)
        batch, batch_bytes = [], 0

    for index, body in enumerate(bodies):
        size = len(body.encode())
        if len(batch) >= MAX_BATCH_ENTRIES or batch_bytes + size > MAX_MESSAGE_BYTES:
            flush()
        batch.append(index)
        batch_bytes += size
    flush()
    return sent
