"""A queue's messages as the CLI reads them (``dlq`` and ``delivery``): counted, received, and
made visible again when a command only looks at them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# While a command looks at messages they are hidden from other readers; it shows them again after.
PEEK_VISIBILITY_SECONDS = 30


def queue_depth(sqs: Any, queue_url: str) -> int:
    """The messages in the queue (SQS's approximate count)."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def receive_all(sqs: Any, queue_url: str, limit: int, visibility: int) -> list[dict[str, Any]]:
    """Up to ``limit`` messages, each once, hidden for ``visibility`` seconds."""
    messages: dict[str, dict[str, Any]] = {}
    while len(messages) < limit:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, limit - len(messages)),
            VisibilityTimeout=visibility,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            break
        for message in batch:
            messages.setdefault(message["MessageId"], message)
    return list(messages.values())


def make_visible(sqs: Any, queue_url: str, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), 10):
        chunk = messages[start : start + 10]
        sqs.change_message_visibility_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(chunk)
            ],
        )


def delete(sqs: Any, queue_url: str, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), 10):
        chunk = messages[start : start + 10]
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
        )


@contextmanager
def peeked(sqs: Any, queue_url: str, limit: int) -> Iterator[list[dict[str, Any]]]:
    """Up to ``limit`` messages to look at; visible again to other readers afterwards."""
    messages = receive_all(sqs, queue_url, limit, PEEK_VISIBILITY_SECONDS)
    try:
        yield messages
    finally:
        make_visible(sqs, queue_url, messages)
