"""``fme-bridge config audience put|get|list|backfill`` and ``fme-bridge profile ENV TRAFFIC_TYPE KEY``.

Audience definitions are validated with the same model the audiences functions load them with, and
every ``sync`` name must be an outbound config that maps the audience's traffic type, before anything
is written. A back-fill evaluates an audience for the identities already stored, with the functions'
own evaluator. The profile is the document the profile API answers (docs/profiles.md), read with the
same code.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fme_bridge.commands.common import (
    CASE_HINT,
    CliError,
    err,
    invalid_line,
    out,
    print_stored_document,
    put_document,
    read_json,
    stored_parameter,
    stored_parameters,
    styled,
    target,
)
from fme_bridge.target import Target
from shared import aws
from shared.config import ConfigInvalid, OutboundConfig, parse_config
from shared.http_retry import Outcome
from shared.profiles import sources
from shared.profiles.audience_sync import AudienceEvaluator, AudienceSet, SyncReport, load_audiences
from shared.profiles.audiences import AUDIENCE_NAME_PATTERN, AudienceConfig, parse_audience
from shared.profiles.backfill import backfill, stored_identities
from shared.profiles.identify_sender import IdentifySender
from shared.profiles.profile_view import DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT, ProfileNotFound, load_profile

FileArg = Annotated[Path, typer.Option("--file", "-f", help="The audience JSON (- for stdin).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the profile as the profile API answers it.")]


def register(app: typer.Typer) -> None:
    audience_app = typer.Typer(
        help="Audiences: rules over events, attributes and last treatments, synced to Segment.",
        no_args_is_help=True,
    )
    audience_app.command("put")(audience_put)
    audience_app.command("get")(audience_get)
    audience_app.command("list")(audience_list)
    audience_app.command("backfill")(audience_backfill)
    config_group = next((g for g in app.registered_groups if g.name == "config"), None)
    if config_group is None or config_group.typer_instance is None:
        raise RuntimeError("fme_bridge.commands.config must be registered before the profiles commands")
    config_group.typer_instance.add_typer(audience_app, name="audience")
    app.command("profile")(profile)


def _parameter(tgt: Target, name: str) -> str:
    return f"{tgt.prefix}/audiences/{name}"


def _check_sync_targets(tgt: Target, audience: AudienceConfig, source: str) -> None:
    ssm = tgt.client("ssm")
    for name in audience.sync:
        full = f"{tgt.prefix}/outbound/{name}"
        try:
            raw = ssm.get_parameter(Name=full, WithDecryption=True)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            raise CliError(f"{source}: sync: no outbound config {name!r} under {tgt.prefix}") from None
        outbound = parse_config(OutboundConfig, raw, full)
        if audience.trafficType not in outbound.identities:
            raise CliError(
                f"{source}: sync: outbound config {name!r} maps no Segment identity for traffic type "
                f"{audience.trafficType!r} (it maps {', '.join(sorted(outbound.identities))})"
            )


def audience_put(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The audience name; also the Segment trait it syncs as.")],
    file: FileArg,
) -> None:
    """Validate and write an audience definition."""
    _check_name(name)
    tgt = target(ctx)
    raw = read_json(file)
    audience = parse_audience(raw, str(file))  # ConfigInvalid names the problem; nothing written yet
    _check_sync_targets(tgt, audience, str(file))
    full = _parameter(tgt, name)
    put_document(tgt, full, raw)
    out.print(styled("[green]wrote[/green] audience [bold]{}[/bold] ({})", name, full))
    out.print(
        "Stored identities are evaluated on their next change; "
        f"`fme-bridge config audience backfill {name}` evaluates them all now.",
        soft_wrap=True,
    )


def _check_name(name: str) -> None:
    if not AUDIENCE_NAME_PATTERN.fullmatch(name):
        raise CliError(
            f"audience name {name!r}: start with a letter or digit; then letters, digits, '_', '.', '-'"
        )


def _stored_audience(tgt: Target, name: str) -> str:
    return stored_parameter(tgt, "audiences", "audience", name)


def audience_get(ctx: typer.Context, name: str) -> None:
    """Show an audience definition and whether it is valid."""
    tgt = target(ctx)
    full = _parameter(tgt, name)
    raw = _stored_audience(tgt, name)
    print_stored_document(raw)
    try:
        parse_audience(raw, full)
    except ConfigInvalid as exc:  # on stderr, as for configs: the document alone is on stdout
        err.print(styled("[red]invalid:[/red] {}", exc), soft_wrap=True)


def audience_list(ctx: typer.Context) -> None:
    """List the audiences."""
    tgt = target(ctx)
    path = f"{tgt.prefix}/audiences"
    parameters = stored_parameters(tgt, "audiences")
    if not parameters:
        out.print(f"no audiences under {tgt.prefix}")
        return
    table = Table("audience", "environment", "traffic type", "sync", "valid", title=f"audiences ({path})")
    problems: list[Text] = []  # why each invalid audience is, below the table: too long for a cell
    for full, value in parameters:
        short = full.rsplit("/", 1)[-1]
        try:
            audience = parse_audience(value, full)
        except ConfigInvalid as exc:
            table.add_row(short, "", "", "", Text("no", style="red"))
            problems.append(invalid_line(short, exc.problem))
            continue
        table.add_row(
            short,
            audience.environment,
            audience.trafficType,
            ", ".join(audience.sync),
            Text("yes", style="green"),
        )
    out.print(table)
    for problem in problems:
        out.print(problem, soft_wrap=True)


# Per identify request of a back-fill: the retry policy's own limits apply, not a Lambda's timeout.
BACKFILL_SEND_BUDGET_MS = 120_000


def audience_backfill(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The audience to evaluate for every stored identity.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count who would enter or leave; send and store nothing.")
    ] = False,
) -> None:
    """Evaluate an audience for every identity already stored (of its environment and traffic type).

    Entries and exits are synced to Segment and stored as the audiences functions do it; running it
    again changes nothing that is already right. Finding the identities scans the events,
    identities and profiles tables once.
    """
    tgt = target(ctx)
    full = _parameter(tgt, name)
    audience = parse_audience(_stored_audience(tgt, name), full)
    _check_sync_targets(tgt, audience, full)
    point_shared_clients_at(tgt)
    os.environ["CONFIG_PREFIX"] = tgt.prefix
    evaluator = AudienceEvaluator(AudienceSet({name: audience}), backfill_sender())
    identities = stored_identities(audience.environment, audience.trafficType)
    verb = ("would enter", "would leave") if dry_run else ("entered", "left")

    def progress(report: SyncReport) -> str:
        evaluated = f"{report.evaluated} {'identity' if report.evaluated == 1 else 'identities'}"
        return f"{evaluated} evaluated: {report.entered} {verb[0]}, {report.exited} {verb[1]}"

    with out.status(f"back-filling audience {name}…") as status:
        report = backfill(
            evaluator,
            identities,
            lambda: int(time.time() * 1000),
            dry_run=dry_run,
            on_round=lambda r: status.update(progress(r)),
        )
    where = f"({audience.environment}, {audience.trafficType})"
    out.print(styled("audience [bold]{}[/bold] {}: {}", name, where, progress(report)), soft_wrap=True)
    if not dry_run:
        out.print(f"identify calls sent to Segment: {report.sent}")
    conclude(report, "run the back-fill again: what was done is not done twice")


def conclude(report: SyncReport, when_failed: str) -> None:
    """The identify calls Segment refused; a :class:`CliError` (saying ``when_failed``) if some
    identities could not be evaluated or synced."""
    for problem in report.not_sent:
        out.print(styled("[yellow]not sent:[/yellow] {}", problem), soft_wrap=True)
    if report.failed:
        raise CliError(
            f"{len(report.failed)} identities could not be evaluated or synced (DynamoDB or Segment "
            f"failing); {when_failed}"
        )


def backfill_sender() -> IdentifySender:
    """The audiences functions' sender (a missing write key is a config error), on the CLI's budget."""
    return IdentifySender(lambda: BACKFILL_SEND_BUDGET_MS, missing_write_key=Outcome.PERMANENT)


def reevaluate_every_audience(tgt: Target) -> SyncReport:
    """Every audience evaluated for every identity already stored of its environment and traffic
    type, as a back-fill evaluates one (what a failed stream batch of the audiences functions left
    undone is done; what is already right is left alone)."""
    point_shared_clients_at(tgt)
    os.environ["CONFIG_PREFIX"] = tgt.prefix
    audiences = load_audiences()
    evaluator = AudienceEvaluator(audiences, backfill_sender())
    slots = sorted({(a.environment, a.trafficType) for a in audiences.audiences.values()})
    identities = itertools.chain.from_iterable(stored_identities(*slot) for slot in slots)
    return backfill(evaluator, identities, lambda: int(time.time() * 1000))


def point_shared_clients_at(tgt: Target) -> None:
    """The profile is read by the functions' own code, which finds tables and AWS through the
    environment (as in Lambda): give it the target's."""
    for logical, variable in (
        ("EventsTable", "EVENTS_TABLE"),
        ("IdentitiesTable", "IDENTITIES_TABLE"),
        ("ProfilesTable", "PROFILES_TABLE"),
    ):
        os.environ[variable] = tgt.table_name(logical)
    if tgt.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = tgt.endpoint_url
    region = tgt.session.region_name
    if region:
        os.environ["AWS_DEFAULT_REGION"] = region
    credentials = tgt.session.get_credentials()
    if credentials is not None and tgt.is_local:
        os.environ["AWS_ACCESS_KEY_ID"] = credentials.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = credentials.secret_key
    aws.reset_clients()


def _time(epoch_ms: Any) -> str:
    if not isinstance(epoch_ms, int | float):
        return ""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def profile(
    ctx: typer.Context,
    environment: Annotated[str, typer.Argument(help="FME environment name.")],
    traffic_type: Annotated[str, typer.Argument(help="FME traffic type.")],
    key: Annotated[str, typer.Argument(help="The FME key (Segment userId or anonymousId).")],
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_EVENTS_LIMIT, help="Events per page, newest first.")
    ] = DEFAULT_EVENTS_LIMIT,
    cursor: Annotated[str | None, typer.Option(help="The `next` cursor of a previous page.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one identity's profile: attributes, last treatments, audiences and recent events."""
    point_shared_clients_at(target(ctx))
    try:
        document = load_profile(environment, traffic_type, key, limit, cursor)
    except ProfileNotFound:
        raise CliError(f"no profile for {traffic_type} {key!r} in {environment}{CASE_HINT}") from None
    except sources.InvalidCursor as exc:
        raise CliError(str(exc)) from None
    if as_json:
        out.print_json(json.dumps(document))
        return
    # On a line of its own: as a table title, a long key would wrap to the width of the table.
    heading = styled("[bold]{} {}[/bold] in {}", traffic_type, key, environment)
    attributes = Table("attribute", "value", title="attributes")
    for name, value in sorted(document["attributes"].items()):
        attributes.add_row(name, value if isinstance(value, str) else json.dumps(value))
    treatments = Table("flag", "treatment", "seen", "split version", title="last treatments")
    for split, seen in sorted(document["treatments"].items()):
        version = seen["splitVersionNumber"]
        treatments.add_row(
            split, seen["treatment"], _time(seen["time"]), "" if version is None else str(version)
        )
    audiences = Table("audience", "member", title="audiences")
    for name, member in document["audiences"].items():
        audiences.add_row(name, Text("yes", style="green") if member else "no")
    events = Table("time", "eventTypeId", "value", "type", title="events, newest first")
    for event in document["events"]:
        value = event.get("value")
        events.add_row(
            _time(event.get("timestamp")),
            str(event.get("eventTypeId", "")),
            "" if value is None else str(value),
            str(event.get("segmentType", "")),
        )
    out.print(heading, soft_wrap=True)
    for view in (attributes, treatments, audiences, events):
        out.print(view if view.row_count else f"{view.title}: none")
    if document["next"]:
        out.print(f"more events: --cursor {document['next']}")
