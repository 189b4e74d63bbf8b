"""What the local event source mappings (SQS, DynamoDB Streams) run on: a daemon thread that takes one
step of its source after another until :meth:`Poller.stop`, riding out the errors of a step."""

from __future__ import annotations

import threading
from collections.abc import Callable

from rich.markup import escape

from shared import http_session


class Poller(threading.Thread):
    """Runs :meth:`poll_once` until :meth:`stop`, waiting ``idle_seconds`` after a step with nothing to do."""

    idle_seconds = 0.0

    def __init__(self, name: str, log: Callable[[str], None] | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.log = log or (lambda _message: None)
        self._stopping = threading.Event()
        self.invocations = 0

    def poll_once(self) -> bool:
        """One step of the source; False when there was nothing to do."""
        raise NotImplementedError

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            self._poll()
        finally:  # the handlers' HTTP clients and loop last as long as this thread (shared.http_session)
            http_session.close()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self.poll_once():
                    self._stopping.wait(self.idle_seconds)
            except Exception as exc:  # the local AWS going away at shutdown, or a hiccup: keep polling
                if self._stopping.is_set():
                    return
                self.log(f"[yellow]{self.name}: {escape(str(exc))}[/yellow]")
                self._stopping.wait(1)
