"""What recording last treatments costs: DynamoDB calls and wall time per batch of impressions.

    python -m bench.last_treatment [--impressions 2000] [--users 200] [--flags 5]

Runs against a moto server in a subprocess (real HTTP round trips on loopback, a server process of
its own), so concurrency shows as it would against DynamoDB, if with a different latency. Compares:
one unconditional write per impression (the naive way), collapse + sequential conditional writes,
collapse + concurrent writes (what the impressions function does), and the same batch delivered
again to a warm container (the in-container cache).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import boto3

from bench.servers import free_port
from fme_bridge.template import create_stack
from shared import aws
from shared.profiles.last_treatment import LastTreatmentRecorder, newest_per_flag
from shared.profiles_table import LastTreatment, write_last_treatment, write_last_treatments


@contextmanager
def moto_server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def impressions(count: int, users: int, flags: int, seed: int = 7) -> list[LastTreatment]:
    rng = random.Random(seed)
    start = 1_795_483_041_109
    return [
        LastTreatment(
            "Production",
            "user",
            f"user-{rng.randrange(users)}",
            f"flag_{rng.randrange(flags)}",
            rng.choice(["on", "off"]) if rng.random() < 0.1 else "on",
            start + rng.randrange(600_000),
            17,
            "default rule",
        )
        for _ in range(count)
    ]


def count_calls() -> list[str]:
    calls: list[str] = []
    aws.client("dynamodb").meta.events.register(
        "before-call.dynamodb.*", lambda model, **_: calls.append(model.name)
    )
    return calls


def run(label: str, work: Callable[[], object], results: list[tuple[str, int, float]]) -> None:
    aws.reset_clients()
    calls = count_calls()
    started = time.perf_counter()
    work()
    results.append((label, len(calls), time.perf_counter() - started))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impressions", type=int, default=2000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--flags", type=int, default=5)
    args = parser.parse_args()
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ[name] = value
    batch = impressions(args.impressions, args.users, args.flags)
    distinct = len(newest_per_flag(batch))
    results: list[tuple[str, int, float]] = []
    with moto_server() as url:
        os.environ["AWS_ENDPOINT_URL"] = url
        ddb = boto3.client("dynamodb", endpoint_url=url)
        for table_prefix, scenario in (
            ("naive", lambda: [write_last_treatment(r) for r in batch]),
            ("sequential", lambda: write_last_treatments(newest_per_flag(batch), concurrency=1)),
            ("concurrent", lambda: write_last_treatments(newest_per_flag(batch))),
        ):
            stack = create_stack(ddb, boto3.client("sqs", endpoint_url=url), name=f"bench-{table_prefix}")
            os.environ["PROFILES_TABLE"] = stack.tables["ProfilesTable"]
            run(
                {
                    "naive": "one conditional write per impression",
                    "sequential": "collapsed, one write at a time",
                    "concurrent": "collapsed, 10 writes in flight",
                }[table_prefix],
                scenario,
                results,
            )
        recorder = LastTreatmentRecorder()
        recorder.remember(recorder.record(batch))
        run("the same batch again, warm container", lambda: recorder.record(batch), results)

    print(
        f"{args.impressions} impressions, {args.users} users x {args.flags} flags: "
        f"{distinct} (user, flag) pairs"
    )
    print(f"{'strategy':45} {'DynamoDB calls':>15} {'seconds':>9} {'impressions/s':>14}")
    for label, calls, seconds in results:
        print(f"{label:45} {calls:>15} {seconds:>9.2f} {args.impressions / seconds:>14.0f}")


if __name__ == "__main__":
    main()
