"""``python -m tests.reliability.report``: a run's figures into docs/reliability.md's tables."""

from __future__ import annotations

import json
from pathlib import Path

from tests.reliability import report

TIMEOUT_TITLE = report.SECTIONS["impressions_killed_before_answering"][0]
FAULTS_TITLE = report.SECTIONS["segment_faults"][0]


def record(section: str, **figures: object) -> dict[str, object]:
    return {"section": section, "figures": figures, "soak": True}


def test_the_figures_of_one_test_replace_its_table_and_keep_the_others(tmp_path: Path) -> None:
    document = tmp_path / "reliability.md"
    document.write_text("# Reliability\n\nProse stays.\n")
    figures = tmp_path / "figures.jsonl"
    figures.write_text(
        "\n".join(
            json.dumps(r)
            for r in (
                record("impressions_killed_before_answering", lost=0),
                record("segment_faults", delivered=1000),
            )
        )
    )
    assert report.main([str(figures), str(document)]) == 0
    full = document.read_text()

    figures.write_text(json.dumps(record("impressions_killed_before_answering", lost=0, replayed=7)))
    assert report.main([str(figures), str(document)]) == 0
    text = document.read_text()

    assert text.startswith("# Reliability\n\nProse stays.\n")
    assert text.count("### ") == 2
    # In SECTIONS' order whatever the order of the records: Segment's faults first.
    assert text.index(FAULTS_TITLE) < text.index(TIMEOUT_TITLE)
    assert "| delivered | 1,000 |" in text  # the other test's table is kept as it was
    assert "| replayed | 7 |" in text
    assert text.replace("| replayed | 7 |\n", "") == full
    # Nothing new: the document is written back as it was.
    figures.write_text("")
    report.main([str(figures), str(document)])
    assert document.read_text() == text
