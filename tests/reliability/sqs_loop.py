"""Lambda's SQS event source mapping, played against the moto queues of the template.

Each round receives every visible message in batches of the template's ``BatchSize``, invokes the
handler, deletes what it reports as done, and keeps the rest invisible until the round ends — as
the visibility timeout does. Then the failures become visible again and the next round re-delivers
them; after ``maxReceiveCount`` receives the queue's redrive policy (moto implements it) moves a
message to the dead-letter queue. A "killed" invocation (a Lambda timeout) answers nothing, so its
whole batch comes back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3

from tests.integration.sqs_events import receive_event

REGION = "us-east-1"
Handler = Callable[[dict[str, Any]], dict[str, Any] | None]


@dataclass
class RoundResult:
    invocations: int = 0
    received: int = 0
    failed: int = 0
    killed: int = 0


@dataclass
class SqsLoop:
    queue_url: str
    queue_arn: str
    batch_size: int
    rounds: list[RoundResult] = field(default_factory=list)

    @property
    def sqs(self) -> Any:
        return boto3.client("sqs", region_name=REGION)

    def send(self, bodies: list[str]) -> None:
        for start in range(0, len(bodies), 10):
            chunk = bodies[start : start + 10]
            entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)]
            failed = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries).get("Failed")
            assert not failed, failed

    def round(self, handler: Handler) -> RoundResult:
        """Deliver every visible message once; returns what happened."""
        result = RoundResult()
        held: list[str] = []  # receipt handles of failed messages, invisible until the round ends
        done: list[str] = []
        while True:
            event = receive_event(self.queue_url, self.queue_arn, self.batch_size)
            if not event["Records"]:
                break
            result.invocations += 1
            result.received += len(event["Records"])
            response = handler(event)
            if response is None:  # the invocation died: nothing is deleted
                result.killed += 1
                held.extend(r["receiptHandle"] for r in event["Records"])
                continue
            failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
            result.failed += len(failed)
            for record in event["Records"]:
                if record["messageId"] in failed:
                    held.append(record["receiptHandle"])
                else:
                    done.append(record["receiptHandle"])
            self._delete(done)
            done.clear()
        self._release(held)  # the visibility timeout expires
        self.rounds.append(result)
        return result

    def _delete(self, handles: list[str]) -> None:
        for start in range(0, len(handles), 10):
            entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles[start : start + 10])]
            failed = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries).get("Failed")
            assert not failed, failed

    def _release(self, handles: list[str]) -> None:
        for start in range(0, len(handles), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for i, h in enumerate(handles[start : start + 10])
            ]
            self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)

    def approximate_messages(self, queue_url: str | None = None) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=queue_url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )


def redrive_settings(template_queue: dict[str, Any]) -> tuple[int, int]:
    """(maxReceiveCount, VisibilityTimeout) of a queue resource of template.yaml."""
    properties = template_queue["Properties"]
    policy = properties["RedrivePolicy"]
    if isinstance(policy, str):
        policy = json.loads(policy)
    return int(policy["maxReceiveCount"]), int(properties["VisibilityTimeout"])
