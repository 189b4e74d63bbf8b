"""Writes the figures of a reliability run into ``docs/reliability.md``.

    python -m tests.reliability.report FIGURES.jsonl docs/reliability.md

The document's prose stays as written; only the part between the ``figures:start`` and
``figures:end`` markers changes: one table per section, each with the command that reproduces it.
A section the figures file holds replaces the table of that title; the others are kept, so the
figures of one test (the command under its table) update that table alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

START = "<!-- figures:start -->"
END = "<!-- figures:end -->"
RUN = "RELIABILITY_FIGURES=figures.jsonl .venv/bin/pytest -p no:cacheprovider"

# section -> (title, test that measures it)
SECTIONS: dict[str, tuple[str, str]] = {
    "segment_faults": (
        "Segment failing (30 % 500, 10 % 429 + Retry-After, 5 % timeouts, 3 % dropped connections, outage)",
        "tests/reliability/test_segment_faults.py",
    ),
    "impressions_deadline_mid_batch": (
        "Impressions function out of time mid-batch",
        "tests/reliability/test_lambda_timeout.py::test_deadline_reached_mid_batch",
    ),
    "impressions_killed_before_answering": (
        "Impressions function killed before answering",
        "tests/reliability/test_lambda_timeout.py::test_killed_before_answering",
    ),
    "dynamodb_faults": (
        "DynamoDB throttling and 5xx during webhook ingest",
        "tests/reliability/test_dynamodb_faults.py::test_throttling_and_server_errors_store_every_message_once",
    ),
    "openapi_fuzz": (
        "HTTP API fuzzed from its OpenAPI document (schemathesis), through the real handlers",
        "tests/reliability/test_openapi_fuzz.py",
    ),
    "bad_webhook_bodies": (
        "Hostile webhook bodies (each case answered as listed)",
        "tests/reliability/test_bad_input.py::test_webhook_bad_bodies",
    ),
    "bad_impression_messages": (
        "Hostile impression messages",
        "tests/reliability/test_bad_input.py::test_bad_impression_messages_are_dead_lettered_and_the_good_ones_delivered",
    ),
    "property_tests": (
        "Property-based tests: any JSON value in any field (hypothesis)",
        "tests/reliability/test_properties.py",
    ),
    "ingest_killed_mid_write": (
        "Ingest function killed mid-write, Segment retries",
        "tests/reliability/test_dynamodb_faults.py::test_a_request_killed_mid_write_is_completed_by_the_retry",
    ),
}


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in sorted(value.items())) or "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _add(total: Any, value: Any) -> Any:
    if isinstance(value, dict):
        merged = dict(total or {})
        for key, item in value.items():
            merged[key] = _add(merged.get(key), item)
        return merged
    return (total or 0) + value


def render(records: list[dict[str, Any]]) -> dict[str, str]:
    """Each section's table (with its title and command), by title, from a run's figure records."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        previous = latest.get(record["section"])
        if record.get("merge") and previous is not None:
            record = {**record, "figures": _add(previous["figures"], record["figures"])}
        latest[record["section"]] = record  # otherwise the last run of a section wins
    tables: dict[str, str] = {}
    for section, record in latest.items():
        title, test = SECTIONS.get(section, (section, "tests/reliability"))
        command = f"{'RELIABILITY_SOAK=1 ' if record.get('soak') else ''}{RUN} {test}"
        scale = "soak scale, as in `make soak`" if record.get("soak") else "the scale of `make test`"
        rows = [f"| {name} | {_value(value)} |" for name, value in sorted(record["figures"].items())]
        tables[title] = "\n".join(
            [
                f"### {title}\n",
                f"Reproduce ({scale}): `{command}`\n",
                "| figure | value |\n|---|---|",
                *rows,
                "",
            ]
        )
    return tables


def _tables_in(block: str) -> dict[str, str]:
    """The tables already between the markers, by title."""
    tables: dict[str, str] = {}
    for chunk in ("\n" + block).split("\n### ")[1:]:
        title = chunk.split("\n", 1)[0].strip()
        tables[title] = "### " + chunk.rstrip("\n") + "\n"
    return tables


def update(document: str, tables: dict[str, str]) -> str:
    """``document`` with the given tables in place of the ones of the same title; the others stay
    (a run of one test rewrites its table alone). Tables follow :data:`SECTIONS`' order."""
    before, found, rest = document.partition(START)
    current, after = {}, ""
    if found:
        block, _, after = rest.partition(END)
        current = _tables_in(block)
    merged = {**current, **tables}
    titles = [title for title, _ in SECTIONS.values()]
    order = [t for t in titles if t in merged] + sorted(t for t in merged if t not in titles)
    figures = "\n".join(merged[t] for t in order)
    if not found:
        return f"{document.rstrip()}\n\n{START}\n{figures}\n{END}\n"
    return f"{before}{START}\n{figures}\n{END}{after}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.reliability.report FIGURES.jsonl DOCUMENT.md", file=sys.stderr)
        return 2
    figures_path, document_path = Path(argv[0]), Path(argv[1])
    records = [json.loads(line) for line in figures_path.read_text().splitlines() if line.strip()]
    document = document_path.read_text() if document_path.exists() else "# Reliability\n"
    document_path.write_text(update(document, render(records)))
    print(f"{len(records)} figure records written to {document_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
