"""The local stack's HTTP servers: a client that resets its connection is routine, not a traceback."""

from __future__ import annotations

import socket
import struct
import threading

import httpx
import pytest

from fme_bridge.fme_sink import FmeSink
from fme_bridge.loopback_server import LoopbackServer
from fme_bridge.segment_sink import SegmentSink


def _reset_mid_request(host: str, port: int) -> None:
    """Open a connection, send half a request line, then close with a reset (SO_LINGER 0), and wait
    until the server's thread for that connection has ended."""
    before = set(threading.enumerate())
    sock = socket.create_connection((host, port))
    sock.sendall(b"POST /v1/ba")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_segment_sink_quiet_on_connection_reset(capfd: pytest.CaptureFixture[str]) -> None:
    with SegmentSink(write_keys={"wk"}) as sink:
        host, port = httpx.URL(sink.endpoint).host, httpx.URL(sink.endpoint).port
        assert port is not None
        _reset_mid_request(host, port)
        # The server goes on answering.
        response = httpx.post(f"{sink.endpoint}/batch", json={"batch": []}, auth=("wk", ""))
        assert response.status_code == 200
    assert capfd.readouterr().err == ""


def test_fme_sink_quiet_on_connection_reset(capfd: pytest.CaptureFixture[str]) -> None:
    with FmeSink() as sink:
        url = httpx.URL(sink.url)
        assert url.port is not None
        _reset_mid_request(url.host, url.port)
    assert capfd.readouterr().err == ""


def test_other_errors_of_a_request_are_still_printed(capfd: pytest.CaptureFixture[str]) -> None:
    server = LoopbackServer(("127.0.0.1", 0), object)  # type: ignore[arg-type]
    try:
        try:
            raise ValueError("a handler's own bug")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 1))
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            server.handle_error(None, ("127.0.0.1", 2))
    finally:
        server.server_close()
    err = capfd.readouterr().err
    assert "ValueError: a handler's own bug" in err
    assert "BrokenPipeError" not in err
