"""Fixtures of the local stack's tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fme_bridge import template


@pytest.fixture
def template_copy(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A copy of template.yaml that the local stack reads instead of the file: the test edits it."""
    document = copy.deepcopy(template.load_template())
    monkeypatch.setattr(template, "load_template", lambda path=None: document)
    return document
