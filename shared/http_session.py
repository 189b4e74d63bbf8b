"""An event loop and HTTP clients that outlive an invocation, one set per thread.

A Lambda container runs one invocation at a time for as long as it lives. A client kept from one
invocation to the next keeps its connections, so a busy function does not open new TCP and TLS
connections to Segment for every batch: to ``api.segment.io``, hosted in another region than most
functions, that is two round trips before the first byte, on up to eight connections per invocation.

An ``httpx.AsyncClient`` belongs to the event loop it first ran on, so each thread (the handler's,
or one of the local stack's pollers) has a loop of its own, kept open between calls, and its own
clients. A client left unused for more than :data:`MAX_IDLE_SECONDS` of wall-clock time is closed
and replaced rather than reused: a frozen container's monotonic clock, which httpx's own keep-alive
expiry reads, may not have counted the freeze, and a connection dropped without a word meanwhile
would cost a whole read timeout. A call that fails leaves nothing behind for the next one: its
other tasks are cancelled and the loop and clients closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

# Below httpx's keep-alive expiry (5 s) and the idle timeouts of HTTP servers and NAT gateways.
MAX_IDLE_SECONDS = 4.0


@dataclass
class _Kept:
    http: httpx.AsyncClient
    users: int = 0  # blocks using it now
    idle_since: float = field(default_factory=time.time)  # wall clock, when its last block ended


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.runner: asyncio.Runner | None = None
        self.clients: dict[Hashable, _Kept] = {}


_state = _ThreadState()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on this thread's lasting event loop, as ``asyncio.run`` would, and keep the loop.

    Like ``asyncio.run``, the coroutine sees the caller's context variables as they are now. If it
    raises, whatever it left running is cancelled (and threads it started are waited for) before
    the exception goes on: nothing of a failed invocation runs on into the next.
    """
    if _state.runner is None:
        _state.runner = asyncio.Runner()
    try:
        return _state.runner.run(coroutine, context=contextvars.copy_context())
    except BaseException:
        close()
        raise


@contextlib.asynccontextmanager
async def client(key: Hashable, factory: Callable[[], httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    """``async with client(key, factory) as http``: this thread's lasting client for ``key``.

    Under :func:`run` the client is made by ``factory`` the first time and kept, open, for the next
    call (unless it then sat idle too long). Under any other event loop (``asyncio.run``, the command
    line) it is made for this block and closed at its end, as ``async with factory()`` would.
    """
    runner = _state.runner
    if runner is None or runner.get_loop() is not asyncio.get_running_loop():
        async with factory() as http:
            yield http
        return
    kept = _state.clients.get(key)
    stale = kept is not None and (kept.http.is_closed or time.time() - kept.idle_since > MAX_IDLE_SECONDS)
    if kept is not None and stale and kept.users == 0:  # never under a block still using it
        await kept.http.aclose()
        kept = None
    if kept is None:
        kept = _state.clients[key] = _Kept(factory())
    kept.users += 1
    try:
        yield kept.http
    finally:
        kept.users -= 1
        kept.idle_since = time.time()


def close() -> None:
    """Cancel what is left on this thread's loop, close its clients and the loop (and wait for the
    threads it started); a later :func:`run` starts afresh."""
    runner, clients = _state.runner, [kept.http for kept in _state.clients.values()]
    _state.runner, _state.clients = None, {}
    if runner is None:
        return

    async def cancel_and_close() -> None:
        current = asyncio.current_task()
        left = [task for task in asyncio.all_tasks() if task is not current]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        for http in clients:
            await http.aclose()

    try:
        runner.run(cancel_and_close())
    finally:
        runner.close()  # also shuts down the loop's default executor: asyncio.to_thread's threads
