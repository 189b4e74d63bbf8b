"""Forwarding last treatments from the impressions function: the format, collapsing, SQS failures."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from shared.outbound.impressions import Impression
from shared.profiles import forwarding
from shared.profiles.forwarding import (
    MAX_CALL_BYTES,
    MAX_MESSAGE_BYTES,
    ForwardedBodyError,
    LastTreatmentForwarder,
    decode_body,
    encode_bodies,
    newest_per_slot,
    send_bodies,
)

T0 = 1_795_483_041_109


def imp(key: str = "u1", split: str = "f", treatment: str = "on", at: int = T0, **extra: Any) -> Impression:
    values: dict[str, Any] = {
        "environment_id": "env-1",
        "environment_name": "Production",
        "traffic_type": "user",
        "label": "default rule",
        "split_version_number": 17,
        **extra,
    }
    return Impression(key=key, split=split, treatment=treatment, time=at, **values)


IMPRESSIONS = st.lists(
    st.builds(
        imp,
        key=st.text(min_size=1, max_size=40),
        split=st.sampled_from(["f", "g", "new_checkout"]),
        treatment=st.sampled_from(["on", "off", "v2"]),
        at=st.integers(0, 2**45),
        environment_id=st.one_of(st.none(), st.just("env-1")),
        environment_name=st.one_of(st.none(), st.just("Production"), st.just("Staging")),
        traffic_type=st.one_of(st.none(), st.just("user"), st.just("anonymous")),
        label=st.one_of(st.none(), st.text(max_size=20)),
        split_version_number=st.one_of(st.none(), st.integers(0, 2**45)),
    ),
    max_size=30,
)


def sqs_accepts(body: str) -> bool:
    """Only the characters SQS allows in a message body."""
    return all(
        c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c >= "\U00010000" for c in body
    )


@given(IMPRESSIONS, st.integers(1, 7))
def test_what_is_forwarded_decodes_to_the_fields_last_treatments_need(
    impressions: list[Impression], rows_per_message: int
) -> None:
    bodies = encode_bodies(impressions, rows_per_message)
    assert all(sqs_accepts(body) for body in bodies)
    decoded = [i for body in bodies for i in decode_body(body)]
    fields = ("key", "split", "treatment", "time", "environment_id", "environment_name")
    more = ("traffic_type", "label", "split_version_number")

    def project(i: Impression) -> tuple[Any, ...]:
        return tuple(getattr(i, name) for name in fields + more)

    assert sorted(map(project, decoded), key=repr) == sorted(map(project, impressions), key=repr)


def test_a_body_is_compact_self_describing_json() -> None:
    [body] = encode_bodies([imp(), imp("u2", treatment="off")])
    assert json.loads(body) == {
        "format": "fme-last-treatments/1",
        "groups": [
            {
                "environmentId": "env-1",
                "environmentName": "Production",
                "trafficType": "user",
                "rows": [
                    ["u1", "f", "on", T0, 17, "default rule"],
                    ["u2", "f", "off", T0, 17, "default rule"],
                ],
            }
        ],
    }


def test_characters_sqs_refuses_are_escaped_and_decode_unchanged() -> None:
    """U+FFFE and U+FFFF pass the impressions parser (as JSON escapes) but not SQS, raw."""
    odd = imp("user-\uffff", label="rule \ufffe", split="f\uffef")
    [body] = encode_bodies([odd])
    assert sqs_accepts(body)
    assert "\\uffff" in body
    assert "\\ufffe" in body
    [decoded] = decode_body(body)
    assert (decoded.key, decoded.label, decoded.split) == ("user-\uffff", "rule \ufffe", "f\uffef")


def test_a_message_too_large_for_sqs_is_split_until_each_fits() -> None:
    impressions = [imp(f"user-{n}", label="x" * 500) for n in range(100)]
    bodies = encode_bodies(impressions, rows_per_message=100, max_bytes=8_000)
    assert len(bodies) > 1
    assert all(len(body) <= 8_000 for body in bodies)
    assert [i.key for body in bodies for i in decode_body(body)] == [i.key for i in impressions]


def test_a_message_of_exactly_the_size_limit_is_not_split() -> None:
    impressions = [imp(f"user-{n}") for n in range(3)]
    [whole] = encode_bodies(impressions)
    assert encode_bodies(impressions, max_bytes=len(whole.encode())) == [whole]


def test_a_message_holds_at_most_2000_rows() -> None:
    impressions = [imp(f"u{n}") for n in range(2_001)]
    bodies = encode_bodies(impressions)
    assert [len(decode_body(body)) for body in bodies] == [2_000, 1]


def test_only_the_newest_impression_per_identity_and_flag_is_forwarded() -> None:
    impressions = [
        imp(at=T0 + 5, treatment="off"),
        imp(at=T0 + 9, treatment="on"),
        imp(at=T0 + 1, treatment="v2"),
        imp(at=T0 + 9, treatment="on", split_version_number=16),  # same time, older version
        imp(split="g"),
        imp(traffic_type="anonymous"),
    ]
    newest = newest_per_slot(impressions)
    assert [(i.split, i.traffic_type, i.treatment, i.time) for i in newest] == [
        ("f", "user", "on", T0 + 9),
        ("g", "user", "on", T0),
        ("f", "anonymous", "on", T0),
    ]
    assert newest[0].split_version_number == 17


@pytest.mark.parametrize(
    ("versions", "newest"),
    [((None, -5), "z"), ((0, None), "a"), ((None, 0), "z")],
    ids=["none-and-negative-alike", "zero-over-none", "none-under-zero"],
)
def test_the_newest_is_the_one_the_recorder_keeps_whatever_the_version(
    versions: tuple[int | None, int | None], newest: str
) -> None:
    """No version and a negative one rank alike in the recorder (LastTreatment.rank), below version 0:
    so here. Of two alike, the greater treatment wins."""
    from shared.profiles_table import LastTreatment

    pair = [
        imp(treatment="a", split_version_number=versions[0]),
        imp(treatment="z", split_version_number=versions[1]),
    ]
    [forwarded] = newest_per_slot(pair)
    kept = max(
        (
            LastTreatment("Production", "user", i.key, i.split, i.treatment, i.time, i.split_version_number)
            for i in pair
        ),
        key=lambda record: record.order,
    )
    assert forwarded.treatment == kept.treatment == newest


def test_a_later_impression_wins_over_a_higher_version_of_an_earlier_one() -> None:
    """Time is compared first, as the recorder's condition does; the version only breaks ties."""
    earlier = imp(at=T0, treatment="off", split_version_number=99)
    later = imp(at=T0 + 1, treatment="on", split_version_number=3)
    assert newest_per_slot([earlier, later]) == [later]
    assert newest_per_slot([later, earlier]) == [later]


def rows_body(row: list[Any], **group: Any) -> str:
    head = {"environmentId": None, "environmentName": "P", "trafficType": None, **group}
    return json.dumps({"format": "fme-last-treatments/1", "groups": [{**head, "rows": [row]}]})


@pytest.mark.parametrize(
    "body",
    [
        rows_body(["u", "f", "on", T0, 1, 1.5]),  # a label that is not text
        rows_body(["u", "f", 7, T0, 1, None]),  # a treatment that is not text
        rows_body(["u", "f", "on", True, 1, None]),  # JSON true is no time
        rows_body(["u", "f", "on", T0, False, None]),
        rows_body(["u", "f", "on", T0, 1, None], trafficType=["x"]),
        rows_body(["u", "f", "on", T0, 1, None], environmentName=7),
    ],
)
def test_a_field_the_recorder_cannot_store_is_a_clear_error(body: str) -> None:
    with pytest.raises(ForwardedBodyError):
        decode_body(body)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        "[]",
        json.dumps({"format": "something-else"}),
        json.dumps({"format": "fme-last-treatments/1"}),
        json.dumps({"format": "fme-last-treatments/1", "groups": [{"rows": []}]}),
        json.dumps({"format": "fme-last-treatments/1", "groups": [{"environmentId": None, "rows": [[1]]}]}),
        json.dumps(
            {
                "format": "fme-last-treatments/1",
                "groups": [
                    {
                        "environmentId": None,
                        "environmentName": "P",
                        "trafficType": None,
                        "rows": [["u", "f", "on", "yesterday", None, None]],
                    }
                ],
            }
        ),
    ],
)
def test_anything_else_is_a_clear_error(body: str) -> None:
    with pytest.raises(ForwardedBodyError):
        decode_body(body)


@pytest.mark.parametrize("format_", [None, "fme-last-treatments/2"], ids=["no format", "another format"])
def test_a_body_of_another_format_is_refused_whatever_it_holds(format_: str | None) -> None:
    document = json.loads(rows_body(["u", "f", "on", T0, 1, None]))
    assert decode_body(json.dumps(document))  # as it is: readable
    document.pop("format")
    if format_ is not None:
        document["format"] = format_
    with pytest.raises(ForwardedBodyError, match="not a fme-last-treatments/1 message"):
        decode_body(json.dumps(document))


def expect_calls(stub: Stubber, calls: list[list[str]]) -> None:
    """One successful SendMessageBatch to https://q per list of bodies, in order."""
    for chunk in calls:
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)]
        stub.add_response(
            "send_message_batch",
            {"Successful": [], "Failed": []},
            {"QueueUrl": "https://q", "Entries": entries},
        )


def test_bodies_are_packed_into_calls_of_at_most_ten_and_the_size_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    monkeypatch.setattr(forwarding, "aws", SimpleNamespace(client=lambda service: sqs))
    big = "y" * MAX_MESSAGE_BYTES
    bodies = ["x" * 1000] * 13 + [big] * 5
    with Stubber(sqs) as stub:
        # Ten entries at most; then three small ones and four big ones fit 1,000 KiB (four times
        # the 256 KiB a call once took); the fifth big one does not.
        assert 4 * MAX_MESSAGE_BYTES + 3000 <= MAX_CALL_BYTES < 5 * MAX_MESSAGE_BYTES
        expect_calls(stub, [bodies[:10], bodies[10:17], bodies[17:]])
        assert send_bodies("https://q", bodies) == []
        stub.assert_no_pending_responses()


def test_a_call_stays_within_1000_kib_below_the_mib_sqs_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    monkeypatch.setattr(forwarding, "aws", SimpleNamespace(client=lambda service: sqs))
    # Four full messages and one that brings the call a byte past 1,000 KiB (docs/profiles.md),
    # still well under SQS's 1 MiB.
    bodies = ["y" * MAX_MESSAGE_BYTES] * 4 + ["x" * (1000 * 1024 - 4 * MAX_MESSAGE_BYTES + 1)]
    with Stubber(sqs) as stub:
        expect_calls(stub, [bodies[:4], bodies[4:]])
        assert send_bodies("https://q", bodies) == []
        stub.assert_no_pending_responses()


def test_an_sqs_failure_retries_every_message_that_had_impressions(monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    monkeypatch.setattr(forwarding, "aws", SimpleNamespace(client=lambda service: sqs))
    forwarder = LastTreatmentForwarder("https://q")
    forwarder.observe(0, [imp()])
    forwarder.observe(1, [])
    forwarder.observe(2, [imp("u2")])
    forwarder.prepare()
    with Stubber(sqs) as stub:
        stub.add_client_error("send_message_batch", "ServiceUnavailable", http_status_code=503)
        failed = forwarder.finish()
    assert failed == {
        0: "profiles: last-treatments queue: ClientError",
        2: "profiles: last-treatments queue: ClientError",
    }
    assert forwarder.forwarded == 0


def test_a_partly_failed_call_retries_them_too(monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    monkeypatch.setattr(forwarding, "aws", SimpleNamespace(client=lambda service: sqs))
    forwarder = LastTreatmentForwarder("https://q")
    forwarder.observe(3, [imp(), imp("u2")])
    forwarder.prepare()
    with Stubber(sqs) as stub:
        stub.add_response(
            "send_message_batch",
            {"Successful": [], "Failed": [{"Id": "0", "SenderFault": False, "Code": "InternalError"}]},
        )
        assert forwarder.finish() == {3: "profiles: last-treatments queue: InternalError"}


def test_nothing_observed_sends_nothing() -> None:
    forwarder = LastTreatmentForwarder("https://unused")
    forwarder.prepare()
    assert forwarder.finish() == {}


def test_a_failure_while_preparing_retries_every_message_that_had_impressions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> list[str]:
        raise ValueError("a bug")

    monkeypatch.setattr(forwarding, "encode_bodies", broken)
    monkeypatch.setattr(forwarding, "send_bodies", lambda *args: pytest.fail("nothing to send"))
    forwarder = LastTreatmentForwarder("https://q")
    forwarder.observe(4, [imp()])
    forwarder.prepare()  # the event loop's thread: it must not raise
    assert forwarder.finish() == {4: "profiles: last treatments not forwarded"}
    assert forwarder.forwarded == 0


def test_an_impression_too_large_for_any_message_is_left_out_and_counted() -> None:
    """Sent, it would fail the call, and with it the whole batch, on every retry."""
    giant = imp("g" * (MAX_MESSAGE_BYTES + 1))
    left_out: list[Impression] = []
    bodies = encode_bodies([imp(), giant, imp("u2")], oversized=left_out.append)
    assert left_out == [giant]
    assert [i.key for body in bodies for i in decode_body(body)] == ["u1", "u2"]
    assert all(len(body) <= MAX_MESSAGE_BYTES for body in bodies)


@mock_aws
def test_the_forwarder_sends_the_rest_and_reports_what_it_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    monkeypatch.setattr(forwarding, "aws", SimpleNamespace(client=lambda service: sqs))
    queue = sqs.create_queue(QueueName="last-treatments")["QueueUrl"]
    forwarder = LastTreatmentForwarder(queue)
    forwarder.observe(0, [imp(), imp("k" * (MAX_MESSAGE_BYTES + 1))])
    forwarder.observe(1, [imp("u2")])

    assert forwarder.finish() == {}
    assert (forwarder.forwarded, forwarder.oversized) == (2, 1)
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert sorted(i.key for m in messages for i in decode_body(m["Body"])) == ["u1", "u2"]
    metrics = SimpleNamespace(added=[], add_metric=lambda **m: metrics.added.append(m))
    forwarder.publish(metrics)
    assert {"name": "LastTreatmentsTooLarge", "unit": "Count", "value": 1} in metrics.added


def test_what_is_left_out_is_counted_only_when_the_forward_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed forward retries the batch, which leaves the impression out again: counted then."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    monkeypatch.setattr(forwarding, "aws", SimpleNamespace(client=lambda service: sqs))
    forwarder = LastTreatmentForwarder("https://q")
    forwarder.observe(0, [imp(), imp("k" * (MAX_MESSAGE_BYTES + 1))])
    with Stubber(sqs) as stub:
        stub.add_client_error("send_message_batch", "ServiceUnavailable", http_status_code=503)
        assert forwarder.finish() == {0: "profiles: last-treatments queue: ClientError"}
    assert (forwarder.forwarded, forwarder.oversized) == (0, 0)
