"""What a function's cold start must not load: modules that would cost it tens of milliseconds for
nothing it does at import (bench/README.md, "Cold start")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fme_bridge.template import load_template

ROOT = Path(__file__).resolve().parents[2]

HANDLER_MODULES = sorted(
    {
        resource["Properties"]["Handler"].rsplit(".", 1)[0]
        for resource in load_template()["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function"
    }
)

NOT_AT_IMPORT = {
    # Powertools' batch types import all of its parser's pydantic event models when pydantic is
    # loaded before them: the stream consumers import the batch utility before anything of theirs.
    "aws_lambda_powertools.utilities.parser": "Powertools' parser models",
    # The template's default is Tracing=Disabled.
    "aws_xray_sdk.core": "the X-Ray SDK",
    # An httpx client's first request loads them; most functions send nothing at import, and the
    # audiences functions rarely send at all.
    "httpcore": "httpx's transport",
    "anyio": "httpcore's asyncio backend",
}


def _loaded(module: str) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "LAMBDA_", "AWS_SAM"))}
    # As a function starts in Lambda with the template's defaults.
    env.update(
        PYTHONPATH=str(ROOT),
        AWS_DEFAULT_REGION="us-east-1",
        LAMBDA_TASK_ROOT="/var/task",
        POWERTOOLS_TRACE_DISABLED="true",
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(completed.stdout.strip().splitlines()[-1]))


def test_every_function_of_the_template_is_checked() -> None:
    assert len(HANDLER_MODULES) >= 6
    assert "functions.delivery.app" in HANDLER_MODULES


@pytest.mark.parametrize("module", HANDLER_MODULES)
def test_a_function_loads_nothing_heavy_it_does_not_use_at_import(module: str) -> None:
    loaded = _loaded(module)
    assert module in loaded
    heavy = {
        what: description
        for what, description in NOT_AT_IMPORT.items()
        if any(name == what or name.startswith(what + ".") for name in loaded)
    }
    assert heavy == {}
