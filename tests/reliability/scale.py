"""How big the reliability runs are: small in ``make test``, large in ``make soak``.

``RELIABILITY_SOAK=1`` selects the soak counts. ``RELIABILITY_FIGURES=<file>`` makes every test append
the figures it measured to that file (JSON lines), from which ``tests/reliability/report.py`` writes
the figures of ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SOAK = os.environ.get("RELIABILITY_SOAK", "") not in ("", "0")


def count(default: int, soak: int) -> int:
    """``default`` in the test suite, ``soak`` in ``make soak``."""
    return soak if SOAK else default


def record(section: str, figures: dict[str, Any], merge: bool = False) -> None:
    """Append one test's figures to the figures file, when one is named (one line per call).

    ``merge``: the section's records of a run are added up (one per test or worker) rather than
    the last one shown.
    """
    path = os.environ.get("RELIABILITY_FIGURES")
    if not path:
        return
    line = json.dumps({"section": section, "soak": SOAK, "merge": merge, "figures": figures}, sort_keys=True)
    # One write of one line in append mode: lines from parallel workers do not interleave.
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(line + "\n")
