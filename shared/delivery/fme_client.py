"""HTTP client of the two FME APIs delivery writes to.

- Events API: ``POST {eventsEndpoint}/events/bulk``, ``Authorization: Bearer <server-side SDK key>``,
  a JSON array of events; 202 when accepted. This is the endpoint the Split SDKs flush ``track()``
  calls to, with the same body (plus ``environmentName``, since the bridge serves many environments).
- Admin API: ``POST {identitiesEndpoint}/trafficTypes/{trafficType}/environments/{environment}/identities``,
  ``Authorization: Bearer <Admin API key>``, a JSON array of ``{key, values}``. FME answers 200 with
  ``{"objects": [...], "failed": [{"object", "status", "message"}], "metadata"}``: a request can
  succeed for some identities and fail for others.

Requests are bounded in count and bytes, sent through :func:`shared.http_retry.send_with_retry`
with :data:`FME_POLICY` (429 with the rate-limit reset headers, 408, 5xx, timeouts), and each item comes
back with one outcome: delivered, refused (permanent, with the reason) or still failing (transient).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

from shared.http_retry import FME_POLICY, Deadline, Outcome, RetryPolicy, SendResult, send_with_retry

logger = logging.getLogger(__name__)

# The Split SDKs flush at most 5,000 events per bulk request and keep at most 5 MB queued; the
# bridge stays well inside both so that one slow request never eats a whole Lambda invocation.
MAX_EVENTS_PER_REQUEST = 1000
MAX_EVENT_BYTES_PER_REQUEST = 1_000_000
MAX_IDENTITIES_PER_REQUEST = 100
MAX_IDENTITY_BYTES_PER_REQUEST = 500_000
# Requests in flight at once per client: the chunks of one connection's events or identities.
MAX_CONCURRENT_REQUESTS = 4

# FME attribute ids: a letter, then letters, digits, ``-`` and ``_`` (Admin API, Save Identities).
# Matched with fullmatch: ``$`` would also take a name that ends in a newline.
ATTRIBUTE_ID = re.compile(r"[a-zA-Z][-_a-zA-Z0-9]*")

USER_AGENT = "fme-segment-bridge"


class FmeEvent(BaseModel):
    """One event as the Events API takes it."""

    model_config = ConfigDict(frozen=True)

    eventTypeId: str
    trafficTypeName: str
    key: str
    value: float | int | None = None
    timestamp: int
    environmentName: str
    properties: dict[str, Any] = {}


class FmeIdentity(BaseModel):
    """One identity as Save Identities takes it; FME overwrites the identity's values with these."""

    model_config = ConfigDict(frozen=True)

    key: str
    values: dict[str, str]


T = TypeVar("T")


@dataclass(frozen=True)
class ItemOutcome(Generic[T]):
    """What became of one item: ``outcome`` with the last HTTP status and a secret-free reason."""

    item_id: str
    payload: T
    outcome: Outcome
    status: int | None = None
    reason: str = ""
    wait_s: float | None = None  # the wait FME asked for, before an attempt not made (time or attempts)


def chunks(encoded: Sequence[bytes], max_items: int, max_bytes: int) -> Iterator[range]:
    """Index ranges of consecutive items whose JSON array stays within both bounds (at least one item)."""
    start, size = 0, 2
    for i, body in enumerate(encoded):
        if i > start and (i - start >= max_items or size + len(body) + 1 > max_bytes):
            yield range(start, i)
            start, size = i, 2
        size += len(body) + 1
    if start < len(encoded):
        yield range(start, len(encoded))


def _json_array(parts: Sequence[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


def _encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


class FmeClient:
    """Sends events and identities; one instance per invocation (the httpx client is bound to its loop)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        deadline: Deadline,
        policy: RetryPolicy = FME_POLICY,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._deadline = deadline
        self._policy = policy
        self._rng = rng
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)

    # -- events -----------------------------------------------------------------------------------

    async def send_events(
        self, endpoint: str, sdk_key: str, events: Sequence[tuple[str, FmeEvent]]
    ) -> list[ItemOutcome[FmeEvent]]:
        """Deliver ``(item id, event)`` pairs; one outcome per pair, in no particular order."""
        url = f"{endpoint.rstrip('/')}/events/bulk"
        return await _in_chunks(
            events,
            MAX_EVENTS_PER_REQUEST,
            MAX_EVENT_BYTES_PER_REQUEST,
            lambda part, encoded: self._send_event_chunk(url, sdk_key, part, encoded),
        )

    async def _send_event_chunk(
        self,
        url: str,
        sdk_key: str,
        events: Sequence[tuple[str, FmeEvent]],
        encoded: Sequence[bytes],
    ) -> list[ItemOutcome[FmeEvent]]:
        result = await self._post(url, sdk_key, _json_array(encoded))
        if result.outcome is Outcome.PERMANENT and result.status in (400, 413) and len(events) > 1:
            # FME refuses a bulk request as a whole without saying which event it objects to. Nothing
            # of a refused request was accepted, so halving it is safe and isolates the bad event:
            # one malformed event does not take the others in its request down with it.
            middle = len(events) // 2
            left, right = await asyncio.gather(
                self._send_event_chunk(url, sdk_key, events[:middle], encoded[:middle]),
                self._send_event_chunk(url, sdk_key, events[middle:], encoded[middle:]),
            )
            return left + right
        return [
            ItemOutcome(item_id, event, result.outcome, result.status, result.reason, result.wait_s)
            for item_id, event in events
        ]

    # -- identities -------------------------------------------------------------------------------

    async def save_identities(
        self,
        endpoint: str,
        admin_key: str,
        traffic_type: str,
        environment: str,
        identities: Sequence[tuple[str, FmeIdentity]],
    ) -> list[ItemOutcome[FmeIdentity]]:
        """Save ``(item id, identity)`` pairs of one traffic type and environment."""
        url = (
            f"{endpoint.rstrip('/')}/trafficTypes/{quote(traffic_type, safe='')}"
            f"/environments/{quote(environment, safe='')}/identities"
        )
        return await _in_chunks(
            identities,
            MAX_IDENTITIES_PER_REQUEST,
            MAX_IDENTITY_BYTES_PER_REQUEST,
            lambda part, encoded: self._send_identity_chunk(url, admin_key, part, encoded),
        )

    async def _send_identity_chunk(
        self,
        url: str,
        admin_key: str,
        identities: Sequence[tuple[str, FmeIdentity]],
        encoded: Sequence[bytes],
    ) -> list[ItemOutcome[FmeIdentity]]:
        result = await self._post(url, admin_key, _json_array(encoded))
        if result.outcome is not Outcome.DELIVERED or result.response is None:
            return [
                ItemOutcome(item_id, identity, result.outcome, result.status, result.reason, result.wait_s)
                for item_id, identity in identities
            ]
        failed = _failed_identities(result.response)
        outcomes = []
        for item_id, identity in identities:
            failure = failed.get(identity.key)
            if failure is None:
                outcomes.append(ItemOutcome(item_id, identity, Outcome.DELIVERED, result.status))
                continue
            status, message = failure
            outcome = Outcome.TRANSIENT if self._policy.is_retryable(status) else Outcome.PERMANENT
            outcomes.append(
                ItemOutcome(item_id, identity, outcome, status, f"HTTP {status}: {message[:200]}")
            )
        return outcomes

    # -- sending ----------------------------------------------------------------------------------

    async def _post(self, url: str, bearer: str, body: bytes) -> SendResult:
        def build() -> httpx.Request:
            return self._http.build_request(
                "POST",
                url,
                content=body,
                headers={
                    "Authorization": f"Bearer {bearer}",
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                },
            )

        async with self._slots:
            return await send_with_retry(self._http, build, self._policy, self._deadline, self._rng)


M = TypeVar("M", bound=BaseModel)


async def _in_chunks(
    pairs: Sequence[tuple[str, M]],
    max_items: int,
    max_bytes: int,
    send_chunk: Callable[[Sequence[tuple[str, M]], Sequence[bytes]], Awaitable[list[ItemOutcome[M]]]],
) -> list[ItemOutcome[M]]:
    """Send ``(item id, model)`` pairs in bounded requests, concurrently; one outcome per pair."""
    encoded = [_encode(model) for _, model in pairs]
    parts = list(chunks(encoded, max_items, max_bytes))
    results = await asyncio.gather(
        *(send_chunk([pairs[i] for i in part], [encoded[i] for i in part]) for part in parts)
    )
    return [outcome for batch in results for outcome in batch]


def _failed_identities(response: httpx.Response) -> dict[str, tuple[int, str]]:
    """``{key: (status, message)}`` of the identities a Save Identities answer lists as failed.

    A success whose body cannot be read, or a failure entry naming no key, leaves the identities
    counted as saved (the request succeeded; nothing says which one failed), with a warning.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        logger.warning(
            "a Save Identities answer (HTTP %s) is not a JSON object: its identities count as saved",
            response.status_code,
        )
        return {}
    failed: dict[str, tuple[int, str]] = {}
    unattributed = 0
    for entry in body.get("failed") or []:
        obj = entry.get("object") if isinstance(entry, dict) else None
        key = obj.get("key") if isinstance(obj, dict) else None
        if not isinstance(key, str):
            unattributed += 1
            continue
        status = entry.get("status")
        failed[key] = (int(status) if isinstance(status, int) else 400, str(entry.get("message") or ""))
    if unattributed:
        logger.warning(
            "%d failed entries of a Save Identities answer name no key: their identities count as saved",
            unattributed,
        )
    return failed
