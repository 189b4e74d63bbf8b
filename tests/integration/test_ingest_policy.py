"""The IAM policy allows exactly the DynamoDB calls the webhook makes — no more, no fewer."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fme_bridge.template import load_template
from shared import dynamodb
from shared.inbound.ingest import CONDITIONAL_PUT_EVENTS
from shared.profiles_table import LastTreatment, write_last_treatment
from tests.integration.ingest_support import Webhook, segment_message


def allowed_by_table() -> dict[str, set[str]]:
    allowed: dict[str, set[str]] = defaultdict(set)
    for policy in load_template()["Resources"]["IngestFunction"]["Properties"]["Policies"]:
        for statement in policy["Statement"]:
            resource = statement["Resource"]
            if statement["Effect"] == "Allow" and isinstance(resource, dict) and "Fn::GetAtt" in resource:
                names = (
                    statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                )
                allowed[resource["Fn::GetAtt"][0]].update(n.removeprefix("dynamodb:") for n in names)
    return allowed


def test_calls_made_match_the_policy(function_env: Any, lambda_context: Any) -> None:
    webhook = Webhook.create(function_env, lambda_context)
    tables = {
        webhook.env["EVENTS_TABLE"]: "EventsTable",
        webhook.env["IDENTITIES_TABLE"]: "IdentitiesTable",
        webhook.env["PROFILES_TABLE"]: "ProfilesTable",
    }
    used: dict[str, set[str]] = defaultdict(set)
    # The deleted user has seen a flag: the deletion removes that last treatment too.
    deleted_user = segment_message("delete")["userId"]
    write_last_treatment(LastTreatment("Production", "user", deleted_user, "new_checkout", "on", 1))

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        names = set(params.get("RequestItems", {})) | {params.get("TableName")}
        for name in names - {None}:
            used[tables[name]].add(model.name)

    dynamodb.client().meta.events.register("before-parameter-build.dynamodb.*", record)
    messages = [
        segment_message("track"),
        segment_message("identify"),
        segment_message("group_split"),
        segment_message("delete"),
    ]
    assert webhook.post(messages).status == 200
    assert webhook.post(segment_message("identify", messageId="again", traits={"plan": "x"})).status == 200
    # More events than conditional puts are used for: existence check and batched writes.
    larger = [segment_message("track", messageId=f"m-{i}") for i in range(CONDITIONAL_PUT_EVENTS)]
    assert len(larger) * 2 > CONDITIONAL_PUT_EVENTS  # two mapped identities per message
    assert webhook.post(larger).status == 200

    assert dict(used) == dict(allowed_by_table())
