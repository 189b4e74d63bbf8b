"""``fme-bridge send-impressions`` and ``fme-bridge replay``: impressions into the impressions queue.

Both read the whole file and check every item before sending anything, with the impressions
function's own parser: what it would dead-letter (``no_environment``, ``invalid_impression``,
``invalid_body``) is refused, naming where it is. Replaying twice is safe: the impressions function
derives each Segment ``messageId`` from the impression itself, so Segment drops the duplicates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fme_bridge.commands.common import CliError, out, read_json_values, styled, target
from shared.outbound.impressions import (
    NO_ENVIRONMENT,
    BodyError,
    ItemError,
    impression_environment,
    listener_spelling,
    parse_body,
)
from shared.sqs_batches import MAX_MESSAGE_BYTES, batch_calls

QUEUE = "ImpressionsQueue"


def register(app: typer.Typer) -> None:
    app.command("send-impressions")(send_impressions)
    app.command("replay")(replay)


def shape_of(value: Any) -> str | None:
    """Which body shape (docs/outbound.md) ``value`` is: webhook, listener, envelope, or None.

    A listener includes what the other SDKs hand their listeners (Go, Java, .NET, Python, Ruby), as
    the impressions function reads them."""
    if isinstance(value, dict):
        if isinstance(value.get("impressions"), list):
            return "envelope"
        if isinstance(value.get("impression"), dict):
            return "listener"
        if "split" in value and "key" in value:
            return "webhook"
        if listener_spelling(value) is not None:
            return "listener"
    return None


def _check_message(value: Any, where: str) -> str:
    is_array = isinstance(value, list) and bool(value)
    if shape_of(value) is None and not (
        is_array and all(shape_of(i) in ("webhook", "listener") for i in value)
    ):
        raise CliError(
            f"{where}: not an impression, an array of impressions or an envelope (docs/outbound.md)"
        )
    if shape_of(value) == "envelope" and not value["impressions"]:
        raise CliError(f"{where}: an envelope without impressions")
    body = json.dumps(value, separators=(",", ":"))
    if len(body.encode()) > MAX_MESSAGE_BYTES:
        raise CliError(f"{where}: {len(body.encode())} bytes, over SQS's 256 KiB message limit; use replay")
    return body


def send_impressions(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSON (one value or an array) or JSON Lines; - for stdin.")],
) -> None:
    """Send impressions to the queue as they are: each JSON value (array element, line) is one message."""
    located = [(where, _check_message(value, where)) for where, value in read_json_values(file)]
    if not located:
        raise CliError(f"{file}: no impressions")
    _refuse(
        [
            (_item_at(where, shape, error.index), error)
            for where, body in located
            for shape, error in _refused(body)
        ],
        "set environmentName or environmentId on them or their envelope, or use replay --environment",
    )
    bodies = [body for _, body in located]
    tgt = target(ctx)
    queue_url = tgt.queue_url(QUEUE)
    sent = _send(tgt.client("sqs"), queue_url, bodies, lambda _n: None)
    out.print(styled("[green]sent[/green] {} message(s) to {}", sent, queue_url))


# An envelope's head: environmentName, environmentId, trafficType (None: absent).
Head = tuple[str | None, str | None, str | None]
_HEAD_FIELDS = ("environmentName", "environmentId", "trafficType")


def impressions_of(value: Any, where: str) -> Iterable[tuple[str, Head, dict[str, Any]]]:
    """(where, head, impression) for each impression in a backfill item.

    An impression's own environmentName / environmentId / trafficType win over its envelope's unless
    empty, as the impressions function reads them.
    """
    shape = shape_of(value)
    if shape == "envelope":
        for index, inner in enumerate(value["impressions"]):
            if shape_of(inner) not in ("webhook", "listener"):
                raise CliError(f"{where} impressions[{index}]: not an impression")
            inner_where = f"{where} impressions[{index}]"
            yield inner_where, _head(inner, value, inner_where), inner
    elif shape in ("webhook", "listener"):
        yield where, _head(value, {}, where), value
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from impressions_of(inner, f"{where}[{index}]")
    else:
        raise CliError(f"{where}: not an impression or an envelope (docs/outbound.md)")


def _head(impression: dict[str, Any], envelope: dict[str, Any], where: str) -> Head:
    """The head fields for ``impression``: its own unless empty, else its envelope's.

    As the impressions function reads them; an impression's empty environment is none (copied to the
    head, it would count as one). An object, array or boolean there is an error: the function refuses
    it too (a number it reads as text).
    """
    for field in _HEAD_FIELDS:
        for value in (impression.get(field), envelope.get(field)):  # false and {} too, before "or"
            if isinstance(value, (dict, list, bool)):
                kind = {dict: "an object", list: "an array", bool: "a boolean"}[type(value)]
                raise CliError(f"{where}: {field} must be a string, not {kind}")
    environment_id, name = impression_environment(
        *(_text(impression.get(f)) for f in ("environmentId", "environmentName")),
        *(_text(envelope.get(f)) for f in ("environmentId", "environmentName")),
    )
    return name, environment_id, _text(impression.get("trafficType")) or _text(envelope.get("trafficType"))


def _text(value: Any) -> str | None:
    """A head field as the function reads it: a number as its text, empty as none."""
    return str(value) if value not in (None, "") else None


def envelopes(items: list[tuple[Head, dict[str, Any]]], per_message: int) -> list[tuple[str, list[int]]]:
    """Envelope bodies grouping impressions by environment and traffic type.

    Each comes with the indexes (into ``items``) of the impressions it holds, in order.
    """
    groups: dict[Head, list[int]] = {}
    for position, (head_fields, _) in enumerate(items):
        groups.setdefault(head_fields, []).append(position)
    bodies: list[tuple[str, list[int]]] = []
    for head_fields, positions in groups.items():
        head = {name: v for name, v in zip(_HEAD_FIELDS, head_fields, strict=True) if v is not None}
        chunk: list[str] = []
        held: list[int] = []
        size = 0
        overhead = len(json.dumps({**head, "impressions": []}))
        for position in positions:
            encoded = json.dumps(items[position][1], separators=(",", ":"))
            if overhead + len(encoded) + 1 > MAX_MESSAGE_BYTES:
                raise CliError(f"an impression of {len(encoded)} bytes does not fit in an SQS message")
            if chunk and (
                len(chunk) >= per_message or overhead + size + len(encoded) + 1 > MAX_MESSAGE_BYTES
            ):
                bodies.append((_envelope(head, chunk), held))
                chunk, held, size = [], [], 0
            chunk.append(encoded)
            held.append(position)
            size += len(encoded) + 1
        if chunk:
            bodies.append((_envelope(head, chunk), held))
    return bodies


# The item's place in its message body, which the error's location already names.
_ITEM_PREFIX = re.compile(r"^(impressions\.)?\d+: ")


def _refused(body: str) -> list[tuple[str | None, ItemError]]:
    """(shape, error) of each impression in ``body`` the impressions function would dead-letter
    (``no_environment``, ``invalid_impression``), as its own parser decides; (None, the error) for a
    body it would dead-letter whole (``invalid_body``: an envelope's environmentName not a string)."""
    try:
        parsed = parse_body(body)
    except BodyError as exc:
        return [(None, ItemError(0, exc.code, exc.reason))]
    return [(parsed.shape, error) for error in parsed.errors]


def _refuse(refused: list[tuple[str, ItemError]], no_environment_remedy: str) -> None:
    """One error for the impressions the function would dead-letter (where each is), if any: those
    without an environment first, which an option or the file can fix."""
    missing = [where for where, error in refused if error.code == NO_ENVIRONMENT]
    if missing:
        raise CliError(_no_environment(missing, no_environment_remedy))
    if refused:
        where, error = refused[0]
        raise CliError(
            f"{len(refused)} impression(s) the impressions function would dead-letter, the first at {where}: "
            f"{error.code}: {_ITEM_PREFIX.sub('', error.reason)}"
        )


def _item_at(where: str, shape: str | None, index: int) -> str:
    """Where item ``index`` of a message body of ``shape`` is, named as :func:`impressions_of` names it."""
    if shape == "webhook_list":
        return f"{where}[{index}]"
    if shape == "envelope":
        return f"{where} impressions[{index}]"
    return where


def _no_environment(missing: list[str], remedy: str) -> str:
    return f"no environment on {len(missing)} impression(s), the first at {missing[0]}: {remedy}"


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
    located = [entry for where, value in read_json_values(file) for entry in impressions_of(value, where)]
    if not located:
        raise CliError(f"{file}: no impressions")
    items = [
        # --environment is for impressions without one: beside an id, its name could be another's.
        (
            (
                name or (environment if environment_id is None else None),
                environment_id,
                traffic or traffic_type,
            ),
            impression,
        )
        for _, (name, environment_id, traffic), impression in located
    ]
    bodies = envelopes(items, per_message)
    refused = sorted(
        ((held[error.index], error) for body, held in bodies for _, error in _refused(body)),
        key=lambda r: r[0],
    )
    _refuse(
        [(located[position][0], error) for position, error in refused],
        "pass --environment, or set environmentName or environmentId in the file",
    )
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
            lambda body_index: progress.advance(task, len(bodies[body_index][1])),
        )
    out.print(
        styled("[green]replayed[/green] {} impression(s) in {} message(s) to {}", len(items), sent, queue_url)
    )


def _send(sqs: Any, queue_url: str, bodies: list[str], on_sent: Callable[[int], None]) -> int:
    """SendMessageBatch in chunks; failures are one error naming how far it got."""
    sent = 0
    for batch in batch_calls(range(len(bodies)), lambda index: len(bodies[index].encode())):
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
    return sent
