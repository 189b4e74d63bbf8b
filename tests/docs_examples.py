"""Examples the docs show, read from the docs themselves, so that the tests use what users copy."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).parents[1] / "docs"


def json_example(document: str, heading: str) -> Any:
    """The first ```json block of the section ``heading`` (up to the next heading) of ``docs/<document>``."""
    text = (DOCS / document).read_text()
    found = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    assert found, f"docs/{document} has no heading {heading!r}"
    block = re.search(r"^```json\n(.*?)^```", found.group(1), re.M | re.S)
    assert block, f"docs/{document}, {heading!r}: no JSON example"
    return json.loads(block.group(1))


def documented_audience() -> dict[str, Any]:
    """The audience of docs/profiles.md, "Audiences" (a fresh copy for each caller)."""
    audience: dict[str, Any] = json_example("profiles.md", "Audiences")
    return audience
