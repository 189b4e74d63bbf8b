"""What every command shares: the target bridge, the consoles, reading input files, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from botocore.exceptions import ClientError
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from fme_bridge.target import Target

# Without markup or emoji codes: what the commands print holds user data (keys, attributes, names,
# errors), in which "[/b]" and ":fire:" are text. Styled lines go through :func:`styled`.
out = Console(highlight=False, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, markup=False, emoji=False)
# After "nothing found": the names are compared exactly, as FME compares them.
CASE_HINT = " (environment, traffic type and key are case-sensitive)"


def styled(template: str, *values: object) -> Text:
    """``template`` is Rich markup whose ``{}`` the ``values`` fill as they are, brackets and all."""
    return Text.from_markup(template.format(*(escape(str(v)) for v in values)), emoji=False)


def invalid_line(name: str, problem: str) -> Text:
    """A ``list`` command's line, below its table, on why a stored document does not validate."""
    return styled("{}: [red]invalid:[/red] {}", name, problem)


class CliError(Exception):
    """A failure the user can act on; printed as one line, exit status 1."""


def print_stored_document(raw: str) -> None:
    """A stored config or audience: as indented JSON, or as it is when it is not JSON (the validity
    check printed after it says so)."""
    try:
        out.print_json(raw)
    except ValueError:
        out.print(raw, soft_wrap=True)


def stored_parameter(tgt: Target, folder: str, item: str, name: str) -> str:
    """The config ``{prefix}/{folder}/{name}`` as stored; a missing one is one line naming the ``item``."""
    ssm = tgt.client("ssm")
    try:
        return str(
            ssm.get_parameter(Name=f"{tgt.prefix}/{folder}/{name}", WithDecryption=True)["Parameter"]["Value"]
        )
    except ssm.exceptions.ParameterNotFound:
        raise CliError(f"no {item} {name!r} under {tgt.prefix}") from None


def stored_parameters(tgt: Target, folder: str) -> list[tuple[str, str]]:
    """Every config under ``{prefix}/{folder}`` as stored: (its full name, its value), by name."""
    paginator = tgt.client("ssm").get_paginator("get_parameters_by_path")
    pages = paginator.paginate(Path=f"{tgt.prefix}/{folder}", Recursive=False, WithDecryption=True)
    return sorted((p["Name"], p["Value"]) for page in pages for p in page["Parameters"])


def put_document(tgt: Target, name: str, document: Any) -> None:
    """Write a config document to SSM; one stored as a ``SecureString`` stays one, under its key."""
    ssm = tgt.client("ssm")
    request: dict[str, Any] = {
        "Name": name,
        "Value": json.dumps(document, separators=(",", ":")),
        "Type": "String",
        "Overwrite": True,
    }
    try:
        stored = ssm.get_parameter(Name=name)["Parameter"]  # its type: the value is not needed
    except ssm.exceptions.ParameterNotFound:
        stored = {}
    if stored.get("Type") == "SecureString":
        request["Type"] = "SecureString"
        try:  # a customer managed key, if it has one (ssm:DescribeParameters); else SSM's default
            [described] = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])[
                "Parameters"
            ]
            request["KeyId"] = described["KeyId"]
        except (ClientError, KeyError, ValueError):
            pass
    ssm.put_parameter(**request)


def target(ctx: typer.Context) -> Target:
    """The bridge the root options selected (``fme_bridge.cli`` puts it on the context)."""
    root = ctx.find_root()
    if not isinstance(root.obj, Target):
        root.obj = Target()
    return root.obj


def read_text(path: Path) -> str:
    """A file's text, or stdin for ``-``; unreadable files are a :class:`CliError`."""
    if str(path) == "-":
        import sys

        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CliError(f"cannot read {path}: {reason}") from None


def one_stdin(**options: Path | None) -> None:
    """At most one of a command's file options (keyword: option name) may be ``-``: stdin reads once."""
    if sum(1 for path in options.values() if path is not None and str(path) == "-") > 1:
        names = " / ".join(f"--{name.replace('_', '-')}" for name in options)
        raise CliError(f"only one of {names} can read stdin (-)")


def read_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path}: not valid JSON ({exc})") from None


def read_json_values(path: Path) -> list[tuple[str, Any]]:
    """A JSON document (an array is its elements) or JSON Lines, each value with where it is.

    Where is ``file item N`` (from 1) in a document and ``file:LINE`` in JSON Lines (blank lines
    counted), as invalid JSON on a line is reported.
    """
    text = read_text(path)
    stripped = text.strip()
    if not stripped:
        raise CliError(f"{path}: empty file")
    try:
        document = json.loads(stripped)
    except ValueError:
        document = None
    else:
        elements = document if isinstance(document, list) else [document]
        return [(f"{path} item {index}", value) for index, value in enumerate(elements, start=1)]
    values = []
    # Lines end at "\n" only (reading translated "\r\n" and "\r"): str.splitlines() would also
    # end one at a U+2028 that JSON allows inside a string.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            values.append((f"{path}:{number}", json.loads(line)))
        except ValueError as exc:
            raise CliError(f"{path}:{number}: not valid JSON ({exc.args[0] if exc.args else exc})") from None
    return values
