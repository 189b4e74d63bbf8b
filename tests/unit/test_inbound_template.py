"""What template.yaml must say for the webhook: route, payload format, limits, least privilege, tables."""

from __future__ import annotations

from typing import Any

from fme_bridge.template import load_template
from shared.inbound.ingest import DEFAULT_MAX_BODY_BYTES

RESOURCES = load_template()["Resources"]
INGEST = RESOURCES["IngestFunction"]["Properties"]


def statements() -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for policy in INGEST["Policies"] for s in policy["Statement"]}


def actions(statement: dict[str, Any]) -> set[str]:
    value = statement["Action"]
    return {value} if isinstance(value, str) else set(value)


def test_route_is_post_segment_connection_id_on_the_http_api_with_payload_format_2() -> None:
    (event,) = INGEST["Events"].values()
    assert event["Type"] == "HttpApi"
    assert event["Properties"] == {
        "ApiId": {"Ref": "HttpApi"},
        "Method": "POST",
        "Path": "/segment/{connectionId}",
        "PayloadFormatVersion": "2.0",
    }
    assert RESOURCES["HttpApi"]["Type"] == "AWS::Serverless::HttpApi"
    assert INGEST["Handler"] == "functions.ingest.app.lambda_handler"


def test_http_api_is_throttled() -> None:
    settings = RESOURCES["HttpApi"]["Properties"]["DefaultRouteSettings"]
    assert settings["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}


def test_limits_fit_segment_and_lambda() -> None:
    parameters = load_template()["Parameters"]
    # Segment's Actions webhooks give up after about 10 s.
    assert INGEST["Timeout"] < 10
    assert parameters["MaxBodyBytes"]["MaxValue"] < 6 * 1024 * 1024
    variables = INGEST["Environment"]["Variables"]
    assert variables["MAX_BODY_BYTES"] == {"Ref": "MaxBodyBytes"}
    assert variables["EVENT_RETENTION_DAYS"] == {"Ref": "EventRetentionDays"}


def test_the_body_limit_without_its_variable_is_the_templates_default() -> None:
    default = load_template()["Parameters"]["MaxBodyBytes"]["Default"]
    assert DEFAULT_MAX_BODY_BYTES == default < 6 * 1024 * 1024


def test_dynamodb_permissions_are_exactly_what_ingest_uses_per_table() -> None:
    by_sid = statements()
    assert actions(by_sid["StoreEvents"]) == {
        "dynamodb:BatchGetItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:PutItem",
        "dynamodb:Query",
    }
    assert by_sid["StoreEvents"]["Resource"] == {"Fn::GetAtt": ["EventsTable", "Arn"]}
    assert actions(by_sid["MergeIdentities"]) == {
        "dynamodb:BatchGetItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:PutItem",
    }
    assert by_sid["MergeIdentities"]["Resource"] == {"Fn::GetAtt": ["IdentitiesTable", "Arn"]}


def test_config_and_secret_access_is_limited_to_inbound_connections() -> None:
    by_sid = statements()
    assert actions(by_sid["InboundConfigs"]) == {"ssm:GetParameter"}
    assert by_sid["InboundConfigs"]["Resource"]["Fn::Sub"][0].endswith(":parameter${Prefix}/inbound/*")
    assert actions(by_sid["InboundSecrets"]) == {"secretsmanager:GetSecretValue"}
    assert by_sid["InboundSecrets"]["Resource"]["Fn::Sub"][0].endswith(":secret:${Prefix}/inbound/*")
    deny = by_sid["NotTheFmeKeys"]
    assert deny["Effect"] == "Deny"
    assert deny["Resource"]["Fn::Sub"][0].endswith(":secret:${Prefix}/inbound/*/fme-*")


def test_no_wildcard_actions_or_resources() -> None:
    for statement in statements().values():
        assert all(not action.endswith("*") for action in actions(statement))
        assert statement["Resource"] != "*"


def test_tables_have_ttl_pitr_and_the_streams_delivery_reads() -> None:
    events = RESOURCES["EventsTable"]["Properties"]
    identities = RESOURCES["IdentitiesTable"]["Properties"]
    assert events["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert events["StreamSpecification"] == {"StreamViewType": "NEW_IMAGE"}
    assert identities["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    for table in (events, identities):
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert [k["AttributeName"] for k in events["KeySchema"]] == ["pk", "sk"]


def test_webhook_url_is_an_output() -> None:
    url = load_template()["Outputs"]["WebhookUrl"]["Value"]["Fn::Sub"]
    assert url.startswith("https://${HttpApi}.execute-api.")
    assert url.endswith("/segment/")
