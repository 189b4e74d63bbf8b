"""Audience membership: evaluate profiles, tell Segment about entries and exits, store the result.

A transition is sent before it is stored. When the send fails, nothing is stored and the caller
retries the profile (a stream batch item failure), so the transition is found and sent again — with
the same ``messageId`` (audience, profile, new state, transition number), which Segment deduplicates.
Stores are conditional on the transition count read, so two evaluations of one profile racing each
other (an event and an attribute change at once) cannot both record a transition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from shared import config as config_store
from shared.config import ConfigError, ConfigInvalid, ConfigUnavailable, OutboundConfig
from shared.http_retry import Outcome
from shared.outbound.destinations import Destination
from shared.profiles import sources
from shared.profiles.audiences import (
    AUDIENCE_NAME_PATTERN,
    AttributeRule,
    AudienceConfig,
    Evaluation,
    PerformedRule,
    ProfileFacts,
    TreatmentRule,
    evaluate,
    event_needs,
    parse_audience,
    values_equal,
)
from shared.profiles.computed_traits import identify_message, message_id
from shared.profiles.identify_sender import IdentifyBatches
from shared.profiles_table import (
    Membership,
    MembershipConflict,
    memberships_of,
    profile_items,
    put_membership,
    split_profile_pk,
    treatments_of,
)

logger = logging.getLogger(__name__)

# Profiles evaluated together (the schedule's re-check and a back-fill): one round of identifies.
PROFILES_PER_ROUND = 100


# Sends each outbound config's identify messages; the outcome per config name.
SendIdentifies = Callable[[IdentifyBatches], dict[str, Outcome]]


@dataclass
class AudienceSet:
    """The valid audiences, and why the others were left out."""

    audiences: dict[str, AudienceConfig] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)

    def for_profile(self, environment: str, traffic_type: str) -> dict[str, AudienceConfig]:
        return {
            name: a
            for name, a in self.audiences.items()
            if a.environment == environment and a.trafficType == traffic_type
        }


def load_audiences() -> AudienceSet:
    """Every ``{prefix}/audiences/*`` parameter (cached). A malformed one is reported, not fatal."""
    found = AudienceSet()
    for name, raw in config_store.list_parameters("audiences").items():
        if not AUDIENCE_NAME_PATTERN.fullmatch(name):
            found.invalid[name] = f"{config_store.audience_name(name)}: the name cannot be a Segment trait"
            continue
        try:
            found.audiences[name] = parse_audience(raw, config_store.audience_name(name))
        except ConfigInvalid as exc:
            found.invalid[name] = str(exc)
    return found


@dataclass
class SyncReport:
    evaluated: int = 0
    entered: int = 0
    exited: int = 0
    stored: int = 0
    conflicts: int = 0
    sent: int = 0
    not_sent: list[str] = field(default_factory=list)  # permanent problems, with the reason
    failed: set[str] = field(default_factory=set)  # profile keys to retry

    def add(self, other: SyncReport) -> None:
        """Count another round's report in this one."""
        for name in ("evaluated", "entered", "exited", "stored", "conflicts", "sent"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.not_sent.extend(other.not_sent)
        self.failed.update(other.failed)


@dataclass(frozen=True)
class _Decision:
    pk: str
    audience: str
    before: Membership | None
    after: Membership
    # Sent whatever is stored: a result settling a transition whose store lost to a concurrent one.
    resend: bool = False
    # A resend that is an entry or exit of its own, against what the concurrent evaluation stored.
    moved: bool = False

    @property
    def transition(self) -> bool:
        was_member = self.before is not None and self.before.member
        return self.resend or was_member != self.after.member

    @property
    def store(self) -> bool:
        if self.resend:  # its transition count must stay taken, or a later messageId would repeat it
            return True
        if self.before is None:
            return self.after.member or self.after.recheck_at is not None
        return self.transition or self.before.recheck_at != self.after.recheck_at


NOT_A_MEMBER = Evaluation(member=False)


class AudienceEvaluator:
    def __init__(
        self,
        audiences: AudienceSet,
        send: SendIdentifies,
        outbound: Callable[[str], OutboundConfig] = config_store.load_outbound,
    ) -> None:
        self.audiences = audiences
        self.send = send
        self.outbound = outbound

    def _decide(self, pk: str, now_ms: int) -> list[_Decision]:
        environment, traffic_type, _ = split_profile_pk(pk)
        audiences = self.audiences.for_profile(environment, traffic_type)
        if not audiences and not self.audiences.audiences:
            return []
        # Strongly consistent reads: the change that triggered this may be a moment old.
        items = profile_items(pk, consistent=True)
        stored = memberships_of(items)
        # Audiences that no longer take this profile in (moved to another environment or traffic type
        # since it was evaluated): it leaves them, and is due for no re-check of theirs.
        moved = sorted(
            name
            for name, before in stored.items()
            if name in self.audiences.audiences
            and name not in audiences
            and (before.member or before.pending or before.recheck_at is not None)
        )
        if not audiences and not moved:
            return []
        results = [(name, NOT_A_MEMBER) for name in moved]
        if audiences:
            results += self._evaluate(pk, audiences, items, now_ms).items()
        decisions = []
        for name, result in sorted(results, key=lambda named: named[0]):
            before = stored.get(name)
            if before is not None and before.pending and before.member == result.member:
                # Stored, not known sent: sent again (the same messageId), then stored as delivered.
                after = Membership(pk, name, result.member, before.transitions, now_ms, result.recheck_at)
                decisions.append(_Decision(pk, name, before, after, resend=True))
                continue
            was_member = before is not None and before.member
            transitions = (before.transitions if before else 0) + (was_member != result.member)
            after = Membership(pk, name, result.member, transitions, now_ms, result.recheck_at)
            decisions.append(_Decision(pk, name, before, after))
        return decisions

    def _evaluate(
        self, pk: str, audiences: dict[str, AudienceConfig], items: list[dict[str, Any]], now_ms: int
    ) -> dict[str, Evaluation]:
        """Each audience's result for the profile, from its identity, last treatments and events."""
        identity = sources.identity_item(pk, consistent=True)
        needs = event_needs(audiences.values())
        facts = ProfileFacts(
            attributes=(identity or {}).get("attributes") or {},
            treatments={split: t["treatment"] for split, t in treatments_of(items).items()},
            event_times=sources.event_times(pk, needs.since(now_ms), needs.event_types),
        )
        # Nothing stored at all: deleted (a Segment user deletion), or never seen. Such a profile is
        # in no audience, whatever its rules say of a profile with no attributes ("not plan = free").
        gone = (
            identity is None
            and not facts.treatments
            and not any(facts.event_times.values())
            and not sources.has_events(pk, consistent=True)
        )
        return {name: NOT_A_MEMBER if gone else evaluate(a, facts, now_ms) for name, a in audiences.items()}

    def _messages(
        self, decisions: Iterable[_Decision], now_ms: int, report: SyncReport
    ) -> tuple[dict[str, tuple[Destination, list[dict[str, Any]]]], dict[str, list[_Decision]]]:
        batches: dict[str, tuple[Destination, list[dict[str, Any]]]] = {}
        decided: dict[str, list[_Decision]] = {}
        for decision in decisions:
            if not decision.transition:
                continue
            _, traffic_type, key = split_profile_pk(decision.pk)
            for config_name in self.audiences.audiences[decision.audience].sync:
                try:
                    outbound = self.outbound(config_name)
                except ConfigUnavailable as exc:  # SSM failing: the stream record is retried, not lost
                    logger.warning("outbound config %s unavailable: %s", config_name, exc)
                    report.failed.add(decision.pk)
                    continue
                except ConfigError as exc:
                    report.not_sent.append(f"audience {decision.audience}: outbound {config_name}: {exc}")
                    continue
                id_field = outbound.identities.get(traffic_type)
                if id_field is None:
                    report.not_sent.append(
                        f"audience {decision.audience}: outbound {config_name} maps no identity "
                        f"for traffic type {traffic_type}"
                    )
                    continue
                after = decision.after
                message = identify_message(
                    id_field,
                    key,
                    {decision.audience: after.member},
                    now_ms,
                    message_id(
                        "fme-audience",
                        decision.audience,
                        decision.pk,
                        after.member,
                        after.transitions,
                        config_name,
                    ),
                )
                batches.setdefault(config_name, (Destination(config_name, outbound), []))[1].append(message)
                decided.setdefault(config_name, []).append(decision)
        return batches, decided

    def _decide_all(self, pks: Iterable[str], now_ms: int, report: SyncReport) -> list[_Decision]:
        decisions: list[_Decision] = []
        for pk in dict.fromkeys(pks):
            try:
                decisions.extend(self._decide(pk, now_ms))
                report.evaluated += 1
            except Exception:
                logger.exception("could not evaluate audiences of a profile")
                report.failed.add(pk)
        return decisions

    def preview(self, pks: Iterable[str], now_ms: int) -> SyncReport:
        """What :meth:`sync_profiles` would find: entries and exits counted, nothing sent or stored."""
        report = SyncReport()
        for decision in self._decide_all(pks, now_ms, report):
            if decision.transition and not decision.resend:
                report.entered += decision.after.member
                report.exited += not decision.after.member
        return report

    def sync_profiles(self, pks: Iterable[str], now_ms: int) -> SyncReport:
        report = SyncReport()
        lost, made = self._sync(self._decide_all(pks, now_ms, report), now_ms, report)
        if lost or made:
            # A transition rests on what the profile held when it was read. Another evaluation of the
            # same profile (a change on another stream) may have run meanwhile: one that stored first
            # made these stores lose (``lost``: Segment received them, and may hold either result),
            # and one that read before these stores saw nothing to do (``made``). The profiles are
            # evaluated again: a lost transition's result is sent once more, past both, and a made
            # one's moves on if the profile moved; a change after this is its own stream record's.
            again = self._settle(lost, now_ms, report) + self._recheck(made, now_ms, report)
            lost_again = self._sync(again, now_ms, report)[0]
            if lost_again:
                # Yet another evaluation came between: settled again, owed, and sent by the stream's
                # retry of the record (or the next evaluation of the identity), which finds it owed.
                self._settle(lost_again, now_ms, report)
                report.failed.update(decision.pk for decision in lost_again)
        return report

    def _sync(
        self, decisions: list[_Decision], now_ms: int, report: SyncReport
    ) -> tuple[list[_Decision], list[_Decision]]:
        """Send the transitions and store the results: the transitions sent whose store lost to a
        concurrent evaluation, and those sent and stored."""
        batches, decided = self._messages(decisions, now_ms, report)
        delivered: set[tuple[str, str]] = set()
        for config_name, outcome in (self.send(batches) if batches else {}).items():
            pending = decided[config_name]
            if outcome is Outcome.DELIVERED:
                report.sent += len(pending)
                delivered.update((decision.pk, decision.audience) for decision in pending)
            elif outcome is Outcome.PERMANENT:
                report.not_sent.append(f"outbound {config_name}: {len(pending)} identify calls refused")
            else:
                report.failed.update(decision.pk for decision in pending)

        lost, made = [], []
        for decision in decisions:
            if decision.pk in report.failed or not decision.store:
                continue
            try:
                put_membership(decision.after, decision.before.transitions if decision.before else None)
            except MembershipConflict:
                report.conflicts += 1
                if (decision.pk, decision.audience) in delivered:
                    lost.append(decision)
                continue
            except Exception:
                logger.exception("could not store an audience membership")
                report.failed.add(decision.pk)
                continue
            report.stored += 1
            if decision.transition and (decision.moved or not decision.resend):
                report.entered += decision.after.member
                report.exited += not decision.after.member
            if decision.transition and not decision.resend:
                made.append(decision)
        return lost, made

    def _recheck(self, made: Iterable[_Decision], now_ms: int, report: SyncReport) -> list[_Decision]:
        """The transitions the profiles of ``made`` call for now, of the audiences that moved, owed."""
        moved: dict[str, set[str]] = {}
        for decision in made:
            moved.setdefault(decision.pk, set()).add(decision.audience)
        again = []
        for pk, audiences in moved.items():
            for fresh in self._fresh(pk, now_ms, report):
                if fresh.audience not in audiences or not fresh.transition:
                    continue
                if fresh.resend:  # owed already
                    again.append(fresh)
                elif owed := self._owe(fresh.before, fresh.after, True, now_ms, report):
                    again.append(owed)
        return again

    def _settle(self, lost: Iterable[_Decision], now_ms: int, report: SyncReport) -> list[_Decision]:
        """The profiles of ``lost`` evaluated again: each audience's result as a transition past both
        the one sent and the one stored, owed."""
        settled = []
        for decision in lost:
            fresh = {d.audience: d for d in self._fresh(decision.pk, now_ms, report)}.get(decision.audience)
            if fresh is None:  # not evaluated (retried), or the audience is gone: nothing to settle
                continue
            stored = fresh.before.transitions if fresh.before else 0
            after = replace(fresh.after, transitions=max(stored, decision.after.transitions) + 1)
            owed = self._owe(fresh.before, after, fresh.transition and not fresh.resend, now_ms, report)
            if owed is not None:
                settled.append(owed)
        return settled

    def _fresh(self, pk: str, now_ms: int, report: SyncReport) -> list[_Decision]:
        try:
            return self._decide(pk, now_ms)
        except Exception:
            logger.exception("could not evaluate audiences of a profile")
            report.failed.add(pk)
            return []

    @staticmethod
    def _owe(
        before: Membership | None, after: Membership, moved: bool, now_ms: int, report: SyncReport
    ) -> _Decision | None:
        """``after`` stored before it is sent, marked owed (``identifyPending``), so that a failed send
        is not forgotten: whatever evaluates the identity next sends it again, with the same
        messageId. It is due for the scheduled re-check at once until delivered: owed by a re-check
        that then fails, nothing else would send it before the identity's next change."""
        owed = replace(after, pending=True, recheck_at=now_ms)
        try:
            put_membership(owed, before.transitions if before else None)
        except MembershipConflict:  # yet another evaluation stored meanwhile: retried
            report.conflicts += 1
            report.failed.add(after.pk)
            return None
        except Exception:
            logger.exception("could not store an audience membership")
            report.failed.add(after.pk)
            return None
        delivered = replace(after, pending=False)
        return _Decision(after.pk, after.audience, owed, delivered, resend=True, moved=moved)


# ---------------------------------------------------------------------------------------------
# Which stored changes can change an audience


@dataclass(frozen=True)
class StoredChange:
    """One stream record, reduced to what decides whether audiences must be evaluated again."""

    table: str  # "events", "identities" or "profiles"
    pk: str
    old: dict[str, Any]
    new: dict[str, Any]


@dataclass(frozen=True)
class _Referenced:
    events: frozenset[str]
    splits: frozenset[str]
    attributes: frozenset[str]
    # Some audience takes in a profile that holds nothing (its rule asks for what is absent: ``not``).
    takes_empty_profiles: bool = False


_EMPTY_PROFILE = ProfileFacts()


def _referenced(audiences: Iterable[AudienceConfig]) -> _Referenced:
    events: set[str] = set()
    splits: set[str] = set()
    attributes: set[str] = set()
    takes_empty = False
    for audience in audiences:
        # Nothing stored: no event in any window, so the time does not matter.
        takes_empty = takes_empty or evaluate(audience, _EMPTY_PROFILE, 0).member
        for leaf in audience.leaves():
            if isinstance(leaf, PerformedRule):
                events.add(leaf.performed.event)
            elif isinstance(leaf, TreatmentRule):
                splits.add(leaf.treatment.split)
            elif isinstance(leaf, AttributeRule):
                attributes.add(leaf.attribute.name)
    return _Referenced(frozenset(events), frozenset(splits), frozenset(attributes), takes_empty)


def _matters(change: StoredChange, referenced: _Referenced) -> bool:
    if referenced.takes_empty_profiles:
        # Some audience takes in a profile that holds nothing a rule names (``not`` a free plan). A
        # new identity, or its first last treatment of a flag, enters it when it first appears,
        # before anything a rule names changes. A removal (a Segment user deletion) may leave
        # nothing stored, and such a profile is in no audience: it exits, though no attribute or
        # flag a rule names may have changed.
        appeared = not change.old and change.table in ("identities", "profiles")
        if appeared or not change.new:
            return True
    if change.table == "events":
        if not change.new:  # removed by a user deletion (the stream has new images only): no type known
            return bool(referenced.events)
        return change.new.get("eventTypeId") in referenced.events
    if change.table == "identities":
        old = change.old.get("attributes") or {}
        new = change.new.get("attributes") or {}
        return any(not values_equal(old.get(name), new.get(name)) for name in referenced.attributes)
    if change.table == "profiles":
        split = change.new.get("split") or change.old.get("split")
        return split in referenced.splits and change.old.get("treatment") != change.new.get("treatment")
    return False


def profiles_to_evaluate(changes: Iterable[StoredChange], audiences: AudienceSet) -> list[str]:
    """Profile keys whose audiences may have changed: a referenced event, attribute or flag moved."""
    cache: dict[tuple[str, str], _Referenced] = {}
    out: dict[str, None] = {}
    for change in changes:
        if change.pk in out:
            continue
        try:
            environment, traffic_type, _ = split_profile_pk(change.pk)
        except ValueError:
            continue
        slot = (environment, traffic_type)
        if slot not in cache:
            cache[slot] = _referenced(audiences.for_profile(environment, traffic_type).values())
        if _matters(change, cache[slot]):
            out[change.pk] = None
    return list(out)
