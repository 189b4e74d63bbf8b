"""Which bridge the CLI talks to: an AWS deployment or the local stack, and where its resources are.

Resolution, first match wins:
- the config prefix: ``--prefix`` / ``CONFIG_PREFIX``; else the ``ConfigPrefix`` output of
  ``--stack-name``; else, against a local endpoint, the local stack's ``/fme-segment-bridge/local``;
- a queue or table (by the template's logical id): its environment variable (``IMPRESSIONS_QUEUE_URL``,
  ``EVENTS_TABLE``, … — the names the functions use, except the dead-letter queues' ``*_DLQ_URL``);
  else the stack's outputs (``<LogicalId>Url`` / ``<LogicalId>Name``); else, against a local
  endpoint, the local stack's names.
Credentials and region are boto3's own (environment, profile, SSO…). Against a loopback endpoint
the region is the local stack's, :data:`LOCAL_REGION`, unless ``--region`` is given (the
environment's and the profile's name a region of AWS itself), and without credentials placeholder
ones are used (the local AWS does not check them).
"""

from __future__ import annotations

import functools
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

LOCAL_STACK_NAME = "fme-segment-bridge-local"
LOCAL_CONFIG_PREFIX = "/fme-segment-bridge/local"
LOCAL_REGION = "us-east-1"
# What a user of `make run` left out when the CLI cannot tell where to look.
LOCAL_HINT = "; on the local stack (make run): --endpoint-url http://127.0.0.1:4566"

# Environment variables naming a resource directly, by logical id; the first is the CLI's own, the
# others what the functions' environments call it (so a function's environment can be copied over).
# Those are generic names another application may set too: they count only when no stack is named.
RESOURCE_VARIABLES = {
    "ImpressionsQueue": ("IMPRESSIONS_QUEUE_URL",),
    "ImpressionsDeadLetterQueue": ("IMPRESSIONS_DLQ_URL", "DEAD_LETTER_QUEUE_URL"),
    "LastTreatmentsQueue": ("LAST_TREATMENTS_QUEUE_URL",),
    "LastTreatmentsDeadLetterQueue": ("LAST_TREATMENTS_DLQ_URL", "LAST_TREATMENTS_DEAD_LETTER_QUEUE_URL"),
    "AudiencesDeadLetterQueue": ("AUDIENCES_DLQ_URL",),
    "EventsTable": ("EVENTS_TABLE",),
    "IdentitiesTable": ("IDENTITIES_TABLE",),
    "ProfilesTable": ("PROFILES_TABLE",),
    "DeliveryLogTable": ("DELIVERY_LOG_TABLE",),
    "DeliveryFailureQueue": ("DELIVERY_FAILURE_QUEUE_URL",),
}

_CLIENT_CONFIG = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=3, read_timeout=20)


class TargetError(Exception):
    """The CLI cannot tell which resource to use; the message says what to pass."""


def is_loopback_url(url: str | None) -> bool:
    if not url:
        return False
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Target:
    endpoint_url: str | None = None
    region: str | None = None
    prefix_option: str | None = None
    stack_name: str | None = None
    # Whether ``region`` was given on the command line rather than found in the environment.
    region_given: bool = False
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_local(self) -> bool:
        return is_loopback_url(self._checked_endpoint())

    def _checked_endpoint(self) -> str | None:
        """The endpoint, refused here if it is not a URL (``127.0.0.1:4566``): botocore's own error
        comes later, if at all, and says nothing of the option."""
        url = self.endpoint_url
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname or url != url.strip():
                raise TargetError(
                    f"--endpoint-url (or AWS_ENDPOINT_URL) {url!r} is not an http:// or https:// URL "
                    "(e.g. http://127.0.0.1:4566)"
                )
        return url

    @functools.cached_property
    def session(self) -> boto3.session.Session:
        if not self.is_local:  # which checks the endpoint first
            return boto3.session.Session(region_name=self.region)
        region = self.region if self.region_given and self.region else LOCAL_REGION
        session = boto3.session.Session(region_name=region)
        if session.get_credentials() is None:
            session = boto3.session.Session(
                region_name=region, aws_access_key_id="local", aws_secret_access_key="local"
            )
        return session

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, endpoint_url=self.endpoint_url, config=_CLIENT_CONFIG
            )
        return self._clients[service]

    @functools.cached_property
    def stack_outputs(self) -> dict[str, str]:
        if not self.stack_name:
            return {}
        stacks = self.client("cloudformation").describe_stacks(StackName=self.stack_name)["Stacks"]
        return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}

    @functools.cached_property
    def prefix(self) -> str:
        if self.prefix_option:
            return self.prefix_option.rstrip("/")
        if "ConfigPrefix" in self.stack_outputs:
            return self.stack_outputs["ConfigPrefix"].rstrip("/")
        if self.is_local:
            return LOCAL_CONFIG_PREFIX
        raise TargetError(
            f"which config prefix? pass --prefix (or set CONFIG_PREFIX) or --stack-name{LOCAL_HINT}"
        )

    def _resource(self, logical_id: str, output_suffix: str) -> str:
        variables = RESOURCE_VARIABLES.get(logical_id, ())
        for variable in variables if not self.stack_name else variables[:1]:
            if os.environ.get(variable):
                return os.environ[variable]
        output = f"{logical_id}{output_suffix}"
        if output in self.stack_outputs:
            return self.stack_outputs[output]
        if self.is_local:
            return f"{LOCAL_STACK_NAME}-{logical_id}"
        hint = f"set {variables[0]} or " if variables else ""
        raise TargetError(
            f"which {logical_id}? {hint}pass --stack-name (the bridge's CloudFormation stack){LOCAL_HINT}"
        )

    def queue_url(self, logical_id: str) -> str:
        value = self._resource(logical_id, "Url")
        if value.startswith(("http://", "https://")):
            return value
        return str(self.client("sqs").get_queue_url(QueueName=value)["QueueUrl"])

    def table_name(self, logical_id: str) -> str:
        return self._resource(logical_id, "Name")

    def table(self, logical_id: str) -> Any:
        return self.session.resource("dynamodb", endpoint_url=self.endpoint_url, config=_CLIENT_CONFIG).Table(
            self.table_name(logical_id)
        )
