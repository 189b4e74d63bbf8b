"""What a Lambda deployment package holds: requirements.txt installed into a directory of its own.

The cold-start probes import the handlers from this directory and the repository alone (``python -S``:
no site-packages), so packages of the development virtualenv cannot change what a handler loads. httpx,
for one, imports its command-line client (click, rich, pygments) when those happen to be installed;
``sam build`` installs only requirements.txt. The directory lives inside ``.venv``, which ``sam build``
does not copy, and is rebuilt when requirements.txt or the Python version changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from bench.servers import ROOT

REQUIREMENTS = ROOT / "requirements.txt"
DIRECTORY = ROOT / ".venv" / "lambda-deps"
STAMP_NAME = ".requirements-stamp"


def _stamp() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    return f"{sys.version_info.major}.{sys.version_info.minor} {digest}"


def ensure(directory: Path = DIRECTORY, log: object = print) -> Path:
    """Install requirements.txt into ``directory`` unless it already holds this version of it."""
    stamp = directory / STAMP_NAME
    if stamp.is_file() and stamp.read_text() == _stamp():
        return directory
    if callable(log):
        log(f"  installing requirements.txt into {directory.relative_to(ROOT)} (once)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--upgrade",
            "--target",
            str(directory),
            "-r",
            str(REQUIREMENTS),
        ],
        check=True,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    stamp.write_text(_stamp())
    return directory


def python_command(directory: Path) -> tuple[list[str], str]:
    """The interpreter command and ``PYTHONPATH`` of a function: the repository, then its dependencies.

    ``-S`` keeps site-packages (and the development virtualenv) off ``sys.path``, the way only the
    deployment package is on a Lambda's.
    """
    return [sys.executable, "-S"], os.pathsep.join([str(ROOT), str(directory)])
