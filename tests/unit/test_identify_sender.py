"""Identify calls (computed traits, audiences) through the Segment client, against the loopback sink."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fme_bridge.segment_sink import SegmentSink
from shared.config import ConfigNotFound, ConfigUnavailable, OutboundConfig
from shared.http_retry import Outcome
from shared.outbound.destinations import Destination
from shared.profiles.identify_sender import IdentifySender

WRITE_KEY = "wk-identifies"


@pytest.fixture
def sink() -> Iterator[SegmentSink]:
    with SegmentSink(write_keys={WRITE_KEY}) as server:
        yield server


@pytest.fixture
def destination(sink: SegmentSink, monkeypatch: pytest.MonkeyPatch) -> Destination:
    monkeypatch.setattr("shared.outbound.destinations.WriteKeys.get", lambda self, destination: WRITE_KEY)
    config = OutboundConfig.model_validate(
        {"environments": ["Production"], "identities": {"user": "userId"}, "endpoint": sink.endpoint}
    )
    return Destination("prod", config)


def identifies(count: int) -> list[dict[str, Any]]:
    return [
        {"type": "identify", "userId": f"user-{i}", "traits": {"new_checkout": "on"}, "messageId": f"id-{i}"}
        for i in range(count)
    ]


def test_more_than_one_request_of_identifies_all_arrive(sink: SegmentSink, destination: Destination) -> None:
    outcome = IdentifySender(lambda: 30_000)({"prod": (destination, identifies(3_000))})
    assert outcome == {"prod": Outcome.DELIVERED}
    assert len(sink.requests) == 2  # 2,500 messages at most per request
    assert len(sink.unique_messages()) == 3_000
    assert not any(r.gzipped for r in sink.requests)


def test_identifies_are_compressed_when_the_config_says_gzip(
    sink: SegmentSink, destination: Destination
) -> None:
    config = destination.config.model_copy(update={"gzip": True})
    outcome = IdentifySender(lambda: 30_000)({"prod": (Destination("prod", config), identifies(10))})
    assert outcome == {"prod": Outcome.DELIVERED}
    [request] = sink.requests
    assert request.gzipped
    assert len(sink.unique_messages()) == 10


def test_a_refused_request_does_not_keep_the_others_from_being_sent(
    sink: SegmentSink, destination: Destination
) -> None:
    sink.fail_next(1, status=400)
    outcome = IdentifySender(lambda: 30_000)({"prod": (destination, identifies(3_000))})
    assert outcome == {"prod": Outcome.PERMANENT}
    # Both requests were made (concurrently: either may be the one refused); the other's arrived.
    assert len(sink.requests) == 2
    assert len(sink.messages) in (500, 2_500)


def test_a_missing_write_key_is_retried_as_a_track_calls_is(
    sink: SegmentSink, destination: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator may be adding it: the changes wait (SQS or stream retries), they are not dropped."""

    def missing(self: Any, destination: Destination) -> str:
        raise ConfigNotFound(f"/p/outbound/{destination.name}")

    monkeypatch.setattr("shared.outbound.destinations.WriteKeys.get", missing)
    assert IdentifySender(lambda: 30_000)({"prod": (destination, identifies(3))}) == {
        "prod": Outcome.TRANSIENT
    }
    assert sink.requests == []


def test_a_config_store_outage_is_retried_even_where_a_missing_key_is_not(
    sink: SegmentSink, destination: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSM or Secrets Manager failing says nothing about the config: the changes wait for a retry."""

    def unavailable(self: Any, destination: Destination) -> str:
        raise ConfigUnavailable("ThrottlingException")

    monkeypatch.setattr("shared.outbound.destinations.WriteKeys.get", unavailable)
    sender = IdentifySender(lambda: 30_000, missing_write_key=Outcome.PERMANENT)
    assert sender({"prod": (destination, identifies(3))}) == {"prod": Outcome.TRANSIENT}
    assert sink.requests == []


def test_a_refused_request_and_a_failing_one_make_the_config_retried(
    sink: SegmentSink, destination: Destination
) -> None:
    """The worst outcome is the transient one: a retry can still deliver the failing request's messages."""
    sink.fail_next(1, status=400)
    sink.fail_fraction(1.0, status=503)
    outcome = IdentifySender(lambda: 2_500)({"prod": (destination, identifies(3_000))})
    assert outcome == {"prod": Outcome.TRANSIENT}
    assert {r.status for r in sink.requests} == {400, 503}


def test_each_config_gets_its_own_outcome(
    sink: SegmentSink, destination: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One source refusing its write key: only that config's identifies are reported refused."""
    monkeypatch.setattr(
        "shared.outbound.destinations.WriteKeys.get",
        lambda self, destination: WRITE_KEY if destination.name == "prod" else "wk-revoked",
    )
    revoked = Destination("marketing", destination.config)
    outcome = IdentifySender(lambda: 30_000)(
        {"marketing": (revoked, identifies(2)), "prod": (destination, identifies(3))}
    )
    assert outcome == {"marketing": Outcome.PERMANENT, "prod": Outcome.DELIVERED}
    assert len(sink.unique_messages()) == 3


def test_nothing_is_sent_within_the_margin_kept_for_storing_the_results(
    sink: SegmentSink, destination: Destination
) -> None:
    """With less than the margin left, the identifies wait for the retry rather than risk a timeout."""
    outcome = IdentifySender(lambda: 1_400, margin_ms=1_500)({"prod": (destination, identifies(3))})
    assert outcome == {"prod": Outcome.TRANSIENT}
    assert sink.requests == []
