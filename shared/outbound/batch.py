"""One invocation's work: configs, one HTTP client, delivery, dead letters — the handler's one call.

Kept apart from the handler, which adds only the SQS event's unpacking, its metrics and its logs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shared import http_session
from shared.config import ConfigError
from shared.http_retry import Deadline
from shared.outbound.dead_letters import RETRIES_EXHAUSTED, retries_exhausted, send_dead_letters
from shared.outbound.delivery import DeadLetter, DeliveryReport, ImpressionObserver, QueuedMessage, deliver
from shared.outbound.destinations import (
    Destination,
    OutboundConfigs,
    Router,
    WriteKeys,
    load_outbound_configs,
)
from shared.outbound.impressions import BodyError, parse_body
from shared.outbound.segment_client import SegmentClient, http_client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SenderSettings:
    """Tuning of the Segment client; environment variables override the defaults."""

    request_timeout: float = 10.0  # seconds per HTTP attempt (fewer if the deadline is nearer)
    concurrency: int = 8  # requests in flight per invocation
    margin_ms: int = 3000  # time kept back from sending for dead letters and the response

    @classmethod
    def from_env(cls) -> SenderSettings:
        return cls(
            request_timeout=float(os.environ.get("SEGMENT_REQUEST_TIMEOUT", cls.request_timeout)),
            concurrency=int(os.environ.get("SEGMENT_CONCURRENCY", cls.concurrency)),
            margin_ms=int(os.environ.get("SEND_MARGIN_MS", cls.margin_ms)),
        )


@dataclass
class BatchOutcome:
    report: DeliveryReport
    retry: dict[str, str] = field(default_factory=dict)  # SQS message id -> transient reason
    sent_letters: list[DeadLetter] = field(default_factory=list)  # what reached the DLQ

    @property
    def dead_lettered(self) -> int:
        """SQS messages (or parts of them) sent to the DLQ."""
        return len(self.sent_letters)

    @property
    def dead_lettered_impressions(self) -> int:
        return sum(self.report.permanent.values())


def process_batch(
    messages: Sequence[QueuedMessage],
    remaining_ms: Callable[[], int],
    dead_letter_queue_url: str,
    observers: Sequence[ImpressionObserver] = (),
    settings: SenderSettings | None = None,
    destinations: list[Destination] | None = None,
    max_receives: int | None = None,
) -> BatchOutcome:
    """``max_receives``: the queue's maxReceiveCount. A message still failing on that receive goes
    to the DLQ from here, with the reason (``errorCode`` ``retries_exhausted``); SQS's own redrive,
    which would move it there next, carries none."""
    settings = settings or SenderSettings.from_env()
    try:
        configs = load_outbound_configs() if destinations is None else OutboundConfigs(destinations)
    except ConfigError as exc:
        # Which impressions unreadable configs should receive is unknown: retry them all (on
        # their last receive they go to the DLQ, from where they can be redriven).
        logger.error("outbound configs unavailable, retrying the whole batch: %s", exc)
        report = DeliveryReport(retry={i: str(exc) for i in range(len(messages))})
    else:
        for bad in configs.invalid:
            # In the message itself: this module's standard logger does not print extra fields.
            logger.error(
                "outbound config %s invalid: the impressions it may be meant for are retried until it is "
                "fixed: %s",
                bad.name,
                bad.reason,
            )
        report = http_session.run(_deliver(messages, configs, remaining_ms, observers, settings))
    if max_receives is not None:
        _give_up_on_last_receive(messages, report, max_receives)
    retry = {messages[i].message_id: reason for i, reason in report.retry.items()}
    undelivered = send_dead_letters(dead_letter_queue_url, report.dead_letters) if report.dead_letters else {}
    for record, reason in undelivered.items():
        retry[messages[record].message_id] = reason
    sent = [letter for letter in report.dead_letters if letter.record not in undelivered]
    return BatchOutcome(report, retry, sent)


def _give_up_on_last_receive(
    messages: Sequence[QueuedMessage], report: DeliveryReport, max_receives: int
) -> None:
    """Messages to retry that SQS will not deliver again become dead letters, whole, with the reason.

    Whole: what was delivered before goes again on a redrive, with the same messageIds, which
    Segment drops as duplicates.
    """
    for record, reason in list(report.retry.items()):
        message = messages[record]
        if message.receive_count < max_receives:
            continue
        del report.retry[record]
        impressions = _impressions_in(message.body)
        report.permanent[RETRIES_EXHAUSTED] += impressions
        report.dead_letters.append(
            retries_exhausted(
                record, message.message_id, message.body, message.receive_count, reason, impressions
            )
        )


def _impressions_in(body: str) -> int:
    try:
        return len(parse_body(body).impressions)
    except BodyError:
        return 0


async def _deliver(
    messages: Sequence[QueuedMessage],
    configs: OutboundConfigs,
    remaining_ms: Callable[[], int],
    observers: Sequence[ImpressionObserver],
    settings: SenderSettings,
) -> DeliveryReport:
    # A short-lived invocation (or a test's context) still gets three quarters of its time to send.
    margin_ms = min(settings.margin_ms, max(0, remaining_ms()) // 4)
    deadline = Deadline(remaining_ms, margin_ms=margin_ms)
    # Kept for the next invocation, with its connections to Segment (shared.http_session).
    key = ("segment", settings.request_timeout, settings.concurrency)
    async with http_session.client(
        key, lambda: http_client(settings.request_timeout, settings.concurrency)
    ) as http:
        client = SegmentClient(http, deadline, settings.concurrency)
        router = Router(configs.destinations, configs.invalid)
        return await deliver(messages, router, WriteKeys().get, client, observers)
