"""A function's deployment package: requirements.txt, the bridge's code, and compiled bytecode.

``sam build`` runs this for every function (template.yaml ``BuildMethod: makefile``, the Makefile's
``build-<Function>`` targets)::

    python3.13 -m fme_bridge.package "$ARTIFACTS_DIR" --platform manylinux2014_aarch64

SAM's standard Python builder ships sources only, and a Lambda cannot write ``__pycache__`` (its code
directory is read-only), so every cold start compiled every module again: ``import boto3`` alone took
three times as long as from bytecode. Here the bytecode is compiled at build time, hash-based and
unchecked, so that it stays valid whatever timestamps the deployment zip gives the sources. Only what
the functions import goes in (``functions``, ``shared``): no tests, docs, or benchmarks; and of the
models of every AWS service that botocore and boto3 carry, only those of the services the functions
call (:data:`AWS_SERVICES`), unpacked, and only their entries in botocore's ``endpoints.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements.txt"
CODE = ("functions", "shared")
# The functions' runtime (template.yaml Globals): bytecode is only valid for the version that wrote it.
RUNTIME_VERSION = (3, 13)
# The AWS services the functions call: their clients (shared.aws, Powertools' SSM and Secrets Manager
# providers) and X-Ray's sampling client when tracing is on. botocore and boto3 carry a model of each
# of some 420 services, 28 MB, half of the package; and botocore looks through all of their
# directories whenever a client first needs a kind of model (about 11 ms each time). A client of a
# service missing here fails with UnknownServiceError: tests/test_package.py holds the code to this list.
AWS_SERVICES = frozenset({"dynamodb", "secretsmanager", "sqs", "ssm", "xray"})


class PackageError(RuntimeError):
    """The package cannot be built as asked; the message says what to change."""


def install_requirements(
    target: Path, platform: str | None = None, requirements: Path = REQUIREMENTS
) -> None:
    """``pip install --target``; with ``platform`` (e.g. ``manylinux2014_aarch64``), wheels for that
    platform and the runtime's Python, whatever machine builds."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if platform:
        version = ".".join(map(str, RUNTIME_VERSION))
        command += ["--only-binary=:all:", "--platform", platform, "--implementation", "cp"]
        command += ["--python-version", version]
    command += ["--no-compile", "--upgrade", "--target", str(target), "-r", str(requirements)]
    # The arguments are this module's own and paths; no shell is involved.
    subprocess.run(command, check=True, env={**os.environ, "PIP_NO_INPUT": "1"})  # noqa: S603


def copy_code(target: Path, packages: Iterable[str] = CODE, root: Path = ROOT) -> None:
    """The bridge's own packages, without the bytecode a development checkout accumulates."""
    for package in packages:
        shutil.copytree(
            root / package,
            target / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            dirs_exist_ok=True,
        )


def prune_service_models(target: Path, keep: Iterable[str] = AWS_SERVICES) -> None:
    """Remove the botocore and boto3 models of the services outside ``keep``, and their endpoints."""
    keep = set(keep)
    for data in (target / "botocore" / "data", target / "boto3" / "data"):
        if not data.is_dir():
            continue
        for entry in data.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry)
    _prune_endpoints(target / "botocore" / "data", keep)
    _decompress_models(target / "botocore" / "data")


def _decompress_models(data: Path) -> None:
    """The kept models as plain JSON, which botocore reads before a ``.json.gz`` of the same name.

    Every client's first start reads its service's model; unpacking it took 1 to 6 ms a client (SSM's
    model is 925 KB of JSON), for 1.9 MB more in the unzipped package and about the same zip.
    """
    if not data.is_dir():
        return
    for packed in data.rglob("*.json.gz"):
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()


def _prune_endpoints(data: Path, keep: set[str]) -> None:
    """``endpoints.json`` with only the kept services' entries.

    The first client of a process loads this file (1.2 MB, every service of every partition) into
    ordered dicts for botocore's endpoint resolver: about 20 ms of every cold start, for a few kB of it
    that the functions' clients read. Its entries are named by the services' endpoint prefix.
    """
    path = data / "endpoints.json"
    if not path.is_file():
        return
    endpoints = json.loads(path.read_text(encoding="utf-8"))
    prefixes = keep | {_endpoint_prefix(data / service) for service in keep} - {None}
    for partition in endpoints.get("partitions", []):
        services = partition.get("services", {})
        partition["services"] = {name: entry for name, entry in services.items() if name in prefixes}
    path.write_text(json.dumps(endpoints, separators=(",", ":")), encoding="utf-8")


def _endpoint_prefix(service: Path) -> str | None:
    """The ``endpointPrefix`` of the newest model of ``service``, if botocore carries one."""
    versions = sorted(service.glob("*/service-2.json*"))  # service-2.json or .json.gz, never sdk-extras
    if not versions:
        return None
    newest = versions[-1]
    raw = gzip.decompress(newest.read_bytes()) if newest.suffix == ".gz" else newest.read_bytes()
    prefix = json.loads(raw).get("metadata", {}).get("endpointPrefix")
    return prefix if isinstance(prefix, str) else None


def check_interpreter() -> None:
    """Bytecode is only valid for the Python version that wrote it: the build runs on the runtime's."""
    if sys.version_info[:2] != RUNTIME_VERSION:
        raise PackageError(
            "bytecode is compiled for the interpreter that runs the build: run it with python"
            + ".".join(map(str, RUNTIME_VERSION))
            + f" (the functions' runtime), not {sys.version.split()[0]}"
        )


def compile_bytecode(target: Path) -> None:
    """Every module under ``target``, for this interpreter, as unchecked hash-based ``.pyc`` files."""
    check_interpreter()
    # In a process of its own: compileall's worker pool would start this program again in each worker.
    options = ["-q", "-f", "-j", "0", "--invalidation-mode", "unchecked-hash"]
    compiled = subprocess.run([sys.executable, "-m", "compileall", *options, str(target)])  # noqa: S603
    if compiled.returncode != 0:
        raise PackageError(f"some modules under {target} did not compile (listed above)")


def build(target: Path, platform: str | None = None) -> Path:
    check_interpreter()
    target.mkdir(parents=True, exist_ok=True)
    install_requirements(target, platform)
    prune_service_models(target)
    copy_code(target)
    compile_bytecode(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fme_bridge.package", description=__doc__.split("\n")[0])
    parser.add_argument("target", type=Path, help="the package directory (sam build: $ARTIFACTS_DIR)")
    parser.add_argument(
        "--platform",
        help="pip platform tag of the functions' architecture (template.yaml: arm64 -> "
        "manylinux2014_aarch64); omitted: this machine's",
    )
    args = parser.parse_args(argv)
    try:
        build(args.target, args.platform)
    except (PackageError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
