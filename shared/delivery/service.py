"""Delivery of one DynamoDB stream batch into FME: the domain logic behind the delivery function.

For the events table (INSERT records only — the template filters the stream, and records of any
other kind are ignored here too, so nothing delivery writes can loop back):
1. each record becomes a :class:`StoredEvent`; its connection's ``delivery`` config and FME keys
   are loaded (cached); connections without delivery are skipped and counted;
2. events the delivery log says FME already acknowledged (or refused) are skipped — a retried
   stream batch re-sends only what FME has not acknowledged;
3. the rest go to ``POST {eventsEndpoint}/events/bulk`` in bounded requests, retried within the
   invocation's time; what FME accepted is recorded in the delivery log, what it refused for good
   goes to the failure queue with the reason (and is recorded, so it is not retried forever), and
   what is still failing is handed back to the stream as batch item failures.

For the identities table: identities whose attributes changed (old and new image compared) are
saved with all their current attributes (Save Identities overwrites an identity's values), grouped
by traffic type and environment, with the Admin API key; connections without one keep identities
local. Acknowledged identity versions are logged like events, so a retried batch does not repeat them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)

from shared import aws, config, http_session
from shared.config import DeliveryConfig, FmeKeys
from shared.delivery.delivery_log import DELIVERED, REFUSED, DeliveryLog, record_key
from shared.delivery.failure_queue import FailureQueue, Refusal
from shared.delivery.fme_client import FmeClient, FmeEvent, FmeIdentity, ItemOutcome
from shared.delivery.records import (
    IdentityChange,
    MalformedItem,
    StoredEvent,
    ack_id,
    identity_change,
    identity_values,
    read_stream_batch,
    refused_changes,
    stored_event,
)
from shared.dynamodb import batch_get, deserialize_item, table_of, to_python
from shared.http_retry import Deadline, Outcome, tls_context
from shared.profiles_table import profile_pk
from shared.secret_versions import refresh_budget

logger = Logger(child=True)


def now_ms() -> int:
    return int(time.time() * 1000)


def fme_keys_name(connection_id: str) -> str:
    """Secret ``{prefix}/inbound/{connectionId}/fme``."""
    return f"{config.inbound_name(connection_id)}/fme"


# ---------------------------------------------------------------------------------------------
# Which connections deliver, with which keys


@dataclass(frozen=True)
class ConnectionDelivery:
    """A connection's delivery settings. ``problem`` set: delivery is on but cannot work as configured."""

    connection_id: str
    enabled: bool
    settings: DeliveryConfig | None = None
    keys: FmeKeys | None = None
    problem: str | None = None


T = TypeVar("T")


class ConfigTemporarilyUnavailable(Exception):
    """SSM or Secrets Manager failed; the records wait for the stream's retry."""


def resolve_connection(
    connection_id: str,
    get_parameter: Callable[[str], str] = config.get_parameter,
    get_secret: Callable[[str], str] = config.get_secret,
) -> ConnectionDelivery:
    """Load a connection's delivery settings (``get_*`` raise the :mod:`shared.config` errors)."""
    name = config.inbound_name(connection_id)
    try:
        inbound = config.parse_config(config.InboundConfig, get_parameter(name), name)
    except config.ConfigNotFound:
        return ConnectionDelivery(connection_id, enabled=False)
    except config.ConfigInvalid as exc:
        return ConnectionDelivery(connection_id, enabled=True, problem=f"invalid connection config: {exc}")
    except config.ConfigUnavailable as exc:
        raise ConfigTemporarilyUnavailable(str(exc)) from None
    if not inbound.delivery.enabled:
        return ConnectionDelivery(connection_id, enabled=False)
    name = fme_keys_name(connection_id)
    try:
        keys = config.parse_config(FmeKeys, get_secret(name), name)
    except config.ConfigNotFound:
        return ConnectionDelivery(
            connection_id, enabled=True, settings=inbound.delivery, problem=f"secret {name} does not exist"
        )
    except config.ConfigInvalid as exc:
        return ConnectionDelivery(connection_id, enabled=True, settings=inbound.delivery, problem=str(exc))
    except config.ConfigUnavailable as exc:
        raise ConfigTemporarilyUnavailable(str(exc)) from None
    return ConnectionDelivery(connection_id, enabled=True, settings=inbound.delivery, keys=keys)


def resolve_fresh_keys(connection_id: str) -> ConnectionDelivery:
    """:func:`resolve_connection` with the keys secret read past the container's cache."""
    return resolve_connection(connection_id, get_secret=lambda name: config.get_secret(name, fresh=True))


# FME's answers to a key it does not take (revoked, or rotated since the cache read it).
KEY_REFUSED = frozenset({401, 403})


def _key_refused(outcome: ItemOutcome[Any]) -> bool:
    return outcome.outcome is Outcome.PERMANENT and outcome.status in KEY_REFUSED


# Acknowledgements a container keeps while the delivery log cannot take them (40-character ids).
MAX_UNRECORDED = 100_000


# ---------------------------------------------------------------------------------------------
# The outcome of a batch


@dataclass
class DeliveryReport:
    """Counts for metrics, and the sequence numbers of the records to hand back to the stream."""

    counts: Counter[str] = field(default_factory=Counter)
    retry: set[str] = field(default_factory=set)
    # Per connection whose records go back to the stream, why (the last transient error).
    retry_reasons: dict[str, str] = field(default_factory=dict)
    # The waits FME asked for (rate limits' resets) that no attempt followed: they did not fit the
    # invocation, or came with its last attempt.
    waits_s: list[float] = field(default_factory=list)

    def count(self, name: str, amount: int = 1) -> None:
        if amount:
            self.counts[name] += amount

    def asked_to_wait(self, seconds: float | None) -> None:
        if seconds is not None:
            self.waits_s.append(seconds)


@dataclass
class _ConnectionTally:
    events_delivered: int = 0
    events_refused: int = 0
    identities_delivered: int = 0
    identities_refused: int = 0
    skipped: int = 0
    latency_ms: int | None = None
    retrying_since: int | None = None
    retrying_newest: int | None = None
    error: str | None = None
    # What the error is about: the failure ids of the messages that keep refused items, or the
    # stream records being retried. A redrive clears the error only once it delivered those.
    error_about: tuple[str, ...] = ()
    # Delivered items came from the stream: the connection is no longer behind (not so for a redrive
    # of refused items).
    ends_retrying: bool = True
    # A redrive delivered everything of the connection it tried: these messages or stream records.
    # The last error goes if it is about them (DeliveryLog.clear_error).
    resolved: frozenset[str] | None = None
    resolved_since: int = 0
    # The stream records of the batch handed back to the stream after a transient error, and the
    # last such error (a refusal later in the batch does not replace it).
    retried_records: list[str] = field(default_factory=list)
    retry_reason: str | None = None

    def retrying(self, since: int | None) -> None:
        since = since if since is not None else now_ms()
        self.retrying_since = since if self.retrying_since is None else min(self.retrying_since, since)
        self.retrying_newest = since if self.retrying_newest is None else max(self.retrying_newest, since)

    def failed(self, reason: str, about: Iterable[str]) -> None:
        self.error, self.error_about = reason, tuple(about)

    def failed_transiently(self, reason: str, sequence_numbers: Iterable[str]) -> None:
        """Records go back to the stream: the error is about each record of the batch retried so far."""
        self.retried_records.extend(record_key(s) for s in sequence_numbers)
        self.retry_reason = reason
        self.failed(reason, dict.fromkeys(self.retried_records))


# ---------------------------------------------------------------------------------------------
# Delivery


IdentityKey = tuple[str, str, str, str]  # connection, environment, traffic type, key (IdentityChange)


def _latest_identity_changes(
    records: Iterable[DynamoDBRecord],
    report: DeliveryReport,
    malformed: Callable[[DynamoDBRecord, str], None],
) -> tuple[dict[IdentityKey, IdentityChange], dict[IdentityKey, list[str]]]:
    """The latest change of each identity in ``records`` (several changes of one identity in a batch
    are sent once, with its latest values), and the sequence numbers of all of its records; a record
    that is not a deliverable identity goes to ``malformed`` with the reason."""
    latest: dict[IdentityKey, IdentityChange] = {}
    sequences: dict[IdentityKey, list[str]] = defaultdict(list)
    for record in records:
        try:
            change = identity_change(record)
        except MalformedItem as exc:
            logger.warning("identity item cannot be delivered", reason=str(exc))
            report.count("IdentitiesMalformed")
            malformed(record, str(exc))
            continue
        if change is None:
            report.count("IdentitiesUnchanged")
            if dropped := refused_changes(record):  # FME sees nothing, but what it would refuse counts
                report.count("IdentityAttributesDropped", len(dropped))
            continue
        if change.dropped_attributes:
            report.count("IdentityAttributesDropped", len(change.dropped_attributes))
        latest[change.identity_key] = change
        sequences[change.identity_key].append(change.sequence_number)
    return latest, sequences


def _identity_groups(
    latest: dict[IdentityKey, IdentityChange],
    sequences: dict[IdentityKey, list[str]],
    connections: dict[str, ConnectionDelivery | None],
    report: DeliveryReport,
    tallies: dict[str, _ConnectionTally],
) -> dict[tuple[str, str, str], list[IdentityChange]]:
    """The changes to send, by (connection, traffic type, environment): those of connections
    without delivery or without an Admin API key are counted and skipped, and those of connections
    whose config could not be read are handed back to the stream."""
    groups: dict[tuple[str, str, str], list[IdentityChange]] = defaultdict(list)
    for key, change in latest.items():
        connection = connections[change.connection_id]
        if connection is None:
            report.retry.update(sequences[key])
        elif not connection.enabled:
            report.count("IdentitiesSkippedDeliveryOff")
            tallies[change.connection_id].skipped += 1
        elif connection.keys is not None and connection.keys.adminKey is None and not connection.problem:
            report.count("IdentitiesSkippedNoAdminKey")
            tallies[change.connection_id].skipped += 1
        else:
            groups[(change.connection_id, change.traffic_type, change.environment)].append(change)
    return groups


class Delivery:
    """Delivers stream batches; collaborators are passed in so tests use real fakes (moto, loopback)."""

    def __init__(
        self,
        *,
        events_table: str,
        identities_table: str,
        log: DeliveryLog,
        failures: FailureQueue,
        resolve: Callable[[str], ConnectionDelivery] = resolve_connection,
        resolve_fresh: Callable[[str], ConnectionDelivery] | None = resolve_fresh_keys,
        clock: Callable[[], int] = now_ms,
        transport: httpx.AsyncBaseTransport | None = None,
        http_timeout: float = 10.0,
        dynamodb: Any = None,
    ) -> None:
        self.events_table = events_table
        self.identities_table = identities_table
        self._dynamodb = dynamodb  # for a redrive's look at the identities table (shared.aws's by default)
        self.log = log
        self.failures = failures
        self._resolve = resolve
        # Called when FME refuses a key: a rotated one is used at once, not after the cache expires.
        # None where every read is fresh already (the CLI).
        self._resolve_fresh = resolve_fresh
        self._clock = clock
        self._transport = transport
        self._http_timeout = http_timeout
        # Events FME acknowledged whose acknowledgement could not be written: a retry of their batch
        # (Lambda retries from the batch's first failed record, usually in this container) finds them
        # here, and writes them then. Bounded; the oldest go first.
        self._unrecorded: dict[str, None] = {}

    def _http(self) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        """The FME client, kept with its connections for the next invocation (shared.http_session)."""

        def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(self._http_timeout, connect=3.0),
                verify=tls_context(),
            )

        return http_session.client(("fme", self._http_timeout, self._transport), make)

    async def deliver(self, records: Sequence[dict[str, Any]], deadline: Deadline) -> DeliveryReport:
        """Deliver one stream batch (Lambda's ``event["Records"]``)."""
        return await self._deliver(records, deadline)

    async def _deliver(
        self,
        records: Sequence[dict[str, Any]],
        deadline: Deadline,
        redrive_started: int | None = None,
    ) -> DeliveryReport:
        report = DeliveryReport()
        events: list[DynamoDBRecord] = []
        identities: list[DynamoDBRecord] = []
        for raw in records:
            record = DynamoDBRecord(raw)
            table = self._table_of(record)
            if table == self.events_table:
                events.append(record)
            elif table == self.identities_table:
                identities.append(record)
            else:
                report.count("RecordsIgnored")
        if not events and not identities:
            return report
        async with self._http() as http:
            client = FmeClient(http, deadline)
            tallies: dict[str, _ConnectionTally] = defaultdict(_ConnectionTally)
            if events:
                await self._deliver_events(events, client, report, tallies)
            if identities:
                await self._deliver_identities(
                    identities, client, report, tallies, as_stored_now=redrive_started is not None
                )
        if redrive_started is not None:  # a redrive of a stream batch: its records are what it resolves
            resolved = frozenset(
                record_key(str(r.get("dynamodb", {}).get("SequenceNumber"))) for r in records
            )
            for tally in tallies.values():
                if tally.error is None and tally.retrying_since is None:
                    tally.resolved, tally.resolved_since = resolved, redrive_started
        self._update_statuses(tallies)
        report.retry_reasons = {c: t.retry_reason for c, t in sorted(tallies.items()) if t.retry_reason}
        return report

    def _table_of(self, record: DynamoDBRecord) -> str | None:
        """The table a record comes from: the one its stream ARN names or, when that is no table of
        the stack (a hand-built event), the one its keys fit: an event has a sort key, an identity none."""
        table = table_of(record.event_source_arn)
        if table in (self.events_table, self.identities_table):
            return table
        keys = record.dynamodb.keys if record.dynamodb is not None else None
        if not keys or "pk" not in keys:
            return None
        return self.events_table if "sk" in keys else self.identities_table

    # -- shared steps -----------------------------------------------------------------------------

    def _connections(
        self, connection_ids: Iterable[str], report: DeliveryReport
    ) -> dict[str, ConnectionDelivery | None]:
        """Each connection's delivery, or None when its config cannot be read right now."""
        resolved: dict[str, ConnectionDelivery | None] = {}
        for connection_id in sorted(set(connection_ids)):
            try:
                resolved[connection_id] = self._resolve(connection_id)
            except ConfigTemporarilyUnavailable as exc:
                logger.warning("connection config unavailable", connection_id=connection_id, error=str(exc))
                report.count("ConfigUnavailable")
                resolved[connection_id] = None
        return resolved

    def _record_acknowledged(self, ack_ids: list[str]) -> bool:
        """Write the acknowledgements of events FME accepted; False when that failed (they are kept
        in the container until a retry of their batch writes them)."""
        try:
            self.log.record(ack_ids, DELIVERED, self._clock())
        except Exception:
            logger.exception("could not record acknowledged events", count=len(ack_ids))
            self._unrecorded.update(dict.fromkeys(ack_ids))
            for oldest in list(
                itertools.islice(self._unrecorded, max(0, len(self._unrecorded) - MAX_UNRECORDED))
            ):
                del self._unrecorded[oldest]
            return False
        for ack in ack_ids:
            self._unrecorded.pop(ack, None)
        return True

    def _renewed_keys(
        self, connection: ConnectionDelivery, outcomes: Sequence[ItemOutcome[Any]]
    ) -> FmeKeys | None:
        """The connection's keys read again, when FME refused the ones used and they have changed since
        the cache read them (a rotation); None otherwise."""
        if self._resolve_fresh is None or connection.keys is None:
            return None
        if not any(map(_key_refused, outcomes)):
            return None
        connection_id = connection.connection_id
        try:
            # The cache first: a read past it since this batch resolved its keys (a rotation an
            # earlier group found) left the keys stored now there.
            keys = self._resolve(connection_id).keys
            if keys is None or keys == connection.keys:
                # Past the cache, within the budget every secret has (a burst, then one read per
                # SECRET_REFRESH_SECONDS): a key revoked but still in the secret is refused on every
                # batch, and each would otherwise read.
                if not refresh_budget.take(fme_keys_name(connection_id)):
                    return None
                keys = self._resolve_fresh(connection_id).keys
        except ConfigTemporarilyUnavailable as exc:
            logger.warning("could not read the FME keys again", connection_id=connection_id, error=str(exc))
            return None
        if keys is None or keys == connection.keys:
            return None
        logger.info(
            "FME refused the cached keys; sending with the keys stored now",
            connection_id=connection_id,
        )
        return keys

    @staticmethod
    async def _again(
        outcomes: Sequence[ItemOutcome[T]],
        send: Callable[[list[tuple[str, T]]], Awaitable[Sequence[ItemOutcome[T]]]],
    ) -> list[ItemOutcome[T]]:
        """``outcomes`` with those of the items FME refused the key for replaced by a second send's."""
        refused = [o for o in outcomes if _key_refused(o)]
        retried = {o.item_id: o for o in await send([(o.item_id, o.payload) for o in refused])}
        return [retried.get(o.item_id, o) for o in outcomes]

    def _refuse(
        self, refusal: Refusal, sequence_numbers: Iterable[str], report: DeliveryReport
    ) -> list[str] | None:
        """Keep refused items in the failure queue: the messages' failure ids, or None (records
        retried) when SQS fails."""
        try:
            failure_ids = self.failures.send(refusal, self._clock())
        except Exception:
            logger.exception("failure queue unavailable", connection_id=refusal.connection_id)
            report.retry.update(sequence_numbers)
            return None
        logger.warning(
            "FME refused items",
            connection_id=refusal.connection_id,
            kind=refusal.kind,
            count=len(refusal.items),
            reason=refusal.reason,
        )
        return failure_ids

    def _update_statuses(self, tallies: dict[str, _ConnectionTally]) -> None:
        now = self._clock()
        for connection_id, tally in tallies.items():
            try:
                self.log.update_status(
                    connection_id,
                    now,
                    events_delivered=tally.events_delivered,
                    events_refused=tally.events_refused,
                    identities_delivered=tally.identities_delivered,
                    identities_refused=tally.identities_refused,
                    skipped=tally.skipped,
                    latency_ms=tally.latency_ms,
                    retrying_since=tally.retrying_since,
                    retrying_newest=tally.retrying_newest,
                    error=tally.error,
                    error_about=tally.error_about,
                    ends_retrying=tally.ends_retrying,
                )
                if tally.error is None and tally.resolved is not None:
                    self.log.clear_error(connection_id, tally.resolved, tally.resolved_since)
            except Exception:  # the status is for operators; delivery itself already happened
                logger.exception("could not update delivery status", connection_id=connection_id)

    # -- events -----------------------------------------------------------------------------------

    async def _deliver_events(
        self,
        records: list[DynamoDBRecord],
        client: FmeClient,
        report: DeliveryReport,
        tallies: dict[str, _ConnectionTally],
    ) -> None:
        stored: list[StoredEvent] = []
        for record in records:
            if record.event_name is not DynamoDBRecordEventName.INSERT:
                report.count("RecordsIgnored")  # our own writes never land here, but a MODIFY must not resend
                continue
            try:
                stored.append(stored_event(record))
            except MalformedItem as exc:
                self._refuse_malformed("events", record, str(exc), report)
        connections = self._connections((s.connection_id for s in stored), report)

        pending: dict[str, list[StoredEvent]] = defaultdict(list)
        for item in stored:
            connection = connections[item.connection_id]
            if connection is None:
                report.retry.add(item.sequence_number)
                tallies[item.connection_id].retrying(item.received_at)
            elif not connection.enabled:
                report.count("EventsSkippedDeliveryOff")
                tallies[item.connection_id].skipped += 1
            else:
                pending[item.connection_id].append(item)
        if not pending:
            return

        candidates = [item for items in pending.values() for item in items]
        try:
            settled = self.log.settled(item.ack_id for item in candidates)
        except Exception:
            logger.exception("delivery log unavailable")
            report.count("DeliveryLogUnavailable")
            report.retry.update(item.sequence_number for item in candidates)
            return
        unrecorded = [item.ack_id for item in candidates if item.ack_id in self._unrecorded]
        if unrecorded:
            settled = {**settled, **dict.fromkeys(unrecorded, DELIVERED)}
            self._record_acknowledged(unrecorded)
        for connection_id, items in pending.items():
            fresh = [item for item in items if item.ack_id not in settled]
            report.count("EventsAlreadyDelivered", len(items) - len(fresh))
            if fresh:
                connection = connections[connection_id]
                assert connection is not None
                await self._send_events(connection, fresh, client, report, tallies[connection_id])

    async def _send_events(
        self,
        connection: ConnectionDelivery,
        items: list[StoredEvent],
        client: FmeClient,
        report: DeliveryReport,
        tally: _ConnectionTally,
    ) -> None:
        by_sequence = {item.sequence_number: item for item in items}
        if connection.problem or connection.keys is None or connection.settings is None:
            outcomes = [
                ItemOutcome(
                    item.sequence_number, item.event, Outcome.PERMANENT, None, connection.problem or ""
                )
                for item in items
            ]
        else:
            endpoint = str(connection.settings.eventsEndpoint)
            outcomes = await client.send_events(
                endpoint, connection.keys.sdkKey, [(item.sequence_number, item.event) for item in items]
            )
            renewed = self._renewed_keys(connection, outcomes)
            if renewed is not None:
                send = functools.partial(client.send_events, endpoint, renewed.sdkKey)
                outcomes = await self._again(outcomes, send)
        now = self._clock()
        delivered = [by_sequence[o.item_id] for o in outcomes if o.outcome is Outcome.DELIVERED]
        transient = [o for o in outcomes if o.outcome is Outcome.TRANSIENT]
        refused: dict[tuple[str, int | None], list[StoredEvent]] = defaultdict(list)
        for o in outcomes:
            if o.outcome is Outcome.PERMANENT:
                refused[(o.reason, o.status)].append(by_sequence[o.item_id])

        if delivered:
            # FME has these events; handing them back to the stream would send them twice.
            if not self._record_acknowledged([item.ack_id for item in delivered]):
                report.count("AcknowledgementsNotRecorded", len(delivered))
            report.count("EventsDelivered", len(delivered))
            tally.events_delivered += len(delivered)
            received = [item.received_at for item in delivered if item.received_at is not None]
            if received:
                tally.latency_ms = max(0, now - min(received))

        for o in transient:
            item = by_sequence[o.item_id]
            report.retry.add(item.sequence_number)
            report.asked_to_wait(o.wait_s)
            tally.retrying(item.received_at)
            tally.failed_transiently(o.reason, [item.sequence_number])
        report.count("EventsRetrying", len(transient))

        for (reason, status), group in refused.items():
            refusal = Refusal(
                kind="events",
                connection_id=connection.connection_id,
                reason=reason,
                status=status,
                items=[{"ackId": item.ack_id, "event": item.event.model_dump()} for item in group],
            )
            failure_ids = self._refuse(refusal, (item.sequence_number for item in group), report)
            if failure_ids is None:
                continue
            try:
                self.log.record([item.ack_id for item in group], REFUSED, now, reason)
            except Exception:  # the failure queue has them; a retry would only add a second message
                logger.exception("could not record refused events", count=len(group))
            report.count("EventsRefused", len(group))
            tally.events_refused += len(group)
            tally.failed(reason, failure_ids)

    def _refuse_malformed(
        self,
        kind: Literal["events", "identities"],
        record: DynamoDBRecord,
        reason: str,
        report: DeliveryReport,
    ) -> None:
        """A stored item that is not a deliverable event or identity: to the failure queue with the item,
        where it can be read (and, once the item is fixed in the table, its record replayed).

        Recorded as refused under its stream record's sequence number, which a retry of the batch
        carries again: Lambda retries a batch from its first failed record, and the item must not
        reach the failure queue once per retry."""
        stream = record.dynamodb
        image = to_python(stream.new_image) if stream is not None else {}
        connection_id = str(image.get("connectionId") or "unknown")
        sequence = stream.sequence_number if stream is not None and stream.sequence_number else ""
        refused_id = ack_id(f"malformed\x1f{kind}", sequence) if sequence else None
        if refused_id is not None:
            try:
                if self.log.settled([refused_id]):
                    return
            except Exception:
                logger.exception("delivery log unavailable")
                report.retry.add(sequence)
                return
        refusal = Refusal(kind, connection_id, f"malformed item: {reason}", None, [{"item": image}])
        if self._refuse(refusal, [sequence] if sequence else [], report) is None:
            return
        report.count("EventsRefused" if kind == "events" else "IdentitiesRefused")
        if refused_id is not None:
            try:
                self.log.record([refused_id], REFUSED, self._clock(), refusal.reason)
            except Exception:  # in the failure queue already: a retry may put it there once more
                logger.exception("could not record a refused item")

    # -- identities -------------------------------------------------------------------------------

    async def _deliver_identities(
        self,
        records: list[DynamoDBRecord],
        client: FmeClient,
        report: DeliveryReport,
        tallies: dict[str, _ConnectionTally],
        as_stored_now: bool = False,
    ) -> None:
        """``as_stored_now``: send each identity as the table holds it now (a redrive, see
        :meth:`_stored_now`)."""
        latest, sequences = _latest_identity_changes(
            records,
            report,
            lambda record, reason: self._refuse_malformed("identities", record, reason, report),
        )
        connections = self._connections((c.connection_id for c in latest.values()), report)
        groups = _identity_groups(latest, sequences, connections, report, tallies)
        if not self._drop_settled_identities(groups, sequences, report):
            return
        for (connection_id, traffic_type, environment), changes in groups.items():
            if not changes:
                continue
            connection = connections[connection_id]
            assert connection is not None  # groups hold only connections that could be read
            by_id = {change.ack_id: change for change in changes}
            pairs: list[tuple[str, FmeIdentity]] = [(item_id, c.identity) for item_id, c in by_id.items()]
            if as_stored_now:
                stored = self._stored_now(traffic_type, environment, pairs)
                report.count("IdentitiesSuperseded", len(pairs) - len(stored))
                pairs = stored
                if not pairs:
                    continue
            if connection.problem or connection.keys is None or connection.settings is None:
                outcomes = [
                    ItemOutcome(item_id, identity, Outcome.PERMANENT, None, connection.problem or "")
                    for item_id, identity in pairs
                ]
            else:
                assert connection.keys.adminKey is not None
                endpoint = str(connection.settings.identitiesEndpoint)
                outcomes = await client.save_identities(
                    endpoint, connection.keys.adminKey, traffic_type, environment, pairs
                )
                renewed = self._renewed_keys(connection, outcomes)
                if renewed is not None and renewed.adminKey is not None:
                    save = functools.partial(
                        client.save_identities, endpoint, renewed.adminKey, traffic_type, environment
                    )
                    outcomes = await self._again(outcomes, save)
            tally = tallies[connection_id]
            self._settle_identities(
                connection_id, traffic_type, environment, outcomes, by_id, sequences, report, tally
            )

    def _drop_settled_identities(
        self,
        groups: dict[tuple[str, str, str], list[IdentityChange]],
        sequences: dict[IdentityKey, list[str]],
        report: DeliveryReport,
    ) -> bool:
        """Leave out of ``groups`` the identity versions FME acknowledged (or refused) before: a
        retried stream batch re-sends only the others. False if the delivery log cannot be read
        (every identity is then handed back to the stream)."""
        if not groups:
            return True
        try:
            settled = self.log.settled(c.ack_id for changes in groups.values() for c in changes)
        except Exception:
            logger.exception("delivery log unavailable")
            report.count("DeliveryLogUnavailable")
            for changes in groups.values():
                for change in changes:
                    report.retry.update(sequences[change.identity_key])
            return False
        for group_key, changes in groups.items():
            fresh = [c for c in changes if c.ack_id not in settled]
            report.count("IdentitiesAlreadyDelivered", len(changes) - len(fresh))
            groups[group_key] = fresh
        return True

    def _settle_identities(
        self,
        connection_id: str,
        traffic_type: str,
        environment: str,
        outcomes: Sequence[ItemOutcome[FmeIdentity]],
        by_id: dict[str, IdentityChange],
        sequences: dict[IdentityKey, list[str]],
        report: DeliveryReport,
        tally: _ConnectionTally,
    ) -> None:
        """Record what FME acknowledged, hand back what may succeed later, refuse the rest."""
        refused: dict[tuple[str, int | None], list[IdentityChange]] = defaultdict(list)
        acknowledged = [o.item_id for o in outcomes if o.outcome is Outcome.DELIVERED]
        if acknowledged:
            try:
                self.log.record(acknowledged, DELIVERED, self._clock())
            except Exception:  # FME has them; a resend would only repeat the same values
                logger.exception("could not record acknowledged identities", count=len(acknowledged))
        for o in outcomes:
            change = by_id[o.item_id]
            if o.outcome is Outcome.DELIVERED:
                report.count("IdentitiesDelivered")
                tally.identities_delivered += 1
            elif o.outcome is Outcome.TRANSIENT:
                report.count("IdentitiesRetrying")
                report.retry.update(sequences[change.identity_key])
                report.asked_to_wait(o.wait_s)
                tally.retrying(change.updated_at)
                tally.failed_transiently(o.reason, sequences[change.identity_key])
            else:
                refused[(o.reason, o.status)].append(change)
        for (reason, status), group in refused.items():
            refusal = Refusal(
                kind="identities",
                connection_id=connection_id,
                reason=reason,
                status=status,
                items=[
                    {
                        "ackId": c.ack_id,
                        "trafficType": traffic_type,
                        "environment": environment,
                        "identity": c.identity.model_dump(),
                    }
                    for c in group
                ],
            )
            sequence_numbers = [s for c in group for s in sequences[c.identity_key]]
            failure_ids = self._refuse(refusal, sequence_numbers, report)
            if failure_ids is None:
                continue
            try:
                self.log.record([c.ack_id for c in group], REFUSED, self._clock(), reason)
            except Exception:  # the failure queue has them; a retry would only add a second message
                logger.exception("could not record refused identities", count=len(group))
            report.count("IdentitiesRefused", len(group))
            tally.identities_refused += len(group)
            tally.failed(reason, failure_ids)

    def _stored_now(
        self, traffic_type: str, environment: str, pairs: Sequence[tuple[str, FmeIdentity]]
    ) -> list[tuple[str, FmeIdentity]]:
        """The identities of ``pairs`` as the identities table holds them now, for a redrive.

        FME's Save Identities overwrites every value: an identity version refused a while ago, sent as
        it was, would take back what newer versions saved since. The values stored now are sent
        instead (a version still on its way through the stream would only send them again). One left
        without an attribute FME takes is sent without values, as the stream sends it; one deleted
        since is not sent at all.
        """
        if not pairs:
            return []
        client = self._dynamodb if self._dynamodb is not None else aws.client("dynamodb")
        pk_of = {identity.key: profile_pk(environment, traffic_type, identity.key) for _, identity in pairs}
        found = batch_get(
            client,
            self.identities_table,
            [{"pk": {"S": pk}} for pk in sorted(set(pk_of.values()))],
            projection="pk, #attributes",
            names={"#attributes": "attributes"},
            consistent=True,
        )
        now = {
            str(item["pk"]["S"]): identity_values(deserialize_item(item).get("attributes")).values
            for item in found
        }
        return [
            (item_id, FmeIdentity(key=identity.key, values=now[pk_of[identity.key]]))
            for item_id, identity in pairs
            if pk_of[identity.key] in now
        ]

    # -- redrive ----------------------------------------------------------------------------------

    async def redrive(
        self,
        body: dict[str, Any],
        deadline: Deadline,
        streams: Any = None,
        started_at: int | None = None,
    ) -> RedriveResult:
        """Send again what one failure-queue message holds; ``done`` means the message can go.

        What FME now accepts is recorded in the connection's status like the function's deliveries
        (refused items move to delivered). A message delivered entirely clears the connection's last
        error if the error is about that message (its failure id; for a stream batch, its records):
        an error about another message, still in the queue or kept by the same run, stays. A kept
        message records why as the last error, about itself. ``started_at`` (when the redrive run
        started; now by default) bounds what an error recorded without what it is about may clear.
        """
        started = started_at if started_at is not None else self._clock()
        if "DDBStreamBatchInfo" in body:
            return await self._redrive_stream_batch(body["DDBStreamBatchInfo"], deadline, streams, started)
        kind, connection_id = body.get("kind"), str(body.get("connectionId") or "")
        items = [i for i in body.get("items") or [] if isinstance(i, dict)]
        if kind not in ("events", "identities"):
            return RedriveResult(problems=[f"unknown message kind {kind!r}"])
        try:
            connection = self._resolve(connection_id)
        except ConfigTemporarilyUnavailable as exc:
            return RedriveResult(problems=[f"config unavailable: {exc}"])
        if not connection.enabled:
            return RedriveResult(problems=[f"delivery is not enabled for connection {connection_id!r}"])
        if connection.problem or connection.keys is None or connection.settings is None:
            result = RedriveResult(problems=[connection.problem or "delivery is not configured"])
        else:
            async with self._http() as http:
                client = FmeClient(http, deadline)
                if kind == "events":
                    result = await self._redrive_events(connection, items, client)
                else:
                    result = await self._redrive_identities(
                        connection, items, client, legacy_scope=f"{connection_id}\x1f{body.get('failedAt')}"
                    )
        tally = _ConnectionTally(ends_retrying=False)
        if kind == "events":
            tally.events_delivered, tally.events_refused = result.resent, -result.resent
        else:
            tally.identities_delivered, tally.identities_refused = result.resent, -result.resent
        # Messages written before they carried a failure id resolve only errors recorded without one.
        about = [str(body["failureId"])] if body.get("failureId") else []
        if result.done:
            tally.resolved, tally.resolved_since = frozenset(about), started
        else:
            tally.failed("; ".join(result.problems), about)
        self._update_statuses({connection_id: tally})
        return result

    async def _redrive_events(
        self, connection: ConnectionDelivery, items: list[dict[str, Any]], client: FmeClient
    ) -> RedriveResult:
        assert connection.keys is not None
        assert connection.settings is not None
        result = RedriveResult()
        events: dict[str, FmeEvent] = {}
        for item in items:
            try:
                events[str(item["ackId"])] = FmeEvent.model_validate(item["event"])
            except (KeyError, ValueError):
                result.problems.append("an item is not a deliverable event (a malformed stored item)")
        delivered = self._already_delivered(events, result)
        pending = [(ack, event) for ack, event in events.items() if ack not in delivered]
        if pending:
            outcomes = await client.send_events(
                str(connection.settings.eventsEndpoint), connection.keys.sdkKey, pending
            )
            self._resent(outcomes, result)
        return result

    def _already_delivered(self, ack_ids: Iterable[str], result: RedriveResult) -> set[str]:
        """The items a kept message holds that an earlier redrive delivered: not sent, nor counted, again."""
        delivered = {a for a, state in self.log.settled(ack_ids).items() if state == DELIVERED}
        result.already_delivered = len(delivered)
        return delivered

    def _resent(self, outcomes: Sequence[ItemOutcome[Any]], result: RedriveResult) -> None:
        """Log what FME accepted (so a kept message does not send it again) and count it; note the rest."""
        acked = [o.item_id for o in outcomes if o.outcome is Outcome.DELIVERED]
        if acked:
            self.log.record(acked, DELIVERED, self._clock())
        result.resent += len(acked)
        result.problems.extend(sorted({o.reason for o in outcomes if o.outcome is not Outcome.DELIVERED}))

    async def _redrive_identities(
        self,
        connection: ConnectionDelivery,
        items: list[dict[str, Any]],
        client: FmeClient,
        legacy_scope: str = "",
    ) -> RedriveResult:
        assert connection.keys is not None
        assert connection.settings is not None
        result = RedriveResult()
        if connection.keys.adminKey is None:
            return RedriveResult(problems=["the connection's FME keys have no adminKey"])
        groups: dict[tuple[str, str], list[tuple[str, FmeIdentity]]] = defaultdict(list)
        for item in items:
            try:
                identity = FmeIdentity.model_validate(item["identity"])
                # Messages written before identity items carried their ackId get one from the item
                # itself: stable from one redrive to the next, so a part-saved message is not re-counted.
                item_id = str(item.get("ackId") or _item_ack_id(item, legacy_scope))
                groups[(str(item["trafficType"]), str(item["environment"]))].append((item_id, identity))
            except (KeyError, ValueError):
                result.problems.append("an item is not a deliverable identity")
        delivered = self._already_delivered((i for pairs in groups.values() for i, _ in pairs), result)
        for (traffic_type, environment), pairs in groups.items():
            pending = [(item_id, identity) for item_id, identity in pairs if item_id not in delivered]
            stored = self._stored_now(traffic_type, environment, pending)
            result.superseded += len(pending) - len(stored)
            pending = stored
            if not pending:
                continue
            outcomes = await client.save_identities(
                str(connection.settings.identitiesEndpoint),
                connection.keys.adminKey,
                traffic_type,
                environment,
                pending,
            )
            self._resent(outcomes, result)
        return result

    async def _redrive_stream_batch(
        self, info: dict[str, Any], deadline: Deadline, streams: Any, started: int
    ) -> RedriveResult:
        """Lambda gave a stream batch up: read its records again and deliver them (24 h stream retention)."""
        if streams is None:
            return RedriveResult(problems=["no DynamoDB Streams client to read the batch from"])
        try:
            records = read_stream_batch(streams, info)
        except Exception as exc:  # trimmed (older than 24 h), or the stream is gone
            return RedriveResult(problems=[f"the batch can no longer be read from the stream: {exc}"])
        report = await self._deliver(records, deadline, redrive_started=started)
        delivered = report.counts["EventsDelivered"] + report.counts["IdentitiesDelivered"]
        problems = []
        if report.retry:
            reasons = [f"{connection_id}: {reason}" for connection_id, reason in report.retry_reasons.items()]
            reasons += [text for name, text in _UNAVAILABLE if report.counts[name]]
            why = "; ".join(reasons)
            problems.append(f"{len(report.retry)} record(s) still failing" + (f" ({why})" if why else ""))
        return RedriveResult(
            resent=delivered,
            already_delivered=report.counts["EventsAlreadyDelivered"],
            superseded=report.counts["IdentitiesSuperseded"],
            problems=problems,
        )


# What hands records back to the stream besides FME's answers, as a redrive reports it.
_UNAVAILABLE = (
    ("ConfigUnavailable", "connection config unavailable"),
    ("DeliveryLogUnavailable", "delivery log unavailable"),
)


@dataclass
class RedriveResult:
    resent: int = 0
    already_delivered: int = 0
    superseded: int = 0  # identities deleted since: nothing to send
    problems: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not self.problems


def _item_ack_id(item: dict[str, Any], scope: str) -> str:
    """A delivery-log id for a refused identity item that carries none (written by an older version).

    ``scope`` is the message's connection and refusal time: the same identity and values refused for
    another connection, or again later, is another item.
    """
    payload = json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)
    return ack_id(f"refused-item\x1f{scope}", payload)
