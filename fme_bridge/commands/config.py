"""``fme-bridge config inbound|outbound put|get|list|delete``: configs and secrets (docs/inbound.md,
outbound.md).

Documents are validated with the same pydantic models the functions load them with, and every input
(config, secret files) is read and checked before anything is written. The secret goes first: a
config that names a connection without its secret would answer 401 to every webhook call, while a
new secret version without its config changes nothing. Writing a new secret version keeps the
previous one as ``AWSPREVIOUS``, which the ingest function still accepts (rotation without downtime).
Deleting goes the other way: the config first, then its secrets, scheduled for deletion with a
recovery window. Secret values are never printed.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from botocore.exceptions import ClientError
from pydantic import BaseModel
from rich.table import Table
from rich.text import Text

from fme_bridge.commands.common import (
    CliError,
    err,
    invalid_line,
    one_stdin,
    out,
    print_stored_document,
    put_document,
    read_json,
    read_text,
    stored_parameter,
    stored_parameters,
    styled,
    target,
)
from fme_bridge.target import Target
from shared.config import (
    DEFAULT_SEGMENT_ENDPOINT,
    ConfigInvalid,
    FmeKeys,
    InboundConfig,
    OutboundConfig,
    parse_config,
)
from shared.inbound.auth import CONNECTION_ID


@dataclass(frozen=True)
class ConfigKind:
    name: str  # inbound / outbound: the path segment under the prefix
    model: type[BaseModel]
    item: str  # what one config is called
    secret_label: str  # what its secret is


INBOUND = ConfigKind("inbound", InboundConfig, "connection", "webhook secret")
OUTBOUND = ConfigKind("outbound", OutboundConfig, "outbound config", "Segment write key")

# Below this, config inbound put warns (and writes it all the same: the secret is the user's choice).
WEAK_SECRET_CHARACTERS = 16

FileArg = Annotated[Path, typer.Option("--file", "-f", help="The config JSON (- for stdin).")]
RecoveryDays = Annotated[
    int,
    typer.Option(
        min=7, max=30, help="Days its secrets can still be restored (aws secretsmanager restore-secret)."
    ),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(
        help="Inbound connections, outbound configs and audiences (SSM + Secrets Manager).",
        no_args_is_help=True,
    )
    inbound_app = typer.Typer(help="Inbound connections: Segment webhook -> FME.", no_args_is_help=True)
    outbound_app = typer.Typer(help="Outbound configs: FME impressions -> Segment.", no_args_is_help=True)
    config_app.add_typer(inbound_app, name="inbound")
    config_app.add_typer(outbound_app, name="outbound")
    app.add_typer(config_app, name="config")

    @inbound_app.command("put")
    def inbound_put(
        ctx: typer.Context,
        connection_id: Annotated[
            str, typer.Argument(help="The connection id (last part of the webhook URL).")
        ],
        file: FileArg,
        secret_file: Annotated[
            Path | None, typer.Option(help="File holding the webhook secret (- for stdin); rotates it.")
        ] = None,
        fme_keys_file: Annotated[
            Path | None,
            typer.Option(help='JSON {"sdkKey": …, "adminKey": …} for delivery into FME (- for stdin).'),
        ] = None,
    ) -> None:
        """Validate and write an inbound connection (and its secret)."""
        one_stdin(file=file, secret_file=secret_file, fme_keys_file=fme_keys_file)
        secrets = {}
        if secret_file is not None:
            secrets[""] = _read_secret(secret_file, INBOUND.secret_label)
        if fme_keys_file is not None:
            raw = read_text(fme_keys_file)
            parse_config(FmeKeys, raw, str(fme_keys_file))  # messages name fields, never values
            secrets["/fme"] = raw.strip()
        _put(target(ctx), INBOUND, connection_id, file, secrets)
        if "" in secrets and len(secrets[""]) < WEAK_SECRET_CHARACTERS:
            out.print(
                styled(
                    "[yellow]warning:[/yellow] the webhook secret has {} characters: whoever guesses it "
                    "can write events and identities; a random one of 32 or more is safer (openssl rand "
                    "-hex 32 | fme-bridge config inbound put {} -f … --secret-file -, twice: the secret a "
                    "put replaces stays valid until the next)",
                    len(secrets[""]),
                    connection_id,
                ),
                soft_wrap=True,
            )

    @inbound_app.command("get")
    def inbound_get(ctx: typer.Context, connection_id: str) -> None:
        """Show an inbound connection (its secret only as set / not set)."""
        _get(target(ctx), INBOUND, connection_id, extra_secrets={"/fme": "FME keys"})

    @inbound_app.command("list")
    def inbound_list(ctx: typer.Context) -> None:
        """List the inbound connections."""
        _list(target(ctx), INBOUND, lambda doc: [doc.get("environment", ""), _identities(doc)])

    @inbound_app.command("delete")
    def inbound_delete(
        ctx: typer.Context, connection_id: str, recovery_days: RecoveryDays = 7, yes: Yes = False
    ) -> None:
        """Delete an inbound connection: its webhook answers 401 from then on (once the functions'
        caches expire), and its secrets are scheduled for deletion."""
        _delete(target(ctx), INBOUND, connection_id, ("", "/fme"), recovery_days, yes)

    @outbound_app.command("put")
    def outbound_put(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="The outbound config's name (one per Segment source).")],
        file: FileArg,
        write_key_file: Annotated[
            Path | None, typer.Option(help="File holding the Segment write key (- for stdin).")
        ] = None,
    ) -> None:
        """Validate and write an outbound config (and its write key)."""
        one_stdin(file=file, write_key_file=write_key_file)
        secrets = {"": _read_secret(write_key_file, OUTBOUND.secret_label)} if write_key_file else {}
        _put(target(ctx), OUTBOUND, name, file, secrets)

    @outbound_app.command("get")
    def outbound_get(ctx: typer.Context, name: str) -> None:
        """Show an outbound config (its write key only as set / not set)."""
        _get(target(ctx), OUTBOUND, name)

    @outbound_app.command("delete")
    def outbound_delete(
        ctx: typer.Context,
        name: str,
        recovery_days: RecoveryDays = 7,
        yes: Yes = False,
        force: Annotated[
            bool, typer.Option(help="Delete it even though audiences sync to it (their changes go unsent).")
        ] = False,
    ) -> None:
        """Delete an outbound config: impressions that only it matched go to the dead-letter queue as
        no_matching_config from then on, and its write key is scheduled for deletion."""
        tgt = target(ctx)
        if not force and (syncing := _audiences_syncing_to(tgt, name)):
            raise CliError(
                f"audience(s) {', '.join(syncing)} sync to outbound config {name!r}: their entries and "
                "exits would no longer reach Segment (stored, never sent). Take it out of their sync "
                "lists first (fme-bridge config audience put), or pass --force"
            )
        _delete(tgt, OUTBOUND, name, ("",), recovery_days, yes)

    @outbound_app.command("list")
    def outbound_list(ctx: typer.Context) -> None:
        """List the outbound configs."""
        _list(
            target(ctx),
            OUTBOUND,
            # A valid config without an endpoint sends to the default one.
            lambda doc: [
                ", ".join(doc.get("environments", [])),
                doc.get("endpoint") or (DEFAULT_SEGMENT_ENDPOINT if doc else ""),
            ],
        )


def _identities(document: dict[str, Any]) -> str:
    return ", ".join(f"{i.get('segmentId')}→{i.get('trafficType')}" for i in document.get("identities", []))


def _read_secret(path: Path, label: str) -> str:
    value = read_text(path).strip()
    if not value:
        raise CliError(f"{path}: the {label} is empty")
    return value


def _check_name(kind: ConfigKind, name: str) -> None:
    if kind is INBOUND:
        # What the webhook accepts in its URL: any other id would be refused on every call.
        if not CONNECTION_ID.fullmatch(name):
            raise CliError(
                f"{kind.item} name {name!r}: start with a letter or digit; then letters, digits, '-', '_' "
                "and '.'; at most 128 characters"
            )
        return
    # SSM and Secrets Manager take ASCII names only.
    if not name or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
        raise CliError(f"{kind.item} name {name!r}: use letters, digits, '-', '_' and '.' (ASCII)")


def _put(tgt: Target, kind: ConfigKind, name: str, file: Path, secrets: dict[str, str]) -> None:
    _check_name(kind, name)
    raw = read_json(file)
    full = f"{tgt.prefix}/{kind.name}/{name}"
    parsed = parse_config(kind.model, raw, str(file))  # ConfigInvalid names the field; nothing written yet
    secretsmanager = tgt.client("secretsmanager")
    if "" not in secrets:
        flag = "--secret-file" if kind is INBOUND else "--write-key-file"
        # A caller that may not describe secrets cannot tell: written all the same, as with a secret.
        state = _secret_state(secretsmanager, full)
        if state == DELETED:
            raise CliError(
                f"{kind.item} {name!r}: its {kind.secret_label} {full} is scheduled for deletion, and "
                f"refused meanwhile: restore it (aws secretsmanager restore-secret --secret-id {full}) "
                f"or pass {flag}"
            )
        if state == MISSING:
            raise CliError(f"{kind.item} {name!r} has no {kind.secret_label} yet: pass {flag}")
    for suffix, value in secrets.items():
        if _put_secret(secretsmanager, full + suffix, value):
            out.print(f"restored {full + suffix}: it was scheduled for deletion")
    put_document(tgt, full, raw)
    rotated = " and its secret" if "" in secrets else ""
    out.print(styled("[green]wrote[/green] {} [bold]{}[/bold]{} ({})", kind.item, name, rotated, full))
    delivery = getattr(parsed, "delivery", None)
    enabled_without_keys = delivery is not None and delivery.enabled and "/fme" not in secrets
    # Written already: a check this caller may not make (no DescribeSecret) is no reason to fail.
    if enabled_without_keys and _secret_state(secretsmanager, full + "/fme") in (
        MISSING,
        DELETED,
    ):
        out.print(
            styled(
                "[yellow]warning:[/yellow] delivery into FME is enabled but {}/fme holds no FME "
                "keys: its events and identities are refused (to the failure queue) until "
                "--fme-keys-file sets them",
                full,
            ),
            soft_wrap=True,
        )


def _delete(
    tgt: Target, kind: ConfigKind, name: str, suffixes: tuple[str, ...], recovery_days: int, yes: bool
) -> None:
    full = f"{tgt.prefix}/{kind.name}/{name}"
    ssm = tgt.client("ssm")
    secretsmanager = tgt.client("secretsmanager")
    try:
        ssm.get_parameter(Name=full)
        exists = True
    except ssm.exceptions.ParameterNotFound:
        exists = False
    # Secrets still there (or that this caller may not describe): a delete that stopped after the
    # config, on an error, is finished by running it again.
    left = [s for s in suffixes if _secret_state(secretsmanager, full + s) in (SET, None)]
    if not exists and not left:
        raise CliError(f"no {kind.item} {name!r} under {tgt.prefix}")
    question = f"delete {kind.item} {name!r} ({full}) and its secrets?"
    if not exists:
        question = f"{kind.item} {name!r} has no config left; delete its remaining secrets?"
    if not yes and not typer.confirm(question):
        raise CliError("nothing deleted")
    if exists:
        with contextlib.suppress(ssm.exceptions.ParameterNotFound):  # deleted meanwhile
            ssm.delete_parameter(Name=full)
        out.print(styled("[green]deleted[/green] {} [bold]{}[/bold] ({})", kind.item, name, full))
    for suffix in left:
        try:
            deleted = secretsmanager.delete_secret(SecretId=full + suffix, RecoveryWindowInDays=recovery_days)
        except secretsmanager.exceptions.ResourceNotFoundException:
            continue
        except secretsmanager.exceptions.InvalidRequestException as exc:  # already scheduled for deletion
            out.print(f"{full + suffix}: not deleted: {exc.response['Error'].get('Message', exc)}")
            continue
        when = deleted.get("DeletionDate")
        until = f" on {when:%Y-%m-%d}" if when else ""
        out.print(
            f"{full + suffix}: scheduled for deletion{until} "
            f"(aws secretsmanager restore-secret --secret-id {full + suffix} undoes it until then)",
            soft_wrap=True,
        )


def _audiences_syncing_to(tgt: Target, outbound_name: str) -> list[str]:
    """The audiences whose ``sync`` names the outbound config (read as stored, valid or not)."""
    names = []
    for full, value in stored_parameters(tgt, "audiences"):
        try:
            sync = json.loads(value).get("sync")
        except (ValueError, AttributeError):
            continue
        if isinstance(sync, list) and outbound_name in sync:
            names.append(full.rsplit("/", 1)[-1])
    return names


# What a secret is to the functions: there, missing, or scheduled for deletion (which they treat as
# missing: Secrets Manager refuses to read it).
SET, MISSING, DELETED = "set", "missing", "deleted"


def _describe_secret(client: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(client.describe_secret(SecretId=name))
    except client.exceptions.ResourceNotFoundException:
        return None


def _secret_state(client: Any, name: str) -> str | None:
    """:data:`SET`, :data:`MISSING` or :data:`DELETED`; None when this caller may not tell
    (AccessDenied)."""
    try:
        described = _describe_secret(client, name)
    except ClientError:
        return None
    if described is None:
        return MISSING
    return DELETED if described.get("DeletedDate") else SET


def _put_secret(client: Any, name: str, value: str) -> bool:
    """A new version (the current one becomes AWSPREVIOUS), or the secret itself when it is new; a
    secret scheduled for deletion is restored first. Whether it was restored."""
    restored = _secret_state(client, name) == DELETED  # not allowed to describe it: written all the same
    if restored:
        client.restore_secret(SecretId=name)
    try:
        client.put_secret_value(SecretId=name, SecretString=value)
    except client.exceptions.ResourceNotFoundException:
        client.create_secret(Name=name, SecretString=value)
    return restored


def _secret_status(client: Any, name: str) -> Text:
    try:
        described = _describe_secret(client, name)
    except ClientError as exc:  # not allowed to describe it (AccessDenied): the document was shown
        return Text(f"? (cannot describe it: {exc.response['Error'].get('Code', 'error')})", style="yellow")
    if described is None:
        return Text("not set", style="red")
    if deleted := described.get("DeletedDate"):
        return styled(
            "[red]scheduled for deletion[/red] (deleted for good after {}; refused until restored: "
            "aws secretsmanager restore-secret --secret-id {})",
            f"{deleted:%Y-%m-%d %H:%M:%S %Z}",
            name,
        )
    stages = sorted({s for stages in described.get("VersionIdsToStages", {}).values() for s in stages})
    changed = described.get("LastChangedDate")
    when = f", last changed {changed:%Y-%m-%d %H:%M:%S %Z}".rstrip() if changed else ""
    return Text(f"set ({', '.join(stages)}{when})")


def _get(tgt: Target, kind: ConfigKind, name: str, extra_secrets: dict[str, str] | None = None) -> None:
    full = f"{tgt.prefix}/{kind.name}/{name}"
    raw = stored_parameter(tgt, kind.name, kind.item, name)
    print_stored_document(raw)
    # What is said about the document goes to stderr: `get NAME > f.json` then `put NAME -f f.json`.
    try:
        parse_config(kind.model, raw, full)
    except ConfigInvalid as exc:
        err.print(styled("[red]invalid:[/red] {}", exc), soft_wrap=True)
    secretsmanager = tgt.client("secretsmanager")
    err.print(Text(f"{kind.secret_label}: ") + _secret_status(secretsmanager, full), soft_wrap=True)
    for suffix, label in (extra_secrets or {}).items():
        err.print(Text(f"{label}: ") + _secret_status(secretsmanager, full + suffix), soft_wrap=True)


def _list(tgt: Target, kind: ConfigKind, columns: Any) -> None:
    path = f"{tgt.prefix}/{kind.name}"
    parameters = stored_parameters(tgt, kind.name)
    headers = ["environment", "identities"] if kind is INBOUND else ["environments", "endpoint"]
    table = Table(kind.item, *headers, "valid", kind.secret_label, title=f"{kind.name} ({path})")
    for column in table.columns:
        column.overflow = "fold"  # a narrow terminal wraps an endpoint rather than cuts it
    secretsmanager = tgt.client("secretsmanager")
    problems: list[Text] = []  # why each invalid config is, below the table: too long for a cell
    for full, value in parameters:
        short = full.rsplit("/", 1)[-1]
        try:
            parse_config(kind.model, value, full)
            document, valid = json.loads(value), Text("yes", style="green")  # as written, not as parsed
        except ConfigInvalid as exc:
            document, valid = {}, Text("no", style="red")
            problems.append(invalid_line(short, exc.problem))
        # A valid config without its secret does not work either (401s, or impressions retried).
        state = _secret_state(secretsmanager, full)
        secret: Text = {
            SET: Text("set"),
            MISSING: Text("not set", style="red"),
            DELETED: Text("scheduled for deletion", style="red"),
            None: Text("?"),
        }[state]
        table.add_row(short, *[str(c) for c in columns(document)], valid, secret)
    if not parameters:
        out.print(f"no {kind.name} configs under {tgt.prefix}")
        return
    out.print(table)
    for problem in problems:
        out.print(problem, soft_wrap=True)
