"""Webhook credentials: every form Segment can send, against current and previous secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from shared.inbound.auth import RESERIALIZED_BODY_BYTES, Credentials
from shared.secret_versions import _RecentNames, negative_cache_seconds
from tests.conftest import load_event

SECRET = "whsec-3f9a1c0b7d2e4a6b"
BODY = json.dumps(load_event("segment/track.json")).encode()


def sign(payload: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha1).hexdigest()


@pytest.mark.parametrize(
    "authorization",
    [
        SECRET,
        f"Bearer {SECRET}",
        f"bearer {SECRET}",
        "Basic " + base64.b64encode(f"{SECRET}:".encode()).decode(),
        "Basic " + base64.b64encode(f"{SECRET}:ignored-password".encode()).decode(),
        "basic " + base64.b64encode(f"{SECRET}:".encode()).decode(),  # schemes are case-insensitive
    ],
)
def test_authorization_header_forms(authorization: str) -> None:
    assert Credentials({"authorization": authorization}, BODY).match(SECRET)


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer ",
        "Bearer wrong",
        f"Bearer {SECRET}x",
        SECRET[:-1],
        "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode(),  # secret as password, not user
        "Basic not-base64!!",
    ],
)
def test_wrong_authorization_is_refused(authorization: str) -> None:
    assert not Credentials({"authorization": authorization}, BODY).match(SECRET)


def test_signature_over_the_raw_body() -> None:
    assert Credentials({"x-signature": sign(BODY)}, BODY).match(SECRET)
    assert Credentials({"x-signature": sign(BODY).upper()}, BODY).match(SECRET)
    assert not Credentials({"x-signature": sign(BODY, "other")}, BODY).match(SECRET)
    assert not Credentials({"x-signature": sign(BODY + b" ")}, BODY).match(SECRET)


def test_signature_over_the_first_element_of_an_array_body() -> None:
    # Webhooks (Actions) batching: HMAC of JSON.stringify(batch[0]).
    messages = [load_event("segment/track.json"), load_event("segment/identify.json")]
    first = json.dumps(messages[0], separators=(",", ":")).encode()
    pretty_body = json.dumps(messages, indent=2).encode()
    assert Credentials({"x-signature": sign(first)}, pretty_body).match(SECRET)
    compact_body = json.dumps(messages, separators=(",", ":")).encode()
    assert Credentials({"x-signature": sign(first)}, compact_body).match(SECRET)
    second = json.dumps(messages[1], separators=(",", ":")).encode()
    assert not Credentials({"x-signature": sign(second)}, compact_body).match(SECRET)


def test_signature_of_first_element_keeps_non_ascii_as_javascript_does() -> None:
    messages = [{"type": "track", "event": "Café Visited", "userId": "zoë"}]
    first = json.dumps(messages[0], separators=(",", ":"), ensure_ascii=False).encode()
    body = json.dumps(messages).encode()  # \u-escaped on the wire
    assert Credentials({"x-signature": sign(first)}, body).match(SECRET)


def test_signature_over_a_compact_form_with_non_ascii_escaped() -> None:
    """``json.dumps(..., separators=(",", ":"))``: compact, with ``\\u``-escapes (Python's default)."""
    messages = [
        {"type": "track", "event": "Café Visited", "userId": "zoë"},
        {"type": "track", "userId": "u2"},
    ]
    body = json.dumps(messages, ensure_ascii=False).encode()  # non-ASCII as is on the wire
    escaped_first = json.dumps(messages[0], separators=(",", ":")).encode()
    assert Credentials({"x-signature": sign(escaped_first)}, body).match(SECRET)
    single = json.dumps(messages[0], indent=2, ensure_ascii=False).encode()  # a classic webhook's object body
    assert Credentials({"x-signature": sign(escaped_first)}, single).match(SECRET)
    assert Credentials({"x-segment-signature": sign(escaped_first)}, single).match(SECRET)
    assert not Credentials({"x-signature": sign(escaped_first, "other")}, body).match(SECRET)


def test_an_object_body_is_parsed_again_for_its_compact_signature_only_up_to_the_limit() -> None:
    """A signature over the compact form of a pretty-printed object body counts up to
    RESERIALIZED_BODY_BYTES of body, whitespace around it included; past that, only the body as sent."""

    def pretty_body(size: int) -> tuple[bytes, bytes]:
        message = {"type": "track", "event": "Big", "userId": "u1", "properties": {"blob": ""}}
        padding = size - len(json.dumps(message, indent=2).encode()) - 1
        message["properties"]["blob"] = "x" * padding
        body = b" " + json.dumps(message, indent=2).encode()  # leading whitespace: still an object
        assert len(body) == size
        return body, json.dumps(message, separators=(",", ":")).encode()

    assert RESERIALIZED_BODY_BYTES == 64 * 1024  # docs/inbound.md: an object body of up to 64 KB
    for size, accepted in ((65_536, True), (65_537, False)):
        body, compact = pretty_body(size)
        assert Credentials({"x-signature": sign(compact)}, body).match(SECRET) is accepted
        assert Credentials({"x-signature": sign(body)}, body).match(SECRET)  # signed as sent: any size


def test_signature_of_first_element_is_over_its_text_as_sent() -> None:
    # JSON.stringify writes 1e-7 where Python writes 1e-07: the element's own bytes are what was signed.
    first = b'{"type":"track","event":"Tiny","userId":"u1","properties":{"rate":1e-7}}'
    body = b"[" + first + b',{"type":"track","event":"Other","userId":"u2"}]'
    assert Credentials({"x-signature": sign(first)}, body).match(SECRET)


def test_no_credentials_and_empty_secret_never_match() -> None:
    assert not Credentials({}, BODY).present
    assert not Credentials({"authorization": ""}, BODY).match("")
    assert not Credentials({"x-signature": sign(BODY, "")}, BODY).match("")


def test_negative_cache_expires() -> None:
    now = [100.0]
    cache = _RecentNames(negative_cache_seconds, clock=lambda: now[0])
    cache.add("/p/inbound/nope")
    assert "/p/inbound/nope" in cache
    now[0] += 31
    assert "/p/inbound/nope" not in cache
