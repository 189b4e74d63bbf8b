"""What template.yaml must say for the profile API and audiences."""

from __future__ import annotations

import json
from typing import Any

from moto.events.models import EventPattern

from fme_bridge.template import load_template


def resource(logical: str) -> dict[str, Any]:
    return load_template()["Resources"][logical]


def actions(logical: str) -> set[str]:
    found: set[str] = set()
    for policy in resource(logical)["Properties"]["Policies"]:
        for statement in policy["Statement"]:
            listed = statement["Action"]
            found.update([listed] if isinstance(listed, str) else listed)
    return found


def resources(logical: str) -> list[str]:
    """The plain ``!Sub`` strings a function's policies name (GetAtt resources left out)."""
    found = []
    for policy in resource(logical)["Properties"]["Policies"]:
        for statement in policy["Statement"]:
            listed = statement["Resource"]
            for item in listed if isinstance(listed, list) else [listed]:
                sub = item.get("Fn::Sub") if isinstance(item, dict) else None
                if isinstance(sub, str):
                    found.append(sub)
    return found


def test_the_profile_api_is_a_get_route_on_the_http_api() -> None:
    props = resource("ProfilesFunction")["Properties"]
    assert props["Handler"] == "functions.profiles.app.lambda_handler"
    route = props["Events"]["Profile"]["Properties"]
    assert route["ApiId"] == {"Ref": "HttpApi"}
    assert (route["Method"], route["Path"]) == ("GET", "/profiles/{environment}/{trafficType}/{key}")
    assert route["PayloadFormatVersion"] == "2.0"
    # Read-only, and only its own secret.
    assert actions("ProfilesFunction") == {
        "dynamodb:GetItem",
        "dynamodb:Query",
        "secretsmanager:GetSecretValue",
    }
    [secret_statement] = [
        s
        for s in resource("ProfilesFunction")["Properties"]["Policies"][0]["Statement"]
        if s["Action"] == "secretsmanager:GetSecretValue"
    ]
    # By ARN, and by the bare name IAM authorises a missing secret by: no secret is a 401, not a 503.
    assert [r["Fn::Sub"][0].rsplit(":secret:", 1)[1] for r in secret_statement["Resource"]] == [
        "${Prefix}/profiles-??????",
        "${Prefix}/profiles",
    ]


def test_audiences_consume_the_three_streams_with_partial_failures_and_a_failure_destination() -> None:
    events = resource("AudiencesFunction")["Properties"]["Events"]
    streams = {name: e["Properties"] for name, e in events.items() if e["Type"] == "DynamoDB"}
    assert {s["Stream"]["Fn::GetAtt"][0] for s in streams.values()} == {
        "EventsTable",
        "IdentitiesTable",
        "ProfilesTable",
    }
    for props in streams.values():
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert props["DestinationConfig"]["OnFailure"]["Destination"] == {
            "Fn::GetAtt": ["AudiencesDeadLetterQueue", "Arn"]
        }
        assert props["MaximumRetryAttempts"] > 0
    # The function writes memberships into ProfilesTable: only last treatments may trigger it.
    pattern = json.loads(streams["TreatmentChanges"]["FilterCriteria"]["Filters"][0]["Pattern"])
    assert pattern == {"dynamodb": {"Keys": {"sk": {"S": [{"prefix": "treatment#"}]}}}}
    # New events, and events a user deletion removed; not those DynamoDB's TTL expired (matched as
    # Lambda matches them, with the pattern matcher the local stack uses).
    patterns = [EventPattern.load(f["Pattern"]) for f in streams["StoredEvents"]["FilterCriteria"]["Filters"]]
    ttl = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    for record, passes in [
        ({"eventName": "INSERT"}, True),
        ({"eventName": "MODIFY"}, False),
        ({"eventName": "REMOVE"}, True),
        ({"eventName": "REMOVE", "userIdentity": ttl}, False),
    ]:
        assert any(p.matches_event(record) for p in patterns) is passes, record


def test_profiles_table_streams_old_and_new_images_and_has_the_sparse_recheck_index() -> None:
    props = resource("ProfilesTable")["Properties"]
    assert props["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    (index,) = props["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "RecheckIndex"
    assert [k["AttributeName"] for k in index["KeySchema"]] == ["recheckPartition", "recheckAt"]
    assert index["Projection"]["ProjectionType"] == "KEYS_ONLY"


def test_the_recheck_runs_on_a_schedule_with_the_same_narrow_permissions() -> None:
    props = resource("AudienceRecheckFunction")["Properties"]
    assert props["Handler"] == "functions.audiences.sweep.lambda_handler"
    (schedule,) = props["Events"].values()
    assert schedule["Type"] == "ScheduleV2"
    assert actions("AudienceRecheckFunction") <= actions("AudiencesFunction")
    for logical in ("AudiencesFunction", "AudienceRecheckFunction"):
        assert not any(a.endswith("*") for a in actions(logical))
        assert "dynamodb:DeleteItem" not in actions(logical)
    # Only the sweep looks up who is due for a re-check.
    index = "${ProfilesTable.Arn}/index/RecheckIndex"
    assert index in resources("AudienceRecheckFunction")
    assert index not in resources("AudiencesFunction")
