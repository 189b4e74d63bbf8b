"""The names an operator looks up in the docs are the ones the code and template.yaml use.

Metric names and environment variables are read from the functions' source (its syntax tree, not
its text), and template names from template.yaml; each must appear in README.md or docs/*.md.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fme_bridge.template import functions, load_template, resources_of_type

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "functions").rglob("*.py"), *(ROOT / "shared").rglob("*.py")])
# Counted for `fme-bridge delivery redrive`'s summary only: the delivery function never meets it.
NOT_PUBLISHED = {"IdentitiesSuperseded"}


def docs_text() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def mentioned(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def _text(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _metric_name_arg(call: ast.Call) -> ast.AST | None:
    for keyword in call.keywords:
        if keyword.arg == "name":
            return keyword.value
    return call.args[0] if call.args else None


def _attr(call: ast.Call) -> str | None:
    return call.func.attr if isinstance(call.func, ast.Attribute) else None


def _loop_names(loop: ast.For) -> Iterator[str]:
    """``for name, value in (("A", ...), ("B", ...)): sink.add_metric(name=name, ...)``."""
    if not isinstance(loop.iter, ast.Tuple | ast.List):
        return
    for element in loop.iter.elts:
        if isinstance(element, ast.Tuple) and element.elts and (name := _text(element.elts[0])):
            yield name


def emitted_metrics() -> set[str]:
    names: set[str] = set()
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                is_metric = _attr(node) == "add_metric" or (
                    isinstance(node.func, ast.Name) and node.func.id == "single_metric"
                )
                counted = (
                    _attr(node) == "count"
                    and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "report"
                    and bool(node.args)
                )
                name = (
                    _text(_metric_name_arg(node)) if is_metric else _text(node.args[0]) if counted else None
                )
                if name:
                    names.add(name)
            elif isinstance(node, ast.For) and any(
                isinstance(call, ast.Call)
                and _attr(call) == "add_metric"
                and isinstance(_metric_name_arg(call), ast.Name)
                for call in ast.walk(node)
            ):
                names.update(_loop_names(node))
    return names - NOT_PUBLISHED


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def environment_reads() -> tuple[set[str], set[str]]:
    """(required, optional): ``aws.env("X")`` and ``os.environ["X"]``; ``os.environ.get("X", ...)``."""
    required: set[str] = set()
    optional: set[str] = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and node.args and (name := _text(node.args[0])):
                func = node.func
                if not isinstance(func, ast.Attribute):
                    continue
                if isinstance(func.value, ast.Name) and func.value.id == "aws" and func.attr == "env":
                    required.add(name)
                elif func.attr == "get" and _is_os_environ(func.value):
                    optional.add(name)
            elif (
                isinstance(node, ast.Subscript) and _is_os_environ(node.value) and (name := _text(node.slice))
            ):
                required.add(name)
    return required, optional


def template_environment() -> dict[str, set[str]]:
    """Each function's environment variables, the Globals' included."""
    template = load_template()
    shared = set(template["Globals"]["Function"]["Environment"]["Variables"])
    return {
        logical: shared | set(props.get("Environment", {}).get("Variables", {}))
        for logical, props in functions().items()
    }


def test_every_published_metric_is_documented() -> None:
    names = emitted_metrics()
    assert {"MessagesReceived", "EventsDelivered", "ImpressionsReceived", "AudienceEntries"} <= names
    text = docs_text()
    assert sorted(name for name in names if not mentioned(f"`{name}`", text)) == []


def test_every_environment_variable_read_is_set_by_the_template_or_documented() -> None:
    required, optional = environment_reads()
    assert {"EVENTS_TABLE", "DEAD_LETTER_QUEUE_URL"} <= required
    set_somewhere = set().union(*template_environment().values())
    assert sorted(required - set_somewhere) == []
    text = docs_text()
    assert sorted(name for name in optional - set_somewhere if not mentioned(f"`{name}`", text)) == []


@pytest.mark.parametrize("section", ["Parameters", "Outputs"])
def test_every_template_parameter_and_output_is_documented(section: str) -> None:
    text = docs_text()
    names = load_template()[section]
    assert sorted(name for name in names if not mentioned(f"`{name}`", text)) == []


def test_every_parameter_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {
        cell
        for line in readme.splitlines()
        if line.startswith("| `")
        for cell in re.findall(r"`(\w+)`", line)
    }
    assert sorted(set(load_template()["Parameters"]) - rows) == []


@pytest.mark.parametrize("resource_type", ["AWS::CloudWatch::Alarm", "AWS::SQS::Queue"])
def test_every_alarm_and_queue_is_named_in_the_docs(resource_type: str) -> None:
    text = docs_text()
    names = list(resources_of_type(resource_type))
    assert names
    assert sorted(name for name in names if not mentioned(name, text)) == []


def test_the_local_stacks_defaults_are_the_ones_docs_local_md_shows() -> None:
    import typer.main

    from fme_bridge.cli import app

    command = typer.main.get_command(app).commands["local"]  # type: ignore[attr-defined]
    defaults = {f"--{p.name.replace('_', '-')}": str(p.default) for p in command.params if p.name != "demo"}
    usage = (ROOT / "docs" / "local.md").read_text().split("```")[1]
    shown = dict(re.findall(r"\[(--[a-z-]+) ([^\]]+)\]", usage))
    assert shown == defaults
    assert defaults == {
        "--host": "127.0.0.1",
        "--port": "3000",
        "--aws-port": "4566",
        "--sink-port": "3001",
        "--fme-port": "3002",
    }


def test_the_readme_says_which_segment_batch_size_keeps_bodies_under_the_body_limit() -> None:
    """A synchronous Lambda payload cannot exceed 6 MB: the README names the Segment setting that keeps
    bodies under the bridge's limit, and every size the docs' table calls safe stays under it."""
    readme = (ROOT / "README.md").read_text()
    limit = load_template()["Parameters"]["MaxBodyBytes"]["Default"]
    assert limit < 6 * 1024 * 1024
    assert mentioned("*Batch Size*", readme)
    assert f"bodies above {limit // 1_000_000} MB are refused with 413" in readme

    table = re.findall(
        r"^\| up to ([\d.]+) KB[^|]*\| ([\d,]+)", (ROOT / "docs" / "inbound.md").read_text(), re.M
    )
    assert len(table) >= 3
    for event_kb, batch_size in table:
        assert float(event_kb) * 1024 * int(batch_size.replace(",", "")) <= limit, (event_kb, batch_size)
