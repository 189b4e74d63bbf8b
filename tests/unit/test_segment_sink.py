"""The loopback Segment sink: what it accepts, refuses and records, and its injected faults."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import pytest

from fme_bridge.segment_sink import SegmentSink

KEY = "sink-key"


@pytest.fixture
def sink() -> Iterator[SegmentSink]:
    with SegmentSink(write_keys={KEY}) as server:
        yield server


def track(i: int = 0, **extra: object) -> dict[str, object]:
    return {"type": "track", "event": "get_treatment", "userId": f"u{i}", "messageId": f"m{i}", **extra}


def post_gzipped(sink: SegmentSink, body: object) -> httpx.Response:
    return httpx.post(
        f"{sink.url}/v1/batch",
        content=gzip.compress(json.dumps(body).encode()),
        auth=(KEY, ""),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


def post(sink: SegmentSink, path: str, body: object, auth: tuple[str, str] | None = (KEY, ""), **kw: object):
    return httpx.post(f"{sink.url}{path}", json=body, auth=auth, timeout=5, **kw)  # type: ignore[arg-type]


def test_batch_with_basic_auth_is_recorded(sink: SegmentSink) -> None:
    response = post(sink, "/v1/batch", {"batch": [track(1), track(2)]})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert [m["messageId"] for m in sink.messages] == ["m1", "m2"]
    assert sink.messages_for(KEY) == sink.messages
    [request] = sink.requests
    assert request.write_key == KEY
    assert request.status == 200


def test_single_call_routes_and_write_key_in_body(sink: SegmentSink) -> None:
    assert post(sink, "/v1/identify", {"userId": "u", "traits": {"a": 1}}).status_code == 200
    assert post(sink, "/v1/track", {**track(3), "writeKey": KEY}, auth=None).status_code == 200
    assert [m["type"] for m in sink.messages] == ["identify", "track"]


@pytest.mark.parametrize("auth", [None, ("wrong", ""), ("", KEY)])
def test_wrong_or_missing_write_key_is_401_and_nothing_is_kept(sink: SegmentSink, auth) -> None:
    assert post(sink, "/v1/batch", {"batch": [track()]}, auth=auth).status_code == 401
    assert sink.messages == []
    assert sink.requests[0].status == 401


@pytest.mark.parametrize("write_key", ["wrong", "", None], ids=["wrong", "empty", "missing"])
def test_a_write_key_in_the_body_must_be_one_of_the_sinks(sink: SegmentSink, write_key: str | None) -> None:
    body = {**track(3), **({"writeKey": write_key} if write_key is not None else {})}
    assert post(sink, "/v1/track", body, auth=None).status_code == 401
    assert sink.messages == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([track()], "body must be a JSON object"),
        ({"batch": {}}, "batch must be an array"),
        ({"batch": [{"type": "track", "event": "e", "messageId": "m"}]}, "neither userId nor anonymousId"),
        ({"batch": [{"type": "purchase", "userId": "u"}]}, "unknown type 'purchase'"),
        ({"batch": ["track"]}, "message 0 is not an object"),
    ],
    ids=["array", "batch-object", "no-identity", "unknown-type", "not-an-object"],
)
def test_what_segment_refuses_is_a_400_naming_the_problem(
    sink: SegmentSink, body: object, problem: str
) -> None:
    response = post(sink, "/v1/batch", body)
    assert response.status_code == 400
    assert problem in response.json()["message"]
    assert sink.messages == []


def test_a_gzipped_body_counts_its_size_uncompressed(sink: SegmentSink) -> None:
    """Segment's 500 KB is of the JSON: a body that compresses well is no smaller for it."""
    body = {"batch": [track(i, properties={"x": "y" * 20_000}) for i in range(26)]}
    assert len(gzip.compress(json.dumps(body).encode())) < 100_000
    response = post_gzipped(sink, body)
    assert response.status_code == 400
    assert "more than" in response.json()["message"]
    assert sink.messages == []


def test_gzip_bodies_are_accepted(sink: SegmentSink) -> None:
    response = post_gzipped(sink, {"batch": [track()]})
    assert response.status_code == 200
    assert sink.requests[0].gzipped
    assert len(sink.messages) == 1


def test_limits_are_enforced(sink: SegmentSink) -> None:
    too_many = {"batch": [track(i) for i in range(2501)]}
    assert post(sink, "/v1/batch", too_many).status_code == 400
    big_message = {"batch": [track(0, properties={"x": "y" * 33_000})]}
    response = post(sink, "/v1/batch", big_message)
    assert response.status_code == 400
    assert "more than 32768" in response.json()["message"]
    too_large = {"batch": [track(i, properties={"x": "y" * 20_000}) for i in range(26)]}
    assert post(sink, "/v1/batch", too_large).status_code == 400
    assert post(sink, "/v1/batch", {"batch": [{"type": "track", "userId": "u"}]}).status_code == 400
    assert sink.messages == []


def padded(size: int, i: int = 0) -> dict[str, object]:
    """A track message of exactly ``size`` bytes of compact JSON."""
    message = track(i, properties={"x": ""})
    message["properties"] = {"x": "y" * (size - len(json.dumps(message, separators=(",", ":"))))}
    return message


def test_a_request_at_each_of_segments_limits_is_accepted(sink: SegmentSink) -> None:
    """The limits are maxima: a batch of 2,500, a message of 32 KB and a request of 500 KB are fine."""
    assert post(sink, "/v1/batch", {"batch": [track(i) for i in range(2500)]}).status_code == 200
    assert post(sink, "/v1/batch", {"batch": [padded(32 * 1024)]}).status_code == 200
    messages = [padded(30_000, i) for i in range(16)]
    head = len(json.dumps({"batch": messages}, separators=(",", ":")))
    messages.append(padded(500_000 - head - 1, 16))  # and the comma before it
    body = json.dumps({"batch": messages}, separators=(",", ":")).encode()
    assert len(body) == 500_000
    response = httpx.post(
        f"{sink.url}/v1/batch", content=body, auth=(KEY, ""), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert len(sink.messages) == 2500 + 1 + 17


@pytest.mark.parametrize(("characters", "status"), [(12_000, 200), (17_000, 400)])
def test_a_message_size_is_counted_in_utf_8_bytes_however_the_body_escapes_it(
    sink: SegmentSink, characters: int, status: int
) -> None:
    """12,000 "é" are 24,000 bytes, under 32 KB, though an ASCII-escaped body spells them in 72,000."""
    body = json.dumps({"batch": [track(properties={"title": "é" * characters})]}).encode()  # \u00e9 each
    response = httpx.post(
        f"{sink.url}/v1/batch", content=body, auth=(KEY, ""), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status


def test_a_message_with_only_an_anonymous_id_is_accepted(sink: SegmentSink) -> None:
    message = {"type": "track", "event": "get_treatment", "anonymousId": "a1", "messageId": "m1"}
    assert post(sink, "/v1/batch", {"batch": [message]}).status_code == 200
    assert sink.messages == [message]


def test_unique_messages_keep_the_first_of_each_message_id(sink: SegmentSink) -> None:
    """As Segment's deduplication does: a later message with the same messageId is dropped."""
    post(sink, "/v1/batch", {"batch": [track(1, properties={"n": 1})]})
    post(sink, "/v1/batch", {"batch": [track(1, properties={"n": 2})]})
    assert [m["properties"] for m in sink.unique_messages().values()] == [{"n": 1}]


def test_injected_faults_then_recovery(sink: SegmentSink) -> None:
    sink.fail_next(1, 503)
    sink.fail_next(1, 429, retry_after=2)
    sink.fail_next(1, kind="drop")
    sink.fail_next(1, kind="timeout", hang_seconds=0.5)
    first = post(sink, "/v1/batch", {"batch": [track()]})
    assert first.status_code == 503
    second = post(sink, "/v1/batch", {"batch": [track()]})
    assert (second.status_code, second.headers["Retry-After"]) == (429, "2")
    with pytest.raises(httpx.TransportError):
        post(sink, "/v1/batch", {"batch": [track()]})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sink.url}/v1/batch", json={"batch": [track()]}, auth=(KEY, ""), timeout=0.1)
    assert post(sink, "/v1/batch", {"batch": [track()]}).status_code == 200
    assert len(sink.messages) == 1
    assert [r.status for r in sink.requests] == [503, 429, None, None, 200]


def test_accepted_then_failed_keeps_the_messages(sink: SegmentSink) -> None:
    sink.fail_next(1, 500, accept=True)
    assert post(sink, "/v1/batch", {"batch": [track(1)]}).status_code == 500
    assert post(sink, "/v1/batch", {"batch": [track(1)]}).status_code == 200
    assert len(sink.messages) == 2
    assert list(sink.unique_messages()) == ["m1"]


def test_fraction_of_failures_is_repeatable_and_clear_resets(sink: SegmentSink) -> None:
    sink.fail_fraction(0.5, 500, seed=3)
    statuses = [post(sink, "/v1/batch", {"batch": [track(i)]}).status_code for i in range(20)]
    assert 0 < statuses.count(500) < 20
    sink.fail_fraction(1.0, 503)
    assert {post(sink, "/v1/batch", {"batch": [track(i)]}).status_code for i in range(5)} == {503}
    sink.clear()
    assert sink.requests == []
    assert sink.messages == []
    assert post(sink, "/v1/batch", {"batch": [track()]}).status_code == 200
    assert sink.wait_for_messages(1, timeout=1)
    assert not sink.wait_for_messages(2, timeout=0.05)


def test_unknown_route_is_404(sink: SegmentSink) -> None:
    assert post(sink, "/v2/batch", {"batch": [track()]}).status_code == 404


def test_the_local_stacks_sink_takes_any_write_key_but_an_empty_one() -> None:
    """docs/local.md: any non-empty write key is accepted."""
    from fme_bridge.commands.local import AnyWriteKey

    server = SegmentSink()
    server.write_keys = AnyWriteKey()  # as the local stack sets it
    with server:
        assert post(server, "/v1/batch", {"batch": [track()]}, auth=("any-key", "")).status_code == 200
        assert post(server, "/v1/batch", {"batch": [track()]}, auth=("", "")).status_code == 401
        assert [r.write_key for r in server.requests] == ["any-key", None]
