"""What the deployed stack exposes and may do: public routes, encryption at rest, throttling, IAM scope."""

from __future__ import annotations

from typing import Any

from fme_bridge.template import resources_of_type

PUBLIC_ROUTES = {
    ("POST", "/segment/{connectionId}"),
    ("POST", "/impressions/{token}"),
    ("GET", "/profiles/{environment}/{trafficType}/{key}"),
}


def test_only_the_webhook_and_profile_routes_are_public() -> None:
    """Segment's webhook, FME's impressions webhook and the profile API, each behind its secret."""
    routes = set()
    for properties in resources_of_type("AWS::Serverless::Function").values():
        assert "FunctionUrlConfig" not in properties
        for source in properties.get("Events", {}).values():
            if source["Type"] in ("HttpApi", "Api"):
                routes.add((source["Properties"]["Method"].upper(), source["Properties"]["Path"]))
    assert routes == PUBLIC_ROUTES
    for kind in ("AWS::Serverless::Api", "AWS::ApiGateway::RestApi", "AWS::Lambda::Url", "AWS::S3::Bucket"):
        assert not resources_of_type(kind), kind


def test_the_http_api_is_throttled() -> None:
    (api,) = resources_of_type("AWS::Serverless::HttpApi").values()
    settings = api["DefaultRouteSettings"]
    assert settings["ThrottlingRateLimit"]
    assert settings["ThrottlingBurstLimit"]


def test_data_is_encrypted_at_rest_and_recoverable() -> None:
    for name, table in resources_of_type("AWS::DynamoDB::Table").items():
        assert table["SSESpecification"]["SSEEnabled"] is True, name
        assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"], name
    for name, properties in resources_of_type("AWS::SQS::Queue").items():
        assert properties.get("SqsManagedSseEnabled") is True or properties.get("KmsMasterKeyId"), name


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """The policy's statements, those granted under a condition (``Fn::If``) in either case."""
    out = []
    for statement in policy.get("Statement", []):
        branches = statement["Fn::If"][1:] if "Fn::If" in statement else [statement]
        out += [branch for branch in branches if branch != {"Ref": "AWS::NoValue"}]
    return out


def test_policies_name_their_resources() -> None:
    """Least privilege: no wildcard action, no ``*`` resource, no service-wide managed policy."""
    for name, function in resources_of_type("AWS::Serverless::Function").items():
        for policy in function.get("Policies", []):
            assert isinstance(policy, dict), f"{name}: managed policy {policy!r}"
            for statement in _statements(policy):
                actions = (
                    statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                )
                assert all(not action.endswith(":*") and action != "*" for action in actions), (name, actions)
                targets = (
                    statement["Resource"]
                    if isinstance(statement["Resource"], list)
                    else [statement["Resource"]]
                )
                assert "*" not in targets, (name, statement.get("Sid"))
