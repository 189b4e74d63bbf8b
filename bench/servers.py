"""The peers a benchmark talks to, each in its own process: a moto server (AWS) and a Segment sink.

Handlers and references run in other processes again, so every byte really crosses loopback and the
server's CPU is not charged to the code under test.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3

REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_SESSION_TOKEN": "bench",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}
ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_ports() -> range:
    """The ports the kernel hands out for bind(0) and outgoing connections (Linux; else a common range)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_ports(count: int) -> list[int]:
    """Ports free now on loopback, for servers started next, chosen below the ephemeral range.

    A port bind(0) gave is ephemeral: between choosing it and a server binding it, any outgoing
    connection on the machine (tests run side by side) may take it. These never are.
    """
    ephemeral = _ephemeral_ports()
    candidates = [p for p in range(20000, 32000) if p not in ephemeral] or list(range(1024, 20000))
    chosen: list[int] = []
    for port in random.sample(candidates, len(candidates)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"no {count} free ports below the ephemeral range")


def free_port() -> int:
    return free_ports(1)[0]


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f}s")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a worker process: fake credentials, no profile, the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    # BENCH_PROFILE passes through: workers profile their measured part into that directory.
    env.update(CREDENTIALS)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["POWERTOOLS_TRACE_DISABLED"] = "1"
    env.update(extra)
    return env


class MotoServer:
    """``moto.server`` in a subprocess; :attr:`endpoint` is what ``AWS_ENDPOINT_URL`` should be."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoServer:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self._process)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # werkzeug may not stop while a request thread lingers
                self._process.kill()
                self._process.wait(timeout=5)

    def client(self, service: str) -> Any:
        return boto3.session.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name=REGION
        ).client(service, endpoint_url=self.endpoint)


class SinkServer:
    """:mod:`bench.sink_process` in a subprocess: the Segment sink, counting instead of recording."""

    def __init__(self, write_keys: list[str]) -> None:
        self.write_keys = write_keys
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoint = f"{self.url}/v1"
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> SinkServer:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.sink_process", str(self.port), *self.write_keys],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        wait_for_port(self.port, self._process)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._command("quit")
            self._process.wait(timeout=10)

    def _command(self, command: str) -> dict[str, Any]:
        assert self._process is not None
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        return dict(json.loads(line)) if line else {}

    def stats(self) -> dict[str, Any]:
        """Requests, bytes and messages accepted since the last :meth:`reset`, and the statuses answered."""
        return self._command("stats")

    def reset(self) -> None:
        self._command("reset")


def put_secret(secrets: Any, name: str, value: str) -> None:
    """Create the secret, or give it a new current value (every stack of a run shares one prefix)."""
    try:
        secrets.create_secret(Name=name, SecretString=value)
    except secrets.exceptions.ResourceExistsException:
        secrets.put_secret_value(SecretId=name, SecretString=value)
