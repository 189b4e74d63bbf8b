"""The local resources come from template.yaml, with the settings that change behaviour."""

from __future__ import annotations

import json
import re
from typing import Any

import boto3
from moto import mock_aws

from fme_bridge.template import (
    Stack,
    create_stack,
    function_setting,
    functions,
    load_template,
    resources_of_type,
    template_parameters,
)


def test_tables_and_queues_follow_the_template(stack: Stack) -> None:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    events = ddb.describe_table(TableName=stack.tables["EventsTable"])["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in events["KeySchema"]} == {"pk": "HASH", "sk": "RANGE"}
    assert events["StreamSpecification"]["StreamViewType"] == "NEW_IMAGE"
    ttl = ddb.describe_time_to_live(TableName=stack.tables["EventsTable"])["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expiresAt"

    sqs = boto3.client("sqs", region_name="us-east-1")
    attrs = sqs.get_queue_attributes(QueueUrl=stack.queues["ImpressionsQueue"], AttributeNames=["All"])[
        "Attributes"
    ]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == stack.queue_arns["ImpressionsDeadLetterQueue"]
    assert redrive["maxReceiveCount"] == 5
    assert attrs["VisibilityTimeout"] == "360"


def test_every_queue_is_created_with_the_template_s_timeouts_retention_and_size() -> None:
    sent: dict[str, dict[str, str]] = {}

    def record(params: dict[str, Any], **_: Any) -> None:
        sent[params["QueueName"]] = params.get("Attributes", {})

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        sqs.meta.events.register("provide-client-params.sqs.CreateQueue", record)
        stack = create_stack(boto3.client("dynamodb", region_name="us-east-1"), sqs)
    queues = resources_of_type("AWS::SQS::Queue")
    assert set(sent) == {f"{stack.name}-{logical}" for logical in queues}
    for logical, props in queues.items():
        attributes = sent[f"{stack.name}-{logical}"]
        for key in ("VisibilityTimeout", "MessageRetentionPeriod", "MaximumMessageSize"):
            assert attributes.get(key) == (str(props[key]) if key in props else None), (logical, key)
    # Forwards of many last treatments take SQS's largest messages, set rather than left to a default.
    assert sent[f"{stack.name}-LastTreatmentsQueue"]["MaximumMessageSize"] == "1048576"


def test_no_value_leaves_out_the_list_item_or_property_it_stands_for() -> None:
    stack = Stack(name="s", parameters={"LastTreatments": "Disabled"})
    no_value = {"Ref": "AWS::NoValue"}
    assert stack.resolve(["a", no_value, "b"]) == ["a", "b"]
    assert stack.resolve({"Kept": 1, "Dropped": no_value}) == {"Kept": 1}
    statement = {"Fn::If": ["ForwardLastTreatments", {"Sid": "Forward"}, no_value]}
    assert stack.resolve([{"Sid": "Other"}, statement]) == [{"Sid": "Other"}]
    stack.parameters["LastTreatments"] = "Enabled"
    assert stack.resolve([{"Sid": "Other"}, statement]) == [{"Sid": "Other"}, {"Sid": "Forward"}]


def test_function_environment_resolves_like_cloudformation(stack: Stack) -> None:
    env = stack.function_environment("IngestFunction")
    assert env["CONFIG_PREFIX"] == "/fme-segment-bridge/dev"
    assert env["EVENTS_TABLE"] == stack.tables["EventsTable"]
    assert env["POWERTOOLS_SERVICE_NAME"] == "ingest"
    impressions = stack.function_environment("ImpressionsFunction")
    assert impressions["DEAD_LETTER_QUEUE_URL"] == stack.queues["ImpressionsDeadLetterQueue"]


def test_config_prefix_parameter_overrides_the_default() -> None:
    stack = Stack(name="s", parameters={"Stage": "prod", "ConfigPrefix": "/custom/path"})
    assert stack.resolve({"Fn::If": ["DefaultConfigPrefix", "a", "b"]}) == "b"
    stack.parameters["ConfigPrefix"] = ""
    assert stack.resolve({"Fn::Sub": "/fme-segment-bridge/${Stage}"}) == "/fme-segment-bridge/prod"


def test_join_puts_its_separator_between_the_resolved_items() -> None:
    stack = Stack(name="s", parameters={"Stage": "prod"})
    joined = {"Fn::Join": ["::", [{"Ref": "Stage"}, "x", {"Ref": "AWS::Region"}]]}
    assert stack.resolve(joined) == "prod::x::us-east-1"


def test_tracing_is_opt_in() -> None:
    """X-Ray only with Tracing=Active; otherwise Powertools is told so and never loads the X-Ray SDK.

    ``Disabled`` is SAM's own value for "no TracingConfig": with it SAM does not add the
    AWSXrayWriteOnlyAccess managed policy to the functions' roles, as it does for PassThrough.
    """
    template = load_template()
    assert template["Parameters"]["Tracing"]["Default"] == "Disabled"
    assert set(template["Parameters"]["Tracing"]["AllowedValues"]) == {"Active", "Disabled"}
    assert function_setting("IngestFunction", "Tracing") == {"Ref": "Tracing"}
    for logical, properties in functions().items():
        assert "Tracing" not in properties, logical
        assert "POWERTOOLS_TRACE_DISABLED" not in properties.get("Environment", {}).get("Variables", {}), (
            logical
        )
    disabled = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"]
    assert Stack(name="s", parameters=template_parameters()).resolve(disabled) == "true"
    active = Stack(name="s", parameters=template_parameters({"Tracing": "Active"}))
    assert active.resolve(disabled) == "false"


def _dead_letter_targets(resources: dict[str, Any]) -> set[str]:
    """Queues SQS moves messages into after maxReceiveCount (a source queue's RedrivePolicy)."""
    found = set()
    for resource in resources.values():
        redrive = resource.get("Properties", {}).get("RedrivePolicy")
        if redrive:
            found.add(redrive["deadLetterTargetArn"]["Fn::GetAtt"][0])
    return found


# Every alarm notifies the AlarmTopicArn topic, when one is given.
NOTIFIES_TOPIC = {"Fn::If": ["NotifyAlarms", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}


def alarms(resources: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """The properties of the template's alarms on metrics of ``namespace``."""
    return [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"]["Namespace"] == namespace
    ]


def _failure_queues(resources: dict[str, Any]) -> set[str]:
    """Queues that failures land in: SQS dead-letter targets and the stream sources' on-failure queues."""
    found = _dead_letter_targets(resources)
    for resource in resources.values():
        for source in resource.get("Properties", {}).get("Events", {}).values():
            on_failure = source.get("Properties", {}).get("DestinationConfig", {}).get("OnFailure")
            if on_failure:
                found.add(on_failure["Destination"]["Fn::GetAtt"][0])
    return found


def test_every_queue_that_failures_land_in_has_an_alarm_that_each_new_failure_sets_off() -> None:
    """An alarm notifies when it goes into ALARM. On the count of messages waiting, it stays there
    while one waits, and the failures after it would not notify; on the messages sent in the last
    periods, it goes back to OK after a quiet spell, and each new failure notifies again. Each
    failure queue has both: messages SQS moves into a dead-letter queue after maxReceiveCount are
    not sent, and a late data point of a long idle queue could slip past a one-period alarm."""
    resources = load_template()["Resources"]
    failure_queues = _failure_queues(resources)
    assert {
        "ImpressionsDeadLetterQueue",
        "LastTreatmentsDeadLetterQueue",
        "DeliveryFailureQueue",
        "AudiencesDeadLetterQueue",
    } <= failure_queues
    assert {"ImpressionsDeadLetterQueue", "LastTreatmentsDeadLetterQueue"} <= _dead_letter_targets(resources)
    alarmed: dict[str, set[tuple[str, str, int, int]]] = {}
    for props in alarms(resources, "AWS/SQS"):
        [dimension] = props["Dimensions"]
        queue = dimension["Value"]["Fn::GetAtt"][0]
        if queue not in failure_queues:
            continue  # the backlog alarms of the queues the functions read, below
        evaluation = (props["EvaluationPeriods"], props.get("DatapointsToAlarm", props["EvaluationPeriods"]))
        alarmed.setdefault(queue, set()).add((props["MetricName"], props["Statistic"], *evaluation))
        # Fires on the first message; no data points (an idle queue) is not an alarm.
        assert (props["Threshold"], props["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
        assert props["Period"] == 300
        assert props["TreatMissingData"] == "notBreaching"
        # Someone is told when AlarmTopicArn is given.
        assert props["AlarmActions"] == NOTIFIES_TOPIC
    assert failure_queues <= set(alarmed), failure_queues - set(alarmed)
    for queue in failure_queues:
        assert alarmed[queue] == {
            # Messages sent: the functions' own and Lambda's on-failure records, any of 15 minutes.
            ("NumberOfMessagesSent", "Sum", 3, 1),
            # Messages waiting.
            ("ApproximateNumberOfMessagesVisible", "Maximum", 1, 1),
        }, queue


def test_alarms_notify_the_topic_only_when_one_is_given() -> None:
    template = load_template()
    parameter = template["Parameters"]["AlarmTopicArn"]
    assert parameter["Default"] == ""
    pattern = re.compile(parameter["AllowedPattern"])
    assert pattern.match("")
    assert pattern.match("arn:aws:sns:eu-west-1:123456789012:ops-alerts")
    assert not pattern.match("ops-alerts")
    notify = template["Conditions"]["NotifyAlarms"]
    assert not Stack(name="s", parameters=template_parameters()).condition(notify)
    topic = "arn:aws:sns:eu-west-1:123456789012:ops"
    assert Stack(name="s", parameters=template_parameters({"AlarmTopicArn": topic})).condition(notify)


def test_every_function_logs_to_one_group_kept_log_retention_days() -> None:
    template = load_template()
    assert template["Globals"]["Function"]["LoggingConfig"] == {"LogGroup": {"Ref": "FunctionLogs"}}
    assert not any("LoggingConfig" in props for props in functions().values())  # none opts out
    group = template["Resources"]["FunctionLogs"]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    access = template["Resources"]["HttpApiAccessLogs"]["Properties"]
    assert access["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert template["Parameters"]["LogRetentionDays"]["Default"] == 30
    assert template["Outputs"]["FunctionLogGroupName"]["Value"] == {"Ref": "FunctionLogs"}


def test_a_failing_audience_recheck_raises_an_alarm() -> None:
    """The schedule does not retry it and it has no queue: its errors are what tells of a failure."""
    resources = load_template()["Resources"]
    [alarm] = [a for a in alarms(resources, "AWS/Lambda") if a["MetricName"] != "IteratorAge"]
    assert (alarm["MetricName"], alarm["Statistic"], alarm["Threshold"]) == ("Errors", "Sum", 1)
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "AudienceRecheckFunction"}}]
    assert alarm["AlarmActions"] == NOTIFIES_TOPIC
    # Neither the schedule nor Lambda runs a failed run again: the next run, 15 minutes later, does.
    recheck = resources["AudienceRecheckFunction"]["Properties"]
    assert recheck["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    [schedule] = recheck["Events"].values()
    assert schedule["Properties"]["RetryPolicy"]["MaximumRetryAttempts"] == 0


def test_no_resource_has_a_name_another_stack_of_the_account_would_also_take() -> None:
    """SAM names a ScheduleV2 schedule after its event's logical id unless told otherwise; schedule
    names are unique per account and region, so a second stack (prod beside dev) would not deploy."""
    resources = load_template()["Resources"]
    for logical, resource in resources.items():
        for event in resource.get("Properties", {}).get("Events", {}).values():
            if event["Type"] == "ScheduleV2":
                properties = event["Properties"]
                assert properties.get("OmitName") is True or "Name" in properties, logical
        for name in ("TableName", "QueueName", "FunctionName", "Name"):
            assert name not in resource.get("Properties", {}), (logical, name)


def test_webhook_errors_that_last_raise_an_alarm() -> None:
    """An invalid connection config answers every webhook with a 503: Segment retries, then drops."""
    resources = load_template()["Resources"]
    [alarm] = alarms(resources, "AWS/ApiGateway")
    assert (alarm["MetricName"], alarm["Statistic"], alarm["Threshold"]) == ("5xx", "Sum", 1)
    assert alarm["Dimensions"] == [{"Name": "ApiId", "Value": {"Ref": "HttpApi"}}]
    # Three periods in a row: a blip that Segment's retry covers is not an alarm.
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (300, 3, 3)
    assert alarm["TreatMissingData"] == "notBreaching"
    assert alarm["AlarmActions"] == NOTIFIES_TOPIC


def test_every_queue_and_stream_the_functions_read_alarms_long_before_what_waits_is_lost() -> None:
    """SQS deletes what waits past the retention, and a stream source hands a record too old to the
    failure queue, unprocessed: both without an error anywhere. A backlog an hour old notifies first."""
    resources = load_template()["Resources"]
    read_queues = {
        source["Properties"]["Queue"]["Fn::GetAtt"][0]
        for resource in resources.values()
        for source in resource.get("Properties", {}).get("Events", {}).values()
        if source["Type"] == "SQS"
    }
    stream_readers = {
        name
        for name, resource in resources.items()
        if any(
            source["Type"] == "DynamoDB"
            for source in resource.get("Properties", {}).get("Events", {}).values()
        )
    }
    assert read_queues == {"ImpressionsQueue", "LastTreatmentsQueue"}
    assert stream_readers == {"DeliveryFunction", "AudiencesFunction"}

    backlog = {}
    for props in alarms(resources, "AWS/SQS"):
        if props["MetricName"] == "ApproximateAgeOfOldestMessage":
            [dimension] = props["Dimensions"]
            backlog[dimension["Value"]["Fn::GetAtt"][0]] = props
    for props in alarms(resources, "AWS/Lambda"):
        if props["MetricName"] == "IteratorAge":
            [dimension] = props["Dimensions"]
            backlog[dimension["Value"]["Ref"]] = props
    assert set(backlog) == read_queues | stream_readers

    for queue in read_queues:
        retention_s = resources[queue]["Properties"]["MessageRetentionPeriod"]
        assert backlog[queue]["Threshold"] * 24 <= retention_s  # seconds
    for function in stream_readers:
        for source in resources[function]["Properties"]["Events"].values():
            # Too old is handed to the failure queue (alarmed), not left for the stream to trim unseen.
            record_age_s = source["Properties"]["MaximumRecordAgeInSeconds"]
            assert 0 < record_age_s < 24 * 3600
            assert backlog[function]["Threshold"] * 3 <= record_age_s * 1000  # milliseconds
    for props in backlog.values():
        assert props["Statistic"] == "Maximum"
        assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert props["TreatMissingData"] == "notBreaching"
        assert props["AlarmActions"] == NOTIFIES_TOPIC
