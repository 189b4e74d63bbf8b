"""What a deployment package holds, built the way ``sam build`` builds it (:mod:`fme_bridge.package`).

The cold-start probes import the handlers from such a package alone (``python -S``: no site-packages,
no checkout), so packages of the development virtualenv cannot change what a handler loads. httpx,
for one, imports its command-line client (click, rich, pygments) when those happen to be installed;
the package holds requirements.txt only. Like a Lambda's code directory, the package is read-only to
the probes (``PYTHONDONTWRITEBYTECODE``): they run on the bytecode the build compiled, or, for the
comparison, on sources alone, which is what SAM's standard Python builder would ship.

requirements.txt is installed once into a directory inside ``.venv`` (which ``sam build`` skips) and
again when it, the Python version or the AWS services kept change; the bridge's code is packaged afresh
for every run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from bench.servers import ROOT
from fme_bridge import package

DIRECTORY = ROOT / ".venv" / "lambda-deps"
STAMP_NAME = ".requirements-stamp"
# The reference handler and the probe are packaged with the functions, so they load the same way.
BENCH_MODULES = ("__init__.py", "bare_handler.py", "floor_handler.py", "cold_probe.py")


def _stamp() -> str:
    digest = hashlib.sha256(package.REQUIREMENTS.read_bytes()).hexdigest()
    services = ",".join(sorted(package.AWS_SERVICES))
    return f"{sys.version_info.major}.{sys.version_info.minor} {digest} bytecode models+endpoints+unpacked:{services}"


def ensure(directory: Path = DIRECTORY, log: object = print) -> Path:
    """requirements.txt installed and compiled into ``directory``, unless it already holds this version."""
    stamp = directory / STAMP_NAME
    if stamp.is_file() and stamp.read_text() == _stamp():
        return directory
    if callable(log):
        log(f"  installing requirements.txt into {directory.relative_to(ROOT)} (once)")
    if directory.exists():  # a service pruned before must come back if it is on the list now
        shutil.rmtree(directory)
    package.install_requirements(directory)
    package.prune_service_models(directory)
    package.compile_bytecode(directory)
    stamp.write_text(_stamp())
    return directory


def code_package(target: Path, bytecode: bool = True) -> Path:
    """The bridge's code as the build packages it, plus the reference handler and the probe."""
    package.copy_code(target)
    (target / "bench").mkdir(parents=True, exist_ok=True)
    for name in BENCH_MODULES:
        shutil.copy2(ROOT / "bench" / name, target / "bench" / name)
    if bytecode:
        package.compile_bytecode(target)
    return target


def sources_only(directory: Path, target: Path) -> Path:
    """A copy of ``directory`` without its bytecode."""
    shutil.copytree(
        directory, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True
    )
    return target


def python_command(*directories: Path) -> tuple[list[str], str]:
    """The interpreter command and ``PYTHONPATH`` of a function: the package's directories, in order.

    ``-S`` keeps site-packages (and the development virtualenv) off ``sys.path``, the way only the
    deployment package is on a Lambda's; ``-P`` keeps the working directory off it, or ``python -m``
    would import the bridge from the checkout's sources instead of from the package.
    """
    return [sys.executable, "-S", "-P"], os.pathsep.join(str(d) for d in directories)
