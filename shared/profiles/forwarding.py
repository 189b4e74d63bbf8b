"""Impressions → last-treatments queue: the impressions function's share of the profile step.

The impressions function does not write profiles itself: a conditional DynamoDB write per identity
and flag costs far more than turning an impression into a track call, and a slow or throttled table
must not hold back the calls to Segment. Instead, :class:`LastTreatmentForwarder` (an observer of the
impressions pipeline, :class:`shared.outbound.delivery.ImpressionObserver`) keeps the newest
impression per identity and flag of the batch and sends them to the last-treatments queue; the
last-treatments function (``functions/last_treatments``) records them and sends the computed-trait
identifies (docs/profiles.md).

A message body is JSON ``{"format": "fme-last-treatments/1", "groups": […]}``, one group per
(environment, traffic type), each with rows ``[key, split, treatment, time, splitVersionNumber,
label]`` — compact, and readable as it is in the dead-letter queue. Forwarding the same impression
twice (an SQS redelivery of its impressions message) is harmless: recording last treatments is
idempotent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from botocore.exceptions import BotoCoreError, ClientError

from shared import aws
from shared.outbound.impressions import Impression
from shared.sqs_batches import batch_calls

logger = logging.getLogger(__name__)

FORMAT = "fme-last-treatments/1"
# A message stays within SQS's long-standing 256 KiB, with room for a dead letter's attributes; a
# SendMessageBatch call carries up to 1 MiB of them. Most of the forward's cost is per call, and an
# invocation's forward is usually one call.
# These are the forward's own, not shared.sqs_batches' 256 KiB per call: the template creates the
# last-treatments queue, which takes 1 MiB per SendMessageBatch call.
MAX_MESSAGE_BYTES = 240 * 1024
MAX_CALL_BYTES = 1000 * 1024
# Rows are about 110 bytes. A message that comes out larger than MAX_MESSAGE_BYTES (long keys or
# labels) is split in two until it fits.
ROWS_PER_MESSAGE = 2000

Slot = tuple[str | None, str | None, str | None, str, str]  # environment id, name, traffic type, key, split

# SQS refuses a message body with a character outside #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD |
# #x10000-#x10FFFF. JSON escapes the control characters; U+FFFE and U+FFFF, which an impression's key
# or label may hold (an impressions message can carry them as JSON escapes), are escaped here. Sent
# raw, they would fail the forward on every retry, and with it every message of the batch.
_SQS_REFUSED = ((b"\xef\xbf\xbe", b"\\ufffe"), (b"\xef\xbf\xbf", b"\\uffff"))


class ForwardedBodyError(ValueError):
    """A last-treatments message that is not in the format above."""


def _order(impression: Impression) -> tuple[int, int, str]:
    """Newest first by time, then split version, then treatment, as :class:`LastTreatment` ranks them:
    no version and a negative one are alike (its cap, past any Java long, needs no twin here)."""
    version = impression.split_version_number
    version = -1 if version is None else max(version, -1)
    return (impression.time, version, impression.treatment)


def newest_per_slot(impressions: Sequence[Impression]) -> list[Impression]:
    newest: dict[Slot, Impression] = {}
    for impression in impressions:
        slot = (
            impression.environment_id,
            impression.environment_name,
            impression.traffic_type,
            impression.key,
            impression.split,
        )
        kept = newest.get(slot)
        if kept is None or _order(impression) > _order(kept):
            newest[slot] = impression
    return list(newest.values())


def encode_bodies(
    impressions: Sequence[Impression],
    rows_per_message: int = ROWS_PER_MESSAGE,
    max_bytes: int = MAX_MESSAGE_BYTES,
    oversized: Callable[[Impression], None] | None = None,
) -> list[str]:
    """Message bodies carrying ``impressions`` (only what recording last treatments needs).

    An impression that does not fit a message on its own (a key or label of hundreds of kilobytes)
    is left out and handed to ``oversized``: sent, SQS would refuse the whole call on every retry.
    """
    bodies = []
    # A stack of the chunks still to encode, the next one last.
    chunks = [
        impressions[start : start + rows_per_message]
        for start in reversed(range(0, len(impressions), rows_per_message))
    ]
    while chunks:
        chunk = chunks.pop()
        body = _encode(chunk)
        if len(body) > max_bytes and len(chunk) > 1:
            half = len(chunk) // 2
            chunks += [chunk[half:], chunk[:half]]
        elif len(body) > max_bytes:
            logger.warning(
                "last treatment of %s / %s not forwarded: %d bytes, over %d",
                chunk[0].key[:80],
                chunk[0].split[:80],
                len(body),
                max_bytes,
            )
            if oversized is not None:
                oversized(chunk[0])
        else:
            bodies.append(body.decode())
    return bodies


_ENCODER = msgspec.json.Encoder()


def _encode(impressions: Sequence[Impression]) -> bytes:
    groups: dict[tuple[str | None, str | None, str | None], list[tuple[Any, ...]]] = {}
    for i in impressions:
        rows = groups.setdefault((i.environment_id, i.environment_name, i.traffic_type), [])
        rows.append((i.key, i.split, i.treatment, i.time, i.split_version_number, i.label))
    document = {
        "format": FORMAT,
        "groups": [
            {"environmentId": env_id, "environmentName": env_name, "trafficType": traffic_type, "rows": rows}
            for (env_id, env_name, traffic_type), rows in groups.items()
        ],
    }
    body = _ENCODER.encode(document)  # compact UTF-8, several times faster than json.dumps here
    if b"\xef\xbf" in body:  # the UTF-8 of U+FFC0 to U+FFFF: rare
        for raw, escaped in _SQS_REFUSED:
            body = body.replace(raw, escaped)
    return body


def decode_body(body: str) -> list[Impression]:
    """The impressions of one last-treatments message; :class:`ForwardedBodyError` if it is not one."""
    try:
        document = json.loads(body)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ForwardedBodyError(f"not a {FORMAT} message")
        impressions = []
        for group in document["groups"]:
            env_id, env_name, traffic_type = (
                group["environmentId"],
                group["environmentName"],
                group["trafficType"],
            )
            if not all(value is None or isinstance(value, str) for value in (env_id, env_name, traffic_type)):
                raise ForwardedBodyError(
                    "environmentId, environmentName and trafficType must be strings or null"
                )
            for key, split, treatment, at, version, label in group["rows"]:
                if not (isinstance(key, str) and isinstance(split, str) and isinstance(treatment, str)):
                    raise ForwardedBodyError("key, split and treatment must be strings")
                if not (label is None or isinstance(label, str)):
                    raise ForwardedBodyError("label must be a string or null")
                if type(at) is not int or not (version is None or type(version) is int):  # not bool
                    raise ForwardedBodyError("time and splitVersionNumber must be integers")
                impressions.append(
                    Impression(
                        key=key,
                        split=split,
                        treatment=treatment,
                        time=at,
                        environment_id=env_id,
                        environment_name=env_name,
                        traffic_type=traffic_type,
                        label=label,
                        split_version_number=version,
                    )
                )
        return impressions
    except ForwardedBodyError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ForwardedBodyError(f"not a {FORMAT} message: {type(exc).__name__}: {exc}") from None


def send_bodies(queue_url: str, bodies: Sequence[str]) -> list[str]:
    """Send the bodies (SendMessageBatch, packed by size); the reasons of those not sent."""
    failures: list[str] = []
    for call in batch_calls(bodies, lambda body: len(body.encode()), MAX_CALL_BYTES):
        failures.extend(_send(queue_url, call))
    return failures


def _send(queue_url: str, bodies: list[str]) -> list[str]:
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
    try:
        response = aws.client("sqs").send_message_batch(QueueUrl=queue_url, Entries=entries)
    except (BotoCoreError, ClientError) as exc:
        return [f"last-treatments queue: {type(exc).__name__}"] * len(bodies)
    return [f"last-treatments queue: {entry.get('Code', 'error')}" for entry in response.get("Failed", [])]


class LastTreatmentForwarder:
    """One per invocation: collects every parsed impression, then forwards the newest per slot."""

    def __init__(self, queue_url: str) -> None:
        self.queue_url = queue_url
        self.forwarded = 0  # impressions sent to the queue (after collapsing)
        self.oversized = 0  # impressions too large to forward at all (left out, logged)
        self._records: set[int] = set()
        self._impressions: list[Impression] = []
        self._bodies: list[str] = []
        self._left_out: list[Impression] = []
        self._error: str | None = None
        self._newest = 0
        self._prepared = False

    def observe(self, record: int, impressions: Sequence[Impression]) -> None:
        if impressions:
            self._records.add(record)
            self._impressions.extend(impressions)

    def prepare(self) -> None:
        """The newest impression per slot, encoded: the CPU part, on the caller's thread."""
        self._prepared = True
        try:
            newest = newest_per_slot(self._impressions)
            self._bodies = encode_bodies(newest, oversized=self._left_out.append)
            self._newest = len(newest)
        except Exception:  # a bug here must not lose the batch: its messages are retried
            logger.exception("preparing the last treatments failed")
            self._error = "last treatments not forwarded"

    def finish(self) -> Mapping[int, str]:
        """Send what :meth:`prepare` encoded (prepared now if it was not); the records to retry if
        that failed."""
        if not self._impressions:
            return {}
        if not self._prepared:
            self.prepare()
        failures = [self._error] if self._error else []
        if not failures:
            try:
                failures = send_bodies(self.queue_url, self._bodies)
            except Exception:  # a bug here must not lose the batch: its messages are retried
                logger.exception("forwarding last treatments failed")
                failures = ["last treatments not forwarded"]
        if failures:
            # Which impressions were in the failed message is not worth tracking: forwarding them
            # all again is idempotent, and so are the track calls of the retried messages.
            logger.warning("forwarding last treatments failed: %s", failures[0])
            return dict.fromkeys(self._records, f"profiles: {failures[0]}")
        # Counted once, when the batch succeeds: a retried batch leaves them out again.
        self.forwarded, self.oversized = self._newest - len(self._left_out), len(self._left_out)
        return {}

    def publish(self, metrics: Any) -> None:
        metrics.add_metric(name="LastTreatmentsForwarded", unit="Count", value=self.forwarded)
        if self.oversized:
            metrics.add_metric(name="LastTreatmentsTooLarge", unit="Count", value=self.oversized)
