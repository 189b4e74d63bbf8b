"""Cutting an impressions-webhook body into queue messages (shared.outbound.webhook_relay)."""

from __future__ import annotations

import json

import pytest

from shared.outbound.webhook_relay import MAX_COMMAS, MAX_INFLATED_BYTES, NotImpressions, queue_messages
from tests.conftest import load_event


def items(count: int, pad: int = 0) -> list[dict[str, object]]:
    return [
        {"key": f"user-{i}", "split": "f", "treatment": "on", "time": i, "pad": "x" * pad}
        for i in range(count)
    ]


@pytest.mark.parametrize("max_bytes", [60, 200, 1000, 10_000])
def test_every_item_lands_in_one_message_in_order_and_no_message_is_over_the_limit(max_bytes: int) -> None:
    posted = items(40, pad=7)
    relayed = queue_messages(json.dumps(posted).encode(), max_bytes)

    too_large = [i for i, item in enumerate(posted) if len(json.dumps(item)) + 2 > max_bytes]
    assert relayed.too_large == too_large
    assert all(len(body.encode()) <= max_bytes for body in relayed.bodies)
    assert [i for body in relayed.bodies for i in json.loads(body)] == [
        item for i, item in enumerate(posted) if i not in too_large
    ]
    assert relayed.impressions == 40


def test_an_item_that_fills_a_message_exactly_fits() -> None:
    item = json.dumps({"key": "k"}, separators=(",", ":"))
    relayed = queue_messages(f"[{item},{item}]".encode(), len(item) + 2)
    assert relayed.bodies == [f"[{item}]", f"[{item}]"]
    assert relayed.too_large == []


@pytest.mark.parametrize(("spare", "per_message"), [(0, 2), (-1, 1)])
def test_the_comma_between_items_counts(spare: int, per_message: int) -> None:
    item = json.dumps({"key": "k"}, separators=(",", ":"))
    two = len(f"[{item},{item}]")
    relayed = queue_messages(f"[{item},{item},{item},{item}]".encode(), two + spare)
    assert [len(json.loads(body)) for body in relayed.bodies] == [per_message] * (4 // per_message)


def test_items_are_copied_as_posted() -> None:
    body = b'[ {"key": "a",  "time": 1.50, "n": 12345678901234567890123} ,{"key":"\\u00e9"}]'
    assert queue_messages(body).bodies == [
        '[{"key": "a",  "time": 1.50, "n": 12345678901234567890123},{"key":"\\u00e9"}]'
    ]


def test_an_envelope_is_cut_into_envelopes_with_its_other_fields() -> None:
    envelope = {"environmentName": "Producción", "trafficType": "user", "impressions": items(30, pad=20)}
    relayed = queue_messages(json.dumps(envelope, ensure_ascii=False).encode(), 400)
    messages = [json.loads(body) for body in relayed.bodies]
    assert len(messages) > 1
    assert {(m["environmentName"], m["trafficType"]) for m in messages} == {("Producción", "user")}
    assert [i for m in messages for i in m["impressions"]] == envelope["impressions"]
    assert all(len(body.encode()) <= 400 for body in relayed.bodies)


@pytest.mark.parametrize("cut", ["", "\ud83d"], ids=["copied as posted", "read by the standard library"])
def test_an_envelope_holding_only_impressions_is_cut_into_envelopes_of_only_impressions(cut: str) -> None:
    posted = load_event("impressions_webhook.json") * 4
    posted[3] = {**posted[3], "key": f"cut {cut}"}
    relayed = queue_messages(json.dumps({"impressions": posted}).encode(), 1200)
    messages = [json.loads(body) for body in relayed.bodies]
    assert len(messages) > 1
    assert all(list(message) == ["impressions"] for message in messages)
    assert [i for m in messages for i in m["impressions"]] == posted


@pytest.mark.parametrize(
    "document",
    [
        {"key": "u", "split": "f", "treatment": "on", "time": 1},  # one impression
        {"impression": {"keyName": "u"}, "environmentName": "Production"},  # a listener object
        {"impressions": None, "environmentName": "Production"},  # not an envelope: left to the function
    ],
)
def test_an_object_that_is_not_an_envelope_is_one_message(document: dict[str, object]) -> None:
    relayed = queue_messages(json.dumps(document).encode())
    assert [json.loads(body) for body in relayed.bodies] == [document]
    assert relayed.impressions == 1


def test_an_object_that_fills_a_message_exactly_fits() -> None:
    document = json.dumps({"key": "k"}).encode()
    relayed = queue_messages(document, len(document))
    assert (relayed.bodies, relayed.too_large) == ([document.decode()], [])


def test_the_limits_are_the_documented_ones() -> None:
    """A post FME may send is refused only past what docs/outbound.md and the OpenAPI document say."""
    from pathlib import Path

    from fme_bridge import openapi

    docs = (Path(__file__).parents[2] / "docs" / "outbound.md").read_text()
    mib = MAX_INFLATED_BYTES // 2**20
    assert mib * 2**20 == MAX_INFLATED_BYTES
    assert f"up to {mib} MiB" in docs
    assert f"beyond {MAX_COMMAS:,} commas" in docs
    assert f"more than {mib} MiB, or holds over {MAX_COMMAS:,} values" in json.dumps(openapi.document())


def test_an_object_no_message_can_hold_is_too_large() -> None:
    relayed = queue_messages(json.dumps({"key": "x" * 300}).encode(), 100)
    assert (relayed.bodies, relayed.too_large) == ([], [0])


def test_a_lone_surrogate_escape_is_kept_for_the_impressions_function_to_read() -> None:
    # A string cut inside an emoji: valid JSON that msgspec refuses; the standard library reads it.
    relayed = queue_messages(b'[{"key": "u\\ud83d", "split": "f"}]')
    [body] = relayed.bodies
    assert body.isascii()
    assert json.loads(body) == [{"key": "u\ud83d", "split": "f"}]


@pytest.mark.parametrize("cut", ["\ud83d", "\uffff"], ids=["lone surrogate", "character SQS refuses"])
def test_an_envelope_read_by_the_standard_library_keeps_its_other_fields(cut: str) -> None:
    """Without its environmentName, no impression of the envelope could be sent."""
    posted = items(6, pad=20)
    posted[2]["key"] = f"cut {cut}"
    envelope = {"environmentName": "Producción", "trafficType": "user", "impressions": posted}
    text = json.dumps(envelope, ensure_ascii=False).replace("\ud83d", "\\ud83d")  # the escape, as posted
    relayed = queue_messages(text.encode(), 300)
    messages = [json.loads(body) for body in relayed.bodies]
    assert len(messages) > 1
    assert {(m["environmentName"], m["trafficType"]) for m in messages} == {("Producción", "user")}
    assert [i for m in messages for i in m["impressions"]] == posted


def test_characters_sqs_refuses_are_escaped() -> None:
    posted = [{"key": "u\uffff", "split": "f\ufffe"}]
    [body] = queue_messages(json.dumps(posted, ensure_ascii=False).encode()).bodies
    assert "\uffff" not in body
    assert "\ufffe" not in body
    assert json.loads(body) == posted


def test_other_text_travels_as_utf_8_and_counts_in_bytes() -> None:
    posted = [{"key": "é" * 50}] * 4
    relayed = queue_messages(json.dumps(posted, ensure_ascii=False).encode(), 200)
    assert all(len(body.encode()) <= 200 for body in relayed.bodies)
    # 111 bytes (61 characters) each: counted in characters, two would fit in 200.
    assert len(relayed.bodies) == 4
    assert [i for body in relayed.bodies for i in json.loads(body)] == posted


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "the request body is not JSON"),
        (b"[1,", "the request body is not JSON"),
        (b"[1] trailing", "the request body is not JSON"),
        (b"\xff[]", "the request body is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the request body is not JSON"),
        (b"42", "the request body must be a JSON array of impressions, or an object"),
        (b' "text"', "the request body must be a JSON array of impressions, or an object"),
        (b"null", "the request body must be a JSON array of impressions, or an object"),
    ],
    ids=["empty", "cut", "trailing", "not utf-8", "too deep", "number", "string", "null"],
)
def test_a_body_that_is_not_an_array_or_object_is_refused(body: bytes, error: str) -> None:
    with pytest.raises(NotImpressions, match=error):
        queue_messages(body)
