"""Matching the AWS calls a function makes to the Allow statements of its template policy."""

from __future__ import annotations

import fnmatch
import threading
from typing import Any

import botocore.client

from fme_bridge.template import Stack, load_template

REGION, ACCOUNT = "us-east-1", "123456789012"
# IAM authorises some API operations as another action.
AUTHORISED_AS = {"sqs:SendMessageBatch": "sqs:SendMessage"}

Call = tuple[str, str]  # (IAM action, resource ARN)
RawCall = tuple[str, str, dict[str, Any]]  # (service, operation, parameters)


def statements(stack: Stack, function: str) -> list[tuple[set[str], list[str]]]:
    """The function's Allow statements as (actions, resource ARN patterns), intrinsics resolved."""
    out = []
    for policy in stack.resolve(load_template()["Resources"][function]["Properties"]["Policies"]):
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow", statement
            actions, resources = statement["Action"], statement["Resource"]
            actions = actions if isinstance(actions, list) else [actions]
            resources = resources if isinstance(resources, list) else [resources]
            out.append((set(actions), [str(stack.resolve(r)) for r in resources]))
    return out


def resource_arn(service: str, params: dict[str, Any]) -> str:
    if service == "dynamodb":
        table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{params['TableName']}"
        return f"{table}/index/{params['IndexName']}" if "IndexName" in params else table
    if service == "sqs":
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{params['QueueUrl'].rsplit('/', 1)[-1]}"
    if service == "ssm":
        return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{params.get('Path') or params['Name']}"
    if service == "secretsmanager":
        # Secrets Manager appends six random characters to a secret's name in its ARN.
        return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{params['SecretId']}-AbCdEf"
    raise AssertionError(f"unexpected AWS service {service}")


def authorised_as(calls: list[RawCall]) -> list[Call]:
    """What IAM checks for each call: (action, resource ARN)."""
    out = []
    for service, operation, params in calls:
        action = f"{service}:{operation}"
        out.append((AUTHORISED_AS.get(action, action), resource_arn(service, params)))
    return out


def recording_calls(monkeypatch: Any) -> list[RawCall]:
    """Record every AWS call made through botocore, from any thread (the ``calls`` fixture)."""
    made: list[RawCall] = []
    lock = threading.Lock()
    original = botocore.client.BaseClient._make_api_call

    def recording(self: Any, operation: str, params: dict[str, Any]) -> Any:
        with lock:
            made.append((self.meta.service_model.endpoint_prefix, operation, dict(params)))
        return original(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return made


def unauthorised(used: list[Call], allowed: list[tuple[set[str], list[str]]]) -> list[Call]:
    return [
        (action, arn)
        for action, arn in used
        if not any(
            action in actions and any(fnmatch.fnmatchcase(arn, r) for r in resources)
            for actions, resources in allowed
        )
    ]


def unused(used: list[Call], allowed: list[tuple[set[str], list[str]]]) -> list[tuple[str, str]]:
    return [
        (action, resource)
        for actions, resources in allowed
        for action in sorted(actions)
        for resource in resources
        if not any(a == action and fnmatch.fnmatchcase(arn, resource) for a, arn in used)
    ]
