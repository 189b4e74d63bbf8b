"""The real Python Split SDK → our impression listener → the (moto) queue → the handler → Segment.

The SDK runs in consumer mode with a pluggable storage: an in-memory adapter holding one feature
flag definition, so it evaluates for real without any network and calls the ``impressionListener``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import boto3
import pytest
from splitio import get_factory

from fme_bridge.listener import SqsImpressionListener, impression_listener_shape, queue_region
from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from functions.impressions import app
from tests.conftest import load_event, put_config, put_secret
from tests.integration import sqs_events

WRITE_KEY = "wk-listener"


class InMemoryStorage:
    """The SDK's pluggable storage interface (the methods it validates), over a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = dict(data)

    def get(self, key):
        return self.data.get(key)

    def get_items(self, key):
        return list(self.data.get(key, []))

    def get_many(self, keys):
        return [self.data.get(k) for k in keys]

    def set(self, key, value):
        self.data[key] = value

    def push_items(self, key, *values):
        self.data.setdefault(key, []).extend(values)
        return len(self.data[key])

    def delete(self, key):
        self.data.pop(key, None)

    def increment(self, key, value):
        self.data[key] = self.data.get(key, 0) + value
        return self.data[key]

    def decrement(self, key, value):
        return self.increment(key, -value)

    def get_keys_by_prefix(self, prefix):
        return [k for k in self.data if k.startswith(prefix)]

    def add_items(self, key, added_items):
        self.data.setdefault(key, set()).update(added_items)

    def remove_items(self, key, removed_items):
        self.data.setdefault(key, set()).difference_update(removed_items)

    def item_contains(self, key, item):
        return item in self.data.get(key, set())

    def get_items_count(self, key):
        return len(self.data.get(key, []))

    def expire(self, key, ttl):
        return None


@pytest.fixture
def sink() -> Iterator[SegmentSink]:
    with SegmentSink(write_keys={WRITE_KEY}) as server:
        yield server


def test_sdk_impressions_reach_segment_through_the_listener(
    stack: Stack, function_env: Any, sink: SegmentSink, lambda_context: Any
) -> None:
    function_env("ImpressionsFunction")
    put_config(
        "outbound/production",
        {"environments": ["Production"], "identities": {"user": "userId"}, "endpoint": sink.endpoint},
    )
    put_secret("outbound/production", WRITE_KEY)
    definition = load_event("split_definition_new_checkout.json")
    storage = InMemoryStorage(
        {
            "SPLITIO.split.new_checkout": definition,
            "SPLITIO.splits.till": definition["changeNumber"],
            "SPLITIO.trafficType.user": 1,
        }
    )
    queue_url, queue_arn = stack.queues["ImpressionsQueue"], stack.queue_arns["ImpressionsQueue"]
    listener = SqsImpressionListener(
        queue_url,
        environment_name="Production",
        traffic_type="user",
        sqs_client=boto3.client("sqs", region_name="us-east-1"),
        flush_interval=60,  # only explicit flushes and close() send in this test
        register_atexit=False,
    )
    factory = get_factory(
        "consumer-sdk-key",
        config={
            "storageType": "pluggable",
            "storageWrapper": storage,
            "impressionListener": listener,
            "impressionsMode": "debug",
            "machineName": "web-7",
            "machineIp": "10.0.7.7",
        },
    )
    try:
        factory.block_until_ready(5)
        client = factory.client()
        treatments = {
            key: client.get_treatment(key, "new_checkout") for key in ("beta-user", "user-2", "user-3")
        }
        treatments["user-4"] = client.get_treatment("user-4", "new_checkout", evaluation_options=None)
    finally:
        factory.destroy()
    assert treatments == {"beta-user": "on", "user-2": "off", "user-3": "off", "user-4": "off"}
    listener.close()
    assert listener.stats.sent == 4
    assert listener.stats.messages == 1  # one envelope for all of them

    sqs_event = sqs_events.receive_event(queue_url, queue_arn)
    [record] = sqs_event["Records"]
    envelope = json.loads(record["body"])
    assert envelope["environmentName"] == "Production"
    assert envelope["trafficType"] == "user"
    assert [i["impression"]["keyName"] for i in envelope["impressions"]] == [
        "beta-user",
        "user-2",
        "user-3",
        "user-4",
    ]

    response = app.lambda_handler(sqs_event, lambda_context)

    assert response == {"batchItemFailures": []}
    by_user = {m["userId"]: m for m in sink.messages}
    assert set(by_user) == {"beta-user", "user-2", "user-3", "user-4"}
    beta = by_user["beta-user"]
    assert beta["event"] == "get_treatment"
    assert beta["properties"]["treatment"] == "on"
    assert beta["properties"]["label"] == "whitelisted"
    assert beta["properties"]["splitVersionNumber"] == 1795482000000
    assert beta["properties"]["environmentName"] == "Production"
    assert beta["properties"]["machineName"] == "web-7"
    assert beta["properties"]["sdk"] == "python"
    assert beta["properties"]["sdkVersion"]
    # The evaluation time, as ISO-8601 UTC.
    evaluated = datetime.strptime(beta["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert abs(evaluated.timestamp() - time.time()) < 60


class ScriptedSqs:
    """An SQS client answering each SendMessageBatch call as scripted: ``"down"`` (the call fails, as
    during a network blip), or the ids of the entries SQS could not take (as it reports them in
    ``Failed``); then all taken. ``calls`` holds the entries of every call, ``taken`` the keyName of
    every impression SQS took, in order."""

    def __init__(self, *answers: str | set[str]) -> None:
        self.answers = list(answers)
        self.calls: list[list[dict[str, Any]]] = []
        self.taken: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(Entries)
        answer = self.answers.pop(0) if self.answers else set()
        if answer == "down":
            raise ConnectionError("network blip")
        for entry in Entries:
            if entry["Id"] not in answer:
                envelope = json.loads(entry["MessageBody"])
                self.taken.extend(i["impression"]["keyName"] for i in envelope["impressions"])
        return {
            "Successful": [{"Id": e["Id"]} for e in Entries if e["Id"] not in answer],
            "Failed": [
                {"Id": e["Id"], "SenderFault": False, "Code": "InternalError"}
                for e in Entries
                if e["Id"] in answer
            ],
        }


def listener_on(sqs: Any, environment: str = "P", **options: Any) -> SqsImpressionListener:
    """A listener sending to a stand-in SQS client on explicit flushes and close() only (unless
    ``options`` say otherwise), without an exit hook."""
    settings: dict[str, Any] = {"flush_interval": 60, "register_atexit": False, **options}
    return SqsImpressionListener("https://sqs/queue", environment, sqs_client=sqs, **settings)


def python_sdk_data(i: int) -> dict[str, Any]:
    from splitio.models.impressions import Impression

    impression = Impression(
        f"user-{i}", "new_checkout", "on", "default rule", 17, None, 1795483041109 + i, None
    )
    return {
        "impression": impression,
        "attributes": {"plan": "pro"},
        "sdk-language-version": "python-10.7.0",
        "instance-id": "NA",
    }


def test_listener_batches_envelopes_and_retries_a_failed_send() -> None:
    sqs = ScriptedSqs("down")
    listener = listener_on(sqs, "Production", max_envelope_bytes=2000)
    for i in range(30):
        listener.log_impression(python_sdk_data(i))
    assert listener.flush() is False  # SQS failed: kept for the next flush
    assert listener.flush() is True
    listener.close()
    assert all(len(e["MessageBody"]) <= 2000 for call in sqs.calls for e in call)
    assert all(len(call) <= 10 for call in sqs.calls)
    assert sqs.taken == [f"user-{i}" for i in range(30)]  # each once, in order
    bodies = [json.loads(e["MessageBody"]) for call in sqs.calls[1:] for e in call]  # after the failed call
    assert bodies[0]["impressions"][0] == {
        "impression": {
            "feature": "new_checkout",
            "keyName": "user-0",
            "treatment": "on",
            "time": 1795483041109,
            "bucketingKey": None,
            "label": "default rule",
            "changeNumber": 17,
            "properties": None,
        },
        "sdkLanguageVersion": "python-10.7.0",
        "hostname": None,  # "NA": IP addresses disabled
        "ip": None,
    }
    assert "attributes" not in bodies[0]["impressions"][0]  # not sent unless asked for
    assert (listener.stats.received, listener.stats.sent, listener.stats.dropped) == (30, 30, 0)


def test_listener_background_flush_on_size_and_bounded_memory() -> None:
    sqs = ScriptedSqs()
    listener = listener_on(sqs, "Production", batch_size=5)
    for i in range(5):
        listener.log_impression(python_sdk_data(i))
    deadline = time.monotonic() + 5
    while listener.stats.sent < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert listener.stats.sent == 5  # the size threshold woke the flusher, no interval needed
    listener.close()

    tiny = listener_on(sqs, max_pending=3)
    tiny.batch_size = 10**9
    for i in range(10):
        tiny.log_impression(python_sdk_data(i))
    assert tiny.stats.dropped == 7
    tiny.close()
    assert tiny.stats.sent == 3


def test_an_impression_logged_after_close_is_counted_dropped_not_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqs = ScriptedSqs()
    listener = SqsImpressionListener("https://sqs/queue", "P", sqs_client=sqs, register_atexit=False)
    listener.log_impression(python_sdk_data(0))
    listener.close()
    listener.log_impression(python_sdk_data(1))
    assert (listener.stats.received, listener.stats.sent, listener.stats.dropped) == (2, 1, 1)
    assert "1 impressions dropped: the listener is closed" in caplog.text


def test_javascript_listener_data_passes_through() -> None:
    data = load_event("impression_listener_js.json")
    item = impression_listener_shape(data)
    assert item["impression"] == data["impression"]
    assert (item["ip"], item["hostname"], item["sdkLanguageVersion"]) == (
        "10.0.2.5",
        "web-5",
        "javascript-11.4.0",
    )


def test_a_closed_listener_in_a_forked_child_closes_though_a_parents_thread_held_its_lock() -> None:
    listener = SqsImpressionListener(
        "https://sqs/queue", "P", sqs_client=ScriptedSqs("down"), register_atexit=False
    )
    listener.close()
    listener._count_lock.acquire()  # held by a parent's thread at the fork: never released in the child
    listener._after_fork_in_child()
    closing = threading.Thread(target=listener.close, daemon=True)
    closing.start()
    closing.join(5)
    assert not closing.is_alive()


def test_a_forked_child_gets_its_own_flusher_and_an_empty_queue() -> None:
    sqs = ScriptedSqs()
    listener = listener_on(sqs, batch_size=2)
    listener.close()  # stands for the parent's thread, which a forked child does not have
    listener._closed.clear()
    listener.log_impression(python_sdk_data(0))  # the parent's pending impression: the parent sends it
    listener._after_fork_in_child()
    assert listener._thread.is_alive()
    assert listener.stats.received == 0
    listener.log_impression(python_sdk_data(1))
    listener.log_impression(python_sdk_data(2))
    deadline = time.monotonic() + 5
    while listener.stats.sent < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    listener.close()
    sent = [
        i["impression"]["keyName"]
        for call in sqs.calls
        for e in call
        for i in json.loads(e["MessageBody"])["impressions"]
    ]
    assert sent == ["user-1", "user-2"]


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/impressions", "eu-west-1"),
        ("https://eu-west-1.queue.amazonaws.com/123456789012/impressions", "eu-west-1"),
        ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/impressions", "cn-north-1"),
        ("http://127.0.0.1:4566/000000000000/impressions", None),
        ("https://sqs/queue", None),
    ],
)
def test_queue_region_reads_the_region_of_an_sqs_url(url: str, region: str | None) -> None:
    assert queue_region(url) == region


@pytest.fixture
def no_configured_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))  # no profile's region either


@pytest.mark.usefixtures("no_configured_region")
def test_the_listener_takes_its_region_from_the_queue_url(stack: Stack) -> None:
    listener = SqsImpressionListener(stack.queues["ImpressionsQueue"], "Production", register_atexit=False)
    listener.log_impression(python_sdk_data(1))
    assert listener.flush() is True
    listener.close()
    assert (listener.stats.sent, listener.stats.failed_sends) == (1, 0)
    sqs = boto3.client("sqs", region_name="us-east-1")
    received = sqs.receive_message(QueueUrl=stack.queues["ImpressionsQueue"], MaxNumberOfMessages=10)
    bodies = [json.loads(m["Body"]) for m in received["Messages"]]
    assert [body["impressions"][0]["impression"]["keyName"] for body in bodies] == ["user-1"]


@pytest.mark.usefixtures("no_configured_region")
def test_without_a_region_in_the_url_the_listener_reads_aws_region_then_boto3s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "http://127.0.0.1:4566/000000000000/q"  # a local endpoint's URL names no region
    boto3.setup_default_session(region_name="eu-central-1")
    try:
        listener = SqsImpressionListener(url, "Production", register_atexit=False)
        listener.close()
        assert listener._client().meta.region_name == "eu-central-1"
        monkeypatch.setenv("AWS_REGION", "eu-west-1")  # as the CLI, AWS_REGION comes first
        listener = SqsImpressionListener(url, "Production", register_atexit=False)
        listener.close()
        assert listener._client().meta.region_name == "eu-west-1"
    finally:
        boto3.DEFAULT_SESSION = None


def test_the_queue_urls_region_wins_over_the_configured_one() -> None:
    url = "https://sqs.ap-southeast-2.amazonaws.com/123456789012/impressions"
    listener = SqsImpressionListener(url, "Production", register_atexit=False)  # AWS_REGION is us-east-1
    listener.close()
    assert listener._client().meta.region_name == "ap-southeast-2"


@pytest.mark.usefixtures("no_configured_region")
def test_a_listener_without_a_region_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match=r"no AWS region .* set AWS_REGION or AWS_DEFAULT_REGION"):
        SqsImpressionListener("http://127.0.0.1:4566/000000000000/q", "Production", register_atexit=False)


def test_an_envelope_sqs_could_not_take_is_sent_again_and_not_counted_sent() -> None:
    sqs = ScriptedSqs({"0"})
    listener = listener_on(sqs, max_envelope_bytes=2000)
    for i in range(30):
        listener.log_impression(python_sdk_data(i))
    assert listener.flush() is False  # the first envelope is kept for the next flush
    assert listener.stats.sent < 30
    assert listener.flush() is True
    listener.close()
    assert sorted(sqs.taken) == sorted(f"user-{i}" for i in range(30))  # each once
    assert (listener.stats.sent, listener.stats.failed_sends, listener.stats.dropped) == (30, 1, 0)


def test_the_listener_sends_the_environment_id_the_attributes_and_the_machine_ip_it_was_given() -> None:
    sqs = ScriptedSqs()
    listener = listener_on(
        sqs, "Production", environment_id="env-7f3a", include_attributes=True, machine_ip="10.0.7.7"
    )
    listener.log_impression(python_sdk_data(0))
    listener.close()
    [[entry]] = sqs.calls
    envelope = json.loads(entry["MessageBody"])
    assert (envelope["environmentName"], envelope["environmentId"]) == ("Production", "env-7f3a")
    [impression] = envelope["impressions"]
    assert (impression["attributes"], impression["ip"]) == ({"plan": "pro"}, "10.0.7.7")


@pytest.mark.parametrize("spare", [-1, 0, 1, 120])
def test_an_envelope_holds_as_many_impressions_as_fit_and_never_more(spare: int) -> None:
    """Envelopes stay under max_envelope_bytes, its header included, and are filled up to it."""
    item = json.dumps(impression_listener_shape(python_sdk_data(0)), separators=(",", ":"))
    header = '{"environmentName":"Production","impressions":[]}'
    limit = len(header) + 3 * len(item) + 2 + spare  # three items and their two commas, and the spare
    sqs = ScriptedSqs()
    listener = listener_on(sqs, "Production", max_envelope_bytes=limit)
    for i in range(9):
        listener.log_impression(python_sdk_data(i))  # user-0 … user-8: all the same size
    listener.close()
    bodies = [e["MessageBody"] for call in sqs.calls for e in call]
    assert all(len(body) <= limit for body in bodies)
    per_envelope = [2, 2, 2, 2, 1] if spare < 0 else [3, 3, 3]
    assert [len(json.loads(body)["impressions"]) for body in bodies] == per_envelope
    assert listener.stats.sent == 9


def test_an_impression_larger_than_an_envelope_is_dropped_and_counted_and_the_rest_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqs = ScriptedSqs()
    listener = listener_on(sqs, max_envelope_bytes=2000)
    big = load_event("impression_listener_js.json")
    big["impression"] = {**big["impression"], "keyName": "big", "properties": {"note": "x" * 3000}}
    listener.log_impression(python_sdk_data(0))
    listener.log_impression(big)
    listener.log_impression(python_sdk_data(1))
    listener.close()
    bodies = [e["MessageBody"] for call in sqs.calls for e in call]
    assert all(len(body) <= 2000 for body in bodies)
    assert [i["impression"]["keyName"] for body in bodies for i in json.loads(body)["impressions"]] == [
        "user-0",
        "user-1",
    ]
    assert (listener.stats.received, listener.stats.sent, listener.stats.dropped) == (3, 2, 1)
    assert "1 impressions dropped: an impression larger than an envelope" in caplog.text


def test_what_sqs_never_took_by_close_is_counted_dropped(caplog: pytest.LogCaptureFixture) -> None:
    sqs = ScriptedSqs(*["down"] * 1000)
    listener = listener_on(sqs)
    for i in range(5):
        listener.log_impression(python_sdk_data(i))
    listener.close(timeout=0.3)
    assert (listener.stats.received, listener.stats.sent, listener.stats.dropped) == (5, 0, 5)
    assert "5 impressions dropped: closed before SQS accepted them" in caplog.text


def test_while_sqs_is_unreachable_the_newest_impressions_are_kept() -> None:
    sqs = ScriptedSqs("down", "down")
    listener = listener_on(sqs, max_pending=3)
    for i in range(3):
        listener.log_impression(python_sdk_data(i))
    assert listener.flush() is False
    for i in range(3, 6):
        listener.log_impression(python_sdk_data(i))
    assert listener.flush() is False  # six waiting, three kept: the newest
    assert listener.flush() is True
    listener.close()
    assert sqs.taken == ["user-3", "user-4", "user-5"]
    assert (listener.stats.sent, listener.stats.dropped) == (3, 3)
