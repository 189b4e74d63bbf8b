"""Failures to a dead-letter queue (impressions, last treatments), with their reasons as attributes.

The body is the message (or the failed part of it) in a shape its queue accepts, so that a DLQ
redrive after the fix replays it. Attributes: ``errorCode`` (comma-separated codes), ``reason``
(human-readable, per impression), ``sourceMessageId`` and ``failedImpressions``.

Two kinds of letters: permanent failures, sent at once; and messages still failing on their last
receive (the queue's ``maxReceiveCount``), which SQS's redrive would otherwise move without a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared import aws
from shared.outbound.delivery import DeadLetter
from shared.sqs_batches import MAX_CALL_BYTES, batch_calls

# A reason (the failed impressions' reasons, already cut to shared.outbound.delivery's
# MAX_REASON_CHARS, or a retried message's last reason) is cut past this, saying how many characters
# were left out: SQS counts attributes into a message's 256 KiB.
MAX_REASON_CHARS = 4000
RETRIES_EXHAUSTED = "retries_exhausted"


def retries_exhausted(
    record: int, message_id: str, body: str, receive_count: int, reason: str, impressions: int
) -> DeadLetter:
    """The letter of a message still failing on its last receive: whole, with the last reason."""
    return DeadLetter(
        record=record,
        source_message_id=message_id,
        body=body,
        error_codes=(RETRIES_EXHAUSTED,),
        reason=f"still failing after {receive_count} deliveries: {reason}",
        failed_impressions=impressions,
    )


def _reason(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason or "-"
    return f"{reason[:MAX_REASON_CHARS]}… ({len(reason) - MAX_REASON_CHARS} more characters)"


def _attributes(letter: DeadLetter) -> dict[str, Any]:
    return {
        "errorCode": {"DataType": "String", "StringValue": ",".join(letter.error_codes)},
        "reason": {"DataType": "String", "StringValue": _reason(letter.reason)},
        "sourceMessageId": {"DataType": "String", "StringValue": letter.source_message_id or "-"},
        "failedImpressions": {"DataType": "Number", "StringValue": str(letter.failed_impressions)},
    }


# A letter with its message attributes, built once: they count towards a call's size and are sent.
_Entry = tuple[DeadLetter, dict[str, Any]]


def _size(entry: _Entry) -> int:
    """What SQS counts of a letter: its body, and its attributes' names, types and values."""
    letter, attributes = entry
    return len(letter.body.encode()) + sum(
        len(name) + len(value["DataType"]) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


def send_dead_letters(queue_url: str, letters: Sequence[DeadLetter]) -> dict[int, str]:
    """Send each letter; returns the records (by index) that could not be dead-lettered, with why."""
    failed: dict[int, str] = {}
    entries = [(letter, _attributes(letter)) for letter in letters]
    for chunk in batch_calls(entries, _size, MAX_CALL_BYTES):
        failed.update(_send_chunk(queue_url, chunk))
    return failed


def _send_chunk(queue_url: str, chunk: list[_Entry]) -> dict[int, str]:
    entries = [
        {"Id": str(i), "MessageBody": letter.body, "MessageAttributes": attributes}
        for i, (letter, attributes) in enumerate(chunk)
    ]
    try:
        response = aws.client("sqs").send_message_batch(QueueUrl=queue_url, Entries=entries)
    except (BotoCoreError, ClientError) as exc:
        return {letter.record: f"dead-letter queue: {type(exc).__name__}" for letter, _ in chunk}
    return {
        chunk[int(entry["Id"])][0].record: f"dead-letter queue: {entry.get('Code', 'error')}"
        for entry in response.get("Failed", [])
    }


def log_dead_letters(logger: Any, letters: Iterable[DeadLetter]) -> None:
    """One warning per letter, on the handler's (structured) logger."""
    for letter in letters:
        logger.warning(
            "dead-lettered",
            extra={
                "messageId": letter.source_message_id,
                "errorCodes": letter.error_codes,
                "reason": letter.reason,
            },
        )
