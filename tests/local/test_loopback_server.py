"""The local stack's HTTP servers: a client that resets its connection is routine, not a traceback."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import httpx
import pytest

from fme_bridge.fme_sink import FmeSink
from fme_bridge.loopback_server import LoopbackServer
from fme_bridge.segment_sink import SegmentSink


def _reset_mid_request(host: str, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Open a connection, send half a request line, then close with a reset (SO_LINGER 0), and wait
    until the server is done with that connection (its errors, if any, handled)."""
    done = threading.Event()
    shutdown_request = LoopbackServer.shutdown_request

    def shutdown_and_tell(server: LoopbackServer, request: Any) -> None:
        shutdown_request(server, request)  # the last step of a connection's thread
        done.set()

    monkeypatch.setattr(LoopbackServer, "shutdown_request", shutdown_and_tell)
    sock = socket.create_connection((host, port))
    sock.sendall(b"POST /v1/ba")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert done.wait(timeout=10), "the server never finished the connection"


def test_segment_sink_quiet_on_connection_reset(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SegmentSink(write_keys={"wk"}) as sink:
        host, port = httpx.URL(sink.endpoint).host, httpx.URL(sink.endpoint).port
        assert port is not None
        _reset_mid_request(host, port, monkeypatch)
        # The server goes on answering.
        response = httpx.post(f"{sink.endpoint}/batch", json={"batch": []}, auth=("wk", ""))
        assert response.status_code == 200
    assert capfd.readouterr().err == ""


def test_fme_sink_quiet_on_connection_reset(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FmeSink() as sink:
        url = httpx.URL(sink.url)
        assert url.port is not None
        _reset_mid_request(url.host, url.port, monkeypatch)
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


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_the_sinks_serve_an_ipv6_loopback_with_its_address_in_brackets() -> None:
    with SegmentSink(write_keys={"wk"}, host="::1") as sink:
        assert sink.endpoint.startswith("http://[::1]:")
        response = httpx.post(f"{sink.endpoint}/batch", json={"batch": []}, auth=("wk", ""))
        assert response.status_code == 200
    with FmeSink(host="::1") as fme:
        assert fme.url.startswith("http://[::1]:")


def test_the_standalone_fme_sink_refuses_a_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    from fme_bridge import fme_sink

    with pytest.raises(SystemExit) as exited:
        fme_sink.main(["--port", "70000"])
    assert exited.value.code == 2
    assert "--port: 70000: a port is a number from 0 to 65535" in capsys.readouterr().err
