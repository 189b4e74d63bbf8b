"""The local resources come from template.yaml, with the settings that change behaviour."""

from __future__ import annotations

import json

import boto3

from fme_bridge.template import Stack, function_setting, functions, load_template, template_parameters


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
