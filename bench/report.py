"""The results of a run as a rich table, a JSON file and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _mark(met: bool) -> str:
    return "[green]met[/]" if met else "[red]missed[/]"


def print_tables(results: dict[str, Any], console: Console) -> None:
    imp = results["impressions"]
    t = Table(
        title=f"Impressions → Segment ({imp['impressions']:,} impressions, SQS batches of {imp['sqs_batch_size']})"
    )
    for column in (
        "contender",
        "impressions/s",
        "wall s",
        "CPU s",
        "HTTP requests",
        "vs minimum",
        "peak RSS MB",
    ):
        t.add_column(column, justify="right" if column != "contender" else "left")
    names = {
        "handler": "bridge impressions handler",
        "handler_without_last_treatments": "  … with LastTreatments=Disabled",
        "handler_gzip": "  … and gzip",
        "official": "segment-analytics-python",
        "wire": "wire limit (500 KB bodies)",
    }
    for kind, c in imp["contenders"].items():
        t.add_row(
            names[kind],
            f"{c['impressions_per_second']:,.0f}",
            f"{c['seconds']:.2f}",
            f"{c['cpu_seconds']:.2f}",
            f"{c['requests']:,}",
            f"{c['requests_over_minimum']:.2f}×",
            f"{c.get('peak_rss_mb', '')}",
        )
    console.print(t)
    r = imp["ratios"]
    console.print(
        f"handler / official: {r['handler_vs_official']:.2f}× (target ≥ 5: "
        f"{_mark(imp['targets']['handler_vs_official']['met'])}); CPU: {r['handler_vs_official_cpu']:.2f}×  ·  "
        f"handler / wire: {r['handler_vs_wire']:.2f}× (target ≥ 0.6: "
        f"{_mark(imp['targets']['handler_vs_wire']['met'])})  ·  peak RSS "
        f"{imp['contenders']['handler']['peak_rss_mb']} MB (≤ 256: {_mark(imp['targets']['peak_rss_mb']['met'])})"
    )
    if "without_last_treatments_vs_official" in r:
        console.print(
            f"with LastTreatments=Disabled: {r['without_last_treatments_vs_official']:.2f}× the official client, "
            f"{r['without_last_treatments_vs_handler']:.2f}× the default handler (no target)"
        )
    if "gzip_vs_without_last_treatments" in r:
        console.print(
            f'and "gzip": true: {r["gzip_vs_without_last_treatments"]:.2f}× the impressions/s, '
            f"{r['gzip_cpu_vs_without_last_treatments']:.2f}× the CPU, "
            f"{r['gzip_wire_bytes_share']:.1%} of the bytes on the wire (no target)"
        )

    t = Table(title="Webhook ingest (moto DynamoDB in its own process)")
    for column in (
        "phase",
        "handler",
        "messages/s",
        "FME events/s",
        "wall s",
        "CPU s",
        "DynamoDB req/event",
        "vs baseline",
        "vs same writes",
    ):
        t.add_column(
            column, justify="left" if column in ("phase", "handler") else "right", no_wrap=column == "handler"
        )
    names = {
        "real": "bridge ingest",
        "baseline": "baseline: BatchWriteItem",
        "baseline_conditional": "baseline: conditional puts",
    }
    for phase, sides in results["ingest"]["phases"].items():
        for kind in [k for k in names if k in sides]:
            s = sides[kind]
            same_writes = sides.get("time_vs_conditional_baseline")
            t.add_row(
                phase,
                names[kind],
                f"{s['messages_per_second']:,.0f}",
                f"{s['events_per_second']:,.0f}",
                f"{s['seconds']:.2f}",
                f"{s['cpu_seconds']:.2f}",
                f"{s['dynamodb_requests_per_event']:.3f}",
                f"{sides['time_vs_baseline']:.2f}×" if kind == "real" else "",
                f"{same_writes:.2f}×" if kind == "real" and same_writes is not None else "",
            )
    console.print(t)

    cold = results["cold_start"]["functions"]
    t = Table(title="Cold start: fresh interpreter, import + first invocation (median)")
    for column in (
        "function",
        "import ms",
        "first invocation ms",
        "total ms",
        "vs bare",
        "vs floor",
        "traced",
    ):
        t.add_column(column, justify="left" if column == "function" else "right")
    for name, c in cold.items():
        t.add_row(
            name,
            f"{c['import_seconds'] * 1000:.0f}",
            f"{c['first_invocation_seconds'] * 1000:.0f}",
            f"{c['total_seconds'] * 1000:.0f}",
            f"{c['vs_bare']:.2f}×" if "vs_bare" in c else "1.00×",
            f"{c['vs_floor']:.2f}×" if "vs_floor" in c else "",
            f"{c['with_tracing']['vs_bare']:.2f}×" if "with_tracing" in c else "",
        )
    console.print(t)
    if any(c.get("heaviest_imports") for c in cold.values()):
        t = Table(title="Heaviest imports: self time of each top-level package (python -X importtime), ms")
        t.add_column("function")
        t.add_column("packages")
        for name, c in cold.items():
            t.add_row(
                name, ", ".join(f"{h['package']} {h['milliseconds']:.0f}" for h in c["heaviest_imports"][:6])
            )
        console.print(t)

    t = Table(title="Targets")
    for column in ("measure", "value", "target", ""):
        t.add_column(column)
    for name, target in results["targets"].items():
        value = target.get("value")
        t.add_row(
            name,
            f"{value:.3f}" if isinstance(value, float) else str(value),
            target["target"],
            _mark(target["met"]),
        )
    console.print(t)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def draw_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    imp = results["impressions"]["contenders"]
    shown = {
        "handler": ("bridge\nhandler", "#2b8a3e"),
        "handler_without_last_treatments": ("no last\ntreatments", "#8ce99a"),
        "handler_gzip": ("… and\ngzip", "#b2f2bb"),
        "official": ("official\nclient", "#868e96"),
        "wire": ("wire\nlimit", "#1c7ed6"),
    }
    kinds = [k for k in shown if k in imp]
    values = [imp[k]["impressions_per_second"] for k in kinds]
    bars = axes[0].bar([shown[k][0] for k in kinds], values, color=[shown[k][1] for k in kinds])
    axes[0].bar_label(bars, labels=[f"{v:,.0f}" for v in values])
    axes[0].set_title("Impressions → Segment, impressions/s")
    ratios = results["impressions"]["ratios"]
    axes[0].set_xlabel(
        f"{ratios['handler_vs_official']:.2f}× the official client, "
        f"{ratios['handler_vs_wire']:.2f}× the wire limit"
    )

    phases = results["ingest"]["phases"]
    names = sorted(phases, key=lambda phase: phase != "single")  # single messages, then bodies
    x = range(len(names))

    def ms_per_message(side: dict[str, Any] | None) -> float:
        # Per message: the conditional-writes baseline writes fewer messages than the others.
        return 1000 * side["seconds"] / side["messages"] if side else 0.0

    real = [ms_per_message(phases[p]["real"]) for p in names]
    base = [ms_per_message(phases[p]["baseline"]) for p in names]
    same = [ms_per_message(phases[p].get("baseline_conditional")) for p in names]
    axes[1].bar([i - 0.27 for i in x], real, 0.27, label="bridge ingest", color="#2b8a3e")
    axes[1].bar(list(x), base, 0.27, label="json.loads + BatchWriteItem", color="#868e96")
    axes[1].bar([i + 0.27 for i in x], same, 0.27, label="json.loads + conditional PutItems", color="#ced4da")
    ticks = [
        f"{p}\n{phases[p]['time_vs_baseline']:.2f}× baseline"
        + (
            f"\n{phases[p]['time_vs_conditional_baseline']:.2f}× same writes"
            if "time_vs_conditional_baseline" in phases[p]
            else ""
        )
        for p in names
    ]
    axes[1].set_xticks(list(x), ticks)
    axes[1].set_title("Webhook ingest, ms per message (moto DynamoDB)")
    axes[1].set_ylim(top=max(real + base + same) * 1.4)  # room for the legend above the bars
    axes[1].legend(loc="upper left")

    cold = results["cold_start"]["functions"]
    names = [n for n in ("bare", "floor") if n in cold] + sorted(
        n for n in cold if n not in ("bare", "floor")
    )
    imports = [cold[n]["import_seconds"] * 1000 for n in names]
    firsts = [cold[n]["first_invocation_seconds"] * 1000 for n in names]
    labels = [{"bare": "bare boto3 handler", "floor": "bare + dependencies"}.get(n, n) for n in names]
    axes[2].barh(labels, imports, label="import", color="#1c7ed6")
    axes[2].barh(labels, firsts, left=imports, label="first invocation", color="#74c0fc")
    axes[2].set_title("Cold start, ms (median)")
    axes[2].invert_yaxis()
    axes[2].legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    fig.suptitle(
        f"fme-segment-bridge benchmarks — {results['started_at']} "
        f"({results['machine']['cpus']} cores, load {results['machine']['load_average_start']:.1f})"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
