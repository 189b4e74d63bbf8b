"""``make bench`` in miniature: every measurement runs on a few hundred items and reports sanely.

Nothing here is about speed (no timing is asserted); it keeps the benchmark working as the code it
measures changes: the real handlers still run, every message still arrives, the files are written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as bench_main
from bench import cost, workloads
from shared.outbound.impressions import parse_body

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    assert bench_main.main(["--smoke", "--out", str(out)]) == 0
    return json.loads((out / "latest.json").read_text()), out


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0 and math.isfinite(value)


def test_every_contender_delivers_every_impression(smoke: tuple[dict[str, Any], Path]) -> None:
    results, _ = smoke
    imp = results["impressions"]
    assert imp["impressions"] == bench_main.SMOKE["impressions"]
    for contender in imp["contenders"].values():
        assert contender["messages_accepted"] == imp["impressions"]
        assert positive(contender["impressions_per_second"])
        assert contender["requests"] >= imp["minimum_requests"]
    assert imp["contenders"]["handler"]["batch_item_failures"] == 0
    assert imp["contenders"]["handler_without_last_treatments"]["batch_item_failures"] == 0
    assert imp["contenders"]["handler_gzip"]["batch_item_failures"] == 0
    # Compressed on the wire; every other contender sends plain JSON.
    assert 0 < imp["ratios"]["gzip_wire_bytes_share"] < 0.5
    plain = [c for kind, c in imp["contenders"].items() if kind != "handler_gzip"]
    assert all(c["wire_bytes"] == c["bytes"] for c in plain)
    assert positive(imp["contenders"]["handler"]["peak_rss_mb"])
    assert all(positive(r) for r in imp["ratios"].values())
    # Every impression has a user of its own: each run of the default handler forwards one last
    # treatment per impression (warm-up included), the runs without last treatments none, and the
    # last-treatments function records a message of them.
    warm_up = sum(len(parse_body(body).impressions) for body in workloads.warmup_bodies())
    last = imp["last_treatments"]
    assert last["forwarded_rows_per_run"] == imp["impressions"] + warm_up
    assert last["batch_item_failures"] == 0
    assert positive(last["cpu_seconds_per_write"])


def test_ingest_stores_every_event_on_both_sides(smoke: tuple[dict[str, Any], Path]) -> None:
    results, _ = smoke
    for phase, sides in results["ingest"]["phases"].items():
        kinds = ["real", "baseline"] + (["baseline_conditional"] if phase == "single" else [])
        for kind in kinds:
            side = sides[kind]
            assert set(side["statuses"]) == {"200"}, (phase, kind)
            # Every generated message carries userId and anonymousId: two FME events each.
            assert side["events_stored"] == 2 * side["messages"], (phase, kind)
        assert sides["baseline"]["dynamodb_requests"]["BatchWriteItem"] >= 1
        real = sides["real"]
        if phase == "single":  # two events per body: one conditional put each, on both sides
            assert real["dynamodb_requests"] == {"PutItem": real["events_stored"]}
            conditional = sides["baseline_conditional"]
            assert conditional["dynamodb_requests"] == {"PutItem": conditional["events_stored"]}
            assert positive(sides["time_vs_conditional_baseline"])
        else:
            assert real["dynamodb_requests"]["BatchWriteItem"] >= 1
        assert positive(sides["time_vs_baseline"])


def test_cold_start_answers_the_first_event(smoke: tuple[dict[str, Any], Path]) -> None:
    results, _ = smoke
    functions = results["cold_start"]["functions"]
    assert set(functions) == {"bare", "floor", *bench_main.SMOKE_COLD_FUNCTIONS}
    assert functions["IngestFunction"]["status"] == 200
    # The floor (the bare handler on the bridge's dependencies) is reported against bare.
    assert (
        functions["floor"]["vs_bare"]
        == functions["floor"]["total_seconds"] / functions["bare"]["total_seconds"]
    )
    assert functions["IngestFunction"]["vs_floor"] > 0
    assert functions["ImpressionsFunction"]["batch_item_failures"] == 0
    assert all(positive(f["total_seconds"]) for f in functions.values())


def test_targets_chart_and_cost(smoke: tuple[dict[str, Any], Path]) -> None:
    results, out = smoke
    assert all({"target", "met"} <= set(t) for t in results["targets"].values())
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = cost.table(results)
    assert "per million" in table
    assert positive(results["cost"]["impressions_per_million"]["total"])


def test_workload_mixes_every_shape_in_every_batch() -> None:
    bodies = workloads.impression_bodies(workloads.ImpressionMix().per_batch)
    shapes = set()
    for body in bodies:
        value = json.loads(body)
        if isinstance(value, list):
            shapes.add("webhook_list")
        elif "impressions" in value:
            shapes.add("envelope")
            shapes.update("listener" if "impression" in i else "webhook" for i in value["impressions"])
        else:
            shapes.add("single")
    assert len(bodies) == 10
    assert shapes == {"webhook_list", "envelope", "listener", "webhook", "single"}
