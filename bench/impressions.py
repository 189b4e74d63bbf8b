"""Measurement 1 — impressions → Segment: the real handler vs the official client vs the wire limit.

All of them send the same track messages to the same Segment-compatible server (``bench.sink_process``,
its own process) over loopback, each from a fresh process of its own:

- **handler**: ``functions.impressions.app.lambda_handler`` on SQS events of 10 messages (envelopes,
  webhook arrays and single impressions, mixed), configs and write key from SSM / Secrets Manager
  in a moto server (cached after the first invocation, as in Lambda); it forwards last treatments
  to their queue in the moto server, as the stack does by default;
- **handler without last treatments**: the same, with the environment of a stack deployed with
  ``LastTreatments=Disabled`` (no target: what recording last treatments costs the handler);
- **handler with gzip**: the same again, its outbound config with ``"gzip": true`` (no target:
  what compressing the requests costs in CPU and saves in bytes);
- **official**: ``segment-analytics-python`` (``segment.analytics.Client``, default settings except
  a queue large enough that nothing is dropped), ``track`` per message then ``flush``;
- **wire**: the same messages pre-serialised into 500 KB batch bodies, POSTed one after another by
  one ``httpx.Client`` — what the server and loopback take when the client costs nothing.

Usage as a worker: ``python -m bench.impressions {handler|official|wire} INPUT RESULT``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import profiling, workloads
from bench.servers import MotoServer, SinkServer, child_env, put_secret
from shared.profiles.forwarding import decode_body, encode_bodies

if TYPE_CHECKING:
    from fme_bridge.template import Stack

BATCH_LIMIT_BYTES = 500 * 1000
LAST_TREATMENT_SAMPLE = 500


# ---------------------------------------------------------------------------------------------
# Workers (each in a fresh process)


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM).

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that across ``execve``, so a worker would report
    the orchestrator's memory at the time it was started.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _sqs_record(body: str, arn: str) -> dict[str, Any]:
    """An SQS record as Lambda's event source mapping delivers it."""
    from fme_bridge.local.sqs_source import body_record

    return body_record(body, arn, "us-east-1")


def handler_worker(bodies_path: Path, warmup_path: Path) -> dict[str, Any]:
    from fme_bridge.local.runtime import LambdaContext
    from functions.impressions import app

    rss_after_import = _current_rss_mb()
    arn = "arn:aws:sqs:us-east-1:123456789012:bench-ImpressionsQueue"

    cpu = [0.0]

    def invoke(bodies: list[str]) -> tuple[float, int]:
        event = {"Records": [_sqs_record(body, arn) for body in bodies]}
        context = LambdaContext("bench-impressions", 512, 60, arn.replace("sqs", "lambda"))
        start, cpu_start = time.perf_counter(), time.process_time()
        response = app.lambda_handler(event, context)
        cpu[0] += time.process_time() - cpu_start
        return time.perf_counter() - start, len(response.get("batchItemFailures", []))

    warmup = [json.loads(line) for line in warmup_path.read_text().splitlines()]
    warmup_seconds = [invoke(batch)[0] for batch in workloads.sqs_batches(warmup)]
    rss_after_warmup = _current_rss_mb()

    durations: list[float] = []
    failures = 0
    cpu[0] = 0.0
    profiler = profiling.start()
    with bodies_path.open() as fh:
        lines = (json.loads(line) for line in fh)
        while True:
            batch = [b for _, b in zip(range(10), lines, strict=False)]
            if not batch:
                break
            seconds, failed = invoke(batch)
            durations.append(seconds)
            failures += failed
    if profiler is not None:
        profiling.save(profiler, "impressions-handler")
    return {
        "seconds": sum(durations),
        "cpu_seconds": cpu[0],
        "invocations": len(durations),
        "invocation_seconds_mean": sum(durations) / len(durations) if durations else 0.0,
        "invocation_seconds_max": max(durations, default=0.0),
        "first_invocation_seconds": warmup_seconds[0],
        "warm_up_invocations": len(warmup_seconds),
        "batch_item_failures": failures,
        "rss_after_import_mb": round(rss_after_import, 1),
        "rss_after_warm_up_mb": round(rss_after_warmup, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def last_treatments_worker(warmup_path: Path, body_path: Path) -> dict[str, Any]:
    """The last-treatments function on a message of forwarded impressions, warm: what a write costs."""
    from fme_bridge.local.runtime import LambdaContext
    from functions.last_treatments import app
    from shared.profiles.forwarding import decode_body

    arn = "arn:aws:sqs:us-east-1:123456789012:bench-LastTreatmentsQueue"
    context = LambdaContext("bench-last-treatments", 512, 60, arn.replace("sqs", "lambda"))
    app.lambda_handler({"Records": [_sqs_record(warmup_path.read_text(), arn)]}, context)  # configs, clients

    body = body_path.read_text()
    rows = len(decode_body(body))
    start, cpu_start = time.perf_counter(), time.process_time()
    response = app.lambda_handler({"Records": [_sqs_record(body, arn)]}, context)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "rows": rows,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "cpu_seconds_per_write": cpu_seconds / rows if rows else float("nan"),
        "batch_item_failures": len(response.get("batchItemFailures", [])),
    }


def official_worker(messages_path: Path, sink_url: str) -> dict[str, Any]:
    from datetime import datetime

    from segment.analytics import Client

    calls = []
    with messages_path.open() as fh:
        for line in fh:
            m = json.loads(line)
            calls.append(
                {
                    "user_id": m.get("userId"),
                    "anonymous_id": m.get("anonymousId"),
                    "event": m["event"],
                    "properties": m["properties"],
                    "context": m["context"],
                    "timestamp": datetime.fromisoformat(m["timestamp"]),
                    "message_id": m["messageId"],
                }
            )
    errors: list[str] = []
    client = Client(
        workloads.OUTBOUND_WRITE_KEY,
        host=sink_url,
        max_queue_size=len(calls) + 1,  # the default (10,000) would drop messages at this volume
        on_error=lambda exc, batch: errors.append(repr(exc)[:200]),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    for call in calls:
        client.track(**call)
    client.flush()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    client.join()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def wire_worker(batches_path: Path, sink_url: str) -> dict[str, Any]:
    import base64

    import httpx

    bodies = batches_path.read_bytes().split(b"\n")
    auth = "Basic " + base64.b64encode(f"{workloads.OUTBOUND_WRITE_KEY}:".encode()).decode()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=sink_url, timeout=30) as http:
        start, cpu_start = time.perf_counter(), time.process_time()
        for body in bodies:
            status = http.post("/v1/batch", content=body, headers=headers).status_code
            statuses[status] = statuses.get(status, 0) + 1
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "statuses": statuses}


# ---------------------------------------------------------------------------------------------
# Orchestration


def track_messages(bodies: list[str]) -> list[bytes]:
    """The serialised track messages the handler sends for ``bodies`` — built by the handler's own code."""
    from shared.config import OutboundConfig
    from shared.outbound.destinations import Destination, Router
    from shared.outbound.impressions import parse_body
    from shared.outbound.segment_messages import encode, track_message

    router = Router([Destination("bench", OutboundConfig.model_validate(workloads.OUTBOUND_CONFIG))])
    out = []
    for body in bodies:
        for _, impression in parse_body(body).impressions:
            routes = router.routes(impression)
            assert not isinstance(routes, str), routes
            for destination, identity in routes:
                out.append(encode(track_message(impression, destination.config, identity, destination.name)))
    return out


def wire_bodies(messages: list[bytes]) -> list[bytes]:
    from shared.outbound.segment_client import BatchPacker, sent_at

    packer = BatchPacker()
    batches = [b for b in (packer.add(m, 0, 0) for m in messages) if b is not None]
    last = packer.flush()
    if last is not None:
        batches.append(last)
    return [b.body(sent_at()) for b in batches]


def _run_worker(kind: str, args: list[str], env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as result:
        result_path = Path(result.name)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "bench.impressions", kind, *args, str(result_path)],
            env=env,
            stdout=subprocess.DEVNULL,  # the handler's EMF metrics and logs
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{kind} worker failed:\n{completed.stderr[-3000:]}")
        return dict(json.loads(result_path.read_text()))
    finally:
        result_path.unlink(missing_ok=True)


def _drain(moto: MotoServer, queue_url: str) -> list[str]:
    sqs = moto.client("sqs")
    bodies: list[str] = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return bodies
        bodies.extend(m["Body"] for m in got)
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
        )


def setup_aws(moto: MotoServer, sink: SinkServer, stack_name: str) -> Any:
    """The template's resources and the outbound configs + write keys; returns the stack."""
    from fme_bridge.template import create_stack

    stack = create_stack(moto.client("dynamodb"), moto.client("sqs"), stack_name)
    prefix = stack.function_environment("ImpressionsFunction")["CONFIG_PREFIX"]
    put_outbound_configs(moto, sink, prefix)
    put_outbound_configs(moto, sink, gzip_prefix(prefix), gzip=True)
    return stack


def gzip_prefix(prefix: str) -> str:
    """Where the configs of the gzip contender live: the same, with ``"gzip": true``."""
    return f"{prefix}-gzip"


def put_outbound_configs(moto: MotoServer, sink: SinkServer, prefix: str, gzip: bool = False) -> None:
    """The measured config and the warm-up's, with their write keys, under ``prefix``."""
    configs = {
        "bench": ({**workloads.OUTBOUND_CONFIG}, workloads.OUTBOUND_WRITE_KEY),
        "warmup": (
            {**workloads.OUTBOUND_CONFIG, "environments": [workloads.WARMUP_ENVIRONMENT]},
            workloads.WARMUP_WRITE_KEY,
        ),
    }
    for name, (document, write_key) in configs.items():
        moto.client("ssm").put_parameter(
            Name=f"{prefix}/outbound/{name}",
            Value=json.dumps({**document, "endpoint": sink.endpoint, "gzip": gzip}),
            Type="String",
            Overwrite=True,
        )
        put_secret(moto.client("secretsmanager"), f"{prefix}/outbound/{name}", write_key)


WITHOUT_LAST_TREATMENTS = "handler_without_last_treatments"
GZIP = "handler_gzip"  # gzip, and LastTreatments=Disabled: compared with the contender above
HANDLERS = ("handler", WITHOUT_LAST_TREATMENTS, GZIP)
# Interleaved in this order, reversed every other round.
CONTENDERS = ("wire", "handler", WITHOUT_LAST_TREATMENTS, GZIP, "official")


def without_last_treatments(stack: Stack) -> Stack:
    """The stack as deployed with ``LastTreatments=Disabled``."""
    return dataclasses.replace(stack, parameters={**stack.parameters, "LastTreatments": "Disabled"})


def run(moto: MotoServer, sink: SinkServer, total: int, repeats: int = 2, log: Any = print) -> dict[str, Any]:
    stack = setup_aws(moto, sink, f"bench-impressions-{int(time.time())}")
    function_env = stack.function_environment("ImpressionsFunction")
    bodies = workloads.impression_bodies(total)
    messages = track_messages(bodies)
    assert len(messages) == total, (len(messages), total)
    batches = wire_bodies(messages)
    message_bytes = sum(len(m) for m in messages)

    with tempfile.TemporaryDirectory(prefix="bench-impressions-") as tmp:
        work = Path(tmp)
        (work / "bodies.jsonl").write_text("\n".join(json.dumps(b) for b in bodies) + "\n")
        (work / "warmup.jsonl").write_text("\n".join(json.dumps(b) for b in workloads.warmup_bodies()) + "\n")
        (work / "messages.jsonl").write_bytes(b"\n".join(messages) + b"\n")
        (work / "batches.bin").write_bytes(b"\n".join(batches))

        # Beside the target: the same handler on a stack deployed with LastTreatments=Disabled, and
        # that stack again with requests compressed.
        without = without_last_treatments(stack).function_environment("ImpressionsFunction")
        handler_envs = {
            "handler": child_env(**function_env, AWS_ENDPOINT_URL=moto.endpoint),
            WITHOUT_LAST_TREATMENTS: child_env(**without, AWS_ENDPOINT_URL=moto.endpoint),
            GZIP: child_env(
                **{**without, "CONFIG_PREFIX": gzip_prefix(without["CONFIG_PREFIX"])},
                AWS_ENDPOINT_URL=moto.endpoint,
            ),
        }
        plain_env = child_env()
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in CONTENDERS}

        def measure(kind: str) -> None:
            sink.reset()
            if kind in HANDLERS:
                result = _run_worker(
                    "handler", [str(work / "bodies.jsonl"), str(work / "warmup.jsonl")], handler_envs[kind]
                )
            elif kind == "official":
                result = _run_worker(kind, [str(work / "messages.jsonl"), sink.url], plain_env)
            else:
                result = _run_worker(kind, [str(work / "batches.bin"), sink.url], plain_env)
            stats = sink.stats()
            result["sink"] = {
                **stats["by_key"].get(
                    workloads.OUTBOUND_WRITE_KEY, {"requests": 0, "bytes": 0, "wire_bytes": 0, "messages": 0}
                ),
                "statuses": stats["statuses"],
                "errors": stats["errors"],
            }
            runs[kind].append(result)
            rate = total / result["seconds"] if result["seconds"] else 0
            log(
                f"  impressions/{kind}: {result['seconds']:.2f}s ({rate:,.0f}/s, cpu {result['cpu_seconds']:.2f}s), "
                f"{result['sink']['requests']} requests, {result['sink']['messages']:,} messages accepted"
            )

        # Each contender runs ``repeats`` times, interleaved (the order reversed every other round) so
        # that a slow spell of this shared machine does not favour one side; the fastest run counts.
        order = [kind for r in range(repeats) for kind in (CONTENDERS if r % 2 == 0 else CONTENDERS[::-1])]
        for kind in order:
            measure(kind)

        # What the handler runs forwarded to the last-treatments queue, and what recording costs.
        forwarded = _drain(moto, stack.queues["LastTreatmentsQueue"])
        rows = [len(decode_body(body)) for body in forwarded]
        if forwarded:
            # A warm-up of a few, then a measured message of up to LAST_TREATMENT_SAMPLE (moto
            # takes milliseconds per conditional write: a whole 2,000-row message would be slow).
            sample = decode_body(max(forwarded, key=len))
            [warmup] = encode_bodies(sample[:10])
            [measured] = encode_bodies(sample[10 : 10 + LAST_TREATMENT_SAMPLE] or sample)
            (work / "lt-warmup.json").write_text(warmup)
            (work / "lt-measured.json").write_text(measured)
        last_treatments = {
            "forwarded_messages_per_run": len(forwarded) / len(runs["handler"]),
            "forwarded_rows_per_run": sum(rows) / len(runs["handler"]),
        }
        if forwarded:
            lt_env = child_env(
                **stack.function_environment("LastTreatmentsFunction"), AWS_ENDPOINT_URL=moto.endpoint
            )
            last_treatments.update(
                _run_worker(
                    "last_treatments", [str(work / "lt-warmup.json"), str(work / "lt-measured.json")], lt_env
                )
            )
            log(
                f"  impressions/last treatments: {last_treatments['forwarded_rows_per_run']:,.0f} forwarded in "
                f"{last_treatments['forwarded_messages_per_run']:.0f} messages per run; recording "
                f"{last_treatments['rows']:,} took {last_treatments['seconds']:.2f}s "
                f"({last_treatments['cpu_seconds_per_write'] * 1e6:,.0f} µs CPU per write)"
            )

    def best(kind: str) -> dict[str, Any]:
        return min(runs[kind], key=lambda r: r["seconds"])

    minimum_requests = math.ceil(message_bytes / BATCH_LIMIT_BYTES)
    contenders = {}
    for kind in CONTENDERS:
        r = best(kind)
        contenders[kind] = {
            **r,
            "impressions_per_second": total / r["seconds"],
            "requests": r["sink"]["requests"],
            "messages_accepted": r["sink"]["messages"],
            "bytes": r["sink"]["bytes"],
            "wire_bytes": r["sink"]["wire_bytes"],
            "requests_over_minimum": r["sink"]["requests"] / minimum_requests,
            "all_runs_seconds": [x["seconds"] for x in runs[kind]],
        }
    handler, official, wire = contenders["handler"], contenders["official"], contenders["wire"]
    vs_official = handler["impressions_per_second"] / official["impressions_per_second"]
    vs_wire = handler["impressions_per_second"] / wire["impressions_per_second"]
    without, gzip = contenders[WITHOUT_LAST_TREATMENTS], contenders[GZIP]
    return {
        "impressions": total,
        "last_treatments": last_treatments,
        "sqs_messages": len(bodies),
        "sqs_batch_size": 10,
        "message_bytes": message_bytes,
        "minimum_requests": minimum_requests,
        "contenders": contenders,
        "ratios": {
            "handler_vs_official": vs_official,
            "handler_vs_wire": vs_wire,
            # CPU seconds for the same messages: what a shared, busy machine distorts least.
            "handler_vs_official_cpu": official["cpu_seconds"] / handler["cpu_seconds"],
            # The price of recording last treatments: no target, the stack's default records them.
            "without_last_treatments_vs_official": without["impressions_per_second"]
            / official["impressions_per_second"],
            "without_last_treatments_vs_handler": without["impressions_per_second"]
            / handler["impressions_per_second"],
            # What "gzip": true costs and saves (both sides with LastTreatments=Disabled).
            "gzip_vs_without_last_treatments": gzip["impressions_per_second"]
            / without["impressions_per_second"],
            "gzip_cpu_vs_without_last_treatments": gzip["cpu_seconds"] / without["cpu_seconds"],
            "gzip_wire_bytes_share": gzip["wire_bytes"] / gzip["bytes"],
        },
        "targets": {
            "handler_vs_official": {"value": vs_official, "target": ">= 5", "met": vs_official >= 5},
            "handler_vs_wire": {"value": vs_wire, "target": ">= 0.6", "met": vs_wire >= 0.6},
            "peak_rss_mb": {
                "value": handler["peak_rss_mb"],
                "target": "<= 256",
                "met": handler["peak_rss_mb"] <= 256,
            },
        },
    }


def main() -> None:
    kind, *args = sys.argv[1:]
    result_path = Path(args[-1])
    if kind == "handler":
        result = handler_worker(Path(args[0]), Path(args[1]))
    elif kind == "official":
        result = official_worker(Path(args[0]), args[1])
    elif kind == "wire":
        result = wire_worker(Path(args[0]), args[1])
    elif kind == "last_treatments":
        result = last_treatments_worker(Path(args[0]), Path(args[1]))
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    result_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
