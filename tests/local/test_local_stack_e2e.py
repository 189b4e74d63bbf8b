"""`fme-bridge local` as a user runs it: a subprocess on free ports, the real handlers, HTTP in and out."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import boto3
import httpx
import pytest
from boto3.dynamodb.conditions import Key
from typer.testing import CliRunner

from bench.servers import free_ports
from fme_bridge.cli import app
from fme_bridge.local.demo import ANONYMOUS_ID, USER_ID
from fme_bridge.template import resources_of_type
from tests.conftest import EVENTS_DIR, load_event

pytestmark = pytest.mark.slow

SECRET = "e2e-webhook-secret"
STARTUP_TIMEOUT_S = 60
DELIVERY_TIMEOUT_S = 60  # the template's batching window is 5 s; a loaded machine is slower


def local_command(port: int, aws_port: int, sink_port: int, fme_port: int, *extra: str) -> list[str]:
    """The installed entry point, as a user runs it, on the given ports."""
    ports = {"--port": port, "--aws-port": aws_port, "--sink-port": sink_port, "--fme-port": fme_port}
    return [
        str(Path(sys.executable).parent / "fme-bridge"),
        "local",
        *extra,
        *(part for flag, value in ports.items() for part in (flag, str(value))),
    ]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class RunningStack:
    def __init__(
        self, process: subprocess.Popen[str], api: str, info: dict[str, Any], ports: dict[str, int]
    ) -> None:
        self.process = process
        self.api = api
        self.info = info
        self.ports = ports

    def cli(self, *args: str, input: str | None = None) -> Any:
        result = CliRunner().invoke(app, ["--endpoint-url", self.info["awsEndpointUrl"], *args], input=input)
        assert result.exit_code == 0, result.output
        return result

    def table(self, logical_id: str) -> Any:
        resource = boto3.resource(
            "dynamodb", endpoint_url=self.info["awsEndpointUrl"], region_name="us-east-1"
        )
        return resource.Table(self.info["tableNames"][logical_id])


@contextlib.contextmanager
def started_stack(
    log: IO[str], host: str | None = None, stop: signal.Signals = signal.SIGINT
) -> Iterator[RunningStack]:
    """``fme-bridge local`` on free ports (of ``--host host``, else of its default host), its output in
    ``log``; stopped with ``stop`` (Ctrl-C, or SIGTERM as a service manager sends), which must end it
    cleanly."""
    port, aws_port, sink_port, fme_port = free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        local_command(port, aws_port, sink_port, fme_port, *(("--host", host) if host else ())),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    api = f"http://{host or '127.0.0.1'}:{port}"

    def ready() -> dict[str, Any] | None:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"fme-bridge local exited with {process.returncode}:\n{log.read()}")
        try:
            return dict(httpx.get(f"{api}/_local/info", timeout=1).json())
        except httpx.HTTPError:
            return None

    try:
        info = wait_for(ready, STARTUP_TIMEOUT_S, "GET /_local/info")
        ports = {"port": port, "aws": aws_port, "sink": sink_port, "fme": fme_port}
        yield RunningStack(process, api, info, ports)
    finally:
        process.send_signal(stop)
        try:
            returncode = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        assert returncode == 0


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with (tmp_path_factory.mktemp("local") / "stack.log").open("w+") as log, started_stack(log) as stack:
        yield stack


def test_segment_calls_and_impressions_flow_through_the_real_handlers(
    running: RunningStack, tmp_path: Path
) -> None:
    info, ports = running.info, running.ports
    assert info["configPrefix"] == "/fme-segment-bridge/local"
    # Every queue and table of template.yaml, by its logical id.
    assert set(info["queueUrls"]) == set(resources_of_type("AWS::SQS::Queue"))
    assert set(info["tableNames"]) == set(resources_of_type("AWS::DynamoDB::Table"))
    assert (info["region"], info["stackName"]) == ("us-east-1", "fme-segment-bridge-local")
    # Every part listens where its flag says, and info says so.
    assert info["awsEndpointUrl"] == f"http://127.0.0.1:{ports['aws']}"
    assert info["sinkUrl"] == f"http://127.0.0.1:{ports['sink']}/v1"
    assert info["fmeEventsEndpoint"] == f"http://127.0.0.1:{ports['fme']}/api"
    assert info["fmeIdentitiesEndpoint"] == f"http://127.0.0.1:{ports['fme']}/internal/api/v2"
    assert info["webhookUrl"] == f"{running.api}/segment/"
    assert info["impressionsWebhookUrl"] == f"{running.api}/impressions/"
    sqs = boto3.client("sqs", endpoint_url=info["awsEndpointUrl"], region_name="us-east-1")
    for logical_id, url in info["queueUrls"].items():  # each URL names the template's queue
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        assert arn.endswith(f":fme-segment-bridge-local-{logical_id}"), (logical_id, arn)
    # The profile API is served where info says: without its secret, a 401 from the real handler.
    assert info["profilesApiUrl"] == f"{running.api}/profiles"
    assert httpx.get(f"{info['profilesApiUrl']}/Production/user/u-1", timeout=10).status_code == 401
    inbound = {
        "environment": "Production",
        "identities": [
            {"segmentId": "userId", "trafficType": "user"},
            {"segmentId": "anonymousId", "trafficType": "anonymous"},
        ],
    }
    outbound = {
        "environments": ["Production"],
        "identities": {"user": "userId", "anonymous": "anonymousId"},
        "endpoint": info["sinkUrl"],
    }
    (tmp_path / "in.json").write_text(json.dumps(inbound))
    (tmp_path / "out.json").write_text(json.dumps(outbound))
    running.cli(
        "config", "inbound", "put", "e2e", "-f", str(tmp_path / "in.json"), "--secret-file", "-", input=SECRET
    )
    running.cli(
        "config",
        "outbound",
        "put",
        "e2e",
        "-f",
        str(tmp_path / "out.json"),
        "--write-key-file",
        "-",
        input="wk",
    )

    # Inbound: Segment's own example messages, one per call and as an HTTP-API style batch.
    track, page, identify = (load_event(f"segment/{name}.json") for name in ("track", "page", "identify"))
    url = f"{running.api}/segment/e2e"
    single = httpx.post(url, json=track, headers={"Authorization": f"Bearer {SECRET}"})
    assert single.status_code == 200, single.text
    batch = httpx.post(url, json={"batch": [page, identify]}, headers={"Authorization": f"Bearer {SECRET}"})
    assert batch.status_code == 200, batch.text
    denied = httpx.post(url, json=track, headers={"Authorization": "Bearer wrong"})
    assert denied.status_code == 401

    user_events = running.table("EventsTable").query(
        KeyConditionExpression=Key("pk").eq(f"Production#user#{track['userId']}")
    )["Items"]
    assert {e["eventTypeId"] for e in user_events} >= {track["event"].replace(" ", "_")}
    assert all(e["environment"] == "Production" for e in user_events)
    identity = running.table("IdentitiesTable").get_item(Key={"pk": f"Production#user#{identify['userId']}"})[
        "Item"
    ]
    assert set(identity["attributes"]) >= set(identify["traits"]) - {"address"}

    # Outbound: impressions in every body shape, sent with the CLI into the local queue.
    running.cli("send-impressions", str(EVENTS_DIR / "impressions_webhook.json"))
    running.cli("send-impressions", str(EVENTS_DIR / "impression_listener_js.json"))
    webhook_impressions = load_event("impressions_webhook.json")
    expected = len(webhook_impressions) + 1  # and the listener-shape one
    received = wait_for(
        lambda: (
            (m := httpx.get(f"{running.api}/_local/segment").json()["messages"]) and len(m) >= expected and m
        ),
        DELIVERY_TIMEOUT_S,
        "the impressions to reach the Segment sink",
    )
    assert {m["type"] for m in received} == {"track"}
    assert {m["properties"]["split"] for m in received} >= {i["split"] for i in webhook_impressions}
    assert all(m["event"] == "get_treatment" for m in received)

    # The last-treatments function records what the impressions function forwarded.
    first = webhook_impressions[0]
    profile = f"{first['environmentName']}#user#{first['key']}"

    def last_treatment() -> dict[str, Any] | None:
        item = (
            running.table("ProfilesTable")
            .get_item(Key={"pk": profile, "sk": f"treatment#{first['split']}"})
            .get("Item")
        )
        # moto's server applies an UpdateItem in steps: a read in between can see the key alone.
        return item if item and "treatment" in item else None

    stored = wait_for(last_treatment, DELIVERY_TIMEOUT_S, "the last treatment to reach ProfilesTable")
    assert stored["treatment"] in {
        i["treatment"] for i in webhook_impressions if i["split"] == first["split"]
    }

    # Nothing failed on the way.
    for queue in ("impressions", "last-treatments"):
        dlq = running.cli("dlq", "show", "--json", "--queue", queue)
        assert json.loads(dlq.stdout) == []


def test_fmes_impressions_webhook_posts_reach_segment_through_the_local_api(
    running: RunningStack, tmp_path: Path
) -> None:
    info = running.info
    outbound = {
        "environments": ["Staging"],
        "identities": {"user": "userId", "anonymous": "anonymousId"},
        "endpoint": info["sinkUrl"],
    }
    (tmp_path / "relay.json").write_text(json.dumps(outbound))
    running.cli(
        "config",
        "outbound",
        "put",
        "relay",
        "-f",
        str(tmp_path / "relay.json"),
        "--write-key-file",
        "-",
        input="wk",
    )
    secrets = boto3.client("secretsmanager", endpoint_url=info["awsEndpointUrl"], region_name="us-east-1")
    secrets.create_secret(Name=f"{info['configPrefix']}/impressions-webhook", SecretString="e2e-token")
    posted = [
        {**impression, "environmentName": "Staging", "environmentId": None, "split": "relayed_flag"}
        for impression in load_event("impressions_webhook.json")
    ]
    body = gzip.compress(json.dumps(posted).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    assert (
        httpx.post(f"{info['impressionsWebhookUrl']}wrong", content=body, headers=headers).status_code == 401
    )
    answer = httpx.post(f"{info['impressionsWebhookUrl']}e2e-token", content=body, headers=headers)

    assert answer.status_code == 200, answer.text
    assert answer.json()["queued"] == len(posted)
    relayed = wait_for(
        lambda: (
            (
                m := [
                    x
                    for x in httpx.get(f"{running.api}/_local/segment").json()["messages"]
                    if x.get("properties", {}).get("split") == "relayed_flag"
                ]
            )
            and len(m) >= len(posted)
            and m
        ),
        DELIVERY_TIMEOUT_S,
        "the webhook's impressions to reach the Segment sink",
    )
    assert {m["properties"]["key"] for m in relayed} == {i["key"] for i in posted}


def test_the_cli_reaches_the_local_stack_whatever_region_the_environment_names(
    running: RunningStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment's region is one of AWS itself; the local stack has its own (unless --region)."""
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    endpoint = ["--endpoint-url", running.info["awsEndpointUrl"]]
    command = ["events", "nobody", "--environment", "Production"]
    here = CliRunner().invoke(app, [*endpoint, *command])
    assert "no events stored for user 'nobody'" in here.output  # the local stack's table was read
    # A region given on the command line is taken at its word: the local AWS has no tables there.
    elsewhere = CliRunner().invoke(app, [*endpoint, "--region", "eu-west-1", *command])
    assert "ResourceNotFoundException" in elsewhere.output


def test_a_taken_port_is_one_line_and_a_non_zero_exit() -> None:
    port, sink_port, fme_port = free_ports(3)
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        taken = occupant.getsockname()[1]
        result = subprocess.run(
            local_command(port, taken, sink_port, fme_port),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: port {taken} on 127.0.0.1 is already in use; choose another with --aws-port PORT"
    )


@pytest.mark.parametrize("port", [70000, 0], ids=["above", "zero"])
def test_a_port_out_of_range_is_one_line_and_a_non_zero_exit(port: int) -> None:
    aws_port, sink_port, fme_port = free_ports(3)
    result = subprocess.run(
        local_command(port, aws_port, sink_port, fme_port), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: --port {port}: a port is a number from 1 to 65535"


def test_ports_given_twice_are_one_line_and_a_non_zero_exit() -> None:
    port, aws_port, fme_port = free_ports(3)
    result = subprocess.run(
        local_command(port, aws_port, aws_port, fme_port), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --port, --aws-port, --sink-port, --fme-port must differ"


def test_a_host_that_is_not_loopback_is_refused_before_anything_listens() -> None:
    # The local AWS has no authentication: --host may only name a loopback address.
    port, aws_port, sink_port, fme_port = free_ports(4)
    result = subprocess.run(
        local_command(port, aws_port, sink_port, fme_port, "--host", "0.0.0.0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: --host 0.0.0.0 is not a loopback address; the local stack listens on loopback only"
    )


def test_another_loopback_host_serves_every_part_there_and_nothing_on_the_default_and_sigterm_stops_it(
    tmp_path: Path,
) -> None:
    host = "127.0.0.2"
    try:
        with socket.socket() as probe:
            probe.bind((host, 0))
    except OSError:
        pytest.skip(f"{host} is not a loopback address this machine has")
    with (tmp_path / "stack.log").open("w+") as log, started_stack(log, host, signal.SIGTERM) as stack:
        info, ports = stack.info, stack.ports
        assert info["awsEndpointUrl"] == f"http://{host}:{ports['aws']}"
        assert info["sinkUrl"] == f"http://{host}:{ports['sink']}/v1"
        assert info["fmeEventsEndpoint"] == f"http://{host}:{ports['fme']}/api"
        assert info["webhookUrl"] == f"http://{host}:{ports['port']}/segment/"
        assert all(url.startswith(f"http://{host}:{ports['aws']}/") for url in info["queueUrls"].values())
        for listening in (ports["aws"], ports["sink"], ports["fme"]):
            socket.create_connection((host, listening), timeout=5).close()
        for unused in ports.values():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", unused), timeout=5).close()


def test_stored_events_and_identities_are_delivered_into_the_local_fme_sink(
    running: RunningStack, tmp_path: Path
) -> None:
    info = running.info
    events_endpoint, identities_endpoint = info["fmeEventsEndpoint"], info["fmeIdentitiesEndpoint"]
    inbound = {
        "environment": "Production",
        "identities": [{"segmentId": "userId", "trafficType": "user"}],
        "delivery": {
            "enabled": True,
            "eventsEndpoint": events_endpoint,
            "identitiesEndpoint": identities_endpoint,
        },
    }
    (tmp_path / "in.json").write_text(json.dumps(inbound))
    running.cli(
        "config", "inbound", "put", "fme", "-f", str(tmp_path / "in.json"), "--secret-file", "-", input=SECRET
    )
    boto3.client(
        "secretsmanager", endpoint_url=info["awsEndpointUrl"], region_name="us-east-1"
    ).create_secret(
        Name=f"{info['configPrefix']}/inbound/fme/fme",
        SecretString=json.dumps({"sdkKey": "local-sdk-key", "adminKey": "local-admin-key"}),
    )
    # A user of its own: the identity another test stored would not change, so nothing would be sent.
    identify = {**load_event("segment/identify.json"), "userId": "fme-user-1", "messageId": "fme-identify-1"}
    track = {**load_event("segment/track.json"), "userId": "fme-user-1", "messageId": "fme-track-1"}
    answer = httpx.post(
        f"{running.api}/segment/fme", json=[identify, track], headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert answer.status_code == 200, answer.text

    state_url = events_endpoint.removesuffix("/api") + "/_sink/state"

    def delivered() -> dict[str, Any] | None:
        state = httpx.get(state_url).json()
        mine = [e for e in state["events"] if e["key"] == identify["userId"]]
        identities = [u for u in state["identities"] if u["key"] == identify["userId"]]
        return state if mine and identities else None

    state = wait_for(delivered, DELIVERY_TIMEOUT_S, "the track and identify to reach the FME sink")
    [event] = [e for e in state["events"] if e["key"] == identify["userId"]]
    assert (event["eventTypeId"], event["trafficTypeName"], event["environmentName"]) == (
        "Course_Clicked",
        "user",
        "Production",
    )
    assert any(
        u["key"] == identify["userId"] and u["values"]["plan"] == "premium" for u in state["identities"]
    )

    status = json.loads(running.cli("delivery", "status", "--json").stdout)
    [connection] = [c for c in status["connections"] if c["connectionId"] == "fme"]
    assert connection["eventsDelivered"] == 1


def table_rows(output: str, title: str) -> list[tuple[str, ...]]:
    """The rows of the table titled ``title`` in ``output``, a cell wrapped over lines joined again
    (without the spaces a wrap drops)."""
    rows: list[list[str]] = []
    for line in output[output.index(title) :].splitlines()[1:]:
        if line.startswith("└"):
            break
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.rstrip().strip("│").split("│")]
        if cells[0] or not rows:
            rows.append(cells)
        else:  # the first column is never empty: a wrapped row's next line
            rows[-1] = [above + below for above, below in zip(rows[-1], cells, strict=True)]
    return [tuple(row) for row in rows]


def test_the_demo_of_make_run_pushes_traffic_through_and_keeps_serving() -> None:
    port, aws_port, sink_port, fme_port = free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["COLUMNS"] = "80"  # a piped terminal's width
    process = subprocess.Popen(
        local_command(port, aws_port, sink_port, fme_port, "--demo"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S + DELIVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Serving."):
                break
        output = "".join(lines)
        assert "Serving." in output, output
        # Still serving after the demo: the webhook answers.
        assert httpx.get(f"http://127.0.0.1:{port}/_local/info", timeout=5).status_code == 200
        # Each hint under "Try it yourself" works as printed. The webhook's: its secret was seeded.
        [hint] = [line for line in lines if "/segment/" in line and "curl" in line]
        url, bearer, body = re.search(
            r"(http://\S+/segment/\S+) -H 'Authorization: (Bearer \S+)'.* -d '(.+)'", hint
        ).groups()
        headers = {"Authorization": bearer, "Content-Type": "application/json"}
        answer = httpx.post(url, content=body, headers=headers, timeout=10)
        assert (answer.status_code, answer.json().get("stored")) == (200, 1), answer.text
        # The profile API's: the demo seeded the secret it shows.
        [hint] = [line for line in lines if "/profiles/" in line and "curl" in line]
        url, bearer = re.search(r"(http://\S+/profiles/\S+) -H 'Authorization: (Bearer \S+)'", hint).groups()
        answer = httpx.get(url, headers={"Authorization": bearer}, timeout=10)
        assert answer.status_code == 200, answer.text
        # So does the impressions webhook's: the demo seeded the token its URL ends in.
        [hint] = [line for line in lines if "/impressions/" in line and "curl" in line]
        (url,) = re.search(r"(http://\S+/impressions/\S+)", hint).groups()
        posted = gzip.compress((EVENTS_DIR / "impressions_webhook.json").read_bytes())
        answer = httpx.post(url, content=posted, headers={"Content-Encoding": "gzip"}, timeout=10)
        assert answer.status_code == 200, answer.text
        [hint] = [line for line in lines if "/_sink/state" in line]
        assert httpx.get(hint.split()[-1], timeout=10).status_code == 200
        # The CLI's, from where the stack was started (the virtualenv of make run is not activated,
        # so a bare fme-bridge would not be found).
        cli_outputs = {}
        for variable, command, *args in (
            line.split() for line in lines if line.strip().startswith("AWS_ENDPOINT_URL=")
        ):
            assert shutil.which(command) is not None or Path(command).is_file(), command
            name, value = variable.split("=", 1)
            result = CliRunner().invoke(app, args, env={name: value})
            assert result.exit_code == 0, (args, result.output)
            cli_outputs[args[0]] = result.output
        assert set(cli_outputs) == {"events", "profile", "delivery"}, output
        assert "Signed_Up" in cli_outputs["events"]  # what the webhook's hint sent
        assert "pricing_page" in cli_outputs["profile"]  # a last treatment of the demo's impressions
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # The webhook's answers are shown whole, even piped (80 columns): the batch's ignored alias too.
    calls = table_rows(output, "webhook calls")
    assert [(label, status) for label, status, _ in calls] == [
        (label, "200") for label in ("identify", "track", "page", "group", "batch of 3")
    ]
    assert '"ignored":1' in calls[-1][2], output
    # Every call but the alias stored for the user and the visitor; the track with its revenue as the
    # value, also for the account of its event-level group.
    events = [
        ("Order_Completed", "25.0", "track"),
        ("view_Signup_page", "", "page"),
        ("Checkout_Started", "25.0", "track"),
        ("view_Cart_screen", "", "screen"),
    ]
    identities = [("user", USER_ID), ("anonymous", ANONYMOUS_ID)]
    stored = [(*identity, *event) for identity in identities for event in events]
    stored.append(("account", "initech", "Order_Completed", "25.0", "track"))
    assert sorted(table_rows(output, "stored FME events")) == sorted(stored), output
    # The identify call's traits for both of its identities, the group call's for the account.
    attributes = {(t, k): a.replace(" ", "") for t, k, a in table_rows(output, "stored identities")}
    assert set(attributes) == {*identities, ("account", "initech")}, output
    assert "name=PeterGibbons" in attributes["user", USER_ID]
    assert "name=PeterGibbons" in attributes["anonymous", ANONYMOUS_ID]
    assert "name=Initech" in attributes["account", "initech"]
    # A value too wide for 80 columns is folded onto the next line, not cut.
    assert 'address={"city":"Austin","country":"USA"}' in attributes["user", USER_ID], output
    # One Segment track per impression, all three shapes.
    impressions = [
        ("user", USER_ID, "new_checkout", "on"),
        ("user", USER_ID, "pricing_page", "v2"),
        ("anonymous", ANONYMOUS_ID, "new_checkout", "off"),
    ]
    assert sorted(table_rows(output, "Segment received")) == sorted(
        ("track", "get_treatment", key, split, treatment) for _, key, split, treatment in impressions
    ), output
    # The last-treatments function ran on what the impressions function forwarded.
    assert sorted(table_rows(output, "last treatments (recorded")) == sorted(impressions), output
    # The delivery function sent every stored event and identity on to the FME sink.
    assert sorted(table_rows(output, "FME received: events")) == sorted(
        (t, k, e, v.removesuffix(".0"), "Production") for t, k, e, v, _ in stored
    ), output
    fme_identities = {
        (t, k): v.replace(" ", "") for t, k, v in table_rows(output, "FME received: identities")
    }
    assert fme_identities == attributes, output
    assert "demo-write-key" not in output
