"""Measurement 2 — webhook ingest: the real ingest handler vs a minimal baseline, same DynamoDB.

DynamoDB is a moto server in its own process. Each side gets fresh tables (the template's), the
same Segment messages (track / named page / named screen from the Segment spec, each with userId
and anonymousId, so two FME events per message) in API Gateway HTTP API v2 events, in two phases:
``single`` (one message per request, as classic Webhooks send them) and ``batched`` (JSON arrays of
1,000 messages, as Webhooks (Actions) batching sends them). DynamoDB requests are counted with a
botocore ``before-send`` hook (retries included).

Single messages are also written by the baseline the way the handler writes them (conditional
``PutItem`` s, ``baseline_conditional``): the handler's time against it is its own work alone. Not a
target, it runs on a fifth of the messages (the first of the same kinds) and is compared per message,
which keeps ``make bench`` well within ten minutes on a slow day.

Usage as a worker: ``python -m bench.ingest {real|baseline|baseline_conditional} PHASE EVENTS_FILE RESULT``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import profiling, workloads

PHASES = ("single", "batched")
# The conditional-writes baseline writes 1 / CONDITIONAL_SHARE of the single messages.
CONDITIONAL_SHARE = 5


def api_event(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event for ``POST /segment/{connectionId}``."""
    path = f"/segment/{workloads.CONNECTION}"
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "POST /segment/{connectionId}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-length": str(len(body)),
            "content-type": "application/json",
            "host": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            "user-agent": "Segment.io/1.0",
            "x-forwarded-for": "52.25.130.38",
            "x-forwarded-proto": "https",
            **headers,
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "a1b2c3d4e5",
            "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "a1b2c3d4e5",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "52.25.130.38",
                "userAgent": "Segment.io/1.0",
            },
            "requestId": hashlib.sha1(body).hexdigest()[:16],
            "routeKey": "POST /segment/{connectionId}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "pathParameters": {"connectionId": workloads.CONNECTION},
        "body": body.decode(),
        "isBase64Encoded": False,
    }


def webhook_events(phase: str, run: str, singles: int, batches: int, batch_size: int) -> list[dict[str, Any]]:
    """Classic Webhooks sign the raw body (X-Signature); Actions batches carry the secret as a header."""
    if phase == "single":
        events = []
        for message in workloads.segment_messages(singles, run):
            body = json.dumps(message, separators=(",", ":")).encode()
            signature = hmac.new(workloads.WEBHOOK_SECRET.encode(), body, hashlib.sha1).hexdigest()
            events.append(api_event(body, {"x-signature": signature}))
        return events
    messages = workloads.segment_messages(batches * batch_size, run)
    return [
        api_event(
            json.dumps(messages[i : i + batch_size], separators=(",", ":")).encode(),
            {"authorization": f"Bearer {workloads.WEBHOOK_SECRET}"},
        )
        for i in range(0, len(messages), batch_size)
    ]


# ---------------------------------------------------------------------------------------------
# Worker


def worker(kind: str, events_path: Path) -> dict[str, Any]:
    from fme_bridge.local.runtime import LambdaContext

    if kind == "real":
        from functions.ingest import app
        from shared import aws

        handler = app.lambda_handler
        client = aws.client("dynamodb")  # the cached client the tables use
    else:
        from bench import baseline_ingest

        handler = baseline_ingest.lambda_handler
        client = baseline_ingest._dynamodb()
    requests: dict[str, int] = {}

    def count(event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        requests[operation] = requests.get(operation, 0) + 1

    client.meta.events.register("before-send.dynamodb", count)
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    statuses: dict[str, int] = {}
    stored_events = 0
    wall = cpu = 0.0
    profiler = profiling.start()
    for event in events:
        context = LambdaContext(
            "bench-ingest", 1024, 9, "arn:aws:lambda:us-east-1:123456789012:function:bench"
        )
        start, cpu_start = time.perf_counter(), time.process_time()
        response = handler(event, context)
        wall += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        statuses[str(response["statusCode"])] = statuses.get(str(response["statusCode"]), 0) + 1
        stored_events += json.loads(response["body"]).get("events", 0)
    profiling.save(profiler, f"ingest-{kind}-{len(events)}")
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "requests": len(events),
        "statuses": statuses,
        "events_stored": stored_events,
        "dynamodb_requests": requests,
    }


# ---------------------------------------------------------------------------------------------
# Orchestration


def _setup(moto: Any, name: str) -> dict[str, str]:
    from bench.servers import put_secret
    from fme_bridge.template import create_stack

    stack = create_stack(moto.client("dynamodb"), moto.client("sqs"), name)
    env = stack.function_environment("IngestFunction")
    prefix = env["CONFIG_PREFIX"]
    ssm, secrets = moto.client("ssm"), moto.client("secretsmanager")
    ssm.put_parameter(
        Name=f"{prefix}/inbound/{workloads.CONNECTION}",
        Value=json.dumps(workloads.INBOUND_CONFIG),
        Type="String",
        Overwrite=True,
    )
    put_secret(secrets, f"{prefix}/inbound/{workloads.CONNECTION}", workloads.WEBHOOK_SECRET)
    return env


def _drop_tables(moto: Any, env: dict[str, str]) -> None:
    """moto keeps every item in memory: each side's tables go once measured."""
    client = moto.client("dynamodb")
    for name in {env["EVENTS_TABLE"], env["IDENTITIES_TABLE"], env.get("PROFILES_TABLE", "")} - {""}:
        client.delete_table(TableName=name)


def run(
    moto: Any, singles: int = 5000, batches: int = 50, batch_size: int = 1000, log: Any = print
) -> dict[str, Any]:
    from bench.servers import child_env

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        for phase in PHASES:
            kinds = (
                ("real", "baseline", "baseline_conditional") if phase == "single" else ("real", "baseline")
            )
            for kind in kinds:
                run_id = f"{phase}-{kind}-{int(time.time())}"
                env = _setup(moto, f"bench-{run_id}")
                events_path = Path(tmp) / f"{run_id}.jsonl"
                count = singles // CONDITIONAL_SHARE if kind == "baseline_conditional" else singles
                events = webhook_events(phase, run_id, count, batches, batch_size)
                events_path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
                result_path = Path(tmp) / f"{run_id}.json"
                worker_kind, writes = (
                    ("baseline", "conditional") if kind == "baseline_conditional" else (kind, "batch")
                )
                completed = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.ingest",
                        worker_kind,
                        phase,
                        str(events_path),
                        str(result_path),
                    ],
                    env=child_env(**env, AWS_ENDPOINT_URL=moto.endpoint, BASELINE_WRITES=writes),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                    timeout=900,
                )
                if completed.returncode != 0:
                    raise RuntimeError(f"ingest {kind} worker failed:\n{completed.stderr[-3000:]}")
                result = json.loads(result_path.read_text())
                messages = count if phase == "single" else batches * batch_size
                result["messages"] = messages
                result["body_bytes"] = sum(len(e["body"]) for e in events) / len(events)
                result["messages_per_second"] = messages / result["seconds"]
                result["events_per_second"] = result["events_stored"] / result["seconds"]
                total_requests = sum(result["dynamodb_requests"].values())
                result["dynamodb_requests_total"] = total_requests
                result["dynamodb_requests_per_event"] = total_requests / max(1, result["events_stored"])
                result["dynamodb_requests_per_message"] = total_requests / messages
                results.setdefault(phase, {})[kind] = result
                log(
                    f"  ingest/{phase}/{kind}: {result['seconds']:.2f}s (cpu {result['cpu_seconds']:.2f}s), "
                    f"{result['events_per_second']:,.0f} events/s, {total_requests} DynamoDB requests, "
                    f"statuses {result['statuses']}"
                )
                _drop_tables(moto, env)
    out: dict[str, Any] = {"phases": results, "targets": {}}
    for phase, sides in results.items():
        ratio = sides["real"]["seconds"] / sides["baseline"]["seconds"]
        cpu_ratio = sides["real"]["cpu_seconds"] / sides["baseline"]["cpu_seconds"]
        sides["time_vs_baseline"] = ratio
        sides["cpu_vs_baseline"] = cpu_ratio
        if "baseline_conditional" in sides:
            conditional = sides["baseline_conditional"]
            # Per message: the conditional baseline writes a fifth of them.
            real = sides["real"]
            share = real["messages"] / conditional["messages"]
            sides["time_vs_conditional_baseline"] = real["seconds"] / (conditional["seconds"] * share)
            sides["cpu_vs_conditional_baseline"] = real["cpu_seconds"] / (conditional["cpu_seconds"] * share)
        out["targets"][f"{phase}_time_vs_baseline"] = {
            "value": ratio,
            "target": "<= 1.3",
            "met": ratio <= 1.3,
        }
    per_event = results["batched"]["real"]["dynamodb_requests_per_event"]
    out["targets"]["batched_requests_per_event"] = {
        "value": per_event,
        "target": "<= 0.05",
        "met": per_event <= 0.05,
    }
    return out


def main() -> None:
    kind, _phase, events_path, result_path = sys.argv[1:]
    Path(result_path).write_text(json.dumps(worker(kind, Path(events_path))))


if __name__ == "__main__":
    main()
