"""What template.yaml must say about delivery: partial batch failures, bounded retries, the on-failure
queue, the stream filters that keep the function's own writes from looping, least privilege."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fme_bridge.template import Stack, load_template


def resources() -> dict[str, Any]:
    return load_template()["Resources"]


def delivery_events() -> dict[str, dict[str, Any]]:
    events = resources()["DeliveryFunction"]["Properties"]["Events"]
    return {name: event["Properties"] for name, event in events.items()}


def statements() -> list[dict[str, Any]]:
    policies = resources()["DeliveryFunction"]["Properties"]["Policies"]
    return [s for policy in policies for s in policy["Statement"]]


def test_the_function_reads_both_tables_streams() -> None:
    streams = {props["Stream"]["Fn::GetAtt"][0]: props for props in delivery_events().values()}
    assert set(streams) == {"EventsTable", "IdentitiesTable"}
    assert resources()["EventsTable"]["Properties"]["StreamSpecification"]["StreamViewType"] == "NEW_IMAGE"
    identities = resources()["IdentitiesTable"]["Properties"]["StreamSpecification"]
    assert identities["StreamViewType"] == "NEW_AND_OLD_IMAGES"  # what changed is computed from both


@pytest.mark.parametrize("name", ["StoredEvents", "IdentityChanges"])
def test_stream_batches_fail_partially_with_bounded_retries_and_an_on_failure_queue(name: str) -> None:
    props = delivery_events()[name]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["BisectBatchOnFunctionError"] is True
    assert 0 < props["MaximumRetryAttempts"] <= 20
    assert 60 <= props["MaximumRecordAgeInSeconds"] <= 86400  # within the stream's 24 h retention
    assert props["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["DeliveryFailureQueue", "Arn"]
    }
    assert props["StartingPosition"] == "TRIM_HORIZON"  # events stored before the first poll are not skipped


def test_only_new_events_are_delivered_so_updates_never_resend() -> None:
    [pattern] = [f["Pattern"] for f in delivery_events()["StoredEvents"]["FilterCriteria"]["Filters"]]
    assert json.loads(pattern) == {"eventName": ["INSERT"]}
    [pattern] = [f["Pattern"] for f in delivery_events()["IdentityChanges"]["FilterCriteria"]["Filters"]]
    assert json.loads(pattern) == {"eventName": ["INSERT", "MODIFY"]}


def test_the_function_may_do_only_what_delivery_needs(stack: Stack) -> None:
    by_sid = {s["Sid"]: s for s in statements()}
    assert set(by_sid) == {"DeliveryLog", "InboundConfigs", "FmeKeys", "FailureQueue"}
    assert sorted(by_sid["DeliveryLog"]["Action"]) == [
        "dynamodb:BatchGetItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:UpdateItem",
    ]
    assert by_sid["DeliveryLog"]["Resource"] == {"Fn::GetAtt": ["DeliveryLogTable", "Arn"]}
    assert by_sid["FailureQueue"]["Action"] == "sqs:SendMessage"
    assert by_sid["FailureQueue"]["Resource"] == {"Fn::GetAtt": ["DeliveryFailureQueue", "Arn"]}
    assert by_sid["InboundConfigs"]["Action"] == "ssm:GetParameter"
    assert stack.resolve(by_sid["InboundConfigs"]["Resource"]).endswith(
        ":parameter/fme-segment-bridge/dev/inbound/*"
    )
    assert by_sid["FmeKeys"]["Action"] == "secretsmanager:GetSecretValue"
    # Only the FME keys secrets, not the webhook secrets beside them: by ARN (six random characters
    # appended) and by bare name, by which IAM authorises a secret that does not exist, so that a
    # missing one is ResourceNotFoundException (a refusal with the reason), not AccessDenied (retried).
    assert [stack.resolve(r) for r in by_sid["FmeKeys"]["Resource"]] == [
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:/fme-segment-bridge/dev/inbound/*/fme-??????",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:/fme-segment-bridge/dev/inbound/*/fme",
    ]
    for statement in statements():
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert not any(a.endswith("*") for a in actions)


def test_the_function_environment_names_its_log_table_and_failure_queue(stack: Stack) -> None:
    env = stack.function_environment("DeliveryFunction")
    assert env["DELIVERY_LOG_TABLE"] == stack.tables["DeliveryLogTable"]
    assert env["DELIVERY_FAILURE_QUEUE_URL"] == stack.queues["DeliveryFailureQueue"]
    assert env["EVENTS_TABLE"] == stack.tables["EventsTable"]
    assert env["IDENTITIES_TABLE"] == stack.tables["IdentitiesTable"]


def test_acknowledgements_expire_and_the_failure_queue_keeps_messages_two_weeks() -> None:
    log = resources()["DeliveryLogTable"]["Properties"]
    assert log["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert resources()["DeliveryFailureQueue"]["Properties"]["MessageRetentionPeriod"] == 1209600


def test_the_function_knows_how_long_the_streams_retries_span() -> None:
    """functions/delivery/app.py holds a rate limit's wait only if the retries can outlast it."""
    from tests.delivery_support import delivery_app  # imports it as the other tests do

    props = resources()["DeliveryFunction"]["Properties"]
    spans = {
        int(e["Properties"]["MaximumRetryAttempts"]) * int(props["Timeout"])
        for e in props["Events"].values()
        if e["Type"] == "DynamoDB"
    }
    assert spans == {delivery_app().STREAM_RETRY_SECONDS}
