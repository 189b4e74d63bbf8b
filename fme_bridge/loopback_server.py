"""The HTTP server under the local stack's endpoints (the HTTP API, the Segment and FME sinks)."""

from __future__ import annotations

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

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)
