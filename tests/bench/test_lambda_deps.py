"""The cold-start probes' interpreter: the package's directories only, never the checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench import lambda_deps

ROOT = Path(__file__).resolve().parent.parent.parent


def test_a_probe_started_from_the_checkout_imports_the_bridge_from_the_package(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "__init__.py").write_text("")
    python, pythonpath = lambda_deps.python_command(tmp_path)

    where = subprocess.run(
        [*python, "-c", "import shared; print(shared.__file__)"],
        cwd=ROOT,  # where make bench runs: the checkout's own shared/ is right here
        env={"PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    assert Path(where) == tmp_path / "shared" / "__init__.py"
