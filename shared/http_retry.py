"""Retrying HTTP sends, shared by the Segment client and the FME client.

One request is sent until it succeeds, fails permanently, or the caller's deadline (the Lambda's
remaining time, less a margin) leaves no room for another attempt. Backoff is exponential with full
jitter; a rate-limit answer's reset header (``Retry-After``, FME's ``X-RateLimit-Reset-Seconds-*``) is
honoured when it fits in the time left. The outcome says which of the three happened so that the
caller can report a batch item failure (transient, SQS or the stream retries) or a permanent error
(dead-letter queue with the reason) — nothing is retried forever and nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported where a request is sent: the ingest function uses only Deadline, and loads httpx
    # (a tenth of a second or more of its cold start) only to measure an event near FME's 32 KB limit.
    import httpx


_tls_lock = threading.Lock()
_tls: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """The TLS settings httpx would build for each client, built once per process.

    Loading the CA bundle takes tens of milliseconds; a client per invocation would pay it on every
    invocation (it was most of a warm impressions invocation's time).
    """
    global _tls
    with _tls_lock:  # a caller that comes while it is being built waits for it
        if _tls is None:
            import httpx

            _tls = httpx.create_ssl_context()
        return _tls


def prepare_tls_context() -> None:
    """Start building :func:`tls_context` in a thread of its own, now.

    OpenSSL reads the CA bundle without holding the GIL, so a function that calls this when it is
    imported has the context ready by its first request: the 20 ms or so overlap the rest of the cold
    start (imports, the configs' requests) instead of adding to it.
    """
    threading.Thread(target=tls_context, name="tls-context", daemon=True).start()


class Outcome(StrEnum):
    DELIVERED = "delivered"
    PERMANENT = "permanent"  # the receiver refused this request; retrying cannot help
    TRANSIENT = "transient"  # still failing when time ran out; a later retry may succeed


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    status: int | None = None  # last HTTP status, None for a transport error
    reason: str = ""  # a short, secret-free description of the last failure
    attempts: int = 0
    response: httpx.Response | None = None
    # Seconds the server asked to wait before the next attempt, when none followed (the wait did not
    # fit the time left, or that was the last attempt).
    wait_s: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Which answers are worth another attempt, and how long to wait between attempts."""

    retry_statuses: frozenset[int]
    base_delay: float = 0.1
    max_delay: float = 8.0
    max_attempts: int = 10
    # Headers that carry "retry after N seconds" (or an HTTP date), checked in order.
    reset_headers: tuple[str, ...] = ("Retry-After",)

    def is_retryable(self, status: int) -> bool:
        return status in self.retry_statuses

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**attempt)]."""
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        return (rng or random).uniform(0, ceiling)

    def server_delay(self, response: httpx.Response, now: float | None = None) -> float | None:
        """Seconds the server asked us to wait, if it said so.

        When several reset headers are present the longest wait wins: FME answers a 429 with one
        ``X-RateLimit-Reset-Seconds-*`` header per exhausted quota (organization, IP, …) and asks
        clients to wait for the largest of them.
        """
        delays = [
            d
            for d in (self._header_delay(response, name, now) for name in self.reset_headers)
            if d is not None
        ]
        return max(delays) if delays else None

    @staticmethod
    def _header_delay(response: httpx.Response, name: str, now: float | None) -> float | None:
        value = response.headers.get(name)
        if value is None:
            return None
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def statuses(*codes: int | Iterable[int]) -> frozenset[int]:
    out: set[int] = set()
    for code in codes:
        out.update([code] if isinstance(code, int) else code)
    return frozenset(out)


# Segment's HTTP Tracking API: 429, 408, 410, 460 and 5xx other than 501 / 505 are transient.
SEGMENT_POLICY = RetryPolicy(
    retry_statuses=statuses(429, 408, 410, 460, (s for s in range(500, 600) if s not in (501, 505))),
)

# FME's APIs: 429 (with its reset headers), 408 and 5xx; other 4xx are permanent.
FME_POLICY = RetryPolicy(
    retry_statuses=statuses(429, 408, range(500, 600)),
    reset_headers=(
        "Retry-After",
        "X-RateLimit-Reset-Seconds-Org",
        "X-RateLimit-Reset-Seconds-IP",
        "X-RateLimit-Reset-Seconds-Workspace",
    ),
)


@dataclass
class Deadline:
    """Time left for sending, derived from the Lambda context (or a fixed budget)."""

    remaining_ms: Callable[[], int]
    margin_ms: int = 1500
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)

    @classmethod
    def after(cls, seconds: float, margin_ms: int = 0) -> Deadline:
        end = time.monotonic() + seconds
        return cls(remaining_ms=lambda: int((end - time.monotonic()) * 1000), margin_ms=margin_ms)

    def seconds_left(self) -> float:
        return (self.remaining_ms() - self.margin_ms) / 1000


async def send_with_retry(
    client: httpx.AsyncClient,
    build_request: Callable[[], httpx.Request],
    policy: RetryPolicy,
    deadline: Deadline,
    rng: random.Random | None = None,
) -> SendResult:
    """Send until delivered, refused, or out of time. Never raises for HTTP or transport failures."""
    import httpx

    attempt = 0
    last = SendResult(Outcome.TRANSIENT, reason="no time left to send", attempts=0)
    while attempt < policy.max_attempts and deadline.seconds_left() > 0:
        timeout = max(0.5, min(client.timeout.read or 10.0, deadline.seconds_left()))
        request = build_request()
        request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
        attempt += 1
        delay: float | None = None
        try:
            response = await client.send(request)
        except httpx.TransportError as exc:  # timeouts, refused and dropped connections
            # The host as well: configs may name endpoints of their own (an EU host, a proxy).
            reason = f"{type(exc).__name__} ({request.url.host})"
            last = SendResult(Outcome.TRANSIENT, reason=reason, attempts=attempt)
        else:
            if response.is_success:
                return SendResult(
                    Outcome.DELIVERED, response.status_code, attempts=attempt, response=response
                )
            reason = f"HTTP {response.status_code}: {response.text[:200]}"
            if not policy.is_retryable(response.status_code):
                return SendResult(Outcome.PERMANENT, response.status_code, reason, attempt, response)
            last = SendResult(Outcome.TRANSIENT, response.status_code, reason, attempt, response)
            delay = policy.server_delay(response)
        if attempt >= policy.max_attempts:
            # No attempt follows, so no wait: a wait the server asked for goes to the caller, which
            # may hold before its own retry (the delivery function does, before the stream's).
            if delay is not None:
                last = dataclasses.replace(last, wait_s=delay)
            break
        wait = max(delay or 0.0, policy.backoff(attempt, rng))
        if wait >= deadline.seconds_left():
            if delay is not None and delay >= deadline.seconds_left():
                last = dataclasses.replace(last, wait_s=delay)
            break
        await deadline.sleep(wait)
    return last
