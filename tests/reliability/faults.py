"""Fault injection shared by the reliability tests: a virtual clock and a misbehaving Segment."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fme_bridge.segment_sink import Fault, SegmentSink


class VirtualClock:
    """Lambda's remaining time, where retry waits advance a counter instead of sleeping.

    Real time still passes for real work (requests, timeouts), so a slow path cannot hide.
    """

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.slept = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.start + self.slept

    async def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept += seconds
        await asyncio.sleep(0)

    def context(self, template_context: Any, budget_seconds: float) -> Any:
        """A Lambda context whose remaining time starts at ``budget_seconds`` now."""
        end = self.now() + budget_seconds
        template_context.get_remaining_time_in_millis = lambda: int((end - self.now()) * 1000)
        return template_context


@dataclass(frozen=True)
class FaultMix:
    """Probability of each fault per request; the rest succeed."""

    server_error: float = 0.30  # 500, half of them after storing the batch (the answer is lost)
    rate_limited: float = 0.10  # 429 with Retry-After
    timeout: float = 0.05  # no answer before the client gives up
    dropped: float = 0.03  # connection closed without an answer
    retry_after: float = 2.0
    hang_seconds: float = 0.7


class FaultySegment(SegmentSink):
    """The loopback Segment sink failing a seeded mix of ways, or entirely during an outage."""

    def __init__(self, mix: FaultMix, seed: int = 7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mix = mix
        self.outage = False
        self.injected: Counter[str] = Counter()
        self._rng = random.Random(seed)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self.outage:
                self.injected["outage_503"] += 1
                return Fault("status", 503)
            mix, draw = self.mix, self._rng.random()
            if draw < mix.server_error:
                accept = draw < mix.server_error / 2
                self.injected["500_after_storing" if accept else "500"] += 1
                return Fault("status", 500, accept=accept)
            draw -= mix.server_error
            if draw < mix.rate_limited:
                self.injected["429_retry_after"] += 1
                return Fault("status", 429, retry_after=mix.retry_after)
            draw -= mix.rate_limited
            if draw < mix.timeout:
                self.injected["timeout"] += 1
                return Fault("timeout", hang_seconds=mix.hang_seconds)
            draw -= mix.timeout
            if draw < mix.dropped:
                self.injected["dropped_connection"] += 1
                return Fault("drop")
            return None


class _RawBody:
    """The raw stream botocore reads an HTTP response body from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


class LambdaKilled(BaseException):
    """The runtime stops the function mid-request (a timeout); no handler can catch it."""


class DynamoDbFaults:
    """DynamoDB misbehaving, injected with botocore's event system ahead of moto.

    A ``before-send`` handler registered first answers instead of the (moto) endpoint: throttling
    (``ProvisionedThroughputExceededException``), a 500 ``InternalServerError``, or — for batch
    writes — a 200 that leaves every item unprocessed, as DynamoDB does under load. botocore's own
    retry logic sees these answers exactly as it would see the real ones.
    """

    OPERATIONS = ("BatchWriteItem", "BatchGetItem", "TransactWriteItems", "PutItem", "Query")
    WRITES = ("BatchWriteItem", "PutItem")  # what ``kill_after_writes`` counts

    def __init__(
        self,
        throttle: float = 0.0,
        server_error: float = 0.0,
        unprocessed: float = 0.0,
        seed: int = 11,
        kill_after_writes: int | None = None,
    ) -> None:
        self.throttle = throttle
        self.server_error = server_error
        self.unprocessed = unprocessed
        self.kill_after_writes = kill_after_writes
        self.enabled = True
        self.injected: Counter[str] = Counter()
        self.writes = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def install(self, client: Any) -> None:
        client.meta.events.register_first("before-send.dynamodb", self._before_send)

    def _before_send(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        operation = (request.headers.get("X-Amz-Target") or b"").decode().rpartition(".")[2]
        if not self.enabled or operation not in self.OPERATIONS:
            return None
        with self._lock:
            if operation in self.WRITES and self.kill_after_writes is not None:
                if self.writes >= self.kill_after_writes:
                    self.injected["killed"] += 1
                    raise LambdaKilled
                self.writes += 1
            draw = self._rng.random()
        if draw < self.throttle:
            self.injected[f"{operation}:throttled"] += 1
            return AWSResponse(
                request.url, 400, {}, _RawBody(_error("ProvisionedThroughputExceededException"))
            )
        draw -= self.throttle
        if draw < self.server_error:
            self.injected[f"{operation}:500"] += 1
            return AWSResponse(request.url, 500, {}, _RawBody(_error("InternalServerError")))
        draw -= self.server_error
        if operation == "BatchWriteItem" and draw < self.unprocessed:
            self.injected[f"{operation}:unprocessed"] += 1
            items = json.loads(request.body)["RequestItems"]
            return AWSResponse(
                request.url, 200, {}, _RawBody(json.dumps({"UnprocessedItems": items}).encode())
            )
        return None


def _error(code: str) -> bytes:
    return json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected"}).encode()


class AwsOutage:
    """SSM / Secrets Manager (or any JSON-protocol AWS service) failing, for clients created from now on.

    The ``before-send`` handler is put first among botocore's built-in handlers, ahead of moto's,
    so every client created while it is installed asks it first. ``mode`` is how the service fails:
    ``throttled`` (400 ThrottlingException), ``server`` (500), or ``unreachable`` (no connection).
    """

    def __init__(self) -> None:
        self.down: set[str] = set()  # X-Amz-Target prefixes: "AmazonSSM", "secretsmanager"
        self.mode = "server"
        self.refused: Counter[str] = Counter()

    def install(self) -> None:
        import botocore.handlers

        botocore.handlers.BUILTIN_HANDLERS.insert(0, ("before-send", self._before_send))

    def uninstall(self) -> None:
        import botocore.handlers

        botocore.handlers.BUILTIN_HANDLERS.remove(("before-send", self._before_send))

    def _before_send(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        from botocore.exceptions import EndpointConnectionError

        target = (request.headers.get("X-Amz-Target") or b"").decode()
        service, _, operation = target.partition(".")
        if service not in self.down:
            return None
        self.refused[operation] += 1
        if self.mode == "unreachable":
            raise EndpointConnectionError(endpoint_url=request.url)
        if self.mode == "throttled":
            body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
            return AWSResponse(request.url, 400, {}, _RawBody(body))
        body = json.dumps({"__type": "InternalServerError", "message": "injected"}).encode()
        return AWSResponse(request.url, 500, {}, _RawBody(body))
