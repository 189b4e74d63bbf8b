"""Cost per million and the shape of 1 billion impressions a day, from the measured figures.

List prices, us-east-1, as published by AWS in 2025 (Lambda, SQS, DynamoDB on-demand after the
November 2024 reduction, API Gateway HTTP API, data transfer out); check them against the pricing
pages before relying on them. What the benchmark cannot measure here (network latency to AWS
services and to Segment) is an explicit, named assumption.
"""

from __future__ import annotations

import math
from typing import Any

from shared.inbound.ingest import CONDITIONAL_PUT_EVENTS

PRICES = {
    "lambda_arm64_gb_second": 0.0000133334,
    "lambda_request": 0.20 / 1e6,
    "sqs_request": 0.40 / 1e6,  # standard queue, per 64 KB chunk
    "dynamodb_write_unit": 0.625 / 1e6,  # on-demand WRU (1 KB)
    "dynamodb_read_unit": 0.125
    / 1e6,  # on-demand RRU (4 KB strongly / 2 items of 4 KB eventually consistent)
    "http_api_request": 1.00 / 1e6,  # first 300 M a month, per 512 KB increment
    "transfer_out_gb": 0.09,  # internet egress, first 10 TB a month
}
PRICES_AS_OF = "AWS list prices, us-east-1, 2025"
# Lambda gives a function one full vCPU at 1,769 MB; below that, CPU time stretches in proportion.
FULL_VCPU_MB = 1769
# Assumptions for what loopback cannot show.
SEGMENT_ROUND_TRIP_S = 0.15  # the last batch of an invocation waiting for Segment's answer (TLS reused)
DYNAMODB_ROUND_TRIP_S = 0.008  # one DynamoDB request from Lambda in the same region
# Last treatments: the share of impressions that are the newest of their (user, flag) in their SQS
# batch, i.e. one conditional write each. 1.0 is the worst case, and close to what SDKs in OPTIMIZED
# impressions mode send (one impression per user, flag and treatment an hour).
LAST_TREATMENT_WRITE_SHARE = 1.0
LAST_TREATMENT_CONCURRENCY = 10  # writes in flight per invocation (docs/profiles.md)
LAST_TREATMENT_ROWS_PER_INVOCATION = 20_000  # ten forwarded messages of 2,000


def _lambda_cost(cpu_s: float, wait_s: float, memory_mb: int, invocations: float) -> float:
    """CPU time stretches below a full vCPU; waiting is billed at the configured memory."""
    duration = cpu_s * max(1.0, FULL_VCPU_MB / memory_mb) + wait_s
    return (
        duration * memory_mb / 1024 * PRICES["lambda_arm64_gb_second"]
        + invocations * PRICES["lambda_request"]
    )


def gzip_effect(results: dict[str, Any]) -> tuple[float, float] | None:
    """What ``"gzip": true`` adds in CPU seconds per impression, and the share of the bytes it
    leaves on the wire (measured side by side, both without last treatments); None if not measured."""
    imp = results["impressions"]
    contenders = imp["contenders"]
    if "handler_gzip" not in contenders:
        return None
    gzip, plain = contenders["handler_gzip"], contenders["handler_without_last_treatments"]
    added = (gzip["cpu_seconds"] - plain["cpu_seconds"]) / imp["impressions"]
    return max(0.0, added), gzip["wire_bytes"] / gzip["bytes"]


def impressions_per_million(
    results: dict[str, Any],
    envelope_size: int = 500,
    batch_size: int = 100,
    memory_mb: int = 512,
    gzip: bool = False,
) -> dict[str, float]:
    handler = results["impressions"]["contenders"]["handler"]
    impressions = results["impressions"]["impressions"]
    cpu_per_impression = handler["cpu_seconds"] / impressions
    bytes_per_impression = results["impressions"]["message_bytes"] / impressions
    if gzip and (effect := gzip_effect(results)) is not None:
        cpu_per_impression += effect[0]
        bytes_per_impression *= effect[1]
    raw_bytes_per_impression = 420  # an impression in an envelope, as JSON
    n = 1e6
    messages = n / envelope_size
    invocations = messages / batch_size
    chunks_per_message = math.ceil(envelope_size * raw_bytes_per_impression / 65536)
    sqs = messages * chunks_per_message * (1 + 2 / 10) * PRICES["sqs_request"]  # send; receive + delete by 10
    lam = _lambda_cost(cpu_per_impression * n, invocations * SEGMENT_ROUND_TRIP_S, memory_mb, invocations)
    egress = n * bytes_per_impression / 1e9 * PRICES["transfer_out_gb"]
    profiles = last_treatments_per_million(results, memory_mb)
    return {
        "lambda": lam,
        "sqs": sqs,
        "transfer_out": egress,
        "last_treatments": profiles["total"],
        "total": lam + sqs + egress + profiles["total"],
        "cpu_us_per_impression": cpu_per_impression * 1e6,
        "bytes_per_impression": bytes_per_impression,
        "invocations": invocations,
    }


def last_treatments_per_million(results: dict[str, Any], memory_mb: int = 512) -> dict[str, float]:
    """Forwarding (SQS), the last-treatments function (Lambda) and its conditional writes (DynamoDB)."""
    measured = results["impressions"].get("last_treatments") or {}
    writes = 1e6 * LAST_TREATMENT_WRITE_SHARE
    # A forwarded row is about 110 bytes; SQS bills sends and receives per 64 KB chunk.
    chunks = writes * 110 / 65536
    sqs = chunks * 2.1 * PRICES["sqs_request"]
    invocations = writes / LAST_TREATMENT_ROWS_PER_INVOCATION
    cpu_per_write = measured.get("cpu_seconds_per_write", 0.0)
    lam = _lambda_cost(
        cpu_per_write * writes,
        writes / LAST_TREATMENT_CONCURRENCY * DYNAMODB_ROUND_TRIP_S,
        memory_mb,
        invocations,
    )
    dynamodb = writes * PRICES["dynamodb_write_unit"]
    return {
        "writes": writes,
        "sqs": sqs,
        "lambda": lam,
        "dynamodb": dynamodb,
        "total": sqs + lam + dynamodb,
        "cpu_us_per_write": cpu_per_write * 1e6,
    }


def webhook_per_million(results: dict[str, Any], phase: str, memory_mb: int = 1024) -> dict[str, float]:
    real = results["ingest"]["phases"][phase]["real"]
    messages = real["messages"]
    events_per_message = real["events_stored"] / messages
    requests_per_message = real["dynamodb_requests_total"] / messages
    bodies = messages if phase == "single" else messages / 1000
    n = 1e6
    invocations = n * bodies / messages
    # DynamoDB requests of one body run on up to 8 threads. A small body's events are conditional
    # puts side by side (one round, no reads); a larger body reads its keys, then writes.
    small = events_per_message * messages / bodies <= CONDITIONAL_PUT_EVENTS
    rounds_per_body = 1 if small else math.ceil(requests_per_message * messages / bodies / 8)
    lam = _lambda_cost(
        real["cpu_seconds"] / messages * n,
        invocations * rounds_per_body * DYNAMODB_ROUND_TRIP_S,
        memory_mb,
        invocations,
    )
    writes = n * events_per_message * PRICES["dynamodb_write_unit"]
    # Existence check of larger bodies, eventually consistent; a failed condition costs a write.
    reads = 0.0 if small else n * events_per_message * 0.5 * PRICES["dynamodb_read_unit"]
    api = invocations * PRICES["http_api_request"] * max(1, math.ceil(real.get("body_bytes", 0) / 512_000))
    return {
        "lambda": lam,
        "dynamodb": writes + reads,
        "api_gateway": api,
        "total": lam + writes + reads + api,
        "events_per_message": events_per_message,
        "invocations": invocations,
    }


def billion_a_day(
    results: dict[str, Any],
    envelope_size: int = 500,
    batch_size: int = 100,
    memory_mb: int = 512,
    peak_factor: float = 3.0,
) -> dict[str, float]:
    per_second = 1e9 / 86_400
    handler = results["impressions"]["contenders"]["handler"]
    cpu_per_impression = handler["cpu_seconds"] / results["impressions"]["impressions"]
    per_invocation = batch_size * envelope_size
    duration = cpu_per_impression * per_invocation * max(1.0, FULL_VCPU_MB / memory_mb) + SEGMENT_ROUND_TRIP_S
    invocations_per_second = per_second / per_invocation
    bytes_per_impression = results["impressions"]["message_bytes"] / results["impressions"]["impressions"]
    per_request = math.floor(500_000 / bytes_per_impression)
    cost = impressions_per_million(results, envelope_size, batch_size, memory_mb)["total"] * 1000
    gzip_cost = (
        impressions_per_million(results, envelope_size, batch_size, memory_mb, gzip=True)["total"] * 1000
    )
    return {
        "impressions_per_second": per_second,
        "peak_impressions_per_second": per_second * peak_factor,
        "lambda_duration_s": duration,
        "concurrency_average": invocations_per_second * duration,
        "concurrency_peak": invocations_per_second * duration * peak_factor,
        "sqs_messages_per_second": per_second / envelope_size,
        "segment_requests_per_second": per_second / per_request,
        "segment_requests_per_second_peak": per_second * peak_factor / per_request,
        "last_treatment_writes_per_second": per_second * LAST_TREATMENT_WRITE_SHARE,
        "cost_per_day": cost,
        "cost_per_day_gzip": gzip_cost,
    }


def table(results: dict[str, Any]) -> str:
    """The Markdown that docs/cost.md carries between its markers."""
    lines = [f"Prices: {PRICES_AS_OF}. Measured: `bench/results/latest.json` of {results['started_at']}.", ""]
    lines += [
        "| impressions → Segment, per million | envelope | SQS batch | Lambda | SQS | egress "
        "| last treatments | total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for envelope, batch in ((1, 10), (50, 100), (500, 10), (500, 100), (500, 1000)):
        c = impressions_per_million(results, envelope, batch)
        lines.append(
            f"| | {envelope} | {batch} | ${c['lambda']:.4f} | ${c['sqs']:.4f} | ${c['transfer_out']:.4f} "
            f"| ${c['last_treatments']:.4f} | **${c['total']:.4f}** |"
        )
    if (effect := gzip_effect(results)) is not None:
        plain, packed = impressions_per_million(results), impressions_per_million(results, gzip=True)
        lines += [
            "",
            f'With `"gzip": true` in the outbound config (envelopes of 500, batches of 100): '
            f"{effect[1]:.1%} of the bytes on the wire and {effect[0] * 1e6:.1f} µs more CPU per "
            f"impression (measured side by side, both without last treatments), so egress "
            f"${packed['transfer_out']:.4f} instead of ${plain['transfer_out']:.4f} and Lambda "
            f"${packed['lambda']:.4f} instead of ${plain['lambda']:.4f} per million impressions.",
        ]
    lt = last_treatments_per_million(results)
    lines += [
        "",
        f"Last treatments, per million impressions (each the newest of its user and flag in its batch, the "
        f"worst case): {lt['writes']:,.0f} conditional writes, DynamoDB ${lt['dynamodb']:.4f}, the "
        f"last-treatments function ${lt['lambda']:.4f} ({lt['cpu_us_per_write']:,.0f} µs CPU per write, "
        f"measured against moto), forwarding through SQS ${lt['sqs']:.4f}. Users who see a flag several "
        "times per batch cost one write for all of them.",
    ]
    lines += [
        "",
        "| webhook → DynamoDB, per million Segment messages | body | Lambda | DynamoDB | API Gateway | total |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for phase, label in (("single", "1 message"), ("batched", "1,000 messages")):
        c = webhook_per_million(results, phase)
        lines.append(
            f"| | {label} | ${c['lambda']:.4f} | ${c['dynamodb']:.4f} | ${c['api_gateway']:.4f} "
            f"| **${c['total']:.4f}** |"
        )
    b = billion_a_day(results)
    lines += [
        "",
        "| 1 billion impressions a day (envelopes of 500, batches of 100, 512 MB) | |",
        "|---|---:|",
        f"| impressions per second, average / peak (×3) | {b['impressions_per_second']:,.0f} / "
        f"{b['peak_impressions_per_second']:,.0f} |",
        f"| Lambda duration per invocation (50,000 impressions) | {b['lambda_duration_s']:.1f} s |",
        f"| Lambda concurrency, average / peak | {b['concurrency_average']:.1f} / {b['concurrency_peak']:.1f} |",
        f"| SQS messages per second | {b['sqs_messages_per_second']:,.0f} |",
        f"| Segment batch requests per second, average / peak | {b['segment_requests_per_second']:,.1f} / "
        f"{b['segment_requests_per_second_peak']:,.1f} |",
        f"| last-treatment writes per second, average (DynamoDB on-demand) | {b['last_treatment_writes_per_second']:,.0f} |",
        f"| cost per day (Lambda + SQS + egress + last treatments) | ${b['cost_per_day']:,.2f} |",
        f'| … with `"gzip": true` | ${b["cost_per_day_gzip"]:,.2f} |',
    ]
    return "\n".join(lines)
