"""SQS events shaped the way Lambda's SQS event source mapping delivers them."""

from __future__ import annotations

import json
from typing import Any

import boto3

from fme_bridge.local.sqs_source import body_record

REGION = "us-east-1"


def record(body: str, message_id: str | None = None, arn: str = "", receive_count: int = 1) -> dict[str, Any]:
    arn = arn or f"arn:aws:sqs:{REGION}:123456789012:ImpressionsQueue"
    return body_record(body, arn, REGION, message_id, receive_count)


def event(*bodies: str) -> dict[str, Any]:
    return {"Records": [record(body) for body in bodies]}


def receive_event(queue_url: str, queue_arn: str, max_messages: int = 10) -> dict[str, Any]:
    """Receive from the (moto) queue and build the event Lambda would, receipt handles included."""
    sqs = boto3.client("sqs", region_name=REGION)
    records: list[dict[str, Any]] = []
    while len(records) < max_messages:
        got = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, max_messages - len(records)),
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            break
        for message in got:
            records.append(
                {
                    "messageId": message["MessageId"],
                    "receiptHandle": message["ReceiptHandle"],
                    "body": message["Body"],
                    "attributes": message["Attributes"],
                    "messageAttributes": message.get("MessageAttributes", {}),
                    "md5OfBody": message["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": queue_arn,
                    "awsRegion": REGION,
                }
            )
    return {"Records": records}


def settle(queue_url: str, event: dict[str, Any], response: dict[str, Any]) -> None:
    """What the event source mapping does with the answer: delete the successes, release the failures."""
    sqs = boto3.client("sqs", region_name=REGION)
    failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
    for rec in event["Records"]:
        if rec["messageId"] in failed:
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=rec["receiptHandle"], VisibilityTimeout=0
            )
        else:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=rec["receiptHandle"])


def dead_letters(queue_url: str) -> list[dict[str, Any]]:
    """Everything in the DLQ: body and attributes as plain strings."""
    sqs = boto3.client("sqs", region_name=REGION)
    out: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=60
        ).get("Messages", [])
        if not got:
            return out
        for message in got:
            attrs = {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}
            out.append({"body": message["Body"], **attrs})


def max_receive_count(queue_url: str) -> int:
    """The queue's redrive ``maxReceiveCount``: the receive after which SQS dead-letters a message."""
    sqs = boto3.client("sqs", region_name=REGION)
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]
    return int(json.loads(attributes["RedrivePolicy"])["maxReceiveCount"])
