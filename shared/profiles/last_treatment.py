"""The "last treatment seen" per (environment, traffic type, key, flag), kept cheaply at volume.

Three things keep the cost per impression low:

1. A batch is collapsed in memory to the newest impression per (identity, flag) before anything is
   written: a user seeing a flag 40 times in one SQS batch costs one write, not 40.
2. Each remaining write is one conditional ``UpdateItem`` (no read first). The condition keeps the
   newest impression by time (ties broken by split version, then treatment), so delivery order never
   matters; ``ReturnValues=ALL_OLD`` (return values cost no capacity) tells whether it changed.
3. A bounded in-container cache remembers the newest impression already written *and synced* per
   (identity, flag); the same impression again is skipped without a call — it could only replay a
   finished write (SQS redeliveries, SDKs re-sending). An older one is written, and fails the
   condition: what is stored may still owe Segment a change (``identifyPending``, marked after this
   container wrote and cached it), and that write is what finds it — the retry of the message whose
   identify failed is such an older impression.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from shared.profiles_table import LastTreatment, WriteOutcome, write_last_treatments

DEFAULT_CACHE_SIZE = 100_000


def newest_per_flag(records: Iterable[LastTreatment]) -> list[LastTreatment]:
    """The newest record per (identity, flag), in first-seen order."""
    newest: dict[tuple[str, str], LastTreatment] = {}
    for record in records:
        slot = (record.pk, record.split)
        kept = newest.get(slot)
        if kept is None or record.order > kept.order:
            newest[slot] = record
    return list(newest.values())


class LastTreatmentRecorder:
    """Records last treatments; one instance per container (module level in the handler)."""

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._cache_size = cache_size
        self._written: OrderedDict[tuple[str, str], tuple[int, str]] = OrderedDict()
        self.skipped = 0  # writes saved by the cache since the container started

    def _known(self, record: LastTreatment) -> bool:
        seen = self._written.get((record.pk, record.split))
        return seen is not None and record.order == seen

    def record(self, records: Iterable[LastTreatment], now_ms: int | None = None) -> list[WriteOutcome]:
        """Write what is not known to be written and synced already; outcomes of the writes made."""
        pending = []
        for record in newest_per_flag(records):
            if self._known(record):
                self.skipped += 1
            else:
                pending.append(record)
        return write_last_treatments(pending, now_ms)

    def remember(self, outcomes: Sequence[WriteOutcome]) -> None:
        """Mark writes as finished (their identifies delivered), so that replays of them are skipped.

        Call this only once what the writes caused has been delivered: a write whose identify failed
        must be attempted again when SQS redelivers it.
        """
        for outcome in outcomes:
            record = outcome.record
            slot = (record.pk, record.split)
            seen = self._written.get(slot)
            if seen is None or record.order > seen:
                self._written[slot] = record.order
            self._written.move_to_end(slot)
        while len(self._written) > self._cache_size:
            self._written.popitem(last=False)

    def forget(self) -> None:
        self._written.clear()
