"""The bounds on reading secrets again: a token bucket per secret, and bounded memory of unknown names."""

from __future__ import annotations

from shared import config
from shared.secret_versions import (
    MAX_REMEMBERED_NAMES,
    SECRET_REFRESH_BURST,
    SECRET_REFRESH_SECONDS,
    _RecentNames,
    _RefreshBudget,
    secret_accepts,
)
from tests.conftest import put_secret


def test_a_burst_of_20_reads_then_one_every_10_seconds() -> None:
    now = [0.0]
    budget = _RefreshBudget(clock=lambda: now[0])
    assert (SECRET_REFRESH_BURST, SECRET_REFRESH_SECONDS) == (20, 10.0)

    assert [budget.take("s") for _ in range(21)] == [True] * 20 + [False]
    assert budget.take("other")  # each secret has its own budget
    now[0] += 9.9
    assert not budget.take("s")
    now[0] += 0.1
    assert budget.take("s")
    assert not budget.take("s")


def test_an_unused_budget_fills_up_to_the_burst_only() -> None:
    now = [0.0]
    budget = _RefreshBudget(clock=lambda: now[0])
    budget.take("s")
    now[0] += 1_000 * SECRET_REFRESH_SECONDS
    assert [budget.take("s") for _ in range(21)] == [True] * 20 + [False]


def test_remembered_names_are_bounded() -> None:
    names = _RecentNames(lambda: 60.0, clock=lambda: 0.0)
    for n in range(MAX_REMEMBERED_NAMES):
        names.add(f"n{n}")
    assert "n0" in names

    names.add("one too many")

    assert "one too many" in names
    assert "n0" not in names  # none had expired: all are forgotten rather than grow without bound


def test_with_the_budget_spent_the_cached_previous_version_is_still_accepted(function_env) -> None:
    function_env("IngestFunction")
    put_secret("inbound/c1", "old")
    put_secret("inbound/c1", "new")
    name = f"{config.config_prefix()}/inbound/c1"

    for _ in range(SECRET_REFRESH_BURST + 1):
        assert not secret_accepts(name, lambda secret: secret == "wrong")

    assert secret_accepts(name, lambda secret: secret == "old")
    assert secret_accepts(name, lambda secret: secret == "new")


def test_a_secret_created_after_it_was_found_missing_is_accepted_beyond_the_refresh_burst(
    function_env,
) -> None:
    """Once found, it is no longer "unknown": its requests stop drawing on the refresh budget."""
    function_env("IngestFunction")
    name = f"{config.config_prefix()}/inbound/late"
    assert not secret_accepts(name, lambda secret: secret == "s3cret")

    put_secret("inbound/late", "s3cret")

    assert all(
        secret_accepts(name, lambda secret: secret == "s3cret") for _ in range(SECRET_REFRESH_BURST * 2)
    )
