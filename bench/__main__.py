"""``python -m bench``: every measurement side by side, then the table, JSON, chart and cost figures.

python -m bench                 # the full run (make bench); writes bench/results/ and docs/cost.md
python -m bench --smoke --out DIR   # a few hundred items per measurement, for the test suite
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import cold_start, cost, impressions, ingest, report, workloads
from bench.servers import ROOT, MotoServer, SinkServer

RESULTS = ROOT / "bench" / "results"
COST_DOC = ROOT / "docs" / "cost.md"
COST_START, COST_END = "<!-- bench:cost:start -->", "<!-- bench:cost:end -->"

FULL = {
    "impressions": 100_000,
    "repeats": 2,
    "singles": 5000,
    "batches": 50,
    "batch_size": 1000,
    "cold_repeats": 5,
}
SMOKE = {"impressions": 300, "repeats": 1, "singles": 5, "batches": 1, "batch_size": 20, "cold_repeats": 1}
# The smoke run starts the two busiest functions cold; the full run starts every function.
SMOKE_COLD_FUNCTIONS = ("IngestFunction", "ImpressionsFunction")


def run(sizes: dict[str, int], console: Console) -> dict[str, Any]:
    started = time.time()
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "sizes": sizes,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_start": os.getloadavg()[0],
        },
    }
    with MotoServer() as moto, SinkServer([workloads.OUTBOUND_WRITE_KEY, workloads.WARMUP_WRITE_KEY]) as sink:
        console.print("[bold]1. impressions → Segment[/]")
        results["impressions"] = impressions.run(
            moto, sink, sizes["impressions"], sizes["repeats"], console.print
        )
        console.print("[bold]2. webhook ingest[/]")
        results["ingest"] = ingest.run(
            moto, sizes["singles"], sizes["batches"], sizes["batch_size"], console.print
        )
        console.print("[bold]3. cold start[/]")
        results["cold_start"] = cold_start.run(
            moto,
            sink,
            sizes["cold_repeats"],
            console.print,
            import_profile=sizes is not SMOKE,
            only=SMOKE_COLD_FUNCTIONS if sizes is SMOKE else (),
            # The test suite's smoke run stays offline (this virtualenv, not a deployment package) and short.
            deployment_package=sizes is not SMOKE,
            with_tracing=sizes is not SMOKE,
        )
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    results["seconds"] = time.time() - started
    results["targets"] = {
        f"impressions_{k}": {"value": v.get("value", _ratio(results, k)), **v}
        for k, v in results["impressions"]["targets"].items()
    }
    results["targets"].update({f"ingest_{k}": v for k, v in results["ingest"]["targets"].items()})
    results["targets"].update({f"cold_start_{k}": v for k, v in results["cold_start"]["targets"].items()})
    results["cost"] = {
        "prices": cost.PRICES,
        "prices_as_of": cost.PRICES_AS_OF,
        "impressions_per_million": cost.impressions_per_million(results),
        "webhook_per_million": {p: cost.webhook_per_million(results, p) for p in ("single", "batched")},
        "billion_impressions_a_day": cost.billion_a_day(results),
    }
    return results


def _ratio(results: dict[str, Any], key: str) -> float:
    if key == "peak_rss_mb":
        return float(results["impressions"]["contenders"]["handler"]["peak_rss_mb"])
    return float(results["impressions"]["ratios"][key])


def update_cost_doc(results: dict[str, Any], path: Path = COST_DOC) -> None:
    text = path.read_text()
    start, end = text.index(COST_START) + len(COST_START), text.index(COST_END)
    path.write_text(text[:start] + "\n" + cost.table(results) + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few hundred items per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json and latest.png go")
    args = parser.parse_args(argv)
    # The tables need about 120 columns; rich assumes 80 when the output is not a terminal (make, CI).
    console = Console(width=max(Console().width, 120))
    results = run(SMOKE if args.smoke else FULL, console)
    report.print_tables(results, console)
    report.write_json(results, args.out / "latest.json")
    report.draw_chart(results, args.out / "latest.png")
    if not args.smoke and args.out == RESULTS:
        update_cost_doc(results)
    console.print(
        f"results: {args.out / 'latest.json'}, chart: {args.out / 'latest.png'} ({results['seconds']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
