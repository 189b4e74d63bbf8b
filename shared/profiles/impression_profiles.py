"""The profile step of impressions: last treatments, and computed-trait identifies on change.

:class:`LastTreatmentSync` runs in the last-treatments function, on the impressions the impressions
function forwarded (:mod:`shared.profiles.forwarding`): it collects them per SQS record, records the
last treatments (one conditional write per identity and flag, concurrently) and sends an
``identify`` per change to each outbound config with ``computedTraits`` enabled. Records whose step
failed transiently are returned, to be retried by SQS; the writes and identifies are idempotent, so
a retry repeats nothing Segment keeps twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared.config import ConfigError
from shared.http_retry import Outcome
from shared.outbound.destinations import Destination, OutboundConfigs, Router, load_outbound_configs
from shared.outbound.impressions import Impression
from shared.outbound.segment_messages import traffic_type_of
from shared.profiles.computed_traits import computed_trait_identifies
from shared.profiles.identify_sender import IdentifySender
from shared.profiles.last_treatment import LastTreatmentRecorder
from shared.profiles_table import (
    LastTreatment,
    LastTreatmentsNotWritten,
    WriteOutcome,
    mark_synced,
    mark_unsynced,
)

logger = logging.getLogger(__name__)

Slot = tuple[str, str]  # (profile pk, split)


@dataclass
class ProfileStepReport:
    impressions: int = 0
    writes: int = 0  # conditional writes made (after collapsing and the cache)
    changed: int = 0
    identifies_sent: int = 0
    identifies_refused: int = 0
    too_large: int = 0  # last treatments whose key DynamoDB cannot hold: left out, logged
    failed: dict[int, str] = field(default_factory=dict)  # SQS record index -> transient reason


def _record_of(impression: Impression, destination: Destination) -> LastTreatment:
    return LastTreatment(
        environment=impression.environment_name or impression.environment_id or "",
        traffic_type=traffic_type_of(impression, destination.config),
        key=impression.key,
        split=impression.split,
        treatment=impression.treatment,
        time=impression.time,
        split_version=impression.split_version_number,
        label=impression.label,
    )


class LastTreatmentSync:
    """One per invocation; the recorder (with its cache) lives as long as the container."""

    def __init__(
        self,
        recorder: LastTreatmentRecorder,
        remaining_ms: Callable[[], int],
        margin_ms: int = 1500,
        destinations: Callable[[], OutboundConfigs] = load_outbound_configs,
    ) -> None:
        self.recorder = recorder
        self.remaining_ms = remaining_ms
        self.margin_ms = margin_ms
        self.destinations = destinations
        self.report = ProfileStepReport()
        self._seen: list[tuple[int, Impression]] = []
        self._skipped_before = recorder.skipped

    @property
    def skipped(self) -> int:
        """Writes this invocation left out: the container had written and synced the same impression."""
        return self.recorder.skipped - self._skipped_before

    def publish(self, metrics: Any) -> None:
        """Add this invocation's counts to a Powertools ``Metrics``."""
        report = self.report
        for name, value in (
            ("LastTreatmentWrites", report.writes),
            ("LastTreatmentWritesSkipped", self.skipped),
            ("LastTreatmentChanges", report.changed),
            ("ComputedTraitIdentifiesSent", report.identifies_sent),
            ("ComputedTraitIdentifiesRefused", report.identifies_refused),
        ):
            metrics.add_metric(name=name, unit="Count", value=value)
        if report.too_large:
            metrics.add_metric(name="LastTreatmentsTooLarge", unit="Count", value=report.too_large)

    def observe(self, record: int, impressions: Sequence[Impression]) -> None:
        self._seen.extend((record, impression) for impression in impressions)

    def finish(self) -> Mapping[int, str]:
        try:
            return self.run()
        except Exception:  # a bug here must not lose the batch: its messages are retried
            logger.exception("recording last treatments failed")
            return self._fail({r for r, _ in self._seen}, "profiles: last treatments not recorded")

    def run(self) -> dict[int, str]:
        report = self.report
        report.impressions = len(self._seen)
        if not self._seen:
            return {}
        try:
            configs = self.destinations()
        except ConfigError as exc:  # the pipeline retries the whole batch already
            return self._fail({r for r, _ in self._seen}, f"profiles: outbound configs unavailable ({exc})")
        router = Router(configs.destinations, configs.invalid)

        records: list[LastTreatment] = []
        sources: dict[Slot, set[int]] = defaultdict(set)
        by_destination: dict[str, set[Slot]] = defaultdict(set)
        for record_index, impression in self._seen:
            blocked = router.blocked(impression)
            if blocked is not None:
                # Retried until the config is fixed, and only then recorded: recorded now, its change
                # would be spent on the valid configs, and the fixed one never told.
                report.failed.setdefault(record_index, f"profiles: {blocked}")
                continue
            routes = router.routes(impression)
            if isinstance(routes, str):
                continue  # a permanent error of the track path already
            for destination, _ in routes:
                lt = _record_of(impression, destination)
                if not lt.storable:
                    # Refused by DynamoDB on every retry, it would fail the writes of the whole
                    # message: left out, logged and counted, as an impression too large to forward is.
                    report.too_large += 1
                    logger.warning(
                        "last treatment of %s / %s not recorded: key over DynamoDB's size limit",
                        lt.key[:80],
                        lt.split[:80],
                    )
                    continue
                records.append(lt)
                sources[(lt.pk, lt.split)].add(record_index)
                by_destination[destination.name].add((lt.pk, lt.split))

        try:
            outcomes = self.recorder.record(records)
        except LastTreatmentsNotWritten as exc:
            # Their messages are retried; the changes of the writes that succeeded are sent now: on
            # the retry, a newer impression of the same treatment may have hidden them.
            logger.warning("recording last treatments failed: %s", exc)
            outcomes = exc.written
            for record in exc.unwritten:
                for record_index in sources[(record.pk, record.split)]:
                    report.failed.setdefault(record_index, "profiles: DynamoDB unavailable")
        report.writes = len(outcomes)
        changed = [o for o in outcomes if o.changed]
        report.changed = len(changed)

        failed_slots, refused_slots = self._send_identifies(router.destinations, changed, by_destination)
        # A refused change stays owed as a failed one does, without a retry (Segment would refuse it
        # again): once the config is fixed, the next write of the flag, or the redrive of the track
        # calls' dead letters, sends it.
        owed = failed_slots.keys() | refused_slots
        self._note_sync(changed, outcomes, owed, self._time_for_notes)
        self.recorder.remember([o for o in outcomes if (o.record.pk, o.record.split) not in owed])
        for slot, reason in failed_slots.items():
            for record_index in sources[slot]:
                report.failed.setdefault(record_index, reason)
        return dict(report.failed)

    def _time_for_notes(self) -> bool:
        # The identifies may have used the time down to the margin: the notes take part of it, and
        # leave the rest for the response (a note left unwritten is made again by the retry).
        return self.remaining_ms() > self.margin_ms // 3

    @staticmethod
    def _note_sync(
        changed: Sequence[WriteOutcome],
        outcomes: Sequence[WriteOutcome],
        owed_slots: Set[Slot],
        time_left: Callable[[], bool],
    ) -> None:
        """Note on the items a change Segment did not receive, so that no later write of the flag can
        pass it over, and drop the note of one whose identify has now been delivered.

        A note that cannot be written is logged: the failed records are retried anyway (a redelivery
        of the stored impression reports its change again), and a note left behind costs only one
        identify sent twice, which Segment deduplicates.
        """
        owed = [o.record for o in changed if (o.record.pk, o.record.split) in owed_slots]
        paid = [o.record for o in outcomes if o.unsynced and (o.record.pk, o.record.split) not in owed_slots]
        for note, records in ((mark_unsynced, owed), (mark_synced, paid)):
            if not records:
                continue
            try:
                note(records, time_left)
            except (ClientError, BotoCoreError) as exc:
                logger.warning(
                    "%s of %d last treatments failed: %s", note.__name__, len(records), type(exc).__name__
                )

    def _send_identifies(
        self,
        destinations: Sequence[Destination],
        changed: Sequence[WriteOutcome],
        by_destination: Mapping[str, set[Slot]],
    ) -> tuple[dict[Slot, str], set[Slot]]:
        """Send each config's identifies; the slots whose send failed (with the reason, to be retried)
        and those Segment refused."""
        batches: dict[str, tuple[Destination, list[dict[str, Any]]]] = {}
        slots_of: dict[str, list[Slot]] = {}
        for destination in destinations:
            if not destination.config.computedTraits.enabled:
                continue
            mine = [o for o in changed if (o.record.pk, o.record.split) in by_destination[destination.name]]
            messages = computed_trait_identifies(mine, destination)
            if messages:
                batches[destination.name] = (destination, messages)
                slots_of[destination.name] = [(o.record.pk, o.record.split) for o in mine]
        failed: dict[Slot, str] = {}
        refused: set[Slot] = set()
        if not batches:
            return failed, refused
        results = IdentifySender(self.remaining_ms, self.margin_ms)(batches)
        for name, outcome in results.items():
            count = len(batches[name][1])
            if outcome is Outcome.DELIVERED:
                self.report.identifies_sent += count
            elif outcome is Outcome.PERMANENT:
                self.report.identifies_refused += count
                logger.error("Segment refused %d computed-trait identify calls for %s", count, name)
                refused.update(slots_of[name])
            else:
                for slot in slots_of[name]:
                    failed.setdefault(slot, f"{name}: computed-trait identify not delivered")
        return failed, refused

    def _fail(self, records: set[int], reason: str) -> dict[int, str]:
        for record_index in records:
            self.report.failed.setdefault(record_index, reason)
        return dict(self.report.failed)
