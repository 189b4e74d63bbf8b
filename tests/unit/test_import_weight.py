"""What a function's cold start must not load: modules that would cost it tens of milliseconds for
nothing it does at import (bench/README.md, "Cold start")."""

from __future__ import annotations

import pytest

from fme_bridge.template import functions
from tests.conftest import after_fresh_import

HANDLER_MODULES = sorted({props["Handler"].rsplit(".", 1)[0] for props in functions().values()})

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
    # As a function starts in Lambda with the template's defaults.
    return list(
        after_fresh_import(
            module, "sorted(sys.modules)", LAMBDA_TASK_ROOT="/var/task", POWERTOOLS_TRACE_DISABLED="true"
        )
    )


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
