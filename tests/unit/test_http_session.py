"""The lasting event loop and clients: kept between calls on a thread, never shared across loops."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from shared import http_session


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    http_session.close()
    yield
    http_session.close()


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200)))


async def _loop_and_client(key: str = "segment") -> tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]:
    async with http_session.client(key, _client) as http:
        assert (await http.get("https://api.segment.io/v1/batch")).status_code == 200
        return asyncio.get_running_loop(), http


def test_the_loop_and_the_client_last_from_one_call_to_the_next() -> None:
    loop, http = http_session.run(_loop_and_client())
    again_loop, again_http = http_session.run(_loop_and_client())

    assert again_loop is loop
    assert not loop.is_closed()
    assert again_http is http
    assert not http.is_closed


def test_each_key_has_its_client() -> None:
    _, a = http_session.run(_loop_and_client("a"))
    _, b = http_session.run(_loop_and_client("b"))

    assert a is not b


def test_under_another_loop_the_client_is_made_for_the_block_and_closed() -> None:
    _, lasting = http_session.run(_loop_and_client())
    _, other = asyncio.run(_loop_and_client())

    assert other is not lasting
    assert other.is_closed
    assert not lasting.is_closed


def test_each_thread_has_its_own_loop_and_client() -> None:
    here = http_session.run(_loop_and_client())
    there: list[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = []

    def in_thread() -> None:
        there.append(http_session.run(_loop_and_client()))
        http_session.close()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()

    assert there[0][0] is not here[0]
    assert there[0][1] is not here[1]


def test_close_closes_the_clients_and_the_loop_and_a_later_run_starts_afresh() -> None:
    loop, http = http_session.run(_loop_and_client())

    http_session.close()

    assert http.is_closed
    assert loop.is_closed()
    new_loop, new_http = http_session.run(_loop_and_client())
    assert new_loop is not loop
    assert new_http is not http


def test_a_client_idle_for_longer_than_the_limit_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen container's monotonic clock may not count the freeze: wall-clock idleness decides."""
    _, http = http_session.run(_loop_and_client())
    later = time.time() + http_session.MAX_IDLE_SECONDS + 1
    monkeypatch.setattr(http_session.time, "time", lambda: later)

    _, fresh = http_session.run(_loop_and_client())

    assert fresh is not http
    assert http.is_closed


def test_a_client_in_use_is_not_replaced_under_its_user(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [time.time()]
    monkeypatch.setattr(http_session.time, "time", lambda: clock[0])

    async def overlapping() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        async with http_session.client("segment", _client) as first:
            clock[0] += http_session.MAX_IDLE_SECONDS + 1
            async with http_session.client("segment", _client) as second:
                return first, second

    first, second = http_session.run(overlapping())
    assert second is first
    assert not first.is_closed


def test_a_failed_call_leaves_nothing_running_into_the_next() -> None:
    ran: list[str] = []

    async def late() -> None:
        await asyncio.sleep(0.05)
        ran.append("late")

    async def failing() -> None:
        asyncio.get_running_loop().create_task(late())
        raise RuntimeError("a bug")

    _, http = http_session.run(_loop_and_client())
    with pytest.raises(RuntimeError, match="a bug"):
        http_session.run(failing())
    http_session.run(asyncio.sleep(0.1))

    assert ran == []
    assert http.is_closed


def test_each_call_sees_the_callers_context_variables() -> None:
    request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

    async def seen() -> str | None:
        return request_id.get()

    request_id.set("first")
    assert http_session.run(seen()) == "first"
    request_id.set("second")
    assert http_session.run(seen()) == "second"


def test_a_client_idle_for_httpx_keep_alive_expiry_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx keeps idle connections 5 s: the limit is below it, so a kept client never outlives them."""
    _, http = http_session.run(_loop_and_client())
    later = time.time() + 5.0
    monkeypatch.setattr(http_session.time, "time", lambda: later)

    _, fresh = http_session.run(_loop_and_client())

    assert fresh is not http


def test_idleness_counts_from_the_end_of_the_last_use(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [time.time()]
    monkeypatch.setattr(http_session.time, "time", lambda: clock[0])
    step = http_session.MAX_IDLE_SECONDS * 0.75

    _, http = http_session.run(_loop_and_client())
    clock[0] += step
    _, again = http_session.run(_loop_and_client())
    clock[0] += step  # longer than the limit since it was made, not since it was last used
    _, third = http_session.run(_loop_and_client())

    assert again is http
    assert third is http


def test_a_client_closed_by_its_user_is_replaced() -> None:
    async def closing() -> httpx.AsyncClient:
        async with http_session.client("segment", _client) as http:
            await http.aclose()
            return http

    closed = http_session.run(closing())
    _, fresh = http_session.run(_loop_and_client())

    assert fresh is not closed
    assert not fresh.is_closed
