"""Deployment packages: what sam build runs for each function, and what it puts in the package."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fme_bridge import package
from fme_bridge.template import functions, load_template

ROOT = Path(__file__).resolve().parent.parent


def pyc_flags(pyc: Path) -> int:
    """The flags word of a .pyc header (PEP 552): 0b01 hash-based, 0b10 checked against the source."""
    return int.from_bytes(pyc.read_bytes()[4:8], "little")


def test_every_function_builds_with_the_makefile_in_place() -> None:
    resources = load_template()["Resources"]
    for logical in functions():
        assert resources[logical].get("Metadata", {}).get("BuildMethod") == "makefile", logical
        dry_run = subprocess.run(
            ["make", "-n", f"build-{logical}", "ARTIFACTS_DIR=/tmp/artifacts"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        command = "-m fme_bridge.package /tmp/artifacts --platform manylinux2014_aarch64"
        assert command in dry_run.replace('"', "")
    # In place: a copy to a scratch directory would copy .venv along.
    samconfig = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert samconfig["default"]["build"]["parameters"]["build_in_source"] is True


def test_the_platform_matches_the_functions_architecture() -> None:
    assert load_template()["Globals"]["Function"]["Architectures"] == ["arm64"]
    makefile = (ROOT / "Makefile").read_text()
    assert "LAMBDA_PLATFORM ?= manylinux2014_aarch64" in makefile
    runtime = load_template()["Globals"]["Function"]["Runtime"]
    assert runtime == "python{}.{}".format(*package.RUNTIME_VERSION)


def test_the_package_holds_the_code_without_a_checkouts_bytecode(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    for name in ("functions/ingest/app.py", "shared/aws.py", "tests/test_x.py", "bench/b.py"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("VALUE = 1\n")
    stale = checkout / "shared" / "__pycache__" / "aws.cpython-313.pyc"
    stale.parent.mkdir()
    stale.write_bytes(b"stale")

    target = tmp_path / "package"
    package.copy_code(target, root=checkout)

    assert (target / "functions" / "ingest" / "app.py").is_file()
    assert (target / "shared" / "aws.py").is_file()
    assert not (target / "tests").exists()
    assert not (target / "bench").exists()
    assert not (target / "shared" / "__pycache__").exists()


@pytest.mark.skipif(
    sys.version_info[:2] != package.RUNTIME_VERSION, reason="bytecode is compiled by the runtime's Python"
)
def test_bytecode_is_hash_based_and_never_checked_against_the_sources(tmp_path: Path) -> None:
    package.copy_code(tmp_path)
    package.compile_bytecode(tmp_path)
    pyc = tmp_path / "shared" / "__pycache__" / f"aws.{sys.implementation.cache_tag}.pyc"
    # Unchecked: a deployment zip's timestamps cannot invalidate it.
    assert pyc_flags(pyc) == 0b01
    sources = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py"))
    compiled = sorted(
        (p.parent.parent / (p.name.split(".")[0] + ".py")).relative_to(tmp_path)
        for p in tmp_path.rglob("*.pyc")
    )
    assert sources == compiled
    # And the package imports from it, with nothing written (a Lambda's code directory is read-only).
    before = sorted(tmp_path.rglob("*"))
    subprocess.run(
        [sys.executable, "-c", "import shared.aws, functions.ingest"],
        cwd=tmp_path,
        env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.skipif(
    sys.version_info[:2] != package.RUNTIME_VERSION, reason="bytecode is compiled by the runtime's Python"
)
def test_a_module_that_does_not_compile_fails_the_build(tmp_path: Path) -> None:
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "broken.py").write_text("def handler(:\n")
    with pytest.raises(package.PackageError, match="did not compile"):
        package.compile_bytecode(tmp_path)


def test_bytecode_for_another_python_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(package, "RUNTIME_VERSION", (3, 99))
    with pytest.raises(package.PackageError, match=r"run it with python3\.99"):
        package.compile_bytecode(tmp_path)
    assert package.main([str(tmp_path / "p"), "--platform", "manylinux2014_aarch64"]) == 1


def test_only_the_models_of_the_services_the_functions_call_are_kept(tmp_path: Path) -> None:
    for library, services in (
        ("botocore", ("dynamodb", "s3", "ssm", "xray")),
        ("boto3", ("dynamodb", "ec2")),
    ):
        for service in services:
            (tmp_path / library / "data" / service / "2012-08-10").mkdir(parents=True)
    for common in ("endpoints.json", "partitions.json", "_retry.json"):
        (tmp_path / "botocore" / "data" / common).write_text("{}")

    package.prune_service_models(tmp_path)

    kept = {p.name for p in (tmp_path / "botocore" / "data").iterdir()}
    assert kept == {"dynamodb", "ssm", "xray", "endpoints.json", "partitions.json", "_retry.json"}
    assert {p.name for p in (tmp_path / "boto3" / "data").iterdir()} == {"dynamodb"}


def test_only_the_endpoints_of_the_services_the_functions_call_are_kept(tmp_path: Path) -> None:
    data = tmp_path / "botocore" / "data"
    # A kept service's endpoints are named by its newest model's endpoint prefix, not its directory.
    for service, prefix, version in (
        ("dynamodb", "dynamodb", "2012-08-10"),
        ("cloudwatch", "monitoring", "2010-08-01"),
        ("cloudwatch", "retired-monitoring", "2009-05-15"),
    ):
        model = data / service / version / "service-2.json.gz"
        model.parent.mkdir(parents=True)
        model.write_bytes(gzip.compress(json.dumps({"metadata": {"endpointPrefix": prefix}}).encode()))
    services = {
        "dynamodb": {"endpoints": {}},
        "monitoring": {},
        "retired-monitoring": {},
        "s3": {},
        "streams.dynamodb": {},
    }
    partitions = [
        {
            "partition": name,
            "regions": {"r-1": {}},
            "defaults": {"hostname": "{service}.{region}"},
            "services": services,
        }
        for name in ("aws", "aws-cn")
    ]
    (data / "endpoints.json").write_text(json.dumps({"partitions": partitions, "version": 3}))

    package.prune_service_models(tmp_path, keep={"dynamodb", "cloudwatch"})

    pruned = json.loads((data / "endpoints.json").read_text())
    assert pruned["version"] == 3
    assert [p["partition"] for p in pruned["partitions"]] == ["aws", "aws-cn"]
    for partition in pruned["partitions"]:
        assert partition["services"] == {"dynamodb": {"endpoints": {}}, "monitoring": {}}
        assert partition["regions"] == {"r-1": {}}  # everything but the other services stays


def test_the_kept_models_are_unpacked_and_botocore_loads_them(tmp_path: Path) -> None:
    from botocore.loaders import JSONFileLoader

    model = tmp_path / "botocore" / "data" / "ssm" / "2014-11-06" / "service-2.json.gz"
    model.parent.mkdir(parents=True)
    document = {"metadata": {"endpointPrefix": "ssm"}, "operations": {"GetParameter": {}}}
    model.write_bytes(gzip.compress(json.dumps(document).encode()))

    package.prune_service_models(tmp_path)

    assert [p.name for p in model.parent.iterdir()] == ["service-2.json"]
    assert JSONFileLoader().load_file(str(model.parent / "service-2")) == document


def test_every_aws_client_the_code_creates_is_of_a_kept_service() -> None:
    sources = [path for code in package.CODE for path in (ROOT / code).rglob("*.py")]
    called = {
        match
        for path in sources
        for match in re.findall(r"\b(?:client|resource)\(\s*[\"']([a-z0-9-]+)[\"']", path.read_text())
    }
    assert called, "no AWS client found: the pattern no longer matches how clients are created"
    assert called <= package.AWS_SERVICES
    # Powertools' tracer (shared.tracing) samples through an X-Ray client when tracing is on.
    assert "xray" in package.AWS_SERVICES
    assert "from aws_lambda_powertools import Tracer" in (ROOT / "shared" / "tracing.py").read_text()


def test_a_plain_sam_deploy_deploys_the_dev_stack_as_make_deploy_does() -> None:
    samconfig = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert samconfig["default"]["deploy"] == samconfig["dev"]["deploy"]
    assert "--config-env $(or $(ENV),dev)" in (ROOT / "Makefile").read_text()
