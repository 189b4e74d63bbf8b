"""Last treatments and computed traits through the real impressions and last-treatments handlers,
moto and the loopback sink: impressions are forwarded to the last-treatments queue, which is drained
through its function as the event source mapping would."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from shared import aws, config
from shared.config import OutboundConfig
from shared.outbound.destinations import Destination, OutboundConfigs
from shared.outbound.impressions import parse_body
from shared.profiles.impression_profiles import LastTreatmentSync
from shared.profiles.last_treatment import LastTreatmentRecorder
from shared.profiles_table import profile_items, treatments_of
from tests.conftest import load_event, published_metrics, put_config, put_secret
from tests.integration import sqs_events
from tests.integration.policy_support import RawCall
from tests.integration.sqs_events import event, receive_event, settle
from tests.reliability.faults import _RawBody

WRITE_KEY = "wk-production"
USER = "7f244b10-9ca5-11e5-9706-16a11fb02dec"
T0 = 1_795_483_041_109

impressions_app: Any = None
last_treatments_app: Any = None


@pytest.fixture
def sink() -> Iterator[SegmentSink]:
    with SegmentSink(write_keys={WRITE_KEY}) as server:
        yield server


@pytest.fixture
def production(
    stack: Stack,
    function_env: Callable[[str], dict[str, str]],
    sink: SegmentSink,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    global impressions_app, last_treatments_app
    function_env("LastTreatmentsFunction")
    function_env("ImpressionsFunction")
    monkeypatch.setenv("SEND_MARGIN_MS", "500")
    from functions.impressions import app as impressions_module
    from functions.last_treatments import app as last_treatments_module

    impressions_app, last_treatments_app = impressions_module, last_treatments_module
    last_treatments_app.last_treatments.forget()  # the container cache must not outlive a test's moto tables
    document = {
        "environments": ["Production"],
        "identities": {"user": "userId", "anonymous": "anonymousId"},
        "defaultTrafficType": "user",
        "endpoint": sink.endpoint,
        "computedTraits": {"enabled": True, "traitName": "{split}"},
    }
    put_config("outbound/production", document)
    put_secret("outbound/production", WRITE_KEY)
    return document


@pytest.fixture
def context(lambda_context: Any) -> Any:
    end = time.monotonic() + 30.0
    lambda_context.get_remaining_time_in_millis = lambda: int((end - time.monotonic()) * 1000)
    return lambda_context


def impression(split: str, treatment: str, at: int, key: str = USER, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "split": split,
        "environmentId": "194da2f0-3e22-11ea-ba75-12f2f63694e5",
        "environmentName": "Production",
        "treatment": treatment,
        "time": at,
        "bucketingKey": None,
        "label": "default rule",
        "machineName": "ip-10-0-1-17",
        "machineIp": "10.0.1.17",
        "splitVersionNumber": 1795482000000,
        "sdk": "java",
        "sdkVersion": "4.13.0",
        **extra,
    }


def handle(sqs_event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The impressions function, then the last-treatments function on what it forwarded."""
    response = impressions_app.lambda_handler(sqs_event, context)
    queue_url = aws.env("LAST_TREATMENTS_QUEUE_URL")
    while True:
        forwarded = receive_event(queue_url, "arn:aws:sqs:us-east-1:123456789012:LastTreatmentsQueue")
        if not forwarded["Records"]:
            return dict(response)
        answer = last_treatments_app.lambda_handler(forwarded, context)
        assert answer == {"batchItemFailures": []}
        settle(queue_url, forwarded, answer)


def identifies(sink: SegmentSink) -> list[dict[str, Any]]:
    return [m for m in sink.messages if m["type"] == "identify"]


def stored_treatments(key: str = USER, traffic_type: str = "user") -> dict[str, dict[str, Any]]:
    return treatments_of(profile_items(f"Production#{traffic_type}#{key}"))


def profile_step(
    production: dict[str, Any], recorder: LastTreatmentRecorder, seconds: float
) -> LastTreatmentSync:
    """The profile step on its own: the outbound config ``production``, ``seconds`` left to run."""
    destination = Destination("production", OutboundConfig.model_validate(production))
    end = time.monotonic() + seconds
    return LastTreatmentSync(
        recorder,
        lambda: int((end - time.monotonic()) * 1000),
        margin_ms=500,
        destinations=lambda: OutboundConfigs([destination]),
    )


def parsed(*impressions: dict[str, Any]) -> list[Any]:
    """The impressions the function reads from a body of ``impressions``."""
    return [i for _, i in parse_body(json.dumps(list(impressions))).impressions]


def test_the_vendor_webhook_impression_sets_the_last_treatment_and_the_trait(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    sqs_event = load_event("sqs_impressions.json")
    sqs_event["Records"] = sqs_event["Records"][:1]

    assert handle(sqs_event, context) == {"batchItemFailures": []}

    assert stored_treatments() == {
        "new_checkout": {"treatment": "on", "time": T0, "splitVersionNumber": 1795482000000}
    }
    [identify] = identifies(sink)
    assert identify == {
        "type": "identify",
        "userId": USER,
        "traits": {"new_checkout": "on"},
        "timestamp": "2026-11-24T01:17:21.109Z",
        "messageId": identify["messageId"],
        "context": {
            "library": {"name": "fme-segment-bridge", "version": identify["context"]["library"]["version"]}
        },
    }
    assert identify["messageId"].startswith("fme-trait-")
    assert len(identify["messageId"]) <= 100
    # The track call went out too, in its own request, with the same write key.
    assert [m["type"] for m in sink.messages] == ["track", "identify"]
    assert {r.write_key for r in sink.requests} == {WRITE_KEY}


def test_identify_only_on_change(production: dict[str, Any], sink: SegmentSink, context: Any) -> None:
    def send(*impressions: dict[str, Any]) -> None:
        assert handle(event(json.dumps(list(impressions))), context) == {"batchItemFailures": []}

    send(impression("f", "on", T0))
    send(impression("f", "on", T0 + 1000))  # same treatment, newer: no identify
    send(impression("f", "on", T0 + 500))  # older: nothing
    send(impression("f", "off", T0 + 2000))
    send(impression("f", "off", T0 + 2000))  # the same impression again (an SQS redelivery)
    assert [m["traits"] for m in identifies(sink)] == [{"f": "on"}, {"f": "off"}]
    assert stored_treatments()["f"]["time"] == T0 + 2000


def test_a_key_too_long_for_dynamodb_does_not_hold_back_the_other_last_treatments(
    production: dict[str, Any], sink: SegmentSink, context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Over DynamoDB's 2,048-byte partition key: its track call goes out, its last treatment cannot
    # be stored, and the other user's is recorded and synced rather than retried with it forever.
    long_key = "k" * 2100
    sqs_event = event(json.dumps([impression("f", "on", T0), impression("f", "on", T0, key=long_key)]))
    assert handle(sqs_event, context) == {"batchItemFailures": []}
    assert len([m for m in sink.messages if m["type"] == "track"]) == 2
    assert stored_treatments()["f"]["treatment"] == "on"
    assert [m["userId"] for m in identifies(sink)] == [USER]
    # Left out, but counted where an operator looks: the last-treatments function's metrics.
    [emf] = [m for m in published_metrics(capsys.readouterr().out) if "LastTreatmentWrites" in m]
    assert (emf["LastTreatmentsTooLarge"], emf["LastTreatmentWrites"]) == ([1.0], [1.0])


def test_anonymous_traffic_and_a_custom_trait_name(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    put_config(
        "outbound/production",
        {**production, "computedTraits": {"enabled": True, "traitName": "split_{split}"}},
    )
    config.clear_caches()
    body = {
        "environmentName": "Production",
        "trafficType": "anonymous",
        "impressions": [impression("f", "v2", T0, "anon-1")],
    }
    assert handle(event(json.dumps(body)), context) == {"batchItemFailures": []}
    [identify] = identifies(sink)
    assert identify["anonymousId"] == "anon-1"
    assert "userId" not in identify
    assert identify["traits"] == {"split_f": "v2"}
    assert stored_treatments("anon-1", "anonymous")["f"]["treatment"] == "v2"


def test_an_impression_naming_no_traffic_type_takes_the_configs_default_for_its_trait_too(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    """The identify follows the track call's identity mapping: defaultTrafficType, here anonymous."""
    put_config("outbound/production", {**production, "defaultTrafficType": "anonymous"})
    config.clear_caches()
    assert handle(event(json.dumps(impression("f", "on", T0, "visitor-9"))), context) == {
        "batchItemFailures": []
    }
    [track] = [m for m in sink.messages if m["type"] == "track"]
    [identify] = identifies(sink)
    assert track["anonymousId"] == identify["anonymousId"] == "visitor-9"
    assert "userId" not in identify
    assert stored_treatments("visitor-9", "anonymous")["f"]["treatment"] == "on"
    assert stored_treatments("visitor-9", "user") == {}


def test_a_computed_trait_goes_only_to_the_configs_the_impression_was_routed_to(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    """Per outbound config: a config of another environment, with computed traits on too, gets none."""
    put_config(
        "outbound/staging",
        {
            **production,
            "environments": ["Staging"],
            "computedTraits": {"enabled": True, "traitName": "stg_{split}"},
        },
    )
    put_secret("outbound/staging", WRITE_KEY)
    config.clear_caches()

    assert handle(event(json.dumps([impression("f", "on", T0)])), context) == {"batchItemFailures": []}

    assert [m["traits"] for m in identifies(sink)] == [{"f": "on"}]
    assert [m["type"] for m in sink.messages] == ["track", "identify"]


def test_without_a_trait_name_the_trait_is_the_flag_name(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    put_config("outbound/production", {**production, "computedTraits": {"enabled": True}})
    config.clear_caches()
    assert handle(event(json.dumps([impression("new_checkout", "off", T0)])), context) == {
        "batchItemFailures": []
    }
    [identify] = identifies(sink)
    assert identify["traits"] == {"new_checkout": "off"}


def test_without_computed_traits_the_last_treatment_is_still_kept(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    put_config("outbound/production", {k: v for k, v in production.items() if k != "computedTraits"})
    config.clear_caches()
    assert handle(event(json.dumps(impression("f", "on", T0))), context) == {"batchItemFailures": []}
    assert identifies(sink) == []
    assert stored_treatments()["f"]["treatment"] == "on"


def test_a_stack_without_last_treatments_sends_the_track_calls_and_forwards_nothing(
    production: dict[str, Any],
    stack: Stack,
    sink: SegmentSink,
    context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The environment template.yaml gives the function with LastTreatments=Disabled.
    disabled = dataclasses.replace(stack, parameters={**stack.parameters, "LastTreatments": "Disabled"})
    env = disabled.function_environment("ImpressionsFunction")
    assert env["LAST_TREATMENTS_QUEUE_URL"] == ""
    monkeypatch.setenv("LAST_TREATMENTS_QUEUE_URL", env["LAST_TREATMENTS_QUEUE_URL"])

    response = impressions_app.lambda_handler(event(json.dumps(impression("f", "on", T0))), context)

    assert response == {"batchItemFailures": []}
    assert [m["type"] for m in sink.messages] == ["track"]
    queue = receive_event(
        stack.queues["LastTreatmentsQueue"], "arn:aws:sqs:us-east-1:123456789012:LastTreatmentsQueue"
    )
    assert queue["Records"] == []


def test_a_failed_forward_of_last_treatments_retries_the_messages_it_held(
    production: dict[str, Any], sink: SegmentSink, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last-treatments queue refusing the forward: the track calls go out, and the messages whose
    impressions were not forwarded are retried rather than their last treatments lost."""
    monkeypatch.setenv(
        "LAST_TREATMENTS_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/missing"
    )
    sqs_event = {
        "Records": [
            sqs_events.record(json.dumps(impression("f", "on", T0)), "forwarded"),
            sqs_events.record("{broken", "unparseable"),  # no impressions: dead-lettered, not retried
            sqs_events.record(json.dumps(impression("g", "off", T0, key="u2")), "forwarded-too"),
        ]
    }
    response = impressions_app.lambda_handler(sqs_event, context)
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == ["forwarded", "forwarded-too"]
    assert sorted(m["userId"] for m in sink.messages) == [USER, "u2"]
    assert stored_treatments() == {}


def test_outbound_configs_unavailable_retry_the_last_treatments_unrecorded(
    production: dict[str, Any], sink: SegmentSink
) -> None:
    from shared.config import ConfigUnavailable

    def unavailable() -> OutboundConfigs:
        raise ConfigUnavailable("/p/outbound: ThrottlingException")

    step = LastTreatmentSync(LastTreatmentRecorder(), lambda: 5000, destinations=unavailable)
    step.observe(1, parsed(impression("f", "on", T0)))
    step.observe(3, parsed(impression("g", "on", T0, key="u2")))
    reason = "profiles: outbound configs unavailable (/p/outbound: ThrottlingException)"
    assert step.finish() == {1: reason, 3: reason}
    assert step.report.writes == 0
    assert identifies(sink) == []


HISTORY = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2"]),
        st.sampled_from(["f", "g"]),
        st.sampled_from(["on", "off"]),
        st.integers(0, 5),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=HISTORY, seed=st.integers(), per_message=st.integers(1, 4))
def test_shuffled_impressions_end_with_the_same_last_treatments_and_traits(
    production: dict[str, Any],
    sink: SegmentSink,
    context: Any,
    history: list[tuple[str, str, str, int]],
    seed: int,
    per_message: int,
) -> None:
    """Whatever the order and grouping of SQS messages, the stored last treatments are the newest
    impressions, and the newest identify Segment holds per user and trait carries that treatment."""
    clear_profiles()
    last_treatments_app.last_treatments.forget()
    sink.clear()
    end = time.monotonic() + 30.0  # each example is its own invocations: a fresh deadline
    context.get_remaining_time_in_millis = lambda: int((end - time.monotonic()) * 1000)

    impressions = [impression(split, treatment, T0 + at, key) for key, split, treatment, at in history]
    random.Random(seed).shuffle(impressions)
    bodies = [json.dumps(impressions[i : i + per_message]) for i in range(0, len(impressions), per_message)]
    for start in range(0, len(bodies), 3):  # SQS batches of up to three messages
        assert handle(event(*bodies[start : start + 3]), context) == {"batchItemFailures": []}

    newest: dict[tuple[str, str], tuple[int, str]] = {}
    for key, split, treatment, at in history:
        newest[(key, split)] = max(newest.get((key, split), (-1, "")), (at, treatment))
    latest_trait: dict[tuple[str, str], tuple[str, str]] = {}
    for message in identifies(sink):
        ((trait, value),) = message["traits"].items()
        slot = (message["userId"], trait)
        latest_trait[slot] = max(latest_trait.get(slot, ("", "")), (message["timestamp"], value))
    for (key, split), (at, treatment) in newest.items():
        assert stored_treatments(key)[split]["treatment"] == treatment
        assert stored_treatments(key)[split]["time"] == T0 + at
        assert latest_trait[(key, split)][1] == treatment


def clear_profiles() -> None:
    """Hypothesis runs many examples in one test: each starts from an empty ProfilesTable."""
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(aws.env("PROFILES_TABLE"))
    for item in table.scan()["Items"]:
        table.delete_item(Key={"pk": item["pk"], "sk": item["sk"]})


def published(step: LastTreatmentSync) -> dict[str, int]:
    """The metrics the step publishes, by name."""
    metrics: dict[str, int] = {}
    step.publish(SimpleNamespace(add_metric=lambda name, unit, value: metrics.update({name: value})))
    return metrics


def test_an_undelivered_identify_retries_its_sqs_message_with_the_same_message_id(
    production: dict[str, Any], sink: SegmentSink
) -> None:
    """The profile step on its own: Segment failing the identify makes the record transient."""
    recorder = LastTreatmentRecorder()

    def run(remaining_ms: int) -> tuple[dict[int, str], LastTreatmentSync]:
        step = profile_step(production, recorder, remaining_ms / 1000)
        step.observe(4, parsed(impression("f", "on", T0), impression("g", "on", T0)))
        return step.run(), step

    # Stored by Segment but answered 503, with a Retry-After longer than the time left: one attempt.
    sink.fail_next(1, status=503, accept=True, retry_after=60)
    failed, step = run(10_000)
    assert set(failed) == {4}
    assert step.report.changed == 2
    first_ids = {m["messageId"] for m in identifies(sink)}
    assert len(first_ids) == 2

    sink.clear()
    failed, step = run(5000)
    assert failed == {}
    assert {m["messageId"] for m in identifies(sink)} == first_ids
    # Delivered now: the container remembers, and a third delivery writes nothing.
    failed, step = run(5000)
    assert (failed, step.report.writes, step.skipped) == ({}, 0, 2)
    metrics = published(step)
    assert (metrics["LastTreatmentWrites"], metrics["LastTreatmentWritesSkipped"]) == (0, 2)


def test_a_failed_identify_retries_only_the_records_whose_last_treatment_changed(
    production: dict[str, Any], sink: SegmentSink
) -> None:
    """A newer impression of the same treatment owes Segment nothing: counted as no change, and not
    retried (nor noted as owed) when the identify of another record's change fails."""
    first = profile_step(production, LastTreatmentRecorder(), 10)
    first.observe(0, parsed(impression("f", "on", T0)))
    assert first.run() == {}

    sink.fail_next(1, status=503, accept=False, retry_after=60)
    second = profile_step(production, LastTreatmentRecorder(), 10)
    second.observe(0, parsed(impression("f", "on", T0 + 1000)))
    second.observe(1, parsed(impression("f", "on", T0 + 1000, key="another-user")))
    failed = second.run()

    assert set(failed) == {1}
    assert (second.report.writes, second.report.changed) == (2, 1)
    [item] = [i for i in profile_items(f"Production#user#{USER}") if i["sk"] == "treatment#f"]
    assert "identifyPending" not in item


def test_a_change_delivered_at_once_costs_one_write(
    production: dict[str, Any], sink: SegmentSink, calls: list[RawCall]
) -> None:
    """Only a last treatment noted as owed is written again, to clear the note."""
    step = profile_step(production, LastTreatmentRecorder(), 10)
    step.observe(0, parsed(impression("f", "on", T0)))
    calls.clear()
    assert step.run() == {}
    assert [m["traits"] for m in identifies(sink)] == [{"f": "on"}]
    assert [operation for service, operation, _ in calls if service == "dynamodb"] == ["UpdateItem"]


def test_identifies_sent_and_refused_are_counted_in_their_metrics(
    production: dict[str, Any], sink: SegmentSink
) -> None:
    def sent_and_refused(step: LastTreatmentSync) -> tuple[int, int]:
        metrics = published(step)
        return metrics["ComputedTraitIdentifiesSent"], metrics["ComputedTraitIdentifiesRefused"]

    sent = profile_step(production, LastTreatmentRecorder(), 10)
    sent.observe(0, parsed(impression("f", "on", T0), impression("g", "on", T0)))
    assert sent.run() == {}
    assert sent_and_refused(sent) == (2, 0)

    put_secret("outbound/production", "wk-wrong")
    config.clear_caches()
    refused = profile_step(production, LastTreatmentRecorder(), 10)
    refused.observe(0, parsed(impression("f", "off", T0 + 1), impression("g", "off", T0 + 1)))
    assert refused.run() == {}  # not retried: Segment would refuse it again
    assert sent_and_refused(refused) == (0, 2)


@pytest.mark.parametrize("then", ["dead letters redriven", "the same treatment again"])
def test_a_change_segment_refused_is_sent_once_the_write_key_is_fixed(
    production: dict[str, Any], sink: SegmentSink, context: Any, then: str
) -> None:
    """A wrong write key: Segment refuses the identify (401) and its message is not retried, but the
    change stays owed, in this warm container too, until an identify of it is delivered."""
    put_secret("outbound/production", "wk-wrong")
    body = json.dumps(impression("new_checkout", "on", T0))
    handle(event(body), context)  # the last-treatments message is acknowledged: `handle` checks it
    assert identifies(sink) == []
    assert [r.status for r in sink.requests] == [401, 401]  # the track call and the identify
    assert pending()

    put_secret("outbound/production", WRITE_KEY)
    config.clear_caches()  # what CONFIG_CACHE_SECONDS does in time
    if then == "dead letters redriven":
        handle(event(body), context)  # the track call's dead letter, sent back to the queue
    else:
        handle(event(json.dumps(impression("new_checkout", "on", T0 + 1000))), context)

    assert [m["traits"] for m in identifies(sink)] == [{"new_checkout": "on"}]
    assert not pending()
    handle(event(body), context)  # delivered: now a replay sends nothing
    assert len(identifies(sink)) == 1


def forwarded_by(sqs_event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The impressions function on ``sqs_event``; the last-treatments message it forwarded, unhandled."""
    impressions_app.lambda_handler(sqs_event, context)
    forwarded = receive_event(
        aws.env("LAST_TREATMENTS_QUEUE_URL"), "arn:aws:sqs:us-east-1:123456789012:LastTreatmentsQueue"
    )
    assert forwarded["Records"]
    return forwarded


def countdown(context: Any, seconds: float) -> Any:
    end = time.monotonic() + seconds
    context.get_remaining_time_in_millis = lambda: int((end - time.monotonic()) * 1000)
    return context


def pending(split: str = "new_checkout") -> bool:
    [item] = [i for i in profile_items(f"Production#user#{USER}") if i.get("split") == split]
    return bool(item.get("identifyPending"))


@pytest.mark.parametrize("newer", ["the same treatment", "nothing"])
def test_a_change_segment_missed_reaches_it_when_segment_is_back(
    production: dict[str, Any], sink: SegmentSink, context: Any, newer: str
) -> None:
    """The change's identify fails; before SQS retries it, the user may see the flag again."""
    handle(event(json.dumps(impression("new_checkout", "on", T0))), context)
    forwarded = forwarded_by(event(json.dumps(impression("new_checkout", "off", T0 + 1000))), context)
    sink.fail_fraction(1.0, 503)
    failed = last_treatments_app.lambda_handler(forwarded, countdown(context, 2.0))  # 0.5 s kept back
    sink.fail_fraction(0)
    countdown(context, 30.0)
    assert failed["batchItemFailures"]  # retried by SQS
    assert stored_treatments()["new_checkout"]["treatment"] == "off"
    assert pending()

    if newer == "the same treatment":  # while Segment is back and the retry waits: not a change by itself
        handle(event(json.dumps(impression("new_checkout", "off", T0 + 2000))), context)
        assert [m["traits"]["new_checkout"] for m in identifies(sink)] == ["on", "off"]
        assert not pending()
    for record in forwarded["Records"]:
        record["attributes"]["ApproximateReceiveCount"] = "2"
    retried = last_treatments_app.lambda_handler(forwarded, context)

    assert retried == {"batchItemFailures": []}
    assert [m["traits"]["new_checkout"] for m in identifies(sink)][-1] == "off"
    assert not pending()
    # Delivered once per change: the retry of an outdated message sends nothing more.
    assert [m["traits"]["new_checkout"] for m in identifies(sink)] == ["on", "off"]


def test_a_change_segment_missed_is_noted_on_what_is_stored_even_if_newer(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    """A newer impression of the same treatment was written between the change and its failed identify."""
    from shared.profiles_table import LastTreatment, mark_unsynced, write_last_treatment

    def record(treatment: str, at: int) -> LastTreatment:
        return LastTreatment("Production", "user", USER, "new_checkout", treatment, at, 1795482000000)

    assert write_last_treatment(record("on", T0)).changed
    change = write_last_treatment(record("off", T0 + 1000))
    newer = write_last_treatment(record("off", T0 + 2000))
    assert change.changed
    assert not newer.changed
    mark_unsynced([change.record])  # its identify failed

    retry = write_last_treatment(record("off", T0 + 1000))

    assert (retry.changed, retry.unsynced, retry.record) == (True, True, record("off", T0 + 2000))
    # Notes not begun in time are not made: the response must not wait for them.
    from shared.profiles_table import mark_synced

    mark_synced([retry.record], time_left=lambda: False)
    assert pending()
    mark_synced([retry.record])
    assert not pending()


def test_the_retry_of_a_change_segment_missed_is_not_skipped_by_another_containers_cache(
    production: dict[str, Any], sink: SegmentSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Container B records a newer impression of the same treatment between container A's change and
    A's note that Segment missed it: B finds nothing changed and caches it; A's retry lands on B."""
    from shared.profiles import impression_profiles

    container_a, container_b = LastTreatmentRecorder(), LastTreatmentRecorder()

    def step(recorder: LastTreatmentRecorder, treatment: str, at: int) -> dict[int, str]:
        sync = profile_step(production, recorder, 3.0)
        sync.observe(0, parsed(impression("new_checkout", treatment, at)))
        return sync.run()

    assert step(container_a, "on", T0) == {}
    note_owed = impression_profiles.mark_unsynced

    def b_first(*args: Any) -> None:
        sink.fail_fraction(0)
        assert step(container_b, "off", T0 + 2000) == {}  # not a change, as far as B can tell
        note_owed(*args)

    monkeypatch.setattr(impression_profiles, "mark_unsynced", b_first)
    sink.fail_fraction(1.0, 503)
    assert step(container_a, "off", T0 + 1000)  # Segment missed the change: retried
    assert pending()
    assert [m["traits"]["new_checkout"] for m in identifies(sink)] == ["on"]

    # SQS's retry, or a DLQ redrive (received once more, or anew): older than what B cached.
    assert step(container_b, "off", T0 + 1000) == {}

    assert [m["traits"]["new_checkout"] for m in identifies(sink)] == ["on", "off"]
    assert not pending()


def test_an_invalid_config_retries_only_the_last_treatments_it_may_be_meant_for(
    production: dict[str, Any],
) -> None:
    from shared.outbound.destinations import InvalidConfig

    destination = Destination("production", OutboundConfig.model_validate(production))
    staging = InvalidConfig("staging", "/p/outbound/staging: enableTrak: …", frozenset({"Staging"}))
    step = LastTreatmentSync(
        LastTreatmentRecorder(), lambda: 5000, destinations=lambda: OutboundConfigs([destination], [staging])
    )
    step.observe(1, parsed(impression("f", "on", T0)))
    elsewhere = impression("f", "on", T0, key="stg-user", environmentName="Staging", environmentId="stg")
    step.observe(2, parsed(elsewhere))
    failed = step.finish()
    assert set(failed) == {2}
    assert "outbound config staging is invalid" in failed[2]
    assert step.report.writes == 1  # Production's, recorded through the valid config


def test_a_last_treatment_an_invalid_config_may_want_is_recorded_only_once_it_is_fixed(
    production: dict[str, Any],
) -> None:
    """Recorded now through the valid config, its change would be spent: the fixed config never told."""
    from shared.outbound.destinations import InvalidConfig

    destination = Destination("production", OutboundConfig.model_validate(production))
    everywhere = InvalidConfig("typo", "/p/outbound/typo: enableTrak: …", None)
    configs = [OutboundConfigs([destination], [everywhere]), OutboundConfigs([destination])]
    recorder = LastTreatmentRecorder()
    seen = parsed(impression("f", "on", T0))

    blocked = LastTreatmentSync(recorder, lambda: 5000, destinations=lambda: configs[0])
    blocked.observe(1, seen)
    assert set(blocked.finish()) == {1}
    assert blocked.report.writes == 0

    fixed = LastTreatmentSync(recorder, lambda: 5000, destinations=lambda: configs[1])
    fixed.observe(1, seen)
    assert fixed.finish() == {}
    assert (fixed.report.writes, fixed.report.changed) == (1, 1)


def test_an_unexpected_failure_of_the_profile_step_retries_its_messages(production: dict[str, Any]) -> None:
    def broken() -> OutboundConfigs:
        raise RuntimeError("a bug")

    step = LastTreatmentSync(LastTreatmentRecorder(), lambda: 5000, destinations=broken)
    step.observe(2, parsed(impression("f", "on", T0)))
    assert step.finish() == {2: "profiles: last treatments not recorded"}


def test_the_last_treatments_function_retries_what_it_could_not_sync_and_refuses_foreign_bodies(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    from shared.outbound.impressions import Impression
    from shared.profiles.forwarding import encode_bodies

    forwarded = encode_bodies(
        [
            Impression(
                key=USER,
                split="f",
                treatment="on",
                time=T0,
                environment_id=None,
                environment_name="Production",
                traffic_type="user",
            )
        ]
    )
    foreign = '{"not": "a last-treatments message"}'
    records = event(*forwarded, foreign)
    # Segment stores the identify but answers 503: its SQS message is retried. The foreign one can
    # never succeed: it goes to the dead-letter queue at once, with the reason.
    sink.fail_next(1, status=503, accept=True, retry_after=60)
    answer = last_treatments_app.lambda_handler(records, context)
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == [records["Records"][0]["messageId"]]
    assert stored_treatments()["f"]["treatment"] == "on"
    [letter] = sqs_events.dead_letters(stack.queues["LastTreatmentsDeadLetterQueue"])
    assert letter["body"] == foreign
    assert letter["errorCode"] == "invalid_body"
    assert letter["sourceMessageId"] == records["Records"][1]["messageId"]
    assert letter["reason"].startswith("not a fme-last-treatments/1 message")

    # The redelivery: the identify goes out again with the same messageId.
    first = {m["messageId"] for m in identifies(sink)}
    sink.clear()
    answer = last_treatments_app.lambda_handler(event(*forwarded), context)
    assert answer["batchItemFailures"] == []
    assert {m["messageId"] for m in identifies(sink)} == first


def test_the_last_treatments_function_dead_letters_a_message_failing_on_its_last_receive(
    production: dict[str, Any], sink: SegmentSink, context: Any, stack: Stack
) -> None:
    from shared.outbound.impressions import Impression
    from shared.profiles.forwarding import encode_bodies

    last = sqs_events.max_receive_count(stack.queues["LastTreatmentsQueue"])
    assert stack.function_environment("LastTreatmentsFunction")["MAX_RECEIVE_COUNT"] == str(last)

    users = [f"{USER}-{n}" for n in range(2)]
    bodies = [encode_bodies([Impression(u, "f", "on", T0, None, "Production", "user")])[0] for u in users]
    sink.fail_fraction(1.0, 503)
    records = {
        "Records": [
            sqs_events.record(bodies[0], "not-yet", receive_count=last - 1),
            sqs_events.record(bodies[1], "last-time", receive_count=last),
        ]
    }
    answer = last_treatments_app.lambda_handler(records, context)
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == ["not-yet"]
    [letter] = sqs_events.dead_letters(stack.queues["LastTreatmentsDeadLetterQueue"])
    assert letter["body"] == bodies[1]
    assert letter["errorCode"] == "retries_exhausted"
    assert letter["sourceMessageId"] == "last-time"
    assert letter["failedImpressions"] == "1"
    assert letter["reason"].startswith(f"still failing after {last} deliveries: ")


def test_a_dead_letter_queue_out_of_reach_means_retry_not_loss(
    production: dict[str, Any],
    sink: SegmentSink,
    context: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(
        "LAST_TREATMENTS_DEAD_LETTER_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/missing"
    )
    records = event('{"not": "a last-treatments message"}')
    answer = last_treatments_app.lambda_handler(records, context)
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == [records["Records"][0]["messageId"]]
    [emf] = [
        m for m in published_metrics(capsys.readouterr().out) if "LastTreatmentMessagesDeadLettered" in m
    ]
    assert emf["LastTreatmentMessagesDeadLettered"] == [0.0]  # retried, not counted as dead-lettered


def test_a_batch_forwards_its_last_treatments_in_one_call_past_the_old_256_kib(
    production: dict[str, Any], context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_url = aws.env("LAST_TREATMENTS_QUEUE_URL")
    sqs = boto3.client("sqs", region_name="us-east-1")
    # The local stack makes the queue as template.yaml says: it takes SQS's largest messages.
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["MaximumMessageSize"])
    assert attributes["Attributes"]["MaximumMessageSize"] == "1048576"
    calls: list[int] = []
    real_client = aws.client("sqs")
    real_client.meta.events.register(
        "provide-client-params.sqs.SendMessageBatch", lambda params, **_: calls.append(len(params["Entries"]))
    )
    keys = [f"user-{i:05d}-{'k' * 60}" for i in range(5000)]
    bodies = [
        json.dumps([impression("new_onboarding", "on", T0 + i, key=key) for i, key in enumerate(keys[n::10])])
        for n in range(10)
    ]

    response = impressions_app.lambda_handler(event(*bodies), context)

    assert response == {"batchItemFailures": []}
    # 5,000 rows of about 170 bytes: messages of at most 2,000 rows and 240 KiB, one call for all.
    [entries] = calls
    assert entries >= 4
    forwarded = receive_event(queue_url, "arn:aws:sqs:us-east-1:123456789012:LastTreatmentsQueue")
    assert sum(len(record["body"].encode()) for record in forwarded["Records"]) > 256 * 1024
    rows = [row for record in forwarded["Records"] for row in json.loads(record["body"])["groups"][0]["rows"]]
    assert sorted(row[0] for row in rows) == keys


def test_a_change_written_beside_a_failed_write_reaches_segment_at_once(
    production: dict[str, Any], sink: SegmentSink, context: Any
) -> None:
    """One message, two users: the other user's write is throttled past botocore's retries. The
    message is retried, but this user's change is sent now: by the retry, a newer impression of the
    same treatment may have landed and hidden it."""
    handle(event(json.dumps(impression("new_checkout", "off", T0))), context)
    both = event(json.dumps([impression("new_checkout", "on", T0 + 1000, key=k) for k in (USER, "other")]))
    forwarded = forwarded_by(both, context)

    def throttle_other(request: Any, **_: Any) -> Any:
        if request.headers.get("X-Amz-Target", b"").endswith(b"UpdateItem") and b'"other"' in request.body:
            error = {"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError", "message": "injected"}
            return AWSResponse(request.url, 500, {}, _RawBody(json.dumps(error).encode()))
        return None

    client = aws.client("dynamodb")
    client.meta.events.register_first("before-send.dynamodb", throttle_other)
    try:
        failed = last_treatments_app.lambda_handler(forwarded, context)
    finally:
        client.meta.events.unregister("before-send.dynamodb", throttle_other)

    assert failed["batchItemFailures"]  # the other user's last treatment is retried
    assert [(m["userId"], m["traits"]) for m in identifies(sink)] == [
        (USER, {"new_checkout": "off"}),
        (USER, {"new_checkout": "on"}),
    ]
    handle(event(json.dumps(impression("new_checkout", "on", T0 + 2000))), context)  # nothing changes
    for record in forwarded["Records"]:
        record["attributes"]["ApproximateReceiveCount"] = "2"
    assert last_treatments_app.lambda_handler(forwarded, context) == {"batchItemFailures": []}
    assert [(m["userId"], m["traits"]) for m in identifies(sink)][2:] == [("other", {"new_checkout": "on"})]
