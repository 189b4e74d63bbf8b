"""The loopback FME sink speaks the Events API as the Split SDK itself calls it."""

from __future__ import annotations

import httpx
import pytest
from splitio.api import APIException
from splitio.api.client import HttpClient
from splitio.api.events import EventsAPI
from splitio.client.util import SdkMetadata
from splitio.engine.telemetry import TelemetryStorageProducer
from splitio.models.events import Event
from splitio.storage.inmemmory import InMemoryTelemetryStorage

from fme_bridge.fme_sink import FmeSink


def sdk_events_api(sink: FmeSink, sdk_key: str) -> EventsAPI:
    """The Split Python SDK's own events client, pointed at the sink."""
    telemetry = TelemetryStorageProducer(InMemoryTelemetryStorage()).get_telemetry_runtime_producer()
    http = HttpClient(timeout=5000, events_url=sink.events_endpoint)
    return EventsAPI(http, sdk_key, SdkMetadata("python-10.5.1", "test-host", "127.0.0.1"), telemetry)


def test_the_split_sdks_events_flush_is_accepted() -> None:
    with FmeSink(sdk_keys=["sdk-key"]) as sink:
        api = sdk_events_api(sink, "sdk-key")
        api.flush_events(
            [
                Event("u1", "user", "checkout", 12.5, 1764061200000, {"plan": "pro"}),
                Event("u2", "user", "signup", None, 1764061200001, None),
            ]
        )
        assert [(r.path, r.status) for r in sink.requests] == [("/api/events/bulk", 202)]
        assert [e.event["key"] for e in sink.events] == ["u1", "u2"]
        assert sink.events[0].event["value"] == 12.5


def test_a_wrong_sdk_key_is_refused_like_fme_refuses_it() -> None:
    with FmeSink(sdk_keys=["sdk-key"]) as sink:
        with pytest.raises(APIException):
            sdk_events_api(sink, "other-key").flush_events([Event("u1", "user", "checkout", None, 1, None)])
        assert sink.events == []
        assert [r.status for r in sink.requests] == [401]


def test_faults_are_served_in_order_then_normal_answers() -> None:
    with FmeSink(sdk_keys=["k"]) as sink:
        sink.rate_limit_next(1, reset_seconds=3)
        sink.fail_next(1, 500)
        body = [{"eventTypeId": "e", "trafficTypeName": "user", "key": "u", "timestamp": 1}]
        headers = {"Authorization": "Bearer k"}
        with httpx.Client(base_url=sink.events_endpoint) as client:
            limited = client.post("/events/bulk", json=body, headers=headers)
            failed = client.post("/events/bulk", json=body, headers=headers)
            accepted = client.post("/events/bulk", json=body, headers=headers)
        assert limited.status_code == 429
        assert limited.headers["X-RateLimit-Reset-Seconds-Org"] == "3"
        assert failed.status_code == 500
        assert accepted.status_code == 202
        assert len(sink.events) == 1


def test_invalid_events_are_refused_as_a_whole() -> None:
    with FmeSink(sdk_keys=["k"]) as sink, httpx.Client(base_url=sink.events_endpoint) as client:
        good = {"eventTypeId": "ok", "trafficTypeName": "user", "key": "u", "timestamp": 1}
        bad = {**good, "eventTypeId": "has space"}
        answer = client.post("/events/bulk", json=[good, bad], headers={"Authorization": "Bearer k"})
        assert answer.status_code == 400
        assert "eventTypeId" in answer.json()["message"]
        assert sink.events == []


def test_save_identities_lists_bad_attribute_ids_as_failed() -> None:
    with FmeSink(admin_keys=["a"]) as sink, httpx.Client(base_url=sink.identities_endpoint) as client:
        answer = client.post(
            "/trafficTypes/user/environments/Production/identities",
            json=[{"key": "u1", "values": {"plan": "pro"}}, {"key": "u2", "values": {"first name": "x"}}],
            headers={"Authorization": "Bearer a"},
        )
        assert answer.status_code == 200
        assert [o["key"] for o in answer.json()["objects"]] == ["u1"]
        [failed] = answer.json()["failed"]
        assert failed["object"]["key"] == "u2"
        assert failed["status"] == 400
        assert [(u.traffic_type, u.environment, u.key) for u in sink.identity_updates] == [
            ("user", "Production", "u1")
        ]
