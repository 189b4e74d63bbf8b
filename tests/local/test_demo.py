"""The demo's hints name the CLI as it runs from where the stack was started."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fme_bridge.local.demo import cli_command

INSTALLED = Path(sys.executable).parent / "fme-bridge"


def test_the_cli_hint_is_a_bare_fme_bridge_when_the_installed_one_is_first_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(INSTALLED.parent))
    assert cli_command() == "fme-bridge"


def test_the_cli_hint_is_the_installed_script_when_path_finds_another_fme_bridge_or_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    another = tmp_path / "fme-bridge"
    another.write_text("#!/bin/sh\n")
    another.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli_command() == os.path.relpath(INSTALLED)
    monkeypatch.setenv("PATH", "")
    assert cli_command() == os.path.relpath(INSTALLED)


def test_the_cli_hint_is_a_bare_fme_bridge_for_an_interpreter_without_the_script_beside_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert cli_command() == "fme-bridge"
