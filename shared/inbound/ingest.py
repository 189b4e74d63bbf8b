"""A webhook request, end to end: size → authentication → connection config → body → mapping → storage.

Storage is idempotent, so Segment can retry any request that did not get a 2xx (including one that
half-succeeded before a 503): events that already exist are reported as ``duplicate`` and not
written again, identity merges that change nothing write nothing.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from shared import config, profiles_table
from shared.dynamodb import TRANSIENT_ERRORS, OutOfTime, StoreUnavailable, TimeLeft, error_code
from shared.events_table import EventsTable, event_item, event_sk, retention_days
from shared.identities_table import IdentitiesTable
from shared.inbound.auth import Unauthorized, authenticate
from shared.inbound.mapping import (
    UNTIMED_WINDOW_MS,
    Deletion,
    DropReason,
    FmeEvent,
    IdentityUpdate,
    Mapped,
    MergedIdentity,
    map_messages,
    merge_identity,
)
from shared.inbound.messages import BadRequest, PayloadTooLarge, decode_body, gunzip
from shared.profiles_table import profile_pk

DEFAULT_MAX_BODY_BYTES = 5_000_000
# Bodies with at most this many events (a classic Webhooks message with one or two mapped identities)
# write each with a conditional PutItem, side by side: no more requests than a BatchGetItem and a
# BatchWriteItem, in one round trip. Larger bodies check existence first and write in batches.
CONDITIONAL_PUT_EVENTS = 2
# Optimistic identity writes: attempts before giving up with a 503 (Segment retries the request).
IDENTITY_ATTEMPTS = 5


@dataclass(frozen=True)
class WebhookRequest:
    connection_id: str
    headers: Mapping[str, str]  # names lower-case, as HTTP API payload format 2.0 delivers them
    body: bytes


class DropReport(BaseModel):
    index: int
    reason: str
    trafficType: str | None = None


class IngestReport(BaseModel):
    """The 200 answer. Every message is counted once: received = stored + duplicate + dropped +
    ignored + deleted. ``drops`` lists every drop, including a dropped target of a message whose
    other targets were stored (so it can be longer than ``dropped``)."""

    received: int
    stored: int = 0
    duplicate: int = 0
    dropped: int = 0
    ignored: int = 0
    deleted: int = 0
    events: int = 0
    identities: int = 0
    truncated: dict[str, int] = Field(default_factory=dict)
    drops: list[DropReport] = Field(default_factory=list)

    def drop_reasons(self) -> Counter[str]:
        return Counter(drop.reason for drop in self.drops)


def max_body_bytes() -> int:
    return int(os.environ.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


def refuse_unreadable_body(request: WebhookRequest) -> None:
    """Before a 400 for a body that cannot be read: a 401 unless the headers carry the secret (a
    signature, over the body, cannot be checked). Without credentials, a request is told nothing else."""
    authenticate(request.connection_id, request.headers, b"")


def receive_webhook(
    request: WebhookRequest,
    now_ms: int,
    events: EventsTable | None = None,
    identities: IdentitiesTable | None = None,
    time_left: TimeLeft = None,
) -> IngestReport:
    limit = max_body_bytes()
    if len(request.body) > limit:
        raise PayloadTooLarge(
            f"the request body is {len(request.body)} bytes; the limit is {limit} bytes "
            "(a Lambda request cannot exceed 6 MB): lower the batch size in Segment",
            limit,
        )
    body = request.body
    if request.headers.get("content-encoding", "").strip().lower() == "gzip":
        try:
            body = gunzip(body, limit)
        except BadRequest:
            refuse_unreadable_body(request)
            raise
    authenticate(request.connection_id, request.headers, body)
    try:
        connection = config.load_inbound(request.connection_id)
    except config.ConfigNotFound:
        # A secret without a config: answered like an unknown connection.
        raise Unauthorized from None
    mapped = map_messages(decode_body(body), connection, now_ms)
    return store(
        mapped,
        request.connection_id,
        now_ms,
        events or EventsTable.from_env(time_left),
        identities or IdentitiesTable.from_env(time_left),
    )


def store(
    mapped: Mapped,
    connection_id: str,
    now_ms: int,
    events_table: EventsTable,
    identities_table: IdentitiesTable,
) -> IngestReport:
    # The body takes effect in order: a user's deletion removes what was stored for them before it,
    # this body's earlier messages included, and keeps what follows it. So deletions run first.
    _delete_users(mapped.deletions, events_table, identities_table)
    events, updates, superseded = _after_deletions(mapped)
    stored, duplicate, events_written = _store_events(events, connection_id, now_ms, events_table)
    stored.update(superseded)

    # Identities: merged per identity, written conditionally on the version read.
    changed_identities, effective, too_large = store_identities(
        updates, identities_table, connection_id, now_ms
    )
    left_out = {id(update) for update in too_large}
    for update in updates:
        if id(update) not in left_out:
            (stored if update.index in effective else duplicate).add(update.index)

    drops = [
        DropReport(index=d.index, reason=d.reason.value, trafficType=d.trafficType) for d in mapped.drops
    ]
    too_large_reason = DropReason.IDENTITY_TOO_LARGE.value
    drops.extend(
        DropReport(index=u.index, reason=too_large_reason, trafficType=u.trafficTypeName) for u in too_large
    )
    drops.sort(key=lambda d: d.index)
    report = IngestReport(
        received=mapped.received,
        events=events_written,
        identities=changed_identities,
        truncated={"strings": mapped.strings_cut, "properties": mapped.properties_trimmed},
        drops=drops,
    )
    deleted = {deletion.index for deletion in mapped.deletions}
    dropped = {drop.index for drop in drops}
    for index in range(mapped.received):
        if index in deleted:
            report.deleted += 1
        elif index in stored:
            report.stored += 1
        elif index in duplicate:
            report.duplicate += 1
        elif index in dropped:
            report.dropped += 1
        else:
            report.ignored += 1
    return report


def _after_deletions(mapped: Mapped) -> tuple[list[FmeEvent], list[IdentityUpdate], set[int]]:
    """The events and identity updates to write once the body's deletions have run, and the messages
    left unwritten: of a deleted user, what precedes their last deletion, which would go with it.
    Those count as stored (and deleted); never written, they do not reach FME either."""
    if not mapped.deletions:
        return mapped.events, mapped.identities, set()
    last_deletion: dict[str, int] = {}
    for deletion in mapped.deletions:
        pk = profile_pk(deletion.environment, deletion.trafficTypeName, deletion.key)
        last_deletion[pk] = max(deletion.index, last_deletion.get(pk, -1))

    left_out: set[int] = set()

    def kept(item: FmeEvent | IdentityUpdate) -> bool:
        pk = profile_pk(item.environment, item.trafficTypeName, item.key)
        if item.index < last_deletion.get(pk, -1):
            left_out.add(item.index)
            return False
        return True

    events = [event for event in mapped.events if kept(event)]
    updates = [update for update in mapped.identities if kept(update)]
    return events, updates, left_out


def _store_events(
    events: Sequence[FmeEvent], connection_id: str, now_ms: int, events_table: EventsTable
) -> tuple[set[int], set[int], int]:
    """Write the events not stored yet; the message indices stored and found duplicate, and the
    number of events written.

    A few (a classic webhook's message) go out as conditional puts, which find what already exists
    in the same round trip; for more, one BatchGetItem per 100 keys tells what exists and only the
    rest is written, 25 per BatchWriteItem.
    """
    stored: set[int] = set()
    duplicate: set[int] = set()
    expires_at = now_ms // 1000 + retention_days() * 86_400
    candidates: dict[tuple[str, str], int] = {}
    items = {}
    keyed = [(profile_pk(e.environment, e.trafficTypeName, e.key), e) for e in events]
    # Events of messages that carry no time are keyed by the time of receipt, which a redelivery
    # changes: they are looked for by messageId (and type).
    untimed = [(pk, event.messageId, event.segmentType) for pk, event in keyed if event.untimed]
    redelivered = events_table.stored_messages(untimed, now_ms - UNTIMED_WINDOW_MS) if untimed else set()
    for pk, event in keyed:
        key = (pk, event_sk(event.timestamp, event.messageId, event.segmentType))
        if event.untimed and (pk, event.messageId, event.segmentType) in redelivered:
            duplicate.add(event.index)
            continue
        if key in candidates:
            duplicate.add(event.index)  # the same message twice in one body
            continue
        candidates[key] = event.index
        items[key] = event
    if len(candidates) <= CONDITIONAL_PUT_EVENTS:
        existing = events_table.put_new(
            [event_item(items[key], connection_id, now_ms, expires_at) for key in candidates]
        )
        new_keys = [key for key in candidates if key not in existing]
    else:
        existing = events_table.existing(candidates)
        new_keys = [key for key in candidates if key not in existing]
        events_table.put([event_item(items[key], connection_id, now_ms, expires_at) for key in new_keys])
    for key, index in candidates.items():
        (duplicate if key in existing else stored).add(index)
    return stored, duplicate, len(new_keys)


def _delete_users(
    deletions: Sequence[Deletion], events_table: EventsTable, identities_table: IdentitiesTable
) -> None:
    """Delete each user's events, last treatments and identity."""
    if not deletions:
        return
    # One request per identity: a body may delete the same user twice, and BatchWriteItem refuses a
    # request that names a key twice.
    pks = list(dict.fromkeys(profile_pk(d.environment, d.trafficTypeName, d.key) for d in deletions))
    for pk in pks:
        keys = events_table.keys_of(pk)
        if keys:
            events_table.delete(keys)
        # The flags the user saw go too (ProfilesTable shares the key); audience memberships are
        # exited by the deletion's stream records, which tell Segment.
        profiles_table.delete_last_treatments(pk, events_table.time_left)
    identities_table.delete(pks)


def store_identities(
    updates: list[IdentityUpdate], table: IdentitiesTable, connection_id: str, now_ms: int
) -> tuple[int, set[int], list[IdentityUpdate]]:
    """Merge and write identity updates; returns the identities changed, the indices of effective
    messages, and the updates of identities left unwritten because merged they would exceed
    :data:`~shared.inbound.mapping.MAX_IDENTITY_BYTES` (DynamoDB would refuse them on every retry:
    they are dropped, the rest is stored).

    Optimistic concurrency: read (consistent) → merge → conditional write; identities whose write
    lost a race are read and merged again, up to :data:`IDENTITY_ATTEMPTS` times.
    """
    by_pk: dict[str, list[IdentityUpdate]] = defaultdict(list)
    for update in updates:
        by_pk[profile_pk(update.environment, update.trafficTypeName, update.key)].append(update)
    effective_by_pk: dict[str, set[int]] = {}
    too_large: list[IdentityUpdate] = []
    pending = list(by_pk)
    for _ in range(IDENTITY_ATTEMPTS):
        if not pending:
            break
        if table.out_of_time():
            raise OutOfTime("out of time while merging identities")
        try:
            stored = table.get_many(pending)
        except ClientError as exc:
            if error_code(exc) not in TRANSIENT_ERRORS:
                raise
            continue  # DynamoDB still throttled or failed the read: the next round reads again
        merged: dict[str, MergedIdentity] = {}
        for pk in pending:
            result = merge_identity(stored.get(pk), by_pk[pk], now_ms)
            if result is not None and result.too_large():
                too_large.extend(by_pk[pk])
                result = None
            if result is not None:
                merged[pk] = result
            effective_by_pk[pk] = result.effective if result else set()
        pending = sorted(table.put_conditional(list(merged.values()), connection_id, now_ms))
    else:
        if pending:
            if table.out_of_time():
                raise OutOfTime("out of time while writing identities")
            raise StoreUnavailable(
                f"identity writes kept conflicting or failing for {len(pending)} identities"
            )
    effective = {index for indices in effective_by_pk.values() for index in indices}
    return sum(1 for indices in effective_by_pk.values() if indices), effective, too_large
