"""Measurement 3 — cold start: fresh interpreter, import + first invocation, vs a bare boto3 handler.

Every function of template.yaml is measured (its Handler, its environment, a real-shaped first
event); the reference is :mod:`bench.bare_handler`. Both run on what a deployment package holds
(requirements.txt, :mod:`bench.lambda_deps`), not on the development virtualenv. Runs alternate between
the functions and the references, and the median of each is kept. A second reference,
:mod:`bench.floor_handler`, is the bare handler on the bridge's dependencies: it shows how much of a
function's start is the stack's and how much the bridge's own. ``python -X importtime`` shows what
the import costs. With the template's default (``Tracing=Disabled``) the functions do not trace;
each is also started once more per repeat with X-Ray tracing on, for information.
"""

from __future__ import annotations

import base64
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import lambda_deps, workloads
from bench.ingest import api_event

BARE = "bench.bare_handler"
FLOOR = "bench.floor_handler"


def first_events() -> dict[str, dict[str, Any]]:
    """A realistic first event per function logical id (functions not listed get no event)."""
    message = workloads.segment_messages(1, "cold")[0]
    body = json.dumps(message, separators=(",", ":")).encode()
    envelope = workloads.impression_bodies(
        50, workloads.ImpressionMix(envelope_size=50, envelopes=1, webhook_lists=0, singles=0)
    )[0]
    from fme_bridge.local.sqs_source import body_record
    from shared.outbound.impressions import parse_body
    from shared.profiles.forwarding import encode_bodies

    arn = "arn:aws:sqs:us-east-1:123456789012:bench-{}Queue"
    sqs = {"Records": [body_record(envelope, arn.format("Impressions"), "us-east-1")]}
    # One forwarded last treatment: one conditional write, like the bare handler's one request.
    [forwarded] = encode_bodies([impression for _, impression in parse_body(envelope).impressions][:1])
    last_treatments = {"Records": [body_record(forwarded, arn.format("LastTreatments"), "us-east-1")]}
    stream = {
        "Records": [
            {
                "eventID": "1",
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1795483041,
                    "SequenceNumber": "100000000000000000001",
                    "SizeBytes": 300,
                    "StreamViewType": "NEW_IMAGE",
                    "Keys": {"pk": {"S": "Production#user#u1"}, "sk": {"S": "1795483041109#m1"}},
                    "NewImage": {
                        "pk": {"S": "Production#user#u1"},
                        "sk": {"S": "1795483041109#m1"},
                        "environment": {"S": "Production"},
                        "trafficTypeName": {"S": "user"},
                        "key": {"S": "u1"},
                        "eventTypeId": {"S": "checkout"},
                        "timestamp": {"N": "1795483041109"},
                        "properties": {"M": {}},
                        "messageId": {"S": "m1"},
                        "segmentType": {"S": "track"},
                        "receivedAt": {"N": "1795483041200"},
                        "connectionId": {"S": workloads.CONNECTION},
                    },
                },
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/EventsTable/stream/2026-11-25T00:00:00.000",
            }
        ]
    }
    profile = _routed(
        api_event(b"", {"authorization": f"Bearer {workloads.WEBHOOK_SECRET}"}),
        "GET /profiles/{environment}/{trafficType}/{key}",
        {"environment": "Production", "trafficType": "user", "key": "u1"},
        body=None,
    )
    # FME's impressions webhook: a gzipped array of 50, queued as one message.
    posted = gzip.compress(json.dumps(json.loads(envelope)["impressions"]).encode())
    relayed = _routed(
        api_event(b"", {"content-encoding": "gzip", "content-length": str(len(posted))}),
        "POST /impressions/{token}",
        {"token": workloads.WEBHOOK_SECRET},
        body=base64.b64encode(posted).decode(),
        isBase64Encoded=True,
    )
    schedule = {
        "version": "0",
        "id": "cold-start",
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": "123456789012",
        "time": "2026-11-25T18:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {},
    }
    return {
        "IngestFunction": api_event(body, {"authorization": f"Bearer {workloads.WEBHOOK_SECRET}"}),
        "ImpressionsFunction": sqs,
        "LastTreatmentsFunction": last_treatments,
        "DeliveryFunction": stream,
        "ProfilesFunction": profile,
        "ImpressionsWebhookFunction": relayed,
        "AudiencesFunction": stream,
        "AudienceRecheckFunction": schedule,
    }


def _routed(event: dict[str, Any], route: str, parameters: dict[str, str], **fields: Any) -> dict[str, Any]:
    """``event`` (the webhook's :func:`bench.ingest.api_event`) as API Gateway routes a request to
    ``route`` (``"GET /profiles/{environment}/…"``) with these path parameters."""
    method, template = route.split(" ", 1)
    path = template.format(**parameters)
    event.update(routeKey=route, rawPath=path, pathParameters=parameters, **fields)
    event["requestContext"].update(routeKey=route)
    event["requestContext"]["http"].update(method=method, path=path)
    return event


# What Lambda adds to a function's environment with Tracing=Active: Powertools then traces for real
# (X-Ray SDK loaded, botocore and httpx patched; segments go to a daemon address nobody listens on).
TRACING_ENV = {
    "POWERTOOLS_TRACE_DISABLED": "false",
    "LAMBDA_TASK_ROOT": "/var/task",
    "_X_AMZN_TRACE_ID": "Root=1-6745c0de-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1",
    "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
    "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
}


# A Lambda's code directory is read-only: nothing the probes import may leave bytecode behind.
READ_ONLY = {"PYTHONDONTWRITEBYTECODE": "1"}


def _probe(module: str, event_path: Path, env: dict[str, str], python: list[str]) -> dict[str, Any]:
    completed = subprocess.run(
        [*python, "-m", "bench.cold_probe", module, str(event_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"cold start of {module} failed:\n{completed.stderr[-3000:]}")
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def heaviest_imports(
    module: str, env: dict[str, str], python: list[str], top: int = 10
) -> list[dict[str, Any]]:
    """``-X importtime``: the top-level packages whose modules took longest to import.

    Each package's figure is the self time of all its modules (the bridge's own ``shared`` and
    ``functions`` included), so the figures do not overlap and add up to the whole import. Threads
    run where they are started: ``-X importtime`` nests every thread's imports into one tree, and
    the TLS context a function prepares on a thread as it starts (importing httpx there) would
    otherwise leave the figures meaningless.
    """
    sequential = "import threading; threading.Thread.start = threading.Thread.run"
    completed = subprocess.run(
        [*python, "-X", "importtime", "-c", f"{sequential}; import {module}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    packages: dict[str, int] = {}
    for line in completed.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3:
            continue
        self_us = parts[0].removeprefix("import time:").strip()
        if not self_us.isdigit():
            continue
        package = parts[2].strip().split(".")[0]
        packages[package] = packages.get(package, 0) + int(self_us)
    ranked = sorted(packages.items(), key=lambda kv: -kv[1])[:top]
    return [{"package": name, "milliseconds": round(us / 1000, 1)} for name, us in ranked]


def _stack(moto: Any, sink: Any) -> Any:
    """The whole template in moto, with the inbound connection, an outbound config and their secrets."""
    from bench.servers import put_secret
    from fme_bridge.template import create_stack

    stack = create_stack(moto.client("dynamodb"), moto.client("sqs"), "bench-cold")
    prefix = stack.function_environment("IngestFunction")["CONFIG_PREFIX"]
    ssm, secrets = moto.client("ssm"), moto.client("secretsmanager")
    documents = {
        f"inbound/{workloads.CONNECTION}": (workloads.INBOUND_CONFIG, workloads.WEBHOOK_SECRET),
        "outbound/cold": (
            {**workloads.OUTBOUND_CONFIG, "endpoint": sink.endpoint},
            workloads.OUTBOUND_WRITE_KEY,
        ),
    }
    for name, (document, secret) in documents.items():
        ssm.put_parameter(Name=f"{prefix}/{name}", Value=json.dumps(document), Type="String", Overwrite=True)
        put_secret(secrets, f"{prefix}/{name}", secret)
    put_secret(secrets, f"{prefix}/profiles", workloads.WEBHOOK_SECRET)
    put_secret(secrets, f"{prefix}/impressions-webhook", workloads.WEBHOOK_SECRET)
    return stack


def run(
    moto: Any,
    sink: Any,
    repeats: int = 5,
    log: Any = print,
    import_profile: bool = True,
    only: tuple[str, ...] = (),
    deployment_package: bool = True,
    with_tracing: bool = True,
    without_bytecode: bool = True,
) -> dict[str, Any]:
    """``deployment_package=False`` runs the probes on this virtualenv instead, ``with_tracing=False``
    skips the traced starts, ``without_bytecode=False`` the starts from sources alone (all three for
    the smoke test)."""
    from bench.servers import child_env
    from fme_bridge import template

    functions = {
        logical: props["Handler"].rsplit(".", 1)[0]
        for logical, props in template.functions().items()
        if not only or logical in only
    }
    stack = _stack(moto, sink)
    events = first_events()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        python, pythonpath, sources_path = [sys.executable], "", ""
        if deployment_package:
            deps = lambda_deps.ensure(log=log)
            python, pythonpath = lambda_deps.python_command(
                lambda_deps.code_package(Path(tmp) / "code"), deps
            )
            if without_bytecode:
                _, sources_path = lambda_deps.python_command(
                    lambda_deps.code_package(Path(tmp) / "code-sources", bytecode=False),
                    lambda_deps.sources_only(deps, Path(tmp) / "deps-sources"),
                )
        base_env = stack.function_environment("IngestFunction")
        plans: list[tuple[str, str, Path, dict[str, str]]] = []
        bare_event = Path(tmp) / "bare.json"
        bare_event.write_text(json.dumps(events["IngestFunction"]))
        for logical, module in functions.items():
            event = events.get(logical)
            if event is None:
                log(f"  cold/{logical}: no first event defined, import only")
                event = {}
            path = Path(tmp) / f"{logical}.json"
            path.write_text(json.dumps(event))
            env = child_env(
                **stack.function_environment(logical), AWS_ENDPOINT_URL=moto.endpoint, **READ_ONLY
            )
            if pythonpath:
                env["PYTHONPATH"] = pythonpath
            plans.append((logical, module, path, env))
        bare_env = child_env(**base_env, AWS_ENDPOINT_URL=moto.endpoint, **READ_ONLY)
        if pythonpath:
            bare_env["PYTHONPATH"] = pythonpath
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*functions, "bare", "floor"]}
        traced: dict[str, list[dict[str, Any]]] = {name: [] for name in functions}
        for _ in range(repeats):
            runs["bare"].append(_probe(BARE, bare_event, bare_env, python))
            runs["floor"].append(_probe(FLOOR, bare_event, bare_env, python))
            for logical, module, path, env in plans:
                try:
                    runs[logical].append(_probe(module, path, env, python))
                    if with_tracing:
                        traced[logical].append(_probe(module, path, {**env, **TRACING_ENV}, python))
                except RuntimeError as exc:
                    log(f"  cold/{logical}: {str(exc).splitlines()[-1]}")
        # Once each (they are slow): the same package as sources alone, what SAM's standard Python
        # builder ships and every cold start then compiles.
        sources: dict[str, dict[str, Any]] = {}
        if sources_path:
            sources["bare"] = _probe(BARE, bare_event, {**bare_env, "PYTHONPATH": sources_path}, python)
            for logical, module, path, env in plans:
                sources[logical] = _probe(module, path, {**env, "PYTHONPATH": sources_path}, python)

        def sources_only(name: str, compiled_total: float) -> dict[str, Any]:
            if name not in sources:
                return {}
            total = sources[name]["import_seconds"] + sources[name]["first_invocation_seconds"]
            return {"sources_only": {"total_seconds": total, "vs_bytecode": total / compiled_total}}

        def median(rs: list[dict[str, Any]], key: str) -> float:
            return statistics.median(r[key] for r in rs) if rs else float("nan")

        def summary(name: str, module: str, env: dict[str, str]) -> dict[str, Any]:
            rs = runs[name]
            total = median(rs, "import_seconds") + median(rs, "first_invocation_seconds")
            return {
                "handler": module + ".lambda_handler",
                "import_seconds": median(rs, "import_seconds"),
                "first_invocation_seconds": median(rs, "first_invocation_seconds"),
                "total_seconds": total,
                "cpu_seconds": median(rs, "import_cpu_seconds") + median(rs, "first_invocation_cpu_seconds"),
                "heaviest_imports": heaviest_imports(module, env, python) if import_profile else [],
                **sources_only(name, total),
            }

        results["bare"] = summary("bare", BARE, bare_env)
        results["floor"] = summary("floor", FLOOR, bare_env)
        bare_total, floor_total = results["bare"]["total_seconds"], results["floor"]["total_seconds"]
        results["floor"]["vs_bare"] = floor_total / bare_total
        for logical, module, _, env in plans:
            rs = runs[logical]
            if not rs:
                continue
            results[logical] = summary(logical, module, env)
            total = results[logical]["total_seconds"]
            results[logical].update(
                vs_bare=total / bare_total,
                vs_floor=total / floor_total,
                status=rs[-1].get("status"),
                batch_item_failures=rs[-1].get("batch_item_failures"),
            )
            if traced[logical]:
                with_tracing = median(traced[logical], "import_seconds") + median(
                    traced[logical], "first_invocation_seconds"
                )
                results[logical]["with_tracing"] = {
                    "import_seconds": median(traced[logical], "import_seconds"),
                    "first_invocation_seconds": median(traced[logical], "first_invocation_seconds"),
                    "total_seconds": with_tracing,
                    "vs_bare": with_tracing / bare_total,
                }
            log(
                f"  cold/{logical}: import {results[logical]['import_seconds'] * 1000:.0f} ms + first invocation "
                f"{results[logical]['first_invocation_seconds'] * 1000:.0f} ms = {total / bare_total:.2f}x bare, "
                f"{total / floor_total:.2f}x floor"
                + (
                    f" (with tracing {results[logical]['with_tracing']['vs_bare']:.2f}x)"
                    if "with_tracing" in results[logical]
                    else ""
                )
                + (
                    f"; from sources alone {results[logical]['sources_only']['vs_bytecode']:.1f}x as long"
                    if "sources_only" in results[logical]
                    else ""
                )
            )
    log(
        f"  cold/bare: import {results['bare']['import_seconds'] * 1000:.0f} ms + first invocation "
        f"{results['bare']['first_invocation_seconds'] * 1000:.0f} ms"
        + (
            f"; from sources alone {results['bare']['sources_only']['vs_bytecode']:.1f}x as long"
            if "sources_only" in results["bare"]
            else ""
        )
    )
    log(
        f"  cold/floor (bare on the bridge's dependencies): {results['floor']['total_seconds'] * 1000:.0f} ms "
        f"= {results['floor']['vs_bare']:.2f}x bare"
    )
    targets = {
        f"{logical}_vs_bare": {"value": r["vs_bare"], "target": "<= 1.5", "met": r["vs_bare"] <= 1.5}
        for logical, r in results.items()
        if logical not in ("bare", "floor")
    }
    return {
        "functions": results,
        "repeats": repeats,
        "dependencies": "the deployment package as sam build makes it: requirements.txt, compiled (python -S)"
        if deployment_package
        else "development virtualenv",
        "targets": targets,
    }
