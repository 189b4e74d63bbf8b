"""Packing messages under Segment's limits, and the concurrent, retrying batch client."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json

import httpx
import pytest

from shared.config import OutboundConfig, parse_config
from shared.http_retry import Deadline, Outcome
from shared.outbound.segment_client import BatchPacker, SegmentBatch, SegmentClient, basic_auth


def pack(messages: list[bytes], **limits: int) -> list[SegmentBatch]:
    packer = BatchPacker(**limits)
    batches = [b for i, m in enumerate(messages) if (b := packer.add(m, i, 0)) is not None]
    last = packer.flush()
    return [*batches, *([last] if last else [])]


def test_at_most_2500_messages_per_batch() -> None:
    batches = pack([b'{"m":1}'] * 6000)
    assert [len(b) for b in batches] == [2500, 2500, 1000]
    assert all(len(b.body("2026-01-01T00:00:00.000Z")) < 500_000 for b in batches)


def test_batches_fill_up_to_the_byte_limit_and_never_over() -> None:
    message = b'{"p":"' + b"x" * 990 + b'"}'  # 1,000 bytes
    batches = pack([message] * 1200)
    bodies = [b.body("2026-01-01T00:00:00.000Z") for b in batches]
    assert all(len(body) <= 500_000 for body in bodies)
    assert len(bodies[0]) > 500_000 - 1001  # full: one more would not fit
    assert sum(len(b) for b in batches) == 1200
    parsed = json.loads(bodies[0])
    assert parsed["sentAt"] == "2026-01-01T00:00:00.000Z"
    assert len(parsed["batch"]) == len(batches[0])


@pytest.mark.parametrize("first", [250_000, 249_990, 499_000])
def test_the_request_body_with_its_batch_and_sent_at_stays_within_the_byte_limit(first: int) -> None:
    # Messages whose bytes and commas alone come to just under or exactly 500,000: what the body adds
    # around them ({"batch":[ ... ],"sentAt":"..."}) must be counted too.
    second = 500_000 - first - 1
    messages = [b'"' + b"x" * (size - 2) + b'"' for size in (first, second, 10)]
    batches = pack(messages)
    bodies = [b.body("2026-01-01T00:00:00.000Z") for b in batches]
    assert all(len(body) <= 500_000 for body in bodies)
    assert sum(len(b) for b in batches) == 3
    assert [len(json.loads(body)["batch"]) for body in bodies] == [len(b) for b in batches]


@pytest.mark.parametrize(("second", "requests"), [(249_951, 1), (249_952, 2)])
def test_a_body_of_exactly_500_000_bytes_is_one_request_and_one_byte_more_is_two(
    second: int, requests: int
) -> None:
    """{"batch":[ + 250,000 + , + second + ],"sentAt":"<24>"} is 500,000 bytes for the first size."""
    messages = [b'"' + b"x" * (size - 2) + b'"' for size in (250_000, second)]
    bodies = [b.body("2026-01-01T00:00:00.000Z") for b in pack(messages)]
    assert len(bodies) == requests
    assert all(len(body) <= 500_000 for body in bodies)
    if requests == 1:
        assert len(bodies[0]) == 500_000


@pytest.mark.parametrize(("third", "requests"), [(249_951, 2), (249_952, 3)])
def test_after_a_flush_the_next_batch_counts_its_body_envelope_again(third: int, requests: int) -> None:
    """A first batch closed, the next again fills to exactly 500,000 bytes of body and never one more."""
    messages = [b'"' + b"x" * (size - 2) + b'"' for size in (400_000, 250_000, third)]
    bodies = [b.body("2026-01-01T00:00:00.000Z") for b in pack(messages)]
    assert len(bodies) == requests
    assert all(len(body) <= 500_000 for body in bodies)
    if requests == 2:
        assert len(bodies[1]) == 500_000


def test_batch_remembers_where_each_message_came_from() -> None:
    packer = BatchPacker(max_messages=2)
    assert packer.add(b"{}", 3, 0) is None
    assert packer.add(b"{}", 3, 1) is None
    closed = packer.add(b"{}", 7, 0)
    assert closed is not None
    assert (list(closed.records), list(closed.items)) == ([3, 3], [0, 1])
    rest = packer.flush()
    assert rest is not None
    assert list(rest.records) == [7]
    assert packer.flush() is None


def test_basic_auth_is_the_write_key_with_an_empty_password() -> None:
    assert base64.b64decode(basic_auth("abc")[6:]) == b"abc:"


def test_requests_run_concurrently_with_auth_and_url() -> None:
    in_flight = 0
    peak = 0
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        seen.append(request)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return httpx.Response(200, json={"success": True})

    async def go() -> list[Outcome]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = SegmentClient(http, Deadline.after(10), concurrency=4)
            batches = pack([b'{"m":1}'] * 10, max_messages=1)
            results = await asyncio.gather(
                *(client.send("https://api.segment.io/v1/", "wk", b) for b in batches)
            )
            return [r.outcome for r in results]

    outcomes = asyncio.run(go())
    assert outcomes == [Outcome.DELIVERED] * 10
    assert peak == 4
    assert {str(r.url) for r in seen} == {"https://api.segment.io/v1/batch"}
    assert {r.headers["authorization"] for r in seen} == {basic_auth("wk")}


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (None, "https://api.segment.io/v1/batch"),  # the US host, by default
        ("https://events.eu1.segmentapis.com/v1", "https://events.eu1.segmentapis.com/v1/batch"),
        ("https://events.eu1.segmentapis.com/v1/", "https://events.eu1.segmentapis.com/v1/batch"),
        ("http://127.0.0.1:3001/v1", "http://127.0.0.1:3001/v1/batch"),
    ],
)
def test_an_outbound_configs_endpoint_is_where_its_batches_go(endpoint: str | None, url: str) -> None:
    document: dict[str, object] = {"environments": ["*"], "identities": {"user": "userId"}}
    if endpoint is not None:
        document["endpoint"] = endpoint
    config = parse_config(OutboundConfig, document, "eu")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"success": True})

    async def go() -> Outcome:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            [batch] = pack([b'{"m":1}'])
            return (
                await SegmentClient(http, Deadline.after(10)).send(config.endpoint_base, "wk", batch)
            ).outcome

    assert asyncio.run(go()) == Outcome.DELIVERED
    assert [(r.method, str(r.url)) for r in seen] == [("POST", url)]


def send_recorded(gzip_body: bool, status: list[int]) -> list[httpx.Request]:
    """Send one batch of three messages, answering ``status`` in turn; the requests made."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status[len(seen) - 1])

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            deadline = Deadline.after(10)

            async def no_wait(seconds: float) -> None:
                await asyncio.sleep(0.01)

            deadline.sleep = no_wait
            [batch] = pack([b'{"m":1}', b'{"m":2}', b'{"m":"\xc3\xa9"}'])
            await SegmentClient(http, deadline).send("http://sink/v1", "wk", batch, gzip=gzip_body)

    asyncio.run(go())
    return seen


def test_each_attempt_carries_a_fresh_sent_at() -> None:
    seen = send_recorded(False, [503, 200])
    bodies = [json.loads(r.content) for r in seen]
    assert len(bodies) == 2
    assert bodies[0]["batch"] == bodies[1]["batch"] == [{"m": 1}, {"m": 2}, {"m": "é"}]
    assert bodies[0]["sentAt"] != bodies[1]["sentAt"]


def test_gzip_compresses_every_attempt_and_says_so() -> None:
    seen = send_recorded(True, [503, 200])
    assert len(seen) == 2
    assert all(r.headers["content-encoding"] == "gzip" for r in seen)
    bodies = [json.loads(gzip.decompress(r.content)) for r in seen]
    assert [b["batch"] for b in bodies] == [[{"m": 1}, {"m": 2}, {"m": "é"}]] * 2
    assert bodies[0]["sentAt"] != bodies[1]["sentAt"]  # compressed anew, with a fresh sentAt
    assert all(int(r.headers["content-length"]) == len(r.content) for r in seen)


def test_without_gzip_the_body_is_plain_json() -> None:
    [request] = send_recorded(False, [200])
    assert "content-encoding" not in request.headers
    assert json.loads(request.content)["batch"] == [{"m": 1}, {"m": 2}, {"m": "é"}]


def test_an_unexpected_failure_while_sending_retries_the_messages_instead_of_losing_them() -> None:
    """Anything but a transport error (a bug, a response httpx cannot read) is no delivery either."""
    from shared.config import OutboundConfig
    from shared.outbound.delivery import QueuedMessage, deliver
    from shared.outbound.destinations import Destination, Router

    config = OutboundConfig.model_validate({"environments": ["*"], "identities": {"user": "userId"}})
    bodies = [
        json.dumps({"key": f"k{n}", "split": "s", "treatment": "on", "time": 1, "environmentName": "P"})
        for n in range(2)
    ]

    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("not a transport error")

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(broken)) as http:
            client = SegmentClient(http, Deadline.after(10))
            messages = [QueuedMessage(f"m{n}", body) for n, body in enumerate(bodies)]
            return await deliver(messages, Router([Destination("d", config)]), lambda d: "KEY", client)

    report = asyncio.run(go())
    assert report.retry == {0: "d: RuntimeError", 1: "d: RuntimeError"}
    assert (report.failed_transient, report.delivered, report.dead_letters) == (2, 0, [])


def test_an_unexpected_write_key_failure_retries_the_messages_instead_of_crashing() -> None:
    from shared.config import OutboundConfig
    from shared.outbound.delivery import QueuedMessage, deliver
    from shared.outbound.destinations import Destination, Router

    config = OutboundConfig.model_validate({"environments": ["*"], "identities": {"user": "userId"}})
    body = json.dumps({"key": "k", "split": "s", "treatment": "on", "time": 1, "environmentName": "P"})

    def broken_lookup(destination: Destination) -> str:
        raise RuntimeError("credentials expired")

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as http:
            client = SegmentClient(http, Deadline.after(10))
            return await deliver(
                [QueuedMessage("m1", body)], Router([Destination("d", config)]), broken_lookup, client
            )

    report = asyncio.run(go())
    assert report.retry == {0: "d: write key unavailable (RuntimeError)"}
    assert report.dead_letters == []
