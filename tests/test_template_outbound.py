"""What template.yaml must say for the impressions path: queue, DLQ, mapping, least privilege."""

from __future__ import annotations

import importlib
from typing import Any

from fme_bridge.template import Stack, load_template, template_parameters


def resources() -> dict[str, Any]:
    return load_template()["Resources"]


def function() -> dict[str, Any]:
    return resources()["ImpressionsFunction"]["Properties"]


def function_timeout() -> int:
    return int(function().get("Timeout") or load_template()["Globals"]["Function"]["Timeout"])


def test_handler_is_the_dotted_path_that_imports() -> None:
    module, _, name = function()["Handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_event_source_reports_partial_batch_failures_and_batches() -> None:
    [source] = function()["Events"].values()
    assert source["Type"] == "SQS"
    props = source["Properties"]
    assert props["Queue"] == {"Fn::GetAtt": ["ImpressionsQueue", "Arn"]}
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 100 <= props["BatchSize"] <= 10_000
    # Lambda requires a batching window for batches over 10 messages.
    assert 1 <= props["MaximumBatchingWindowInSeconds"] <= 20
    assert props["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "ImpressionsMaxConcurrency"}


def test_queue_visibility_is_at_least_six_times_the_timeout_and_redrives_to_the_dlq() -> None:
    queue = resources()["ImpressionsQueue"]["Properties"]
    assert int(queue["VisibilityTimeout"]) >= 6 * function_timeout()
    redrive = queue["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["ImpressionsDeadLetterQueue", "Arn"]}
    assert 3 <= int(redrive["maxReceiveCount"]) <= 10
    dlq = resources()["ImpressionsDeadLetterQueue"]["Properties"]
    assert int(dlq["MessageRetentionPeriod"]) == 14 * 24 * 3600
    assert int(dlq["MessageRetentionPeriod"]) > int(queue["MessageRetentionPeriod"])


def test_dead_letters_are_visible() -> None:
    env = function()["Environment"]["Variables"]
    assert env["DEAD_LETTER_QUEUE_URL"] == {"Ref": "ImpressionsDeadLetterQueue"}
    # Both alarms watch the DLQ (test_template_resources checks the rest).
    for name in ("ImpressionsDeadLetterAlarm", "ImpressionsDeadLetterWaitingAlarm"):
        alarm = resources()[name]["Properties"]
        [dimension] = alarm["Dimensions"]
        assert dimension["Value"] == {"Fn::GetAtt": ["ImpressionsDeadLetterQueue", "QueueName"]}
        assert alarm["Threshold"] == 1


def test_least_privilege() -> None:
    [policy] = function()["Policies"]
    # Forwarding last treatments is granted only where the stack forwards them.
    [[condition, forward, otherwise]] = [s["Fn::If"] for s in policy["Statement"] if "Fn::If" in s]
    assert condition == "ForwardLastTreatments"
    assert otherwise == {"Ref": "AWS::NoValue"}
    statements = {s["Sid"]: s for s in policy["Statement"] if "Fn::If" not in s}
    statements[forward["Sid"]] = forward
    assert all(s["Effect"] == "Allow" for s in statements.values())
    actions = sorted(
        a
        for s in statements.values()
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    )
    assert actions == [
        "secretsmanager:GetSecretValue",
        "sqs:SendMessage",
        "sqs:SendMessage",
        "ssm:GetParametersByPath",
    ]
    # Last treatments (docs/profiles.md) are recorded by their own function: only forwarded here.
    assert statements["LastTreatmentsToTheirQueue"]["Resource"] == {
        "Fn::GetAtt": ["LastTreatmentsQueue", "Arn"]
    }
    # ... unless the stack leaves them out (LastTreatments=Disabled, its default Enabled).
    assert function()["Environment"]["Variables"]["LAST_TREATMENTS_QUEUE_URL"] == {
        "Fn::If": ["ForwardLastTreatments", {"Ref": "LastTreatmentsQueue"}, ""]
    }
    template = load_template()
    assert template["Conditions"]["ForwardLastTreatments"] == {
        "Fn::Equals": [{"Ref": "LastTreatments"}, "Enabled"]
    }
    assert template["Parameters"]["LastTreatments"]["Default"] == "Enabled"
    assert statements["PermanentFailuresToDeadLetterQueue"]["Resource"] == {
        "Fn::GetAtt": ["ImpressionsDeadLetterQueue", "Arn"]
    }
    # Only the listing of every outbound config: SSM authorises it against the path.
    ssm = statements["OutboundConfigs"]["Resource"]["Fn::Sub"][0]
    assert ssm.endswith(":parameter${Prefix}/outbound")
    secret = statements["OutboundSecrets"]["Resource"]["Fn::Sub"][0]
    assert secret.endswith(":secret:${Prefix}/outbound/*")
    for statement in statements.values():
        assert statement["Resource"] != "*"


def test_a_stack_without_last_treatments_cannot_send_to_their_queue() -> None:
    queues = ("ImpressionsDeadLetterQueue", "LastTreatmentsQueue")
    arns = {name: f"arn:aws:sqs:us-east-1:123456789012:{name}" for name in queues}
    for setting, granted in (("Enabled", True), ("Disabled", False)):
        stack = Stack("t", template_parameters({"LastTreatments": setting}), queue_arns=arns)
        [policy] = stack.resolve(function()["Policies"])
        queues_granted = {s["Resource"] for s in policy["Statement"] if s["Action"] == "sqs:SendMessage"}
        assert (arns["LastTreatmentsQueue"] in queues_granted) is granted, setting
        assert arns["ImpressionsDeadLetterQueue"] in queues_granted


def test_last_treatments_function_reads_its_queue_with_partial_failures_and_a_dead_letter_queue() -> None:
    props = resources()["LastTreatmentsFunction"]["Properties"]
    assert props["Handler"] == "functions.last_treatments.app.lambda_handler"
    source = props["Events"]["LastTreatments"]["Properties"]
    assert source["Queue"] == {"Fn::GetAtt": ["LastTreatmentsQueue", "Arn"]}
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queue = resources()["LastTreatmentsQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * props["Timeout"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["LastTreatmentsDeadLetterQueue", "Arn"]
    }


def test_last_treatments_queues_take_the_largest_forward_and_its_dead_letter() -> None:
    from shared.profiles.forwarding import MAX_CALL_BYTES, MAX_MESSAGE_BYTES

    for logical in ("LastTreatmentsQueue", "LastTreatmentsDeadLetterQueue"):
        size = resources()[logical]["Properties"]["MaximumMessageSize"]
        assert size == 1024 * 1024, logical
    # A dead letter is the whole forwarded message plus its attributes (reason cut at 4,000).
    assert MAX_MESSAGE_BYTES + 8 * 1024 <= 256 * 1024
    assert MAX_CALL_BYTES <= 1024 * 1024


def test_last_treatments_function_least_privilege() -> None:
    [policy] = resources()["LastTreatmentsFunction"]["Properties"]["Policies"]
    statements = {s["Sid"]: s for s in policy["Statement"]}
    actions = sorted(
        a
        for s in statements.values()
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    )
    assert actions == [
        "dynamodb:UpdateItem",
        "secretsmanager:GetSecretValue",
        "sqs:SendMessage",
        "ssm:GetParametersByPath",
    ]
    # Conditional updates of ProfilesTable only; configs and write keys for computed-trait identifies;
    # failures to its own dead-letter queue.
    assert statements["LastTreatments"]["Resource"] == {"Fn::GetAtt": ["ProfilesTable", "Arn"]}
    dead_letters = {"Fn::GetAtt": ["LastTreatmentsDeadLetterQueue", "Arn"]}
    assert statements["FailuresToDeadLetterQueue"]["Resource"] == dead_letters
    secret = statements["OutboundSecrets"]["Resource"]["Fn::Sub"][0]
    assert secret.endswith(":secret:${Prefix}/outbound/*")
