"""The HTTP server under the local stack's endpoints (the HTTP API, the Segment and FME sinks)."""

from __future__ import annotations

import socket
import sys
from http.server import ThreadingHTTPServer
from typing import Any


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server, one daemon thread per connection.

    A client that goes away mid-connection (a function's process ending with its keep-alive
    connection open, a CLI interrupted mid-request) is routine for a server and gets no traceback;
    every other error of a request is still printed.
    """

    daemon_threads = True

    def __init__(self, server_address: tuple[str, int], handler: Any, bind_and_activate: bool = True) -> None:
        if ":" in server_address[0]:  # an IPv6 loopback (``::1``)
            self.address_family = socket.AF_INET6
        super().__init__(server_address, handler, bind_and_activate)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
