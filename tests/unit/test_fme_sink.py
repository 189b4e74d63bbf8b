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


@pytest.mark.parametrize("name", ["first name", "plan\n"])
def test_save_identities_lists_bad_attribute_ids_as_failed(name: str) -> None:
    with FmeSink(admin_keys=["a"]) as sink, httpx.Client(base_url=sink.identities_endpoint) as client:
        answer = client.post(
            "/trafficTypes/user/environments/Production/identities",
            json=[{"key": "u1", "values": {"plan": "pro"}}, {"key": "u2", "values": {name: "x"}}],
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


GOOD_EVENT = {"eventTypeId": "ok", "trafficTypeName": "user", "key": "u", "timestamp": 1}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"key": "k" * 251}, "key is longer than 250 characters"),
        ({"eventTypeId": "e" * 81}, "eventTypeId"),
        ({"eventTypeId": "signup\n"}, "eventTypeId"),
        ({"trafficTypeName": ""}, "trafficTypeName is required"),
        ({"timestamp": True}, "timestamp must be epoch milliseconds"),
        ({"value": True}, "value must be a number or null"),
        ({"properties": ["plan", "pro"]}, "properties must be an object"),
    ],
    ids=[
        "long-key",
        "long-event-type",
        "event-type-ending-in-a-newline",
        "no-traffic-type",
        "boolean-timestamp",
        "boolean-value",
        "list-properties",
    ],
)
def test_what_fme_refuses_in_an_event_is_a_400_naming_it(change: dict[str, object], problem: str) -> None:
    with FmeSink(sdk_keys=["k"]) as sink, httpx.Client(base_url=sink.events_endpoint) as client:
        answer = client.post(
            "/events/bulk", json=[{**GOOD_EVENT, **change}], headers={"Authorization": "Bearer k"}
        )
        assert answer.status_code == 400
        assert problem in answer.json()["message"]
        assert sink.events == []


def test_an_event_at_fmes_limits_is_accepted() -> None:
    event = {**GOOD_EVENT, "key": "k" * 250, "eventTypeId": "e" * 80, "value": 0, "properties": {}}
    with FmeSink(sdk_keys=["k"]) as sink, httpx.Client(base_url=sink.events_endpoint) as client:
        answer = client.post("/events/bulk", json=[event], headers={"Authorization": "Bearer k"})
        assert answer.status_code == 202
        assert [e.event for e in sink.events] == [event]


@pytest.mark.parametrize("authorization", [None, "Basic YW55Og=="], ids=["missing", "not-bearer"])
def test_a_sink_that_takes_any_key_still_needs_one(authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    with (
        FmeSink(sdk_keys=None) as sink,
        httpx.Client(base_url=sink.events_endpoint) as client,
    ):  # the local stack's
        assert client.post("/events/bulk", json=[GOOD_EVENT], headers=headers).status_code == 401
        assert (
            client.post(
                "/events/bulk", json=[GOOD_EVENT], headers={"Authorization": "Bearer any"}
            ).status_code
            == 202
        )
        assert [e.sdk_key for e in sink.events] == ["any"]


def test_save_identities_lists_refused_keys_and_non_string_values_as_failed() -> None:
    with FmeSink(admin_keys=["a"]) as sink, httpx.Client(base_url=sink.identities_endpoint) as client:
        sink.refuse_identity("u2", status=409, message="locked")
        answer = client.post(
            "/trafficTypes/user/environments/Production/identities",
            json=[
                {"key": "u1", "values": {"plan": "pro"}},
                {"key": "u2", "values": {"plan": "pro"}},
                {"key": "u3", "values": {"seats": 5}},
            ],
            headers={"Authorization": "Bearer a"},
        )
        assert answer.status_code == 200
        assert answer.json()["objects"] == [
            {"trafficTypeId": "user", "environmentId": "Production", "key": "u1", "values": {"plan": "pro"}}
        ]
        assert [(f["object"]["key"], f["status"]) for f in answer.json()["failed"]] == [
            ("u2", 409),
            ("u3", 400),
        ]
        assert [u.key for u in sink.identity_updates] == ["u1"]


def test_a_fault_for_one_path_leaves_the_others_answered() -> None:
    with FmeSink(sdk_keys=["k"], admin_keys=["a"]) as sink:
        sink.fail_next(1, 503, path_contains="/identities")
        with httpx.Client() as client:
            events = client.post(
                f"{sink.events_endpoint}/events/bulk",
                json=[GOOD_EVENT],
                headers={"Authorization": "Bearer k"},
            )
            identities = client.post(
                f"{sink.identities_endpoint}/trafficTypes/user/environments/Production/identities",
                json=[{"key": "u1", "values": {}}],
                headers={"Authorization": "Bearer a"},
            )
        assert (events.status_code, identities.status_code) == (202, 503)


def test_the_state_page_shows_only_the_start_of_each_sdk_key() -> None:
    with FmeSink(sdk_keys=["sdk-secret-key"]) as sink, httpx.Client(base_url=sink.url) as client:
        client.post("/api/events/bulk", json=[GOOD_EVENT], headers={"Authorization": "Bearer sdk-secret-key"})
        state = client.get("/_sink/state")
        assert [e["sdkKey"] for e in state.json()["events"]] == ["sdk-…"]
        assert "sdk-secret-key" not in state.text


@pytest.mark.parametrize(
    "path",
    [
        "/wrong/events/bulk",  # an eventsEndpoint without FME's /api
        "/events/bulk",
        "/trafficTypes/user/environments/Production/identities",  # no /internal/api/v2
        "/api/v2/trafficTypes/user/environments/Production/identities",
    ],
)
def test_a_path_fme_does_not_serve_is_a_404(path: str) -> None:
    body = [{"eventTypeId": "e", "trafficTypeName": "user", "key": "u", "timestamp": 1}]
    with FmeSink(sdk_keys=["k"], admin_keys=["k"]) as sink, httpx.Client(base_url=sink.url) as client:
        answer = client.post(path, json=body, headers={"Authorization": "Bearer k"})
        assert answer.status_code == 404
        assert sink.events == []
        prefixed = client.post(f"/webshop{path}", json=body, headers={"Authorization": "Bearer k"})
        assert prefixed.status_code == 404
