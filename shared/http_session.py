"""An event loop and HTTP clients that outlive an invocation, one set per thread.

A Lambda container runs one invocation at a time for as long as it lives. A client kept from one
invocation to the next keeps its connections, so a busy function does not open new TCP and TLS
connections to Segment for every batch: to ``api.segment.io``, hosted in another region than most
functions, that is two round trips before the first byte, on up to eight connections per invocation.

An ``httpx.AsyncClient`` belongs to the event loop it first ran on, so each thread (the handler's,
or one of the local stack's pollers) has a loop of its own, kept open between calls, and its own
clients. A connection idle longer than httpx's keep-alive expiry (5 s) is closed before it would be
used again, so none comes back from a long freeze; one that the server closed while the function
was frozen is replaced, and a request that fails on it is retried like any transport error.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.runner: asyncio.Runner | None = None
        self.clients: dict[Hashable, httpx.AsyncClient] = {}


_state = _ThreadState()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on this thread's lasting event loop, as ``asyncio.run`` would, and keep the loop."""
    if _state.runner is None:
        _state.runner = asyncio.Runner()
    return _state.runner.run(coroutine)


@contextlib.asynccontextmanager
async def client(key: Hashable, factory: Callable[[], httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    """``async with client(key, factory) as http``: this thread's lasting client for ``key``.

    Under :func:`run` the client is made by ``factory`` the first time and kept, open, for the next
    call. Under any other event loop (``asyncio.run``, the command line) it is made for this block
    and closed at its end, as ``async with factory()`` would.
    """
    runner = _state.runner
    if runner is None or runner.get_loop() is not asyncio.get_running_loop():
        async with factory() as http:
            yield http
        return
    found = _state.clients.get(key)
    if found is None or found.is_closed:
        found = _state.clients[key] = factory()
    yield found


def close() -> None:
    """Close this thread's clients and loop (a later :func:`run` starts afresh)."""
    runner, clients = _state.runner, list(_state.clients.values())
    _state.runner, _state.clients = None, {}
    if runner is None:
        return

    async def close_clients() -> None:
        for http in clients:
            await http.aclose()

    try:
        runner.run(close_clients())
    finally:
        runner.close()
