"""Impressions of a batch of SQS messages → Segment track calls, with the outcome per message.

The pipeline, for one invocation:

1. each message body is parsed (:mod:`shared.outbound.impressions`); what cannot be parsed, has no
   environment, or matches no outbound config is a **permanent** error of that message;
2. observers see every message's impressions right after parsing (the place to record "last
   treatment" profiles, say) — see :class:`ImpressionObserver`;
3. each impression becomes one track message per matching destination, serialised once and packed
   into that destination's batches; a full batch is sent at once, concurrently with the building
   of the rest, so the encoded messages held stay bounded and the network is busy early;
4. each Segment message remembers the SQS message (and the impression in it) that produced it, so
   a failed request marks exactly those messages: **transient** (retried by SQS, through
   ``ReportBatchItemFailures``) or **permanent** (Segment refused it: dead-letter queue).

A message with any transient failure is retried whole — its delivered impressions are sent again
with the same ``messageId`` and Segment drops the duplicates. A message with only permanent
failures is dead-lettered with the reasons; if only some of its impressions failed, the
dead-letter entry holds only those, so a redrive after the fix sends exactly them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shared.config import ConfigError
from shared.http_retry import Outcome
from shared.outbound.destinations import NO_MATCHING_CONFIG, Destination, Router
from shared.outbound.impressions import BodyError, Impression, ParsedBody, parse_body, subset_body
from shared.outbound.segment_client import BatchPacker, SegmentBatch, SegmentClient
from shared.outbound.segment_messages import MAX_MESSAGE_BYTES, TrackEncoder

logger = logging.getLogger(__name__)

MESSAGE_TOO_LARGE = "message_too_large"
SEGMENT_REJECTED = "segment_rejected"
MAX_REASON_CHARS = 1000
# Building messages is CPU work in the event loop's thread: every this many messages (and whenever
# a batch is closed) the loop gets a turn, so requests already started are written and answered
# while the rest are built. A 500 KB body goes out in many socket writes, each needing a turn: with
# turns further apart, requests were measured to finish later, not to cost less CPU.
YIELD_EVERY_MESSAGES = 64


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """An SQS message: its id (for batch item failures), its body, and how often SQS has delivered it."""

    message_id: str
    body: str
    receive_count: int = 1


class ImpressionObserver(Protocol):
    """Sees the impressions of each SQS message right after parsing.

    Once all messages are parsed, ``prepare`` runs on the event loop's thread: the observer's CPU
    work, which on a helper thread would contend for the GIL with the building of the track
    messages (the forward of last treatments: 3 to 11 % less wall clock in four of five alternating
    A/B rounds of 100,000 impressions, 5 % more in the fifth).
    ``finish`` then runs on a helper thread while the track messages are built and sent: the
    observer's waiting (a request). It returns the messages (by index) whose impressions it could
    not handle, with a reason: those are retried like a failed send.
    """

    def observe(self, record: int, impressions: Sequence[Impression]) -> None: ...

    def prepare(self) -> None: ...

    def finish(self) -> Mapping[int, str]: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: int
    source_message_id: str
    body: str
    error_codes: tuple[str, ...]
    reason: str
    failed_impressions: int


@dataclass
class DeliveryReport:
    """What happened to a batch of SQS messages."""

    retry: dict[int, str] = field(default_factory=dict)  # record index -> transient reason
    dead_letters: list[DeadLetter] = field(default_factory=list)
    impressions: int = 0  # parsed successfully
    messages: int = 0  # Segment messages built
    delivered: int = 0  # Segment messages accepted
    failed_transient: int = 0  # Segment messages not accepted in time
    requests: int = 0  # Segment batch requests (after retries)
    attempts: int = 0  # HTTP attempts in all
    permanent: Counter[str] = field(default_factory=Counter)  # impressions by error code


class _Failures:
    def __init__(self) -> None:
        self.transient: dict[int, str] = {}
        self.whole: dict[int, tuple[str, str]] = {}
        self.items: dict[int, dict[int, tuple[str, list[str]]]] = {}

    def item(self, record: int, item: int, code: str, reason: str) -> None:
        """The first failure of an impression decides its code; the reasons of its other
        destinations failing the same way are added (too large for two configs names both)."""
        failed = self.items.setdefault(record, {})
        code_first, reasons = failed.setdefault(item, (code, []))
        if code == code_first and reason not in reasons:
            reasons.append(reason)


@dataclass(slots=True)
class _Lane:
    """The track messages of one destination and identity field: how they are built and packed."""

    destination: Destination
    encoder: TrackEncoder
    packer: BatchPacker


class _Lanes:
    """The lanes of each impression, found once per (environment, traffic type) like its routes."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._by_route: dict[tuple[str, str], _Lane] = {}
        self._by_key: dict[tuple[str | None, str | None, str | None], list[_Lane] | str] = {}
        self.packers: dict[str, BatchPacker] = {}  # one per destination, shared by its identity fields

    def of(self, impression: Impression) -> list[_Lane] | str:
        """The impression's lanes, or the reason it has none."""
        key = (impression.environment_name, impression.environment_id, impression.traffic_type)
        found = self._by_key.get(key)
        if found is None:
            routes = self._router.routes(impression)
            found = routes if isinstance(routes, str) else [self._lane(d, identity) for d, identity in routes]
            self._by_key[key] = found
        return found

    def _lane(self, destination: Destination, identity: str) -> _Lane:
        lane = self._by_route.get((destination.name, identity))
        if lane is None:
            packer = self.packers.setdefault(destination.name, BatchPacker())
            lane = _Lane(destination, TrackEncoder(destination.config, identity, destination.name), packer)
            self._by_route[destination.name, identity] = lane
        return lane


async def deliver(
    messages: Sequence[QueuedMessage],
    router: Router,
    write_key: Callable[[Destination], str],
    client: SegmentClient,
    observers: Sequence[ImpressionObserver] = (),
) -> DeliveryReport:
    """Parse, route, pack and send; never raises for bad input or a failing Segment."""
    report = DeliveryReport()
    failures = _Failures()
    lanes = _Lanes(router)
    by_name = {d.name: d for d in router.destinations}
    sends: list[asyncio.Task[None]] = []

    def start_send(destination: Destination, batch: SegmentBatch) -> None:
        sends.append(asyncio.create_task(_send(destination, batch, client, write_key, report, failures)))

    # Every message is parsed first, so that the observers finish on helper threads (forwarding the
    # last treatments, say) while the track messages are built and sent rather than after them.
    parsed_messages = _parse_all(messages, failures, report, observers)
    for observer in observers:
        observer.prepare()
    finishing = [asyncio.create_task(asyncio.to_thread(observer.finish)) for observer in observers]
    await asyncio.sleep(0)  # the helper threads start now

    built = 0  # Segment messages
    for record, parsed in parsed_messages:
        for index, impression in parsed.impressions:
            impression_lanes = lanes.of(impression)
            blocked = router.blocked(impression) if router.invalid else None
            if blocked is not None:  # an invalid config may be meant for it: retried once fixed
                failures.transient.setdefault(record, blocked)
            if isinstance(impression_lanes, str):
                if blocked is None:
                    failures.item(record, index, NO_MATCHING_CONFIG, impression_lanes)
                continue
            for lane in impression_lanes:
                encoded = lane.encoder.encode(impression)
                if len(encoded) > MAX_MESSAGE_BYTES:
                    reason = (
                        f"{lane.destination.name}: message is {len(encoded)} bytes, over {MAX_MESSAGE_BYTES}"
                    )
                    failures.item(record, index, MESSAGE_TOO_LARGE, reason)
                    continue
                built += 1
                closed = lane.packer.add(encoded, record, index)
                if closed is not None:
                    start_send(lane.destination, closed)
                    await asyncio.sleep(0)  # the request starts now, not at the next turn
                elif built % YIELD_EVERY_MESSAGES == 0:
                    await asyncio.sleep(0)
        # Let the requests already started make progress before the next message's turn.
        await asyncio.sleep(0)
    report.messages = built

    for name, packer in lanes.packers.items():
        last = packer.flush()
        if last is not None:
            start_send(by_name[name], last)
    await asyncio.gather(*sends)
    for failed in await asyncio.gather(*finishing):
        for record, reason in failed.items():
            failures.transient.setdefault(record, reason)

    _conclude(messages, failures, report)
    return report


def _parse_all(
    messages: Sequence[QueuedMessage],
    failures: _Failures,
    report: DeliveryReport,
    observers: Sequence[ImpressionObserver],
) -> list[tuple[int, ParsedBody]]:
    """Each message's impressions (by record), shown to the observers; what cannot be parsed is noted."""
    parsed_messages = []
    for record, message in enumerate(messages):
        try:
            parsed = parse_body(message.body)
        except BodyError as exc:
            failures.whole[record] = (exc.code, exc.reason)
            continue
        for error in parsed.errors:
            failures.item(record, error.index, error.code, error.reason)
        report.impressions += len(parsed.impressions)
        for observer in observers:
            observer.observe(record, [impression for _, impression in parsed.impressions])
        parsed_messages.append((record, parsed))
    return parsed_messages


async def _send(
    destination: Destination,
    batch: SegmentBatch,
    client: SegmentClient,
    write_key: Callable[[Destination], str],
    report: DeliveryReport,
    failures: _Failures,
) -> None:
    try:
        key = write_key(destination)
    except ConfigError as exc:
        # A missing or unreadable write key is retried: the operator may be creating it right now.
        _mark_transient(batch, f"{destination.name}: write key unavailable ({exc})", report, failures)
        return
    except Exception as exc:  # an unexpected lookup failure must not lose the batch either
        logger.exception("reading the write key of %s failed", destination.name)
        _mark_transient(
            batch, f"{destination.name}: write key unavailable ({type(exc).__name__})", report, failures
        )
        return
    try:
        result = await client.send(destination.endpoint, key, batch, destination.config.gzip)
    except Exception as exc:  # a bug here must not lose the batch: it is retried
        logger.exception("sending a batch to %s failed", destination.name)
        _mark_transient(batch, f"{destination.name}: {type(exc).__name__}", report, failures)
        return
    report.requests += 1
    report.attempts += result.attempts
    if result.outcome is Outcome.DELIVERED:
        report.delivered += len(batch)
    elif result.outcome is Outcome.PERMANENT:
        reason = f"{destination.name}: Segment refused the batch: {result.reason}"
        for record, item in zip(batch.records, batch.items, strict=True):
            failures.item(record, item, SEGMENT_REJECTED, reason)
    else:
        _mark_transient(batch, f"{destination.name}: {result.reason}", report, failures)


def _mark_transient(batch: SegmentBatch, reason: str, report: DeliveryReport, failures: _Failures) -> None:
    report.failed_transient += len(batch)
    for record in set(batch.records):
        failures.transient.setdefault(record, reason)


def _conclude(messages: Sequence[QueuedMessage], failures: _Failures, report: DeliveryReport) -> None:
    report.retry = dict(failures.transient)
    for record, (code, reason) in failures.whole.items():
        report.permanent[code] += 1
        report.dead_letters.append(
            DeadLetter(record, messages[record].message_id, messages[record].body, (code,), reason, 1)
        )
    for record, items in failures.items.items():
        if record in failures.transient:
            continue  # retried whole; its permanent part is dead-lettered once the rest succeeds
        indexes = sorted(items)
        codes = tuple(dict.fromkeys(items[i][0] for i in indexes))
        for code, _ in items.values():
            report.permanent[code] += 1
        reason = "; ".join(f"impression {i}: {items[i][0]}: {'; '.join(items[i][1])}" for i in indexes)
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        message = messages[record]
        report.dead_letters.append(
            DeadLetter(
                record,
                message.message_id,
                subset_body(message.body, indexes),
                codes,
                reason,
                len(indexes),
            )
        )
    report.dead_letters.sort(key=lambda d: d.record)
