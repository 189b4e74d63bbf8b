"""Examples the docs show, read from the docs themselves, so that the tests use what users copy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCS = Path(__file__).parents[1] / "docs"


def json_example(document: str, section: str) -> Any:
    """The first ```json block under the heading ``section`` of ``docs/<document>``."""
    text = (DOCS / document).read_text()
    heading = next(line for line in text.splitlines() if line.lstrip("#").strip() == section)
    after = text.split(heading + "\n", 1)[1]
    return json.loads(after.split("```json\n", 1)[1].split("```", 1)[0])


# The audience of docs/profiles.md, "Audiences".
DOCUMENTED_AUDIENCE: dict[str, Any] = json_example("profiles.md", "Audiences")
