"""The whole bridge on one machine: local AWS, the HTTP API, the event source mappings, a Segment sink.

Everything comes from template.yaml: the tables and queues (``create_stack``), the functions and
their environments, the HTTP routes, the SQS and DynamoDB Streams event sources. The functions are
the real handlers, run in this process against the local AWS.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer
from rich.markup import escape

from fme_bridge.local import http_api, schedule_source, sqs_source, stream_source
from fme_bridge.local.poller import Poller
from fme_bridge.local.runtime import LocalFunction
from fme_bridge.loopback_server import url_host
from fme_bridge.target import LOCAL_REGION
from fme_bridge.template import Stack, create_stack

STACK_NAME = "fme-segment-bridge-local"
REGION = LOCAL_REGION
# Template parameters of the local stack: its own stage, and configs that take effect within seconds
# (an operator edits them with `fme-bridge config …` while the stack runs).
PARAMETERS = {"Stage": "local", "ConfigCacheSeconds": "5", "LogLevel": "WARNING"}
# The local AWS has no authentication, so credentials only need to be well-formed.
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
}


class PortInUse(Exception):
    """A port the stack needs is taken; the message says which and the flag that changes it."""


class NotLoopback(Exception):
    """The stack's AWS has no authentication, so it only listens on loopback."""


class InvalidPort(Exception):
    """A port flag outside 1 to 65535."""


@dataclass(frozen=True)
class LocalSettings:
    host: str = "127.0.0.1"
    port: int = 3000
    aws_port: int = 4566
    sink_port: int = 3001
    fme_port: int = 3002


def ensure_loopback(host: str) -> None:
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise NotLoopback(f"--host {host}: cannot resolve it") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise NotLoopback(
            f"--host {host} is not a loopback address; the local stack listens on loopback only"
        )


def ensure_port_free(host: str, port: int, flag: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as the servers use it: only a listening socket makes the port unavailable.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise PortInUse(
                f"port {port} on {host} is already in use; choose another with {flag} PORT"
            ) from None


class LocalStack:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(
        self,
        settings: LocalSettings = LocalSettings(),
        log: Callable[[str], None] | None = None,
        sink_factory: Callable[[str, int], Any] | None = None,
        fme_sink_factory: Callable[[str, int], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.log = log or (lambda _message: None)
        self.sink_factory = sink_factory
        self.fme_sink_factory = fme_sink_factory
        self.fme_sink: Any = None
        self.aws_endpoint = f"http://{url_host(settings.host)}:{settings.aws_port}"
        self.api_url = f"http://{url_host(settings.host)}:{settings.port}"
        self.stack: Stack | None = None
        self.sink: Any = None
        self._moto: ThreadedMotoServer | None = None
        self._api_server: http_api.ApiServer | None = None
        self._pollers: list[Poller] = []
        self._functions: dict[str, LocalFunction] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LocalStack:
        s = self.settings
        ensure_loopback(s.host)
        ports = [(s.port, "--port"), (s.aws_port, "--aws-port")]
        if self.sink_factory is not None:
            ports.append((s.sink_port, "--sink-port"))
        if self.fme_sink_factory is not None:
            ports.append((s.fme_port, "--fme-port"))
        for port, flag in ports:
            if not 0 < port < 65536:
                raise InvalidPort(f"{flag} {port}: a port is a number from 1 to 65535")
        if len({p for p, _ in ports}) < len(ports):
            raise PortInUse(f"{', '.join(flag for _, flag in ports)} must differ")
        for port, flag in ports:
            ensure_port_free(s.host, port, flag)

        # The handlers run in this process: they reach the local AWS the way they reach AWS itself.
        os.environ.update(
            {
                **LOCAL_CREDENTIALS,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL": self.aws_endpoint,
                "POWERTOOLS_TRACE_DISABLED": "1",
                # No CloudWatch here: metrics would only be JSON noise on the console.
                "POWERTOOLS_METRICS_DISABLED": "true",
            }
        )
        os.environ.pop("AWS_PROFILE", None)

        self._moto = ThreadedMotoServer(ip_address=s.host, port=s.aws_port, verbose=False)
        self._moto.start()
        self.stack = create_stack(self.client("dynamodb"), self.client("sqs"), STACK_NAME, PARAMETERS)

        if self.sink_factory is not None:
            self.sink = self.sink_factory(s.host, s.sink_port)
            self._start_thread(self._report_sink_requests, "sink-log")
        if self.fme_sink_factory is not None:
            self.fme_sink = self.fme_sink_factory(s.host, s.fme_port)

        stack = self.stack
        routes = http_api.routes_from_template(stack, self.function)
        api = http_api.HttpApi(
            routes, {"/_local/info": self.info, "/_local/segment": self.segment_received}, log=self.log
        )

        for sqs_mapping in sqs_source.mappings_from_template(stack, self.function):
            self._pollers.append(sqs_source.SqsPoller(sqs_mapping, self.client("sqs"), self.log))
        for stream_mapping in stream_source.mappings_from_template(stack, self.function):
            self._pollers.append(
                stream_source.StreamPoller(
                    stream_mapping,
                    self.client("dynamodb"),
                    self.client("dynamodbstreams"),
                    self.client("sqs"),
                    self.log,
                )
            )
        for schedule in schedule_source.mappings_from_template(stack, self.function):
            self._pollers.append(
                schedule_source.SchedulePoller(schedule, stack.region, stack.account, self.log)
            )
        for poller in self._pollers:
            poller.start()
        # Last: an answer on /_local/info means everything is running.
        try:
            self._api_server = http_api.ApiServer((s.host, s.port), api)
        except OSError:
            raise PortInUse(
                f"port {s.port} on {s.host} is already in use; choose another with --port PORT"
            ) from None
        self._start_thread(self._api_server.serve_forever, "http-api")
        return self

    def stop(self) -> None:
        self._stopping.set()
        for poller in self._pollers:
            poller.stop()
        if self._api_server is not None:
            self._api_server.shutdown()
            self._api_server.server_close()
        for poller in self._pollers:
            poller.join(timeout=3)
        if self.sink is not None and hasattr(self.sink, "stop"):
            self.sink.stop()
        if self.fme_sink is not None:
            self.fme_sink.stop()
        if self._moto is not None:
            self._moto.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _report_sink_requests(self) -> None:
        """Log what the Segment sink answers (never the write key)."""
        seen = 0
        while not self._stopping.wait(0.3):
            requests = self.sink.requests
            for request in requests[seen:]:
                outcome = (
                    f"{len(request.messages)} message(s)" if request.status == 200 else request.error or ""
                )
                self.log(
                    f"Segment sink: {escape(request.method)} {escape(request.path)} → {request.status} "
                    f"{escape(outcome)}"
                )
            seen = len(requests)

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- parts -----------------------------------------------------------------------------------

    def client(self, service: str) -> Any:
        return boto3.session.Session().client(
            service,
            endpoint_url=self.aws_endpoint,
            region_name=REGION,
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def resource_table(self, logical_id: str) -> Any:
        """A boto3 Table of the local stack, by the template's logical id."""
        assert self.stack is not None
        resource = boto3.session.Session().resource(
            "dynamodb",
            endpoint_url=self.aws_endpoint,
            region_name=REGION,
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        return resource.Table(self.stack.tables[logical_id])

    def function(self, logical_id: str) -> LocalFunction:
        """The in-process function for ``logical_id`` (one per function, shared by its event sources)."""
        if logical_id not in self._functions:
            assert self.stack is not None
            self._functions[logical_id] = LocalFunction(self.stack, logical_id)
        return self._functions[logical_id]

    @property
    def config_prefix(self) -> str:
        assert self.stack is not None
        return str(self.stack.output("ConfigPrefix"))

    def segment_received(self) -> dict[str, Any]:
        """What ``GET /_local/segment`` answers: the messages the local Segment sink accepted."""
        if self.sink is None:
            return {"messages": []}
        return {"messages": self.sink.messages}

    def info(self) -> dict[str, Any]:
        """What ``GET /_local/info`` answers: where everything is."""
        assert self.stack is not None
        return {
            "awsEndpointUrl": self.aws_endpoint,
            "region": REGION,
            "stackName": self.stack.name,
            "configPrefix": self.config_prefix,
            "webhookUrl": f"{self.api_url}/segment/",
            "profilesApiUrl": f"{self.api_url}/profiles",
            "impressionsWebhookUrl": f"{self.api_url}/impressions/",
            "sinkUrl": getattr(self.sink, "endpoint", None),
            "fmeEventsEndpoint": getattr(self.fme_sink, "events_endpoint", None),
            "fmeIdentitiesEndpoint": getattr(self.fme_sink, "identities_endpoint", None),
            "queueUrls": dict(self.stack.queues),
            "tableNames": dict(self.stack.tables),
        }
