"""template.yaml as data: the local stack and the tests create exactly the resources it declares.

Only what runs locally is materialised — DynamoDB tables and SQS queues — with the settings that
change behaviour (keys, streams, TTL, visibility timeout, redrive policy). Function environments are
resolved the way CloudFormation would resolve them, so a handler under test sees the same variables
it sees in AWS. Deriving both from the template keeps them from drifting apart.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "template.yaml"
# What ``Ref AWS::NoValue`` resolves to: the list item or property holding it is left out.
NO_VALUE: Any = object()


class _CfnLoader(yaml.SafeLoader):
    """Keeps CloudFormation short-form tags as their long form (``!Ref x`` → ``{"Ref": x}``)."""


def _construct_tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


@functools.cache
def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    with path.open() as fh:
        return yaml.load(fh, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class Stack:
    """Physical names of a locally materialised template."""

    name: str
    parameters: dict[str, str]
    tables: dict[str, str] = field(default_factory=dict)  # logical id -> table name
    queues: dict[str, str] = field(default_factory=dict)  # logical id -> queue URL
    queue_arns: dict[str, str] = field(default_factory=dict)
    region: str = "us-east-1"
    account: str = "123456789012"

    def physical(self, logical_id: str) -> str:
        if logical_id in self.tables:
            return self.tables[logical_id]
        if logical_id in self.queues:
            return self.queues[logical_id]
        raise KeyError(f"{logical_id} is not a local resource")

    def resolve(self, value: Any) -> Any:
        """Evaluate the intrinsic functions the template uses in environments, outputs and policies.

        ``Ref AWS::NoValue`` removes the list item or property it stands for, as CloudFormation does.
        """
        template = load_template()
        if isinstance(value, dict) and len(value) == 1:
            ((fn, arg),) = value.items()
            if fn == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                if arg in self.parameters:
                    return self.parameters[arg]
                return {
                    "AWS::Region": self.region,
                    "AWS::AccountId": self.account,
                    "AWS::Partition": "aws",
                    "AWS::URLSuffix": "amazonaws.com",
                    "AWS::StackName": self.name,
                }.get(arg) or self.physical(arg)
            if fn == "Fn::GetAtt":
                logical, attr = arg
                if attr == "Arn" and logical in self.queue_arns:
                    return self.queue_arns[logical]
                if attr == "Arn" and logical in self.tables:
                    return f"arn:aws:dynamodb:{self.region}:{self.account}:table/{self.tables[logical]}"
                raise KeyError(f"cannot resolve {logical}.{attr} locally")
            if fn == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(template["Conditions"][cond]) else no)
            if fn == "Fn::Not":
                (inner,) = arg
                return not self.condition(inner)
            if fn == "Fn::Equals":
                left, right = (self.resolve(v) for v in arg)
                return str(left) == str(right)
            if fn == "Fn::Sub":
                text, names = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                values = {k: str(self.resolve(v)) for k, v in names.items()}
                return _substitute(
                    text,
                    lambda ref: (
                        values[ref]
                        if ref in values
                        else str(
                            self.resolve({"Fn::GetAtt": ref.split(".", 1)} if "." in ref else {"Ref": ref})
                        )
                    ),
                )
            if fn == "Fn::Join":
                sep, items = arg
                return sep.join(str(self.resolve(i)) for i in items)
        if isinstance(value, dict):
            resolved = {k: self.resolve(v) for k, v in value.items()}
            return {k: v for k, v in resolved.items() if v is not NO_VALUE}
        if isinstance(value, list):
            return [v for v in (self.resolve(item) for item in value) if v is not NO_VALUE]
        return value

    def condition(self, expr: Any) -> bool:
        return bool(self.resolve(expr))

    def output(self, name: str) -> Any:
        """The value of one of the template's Outputs, as CloudFormation would report it."""
        return self.resolve(load_template()["Outputs"][name]["Value"])

    def function_environment(self, logical_id: str) -> dict[str, str]:
        """The environment variables a function gets: Globals merged with its own, all resolved."""
        template = load_template()
        env: dict[str, Any] = dict(
            template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
        )
        props = template["Resources"][logical_id]["Properties"]
        env.update(props.get("Environment", {}).get("Variables", {}))
        return {k: str(self.resolve(v)) for k, v in env.items()}


def _substitute(text: str, lookup: Any) -> str:
    out, i = [], 0
    while i < len(text):
        start = text.find("${", i)
        if start < 0:
            out.append(text[i:])
            break
        end = text.index("}", start)
        out.append(text[i:start])
        out.append(lookup(text[start + 2 : end]))
        i = end + 1
    return "".join(out)


def template_parameters(overrides: dict[str, str] | None = None) -> dict[str, str]:
    params = {k: str(v.get("Default", "")) for k, v in load_template().get("Parameters", {}).items()}
    params.update(overrides or {})
    return params


def resources_of_type(resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        logical: res.get("Properties", {})
        for logical, res in load_template()["Resources"].items()
        if res["Type"] == resource_type
    }


def create_stack(
    dynamodb: Any, sqs: Any, name: str = "fme-segment-bridge-local", parameters: dict[str, str] | None = None
) -> Stack:
    """Create the template's tables and queues through the given clients (moto, or a real account)."""
    stack = Stack(name=name, parameters=template_parameters(parameters))
    stack.region = dynamodb.meta.region_name

    for logical, props in resources_of_type("AWS::DynamoDB::Table").items():
        table_name = f"{name}-{logical}"
        kwargs: dict[str, Any] = {
            "TableName": table_name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        for index_kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if index_kind in props:
                kwargs[index_kind] = props[index_kind]
        if "StreamSpecification" in props:
            kwargs["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
        dynamodb.create_table(**kwargs)
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            dynamodb.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
        stack.tables[logical] = table_name

    queues = resources_of_type("AWS::SQS::Queue")
    # Dead-letter queues first: a redrive policy names its target's ARN.
    ordered = sorted(queues, key=lambda logical: "RedrivePolicy" in queues[logical])
    for logical in ordered:
        props = queues[logical]
        attributes: dict[str, str] = {
            k: str(props[k])
            for k in ("VisibilityTimeout", "MessageRetentionPeriod", "MaximumMessageSize")
            if k in props
        }
        if "RedrivePolicy" in props:
            policy = stack.resolve(props["RedrivePolicy"])
            attributes["RedrivePolicy"] = json.dumps(
                {
                    "deadLetterTargetArn": policy["deadLetterTargetArn"],
                    "maxReceiveCount": int(policy["maxReceiveCount"]),
                }
            )
        url = sqs.create_queue(QueueName=f"{name}-{logical}", Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        stack.queues[logical] = url
        stack.queue_arns[logical] = arn
    return stack


# ---------------------------------------------------------------------------------------------
# Functions and the events that invoke them (the local stack wires these up)


@dataclass(frozen=True)
class FunctionEvent:
    """One entry of a function's ``Events`` (an HTTP route, an SQS queue, a table stream…)."""

    function: str  # logical id of the AWS::Serverless::Function
    name: str  # the event's key under Events
    type: str  # HttpApi, SQS, DynamoDB, …
    properties: dict[str, Any]


def functions() -> dict[str, dict[str, Any]]:
    """The template's serverless functions by logical id (their Properties)."""
    return resources_of_type("AWS::Serverless::Function")


def function_events(event_type: str) -> list[FunctionEvent]:
    """Every event of ``event_type`` the template attaches to a function, in template order."""
    found = []
    for logical, props in functions().items():
        for name, event in (props.get("Events") or {}).items():
            if event.get("Type") == event_type:
                found.append(FunctionEvent(logical, name, event_type, dict(event.get("Properties") or {})))
    return found


def function_setting(logical_id: str, name: str, default: Any = None) -> Any:
    """A function property, falling back to ``Globals.Function`` the way SAM does."""
    props = functions()[logical_id]
    if name in props:
        return props[name]
    return load_template().get("Globals", {}).get("Function", {}).get(name, default)
