"""Webhook bodies: the three shapes Segment sends, and clear errors for everything else."""

from __future__ import annotations

import gzip
import json

import pytest

from shared.inbound.messages import (
    MAX_MESSAGES,
    BadRequest,
    PayloadTooLarge,
    SegmentMessage,
    compact_json,
    decode_body,
    first_element_text,
    gunzip,
    to_epoch_ms,
)
from tests.conftest import load_event


def test_single_message_object() -> None:
    track = load_event("segment/track.json")
    assert decode_body(json.dumps(track).encode()) == [track]


def test_array_of_messages() -> None:
    body = [load_event("segment/track.json"), load_event("segment/identify.json")]
    assert decode_body(json.dumps(body).encode()) == body


def test_batch_envelope() -> None:
    body = {"batch": [load_event("segment/page.json")], "sentAt": "2015-02-23T22:28:55.111Z"}
    assert decode_body(json.dumps(body).encode()) == body["batch"]


def test_a_message_with_a_batch_field_is_a_message_not_an_envelope() -> None:
    message = {"type": "track", "event": "x", "userId": "u", "batch": "b"}
    assert decode_body(json.dumps(message).encode()) == [message]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "empty_body"),
        (b"  \n", "empty_body"),
        (b"{}", "empty_body"),
        (b"[]", "empty_batch"),
        (b'{"batch": []}', "empty_batch"),
        (b'{"batch": {"type": "track"}}', "invalid_batch"),
        (b"not json", "invalid_json"),
        (b'{"type": "track",', "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b'{"type": "track", "value": NaN}', "invalid_json"),
        (b'"a string"', "invalid_body_type"),
        (b"42", "invalid_body_type"),
        (b"null", "invalid_body_type"),
        (b"true", "invalid_body_type"),
    ],
)
def test_bad_bodies_name_the_problem(raw: bytes, error: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_body(raw)
    assert caught.value.error == error
    assert caught.value.message


def test_more_than_4000_messages_is_too_large_and_names_the_limit() -> None:
    # Literal numbers: Segment's Actions batches hold up to 4,000, whatever the constant says.
    body = json.dumps([{"type": "track"}] * 4001).encode()
    with pytest.raises(PayloadTooLarge) as caught:
        decode_body(body)
    assert "at most 4000" in caught.value.message
    assert len(decode_body(json.dumps([{"type": "track"}] * 4000).encode())) == 4000
    assert MAX_MESSAGES == 4000


def test_first_element_text_is_the_exact_bytes_sent() -> None:
    assert first_element_text(b' [ {"a": 1.0, "b":"\xc3\xa9"} , {"c": 2}]') == b'{"a": 1.0, "b":"\xc3\xa9"}'
    assert first_element_text(b'{"a": 1}') is None
    assert first_element_text(b"[not json") is None


def test_compact_json_matches_javascript_json_stringify() -> None:
    assert (
        compact_json({"name": "Zoë", "n": [1, 2], "o": {"k": None}})
        == '{"name":"Zoë","n":[1,2],"o":{"k":null}}'.encode()
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2015-02-23T22:28:55.111Z", 1424730535111),
        ("2015-02-23T23:28:55.111+01:00", 1424730535111),
        ("2015-02-23T22:28:55Z", 1424730535000),
        ("2015-02-23T22:28:55.111", 1424730535111),
        ("2015-02-23t22:28:55.111z", 1424730535111),  # RFC 3339 allows lowercase
        (1424730535111, 1424730535111),
        (1424730535, 1424730535000),
        ("yesterday", None),
        ("", None),
        (None, None),
        (True, None),
        (-5, None),
        ("1900-01-01T00:00:00Z", None),
        (1424730535.5, 1424730535500),
        (0, 0),  # the epoch itself is a time
        ("1970-01-01T00:00:00Z", 0),
        (9_999_999_999_999, 9_999_999_999_999),  # the latest the sort key's 13 digits hold
        (10_000_000_000_000, None),
        (99_999_999_999, None),  # as seconds, past 2286
        (100_000_000_000, 100_000_000_000),  # from twelve digits on, milliseconds (1973)
        (10**400, None),  # past any float: out of range, not an OverflowError
        (-(10**400), None),
        (float("inf"), None),
        (float("nan"), None),
    ],
)
def test_to_epoch_ms(value: object, expected: int | None) -> None:
    assert to_epoch_ms(value) == expected


def test_a_gzip_body_inflating_to_exactly_the_limit_is_read_and_one_byte_more_is_too_large() -> None:
    assert gunzip(gzip.compress(b"x" * 100), 100) == b"x" * 100
    with pytest.raises(PayloadTooLarge) as caught:
        gunzip(gzip.compress(b"x" * 101), 100)
    assert caught.value.limit == 100


def test_a_numeric_message_id_is_its_text() -> None:
    message = SegmentMessage.model_validate({"type": "track", "messageId": 12345, "event": "x"})
    assert message.messageId == "12345"
