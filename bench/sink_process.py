"""``python -m bench.sink_process PORT WRITE_KEY...``: the Segment sink, as a separate process.

It is :class:`fme_bridge.segment_sink.SegmentSink` — the same auth, limits and validation of every
message the tests rely on — except that it counts what it accepts instead of keeping it (three
contenders × 100,000 messages kept as dicts would cost the sink gigabytes and time). The parent
talks to it over stdin / stdout: ``stats``, ``reset``, ``quit``; each answer is one JSON line.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from typing import Any

from fme_bridge.segment_sink import RecordedRequest, SegmentSink


class CountingSink(SegmentSink):
    def __init__(self, write_keys: list[str], port: int) -> None:
        # Every body is at most 500 KB, checked whole; each message's own 32 KB check would cost
        # one extra serialisation per message, which no contender should pay the sink for.
        super().__init__(write_keys, port=port, check_message_size=False)
        self._count_lock = threading.Lock()
        self.reset_counts()

    def reset_counts(self) -> None:
        self.by_key: dict[str, Counter[str]] = {}
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def _record(self, request: RecordedRequest, accepted: bool) -> None:
        with self._count_lock:
            self.statuses[str(request.status)] += 1
            if request.error:
                self.errors[request.error[:80]] += 1
            if accepted:
                counts = self.by_key.setdefault(request.write_key or "", Counter())
                counts["requests"] += 1
                counts["bytes"] += request.size
                counts["wire_bytes"] += request.wire_size
                counts["messages"] += len(request.messages)

    def counts(self) -> dict[str, Any]:
        """Accepted requests, bytes and messages per write key; statuses and refusals overall."""
        with self._count_lock:
            return {
                "by_key": {key: dict(counts) for key, counts in self.by_key.items()},
                "statuses": dict(self.statuses),
                "errors": dict(self.errors),
            }


def main() -> None:
    port, *write_keys = sys.argv[1:]
    sink = CountingSink(write_keys, int(port)).start()
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                answer = sink.counts()
            elif command == "reset":
                with sink._count_lock:
                    sink.reset_counts()
                answer = {"ok": True}
            elif command == "quit":
                print(json.dumps({"ok": True}), flush=True)
                break
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
