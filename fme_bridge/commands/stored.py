"""``fme-bridge events KEY`` and ``fme-bridge identity KEY``: what the bridge stored for a user.

Keys follow docs/data-model.md: ``pk = {environment}#{trafficTypeName}#{key}``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.table import Table

from fme_bridge.commands.common import CASE_HINT, CliError, out, styled, target
from shared.dynamodb import to_python
from shared.events_table import EventsTable
from shared.profiles_table import profile_pk

EnvironmentOpt = Annotated[str, typer.Option("--environment", "-e", help="FME environment name.")]
TrafficTypeOpt = Annotated[str, typer.Option("--traffic-type", "-t", help="FME traffic type.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the stored items as JSON.")]


def register(app: typer.Typer) -> None:
    app.command("events")(events)
    app.command("identity")(identity)


def _time(epoch_ms: Any) -> str:
    if not isinstance(epoch_ms, int | float | Decimal):
        return ""
    return datetime.fromtimestamp(int(epoch_ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def events(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The FME key (Segment userId or anonymousId).")],
    environment: EnvironmentOpt,
    traffic_type: TrafficTypeOpt = "user",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Newest first, at most this many.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Show a user's stored events, newest first."""
    stack = target(ctx)
    table = EventsTable(stack.table_name("EventsTable"), stack.client("dynamodb"))
    # Paged: a query answers at most 1 MB, fewer than ``limit`` events when they carry large properties.
    found = table.events_of(environment, traffic_type, key, newest_first=True, limit=limit)
    items = [to_python(i) for i in found]
    if as_json:
        out.print_json(json.dumps(items))
        return
    if not items:
        raise CliError(f"no events stored for {traffic_type} {key!r} in {environment}{CASE_HINT}")
    # The heading on a line of its own: as a table title, it would wrap to the width of the table.
    heading = styled("[bold]{} {}[/bold] in {}", traffic_type, key, environment)
    view = Table("time", "eventTypeId", "value", "type", "properties")
    for item in items:
        view.add_row(
            _time(item.get("timestamp")),
            str(item.get("eventTypeId", "")),
            "" if item.get("value") is None else str(item["value"]),
            str(item.get("segmentType", "")),
            json.dumps(item.get("properties") or {}, separators=(",", ":")),
        )
    out.print(heading, soft_wrap=True)
    out.print(view)


def identity(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The FME key (Segment userId, anonymousId or group id).")],
    environment: EnvironmentOpt,
    traffic_type: TrafficTypeOpt = "user",
    as_json: JsonOpt = False,
) -> None:
    """Show a user's stored identity attributes."""
    table = target(ctx).table("IdentitiesTable")
    item = table.get_item(Key={"pk": profile_pk(environment, traffic_type, key)}).get("Item")
    if item is None:
        raise CliError(f"no identity stored for {traffic_type} {key!r} in {environment}{CASE_HINT}")
    item = to_python(item)
    if as_json:
        out.print_json(json.dumps(item))
        return
    heading = styled(
        "[bold]{} {}[/bold] in {} (updated {})", traffic_type, key, environment, _time(item.get("updatedAt"))
    )
    view = Table("attribute", "value")
    for name, value in sorted((item.get("attributes") or {}).items()):
        view.add_row(name, value if isinstance(value, str) else json.dumps(value))
    out.print(heading, soft_wrap=True)
    out.print(view if view.row_count else "no attributes")
