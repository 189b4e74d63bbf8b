"""The FME client: exact requests, bounded batches, isolating a refused event, per-identity failures."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest

from shared.delivery import fme_client
from shared.delivery.fme_client import FmeClient, FmeEvent, FmeIdentity, chunks
from shared.http_retry import Deadline, Outcome


def event(key: str, **changes: Any) -> FmeEvent:
    fields: dict[str, Any] = {
        "eventTypeId": "checkout",
        "trafficTypeName": "user",
        "key": key,
        "value": None,
        "timestamp": 1764061200000,
        "environmentName": "Production",
        "properties": {},
    }
    fields.update(changes)
    return FmeEvent(**fields)


def run(handler: Any, call: Any, seconds: float = 30.0) -> tuple[Any, list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return handler(request)

    async def no_sleep(_seconds: float) -> None:
        return None

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as http:
            deadline = Deadline.after(seconds)
            deadline.sleep = no_sleep
            return await call(FmeClient(http, deadline, rng=random.Random(3)))

    return asyncio.run(go()), requests


def test_events_bulk_request_is_exactly_what_the_events_api_takes() -> None:
    outcomes, requests = run(
        lambda r: httpx.Response(202),
        lambda c: c.send_events(
            "https://events.split.io/api/",
            "sdk-key",
            [("1", event("u1", value=9.5, properties={"plan": "pro", "n": 2, "ok": True, "none": None}))],
        ),
    )
    [request] = requests
    assert request.method == "POST"
    assert str(request.url) == "https://events.split.io/api/events/bulk"
    assert request.headers["Authorization"] == "Bearer sdk-key"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "fme-segment-bridge"
    assert json.loads(request.content) == [
        {
            "eventTypeId": "checkout",
            "trafficTypeName": "user",
            "key": "u1",
            "value": 9.5,
            "timestamp": 1764061200000,
            "environmentName": "Production",
            "properties": {"plan": "pro", "n": 2, "ok": True, "none": None},
        }
    ]
    assert [(o.item_id, o.outcome) for o in outcomes] == [("1", Outcome.DELIVERED)]


@pytest.mark.parametrize(
    "endpoint", ["https://api.split.io/internal/api/v2", "https://api.split.io/internal/api/v2/"]
)
def test_save_identities_request_names_traffic_type_and_environment_in_the_path(endpoint: str) -> None:
    answer = {"objects": [{"key": "u1"}], "failed": [], "metadata": {}}
    outcomes, requests = run(
        lambda r: httpx.Response(200, json=answer),
        lambda c: c.save_identities(
            endpoint,
            "admin-key",
            "user",
            "Staging EU",
            [("a", FmeIdentity(key="u1", values={"plan": "pro"}))],
        ),
    )
    [request] = requests
    assert request.url.raw_path == b"/internal/api/v2/trafficTypes/user/environments/Staging%20EU/identities"
    assert request.headers["Authorization"] == "Bearer admin-key"
    assert json.loads(request.content) == [{"key": "u1", "values": {"plan": "pro"}}]
    assert outcomes[0].outcome is Outcome.DELIVERED


def test_identities_fme_lists_as_failed_get_their_own_outcome() -> None:
    answer = {
        "objects": [{"key": "u1"}],
        "failed": [
            {"object": {"key": "u2"}, "status": 400, "message": "bad attribute"},
            {"object": {"key": "u3"}, "status": 503, "message": "try later"},
            {"object": {"key": "u4"}, "message": "no status: refused, not retried forever"},
        ],
        "metadata": {},
    }
    outcomes, _ = run(
        lambda r: httpx.Response(200, json=answer),
        lambda c: c.save_identities(
            "http://fme",
            "k",
            "user",
            "Production",
            [(k, FmeIdentity(key=k, values={"a": "b"})) for k in ("u1", "u2", "u3", "u4")],
        ),
    )
    by_key = {o.payload.key: o for o in outcomes}
    assert by_key["u1"].outcome is Outcome.DELIVERED
    assert by_key["u2"].outcome is Outcome.PERMANENT
    assert "bad attribute" in by_key["u2"].reason
    assert by_key["u3"].outcome is Outcome.TRANSIENT
    assert (by_key["u4"].outcome, by_key["u4"].status) == (Outcome.PERMANENT, 400)


def test_save_identities_escapes_traffic_type_and_environment_in_the_path() -> None:
    _, requests = run(
        lambda r: httpx.Response(200, json={"objects": [], "failed": [], "metadata": {}}),
        lambda c: c.save_identities(
            "http://fme/internal/api/v2",
            "k",
            "a/b c",
            "EU/Prod?#1",
            [("a", FmeIdentity(key="u1", values={}))],
        ),
    )
    [request] = requests
    assert (
        request.url.raw_path
        == b"/internal/api/v2/trafficTypes/a%2Fb%20c/environments/EU%2FProd%3F%231/identities"
    )


@pytest.mark.parametrize(("kind", "count", "per_request"), [("events", 2001, 1000), ("identities", 201, 100)])
def test_requests_carry_at_most_1000_events_or_100_identities(
    kind: str, count: int, per_request: int
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if kind == "events":
            return httpx.Response(202)
        return httpx.Response(
            200, json={"objects": json.loads(request.content), "failed": [], "metadata": {}}
        )

    def call(c: FmeClient) -> Any:
        if kind == "events":
            return c.send_events("http://fme", "k", [(str(i), event(f"u{i}")) for i in range(count)])
        identities = [(str(i), FmeIdentity(key=f"u{i}", values={"a": "b"})) for i in range(count)]
        return c.save_identities("http://fme", "k", "user", "Production", identities)

    outcomes, requests = run(handler, call)
    assert sorted(len(json.loads(r.content)) for r in requests) == [1, per_request, per_request]
    assert {o.outcome for o in outcomes} == {Outcome.DELIVERED}


def test_requests_stay_within_the_count_and_byte_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fme_client, "MAX_EVENTS_PER_REQUEST", 7)
    monkeypatch.setattr(fme_client, "MAX_EVENT_BYTES_PER_REQUEST", 2_000)
    events = [(str(i), event(f"user-{i}", properties={"pad": "x" * 150})) for i in range(30)]

    outcomes, requests = run(
        lambda r: httpx.Response(202), lambda c: c.send_events("http://fme", "k", events)
    )

    assert all(len(r.content) <= 2_000 for r in requests)
    assert all(len(json.loads(r.content)) <= 7 for r in requests)
    sent = [e["key"] for r in requests for e in json.loads(r.content)]
    assert sorted(sent) == sorted(f"user-{i}" for i in range(30))  # each once
    assert len(outcomes) == 30


def test_chunks_always_move_forward_even_with_an_item_over_the_byte_bound() -> None:
    sizes = [b"x" * 10, b"y" * 500, b"z" * 10]
    assert [list(r) for r in chunks(sizes, max_items=10, max_bytes=100)] == [[0], [1], [2]]
    # The first item over the bound goes alone too: no empty request before it.
    assert [list(r) for r in chunks(sizes[1:], max_items=10, max_bytes=100)] == [[0], [1]]


@pytest.mark.parametrize("status", [400, 413])
def test_a_refused_bulk_request_is_halved_until_the_refused_event_is_alone(status: int) -> None:
    """400 (an event FME objects to) and 413 (too large as a whole) are both answered by halving."""
    accepted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys = [e["key"] for e in json.loads(request.content)]
        if "bad" in keys:
            return httpx.Response(status, json={"code": status, "message": "refused"})
        accepted.extend(keys)
        return httpx.Response(202)

    events = [(str(i), event("bad" if i == 5 else f"u{i}")) for i in range(8)]
    outcomes, requests = run(handler, lambda c: c.send_events("http://fme", "k", events))

    by_id = {o.item_id: o for o in outcomes}
    assert by_id["5"].outcome is Outcome.PERMANENT
    assert by_id["5"].status == status
    assert all(by_id[str(i)].outcome is Outcome.DELIVERED for i in range(8) if i != 5)
    assert sorted(accepted) == sorted(f"u{i}" for i in range(8) if i != 5)  # each good event once
    assert len(requests) == 7  # 1 + 2 + 2 + 2 halvings down to the bad event, not one per event


@pytest.mark.parametrize(("status", "outcome"), [(401, Outcome.PERMANENT), (403, Outcome.PERMANENT)])
def test_a_refused_key_is_not_halved_or_retried(status: int, outcome: Outcome) -> None:
    outcomes, requests = run(
        lambda r: httpx.Response(status),
        lambda c: c.send_events("http://fme", "k", [(str(i), event(f"u{i}")) for i in range(4)]),
    )
    assert len(requests) == 1
    assert {o.outcome for o in outcomes} == {outcome}


def test_server_errors_until_the_deadline_are_transient() -> None:
    outcomes, requests = run(
        lambda r: httpx.Response(503),
        lambda c: c.send_events("http://fme", "k", [("1", event("u1"))]),
        seconds=2,
    )
    assert len(requests) > 1
    assert outcomes[0].outcome is Outcome.TRANSIENT
    assert outcomes[0].status == 503


@pytest.mark.parametrize(
    ("answer", "warning"),
    [
        (httpx.Response(200, text="<html>ok</html>"), "is not a JSON object"),
        (httpx.Response(200, json=[{"key": "u1"}]), "is not a JSON object"),
        (httpx.Response(200, json={"failed": [{"status": 400, "message": "bad"}]}), "name no key"),
    ],
)
def test_an_answer_that_names_no_failed_identity_counts_them_saved_with_a_warning(
    answer: httpx.Response, warning: str, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes, _ = run(
        lambda r: answer,
        lambda c: c.save_identities(
            "http://fme", "k", "user", "Production", [("a", FmeIdentity(key="u1", values={"a": "b"}))]
        ),
    )
    assert [o.outcome for o in outcomes] == [Outcome.DELIVERED]
    assert any(warning in r.getMessage() for r in caplog.records if r.levelname == "WARNING"), caplog.text


@pytest.mark.parametrize(("kind", "bound"), [("events", 1_000_000), ("identities", 500_000)])
def test_requests_hold_at_most_1_mb_of_events_or_500_kb_of_identities(kind: str, bound: int) -> None:
    """Well under the count bounds, the byte bounds alone split the requests (docs/delivery.md)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if kind == "events":
            return httpx.Response(202)
        return httpx.Response(200, json={"objects": [], "failed": [], "metadata": {}})

    pad = "x" * 9_000

    def call(c: FmeClient) -> Any:
        if kind == "events":
            events = [(str(i), event(f"u{i}", properties={"pad": pad})) for i in range(150)]
            return c.send_events("http://fme", "k", events)
        identities = [(str(i), FmeIdentity(key=f"u{i}", values={"pad": pad})) for i in range(80)]
        return c.save_identities("http://fme", "k", "user", "Production", identities)

    outcomes, requests = run(handler, call)

    sizes = [len(r.content) for r in requests]
    assert len(requests) == 2
    assert all(size <= bound for size in sizes)
    assert max(sizes) > bound * 0.9  # filled up to the bound, not split below it
    assert {o.outcome for o in outcomes} == {Outcome.DELIVERED}


def test_up_to_4_requests_are_in_flight_at_a_time() -> None:
    in_flight, most = 0, 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.2)  # long enough that the first four overlap on a busy machine
        in_flight -= 1
        return httpx.Response(202)

    outcomes, requests = run(
        handler,
        lambda c: c.send_events("http://fme", "k", [(str(i), event(f"u{i}")) for i in range(10 * 1000)]),
    )

    assert len(requests) == 10
    assert most == 4
    assert len(outcomes) == 10 * 1000


def test_a_request_fills_up_to_the_byte_bound_and_never_past_it() -> None:
    two = [b"x" * 10, b"y" * 10]  # [x,y]: 23 bytes
    assert [list(r) for r in chunks(two, max_items=10, max_bytes=24)] == [[0, 1]]
    assert [list(r) for r in chunks(two, max_items=10, max_bytes=22)] == [[0], [1]]
