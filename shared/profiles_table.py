"""Data access for ProfilesTable: last treatments and audience memberships per identity.

Item keys (docs/data-model.md): ``pk = {environment}#{trafficTypeName}#{key}`` (escaped when a name
holds "#", see :func:`profile_pk`) and ``sk = treatment#{split}`` or ``audience#{name}``. One
``Query`` on ``pk`` returns a whole profile.

Last treatments are written with conditional ``UpdateItem`` calls, because BatchWriteItem cannot carry
a condition and TransactWriteItems fails as a whole when one condition fails (and costs twice the
capacity). The calls of one batch run concurrently on the thread-safe low-level client.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from shared import aws
from shared.dynamodb import TimeLeft, batch_write, python_item, query_items, run_parallel

TREATMENT_PREFIX = "treatment#"
# DynamoDB's key size limits (UTF-8 bytes): a longer pk or sk is refused with a ValidationException.
MAX_PK_BYTES = 2048
MAX_SK_BYTES = 1024
_MAX_RANKED_VERSION = 10**20 - 2
AUDIENCE_PREFIX = "audience#"
# botocore keeps ten pooled connections per client by default; more threads would only queue.
WRITE_CONCURRENCY = 10

_serializer = TypeSerializer()


def profile_pk(environment: str, traffic_type: str, key: str) -> str:
    """The ``pk`` of an identity's items, here and in EventsTable and IdentitiesTable (one identity key).

    An environment or traffic type with "#" would make the "#"-joined key ambiguous ("a#b" + "c" and
    "a" + "b#c" both give "a#b#c#…"): such an identity's parts are escaped and joined by "/" instead.
    That key holds no "#", which every "#"-joined key does, so no name without "#" changes key or
    shares one.
    """
    if "#" in environment or "#" in traffic_type:
        return "/".join(_escaped(part) for part in (environment, traffic_type, key))
    return f"{environment}#{traffic_type}#{key}"


def _escaped(part: str) -> str:
    return part.replace("%", "%25").replace("#", "%23").replace("/", "%2F")


def _unescaped(part: str) -> str:
    return part.replace("%2F", "/").replace("%23", "#").replace("%25", "%")  # "%" last: it began the others


def profile_pk_prefix(environment: str, traffic_type: str) -> str:
    """What every :func:`profile_pk` of the environment and traffic type begins with, and no other.

    Only for names without "#" (all that configs accept): a prefix of escaped parts would also begin
    keys of other names.
    """
    if "#" in environment or "#" in traffic_type:
        raise ValueError("no key prefix for an environment or traffic type with '#'")
    return f"{environment}#{traffic_type}#"


def split_profile_pk(pk: str) -> tuple[str, str, str]:
    """The environment, traffic type and key of a :func:`profile_pk`; ValueError for another key."""
    parts = pk.split("#", 2) if "#" in pk else [_unescaped(part) for part in pk.split("/")]
    if len(parts) != 3 or profile_pk(*parts) != pk:
        raise ValueError(f"{pk!r} is not an identity key")
    environment, traffic_type, key = parts
    return environment, traffic_type, key


def table_name() -> str:
    return aws.env("PROFILES_TABLE")


def typed(values: dict[str, Any]) -> dict[str, Any]:
    """Python values as DynamoDB attribute values."""
    return {k: _serializer.serialize(v) for k, v in values.items()}


# ---------------------------------------------------------------------------------------------
# Last treatments


@dataclass(frozen=True)
class LastTreatment:
    """The newest impression of one flag for one identity."""

    environment: str
    traffic_type: str
    key: str
    split: str
    treatment: str
    time: int  # impression time, epoch ms
    split_version: int | None = None
    label: str | None = None

    @property
    def pk(self) -> str:
        return profile_pk(self.environment, self.traffic_type, self.key)

    @property
    def sk(self) -> str:
        return TREATMENT_PREFIX + self.split

    @property
    def storable(self) -> bool:
        """Whether DynamoDB can hold its keys (a key or flag name of kilobytes cannot)."""
        return len(self.pk.encode()) <= MAX_PK_BYTES and len(self.sk.encode()) <= MAX_SK_BYTES

    @property
    def rank(self) -> str:
        """Breaks ties between impressions of the same millisecond, so any order gives one winner."""
        version = self.split_version if self.split_version is not None else -1
        # Held to the fixed width that keeps string order numeric (a version is a Java long).
        version = min(max(version, -1), _MAX_RANKED_VERSION)
        return f"{version + 1:020d}#{self.treatment}"

    @property
    def order(self) -> tuple[int, str]:
        return (self.time, self.rank)


@dataclass(frozen=True)
class WriteOutcome:
    """What one conditional write found.

    ``applied``: this impression is now the stored last treatment (or already was: a replay).
    ``previous``: the treatment it replaced (None for the first one), when ``applied``.
    ``unsynced``: the stored last treatment's identify is still owed to Segment (see
    :func:`mark_unsynced`); ``record`` is then the stored one, which may be newer than the impression.
    """

    record: LastTreatment
    applied: bool
    previous: str | None = None
    replay: bool = False
    unsynced: bool = False

    @property
    def changed(self) -> bool:
        return self.applied and (self.unsynced or self.previous != self.record.treatment)


# Set on a last treatment whose change did not reach Segment (its identify failed transiently), and
# removed once an identify of it did: until then every write to it, and every retry, reports it as
# a change. Without it, a newer impression of the same treatment, recorded while the failed message
# waited for its retry, would find nothing changed, and the retry would find itself outdated.
UNSYNCED = "identifyPending"


_NEWER = "attribute_not_exists(pk) OR #time < :time OR (#time = :time AND #rank < :rank)"


def _update_request(record: LastTreatment, now_ms: int) -> dict[str, Any]:
    # previousTreatment is read from the item as it was before this update: after a crash between
    # this write and the identify it causes, a redelivered impression finds its own write and still
    # knows whether it was a change (see write_last_treatment).
    values: dict[str, Any] = {
        ":environment": record.environment,
        ":trafficType": record.traffic_type,
        ":key": record.key,
        ":split": record.split,
        ":treatment": record.treatment,
        ":time": record.time,
        ":rank": record.rank,
        ":none": "",
        ":updatedAt": now_ms,
    }
    sets = [
        "#prev = if_not_exists(#treatment, :none)",
        "#treatment = :treatment",
        "#time = :time",
        "#rank = :rank",
        "environment = :environment",
        "trafficTypeName = :trafficType",
        "#key = :key",
        "#split = :split",
        "updatedAt = :updatedAt",
    ]
    removes = []
    for attribute, value in (("splitVersionNumber", record.split_version), ("label", record.label)):
        if value is None:
            removes.append(attribute)
        else:
            values[f":{attribute}"] = value
            sets.append(f"{attribute} = :{attribute}")
    expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
    return {
        "TableName": table_name(),
        "Key": typed({"pk": record.pk, "sk": record.sk}),
        "UpdateExpression": expression,
        "ConditionExpression": _NEWER,
        "ExpressionAttributeNames": {
            "#prev": "previousTreatment",
            "#treatment": "treatment",
            "#time": "time",
            "#rank": "rank",
            "#key": "key",
            "#split": "split",
        },
        "ExpressionAttributeValues": typed(values),
        "ReturnValues": "ALL_OLD",  # UPDATED_OLD may leave out attributes set to their own value
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def write_last_treatment(record: LastTreatment, now_ms: int | None = None) -> WriteOutcome:
    """One conditional write: stored only if newer than what is there; never a read first."""
    client = aws.client("dynamodb")
    request = _update_request(record, now_ms if now_ms is not None else int(time.time() * 1000))
    try:
        response = client.update_item(**request)
    except client.exceptions.ConditionalCheckFailedException as exc:
        current = python_item(exc.response.get("Item") or {})
        unsynced = bool(current.get(UNSYNCED))
        previous = current.get("previousTreatment") or None
        same = current.get("time") == record.time and current.get("rank") == record.rank
        if same:  # a redelivery of the impression that is stored: report what it changed then
            return WriteOutcome(record, True, previous, replay=True, unsynced=unsynced)
        if unsynced:  # outdated, but what is stored still has to reach Segment
            return WriteOutcome(_stored(current), True, previous, unsynced=True)
        return WriteOutcome(record, applied=False)
    old = python_item(response.get("Attributes") or {})
    return WriteOutcome(record, True, old.get("treatment"), unsynced=bool(old.get(UNSYNCED)))


def _stored(item: dict[str, Any]) -> LastTreatment:
    return LastTreatment(
        environment=item["environment"],
        traffic_type=item["trafficTypeName"],
        key=item["key"],
        split=item["split"],
        treatment=item["treatment"],
        time=item["time"],
        split_version=item.get("splitVersionNumber"),
        label=item.get("label"),
    )


def mark_unsynced(records: Sequence[LastTreatment], time_left: Callable[[], bool] = lambda: True) -> None:
    """Note that the stored last treatments of these flags still owe Segment an identify.

    Whatever is stored now is marked, even when a newer impression replaced ``record`` meanwhile: that
    one's write found nothing changed, and it is what Segment has to receive. A note not begun while
    ``time_left()`` holds is not made (the retry reports the change).
    """

    def request(_: LastTreatment) -> dict[str, Any]:
        return {
            "UpdateExpression": "SET #pending = :true",
            "ConditionExpression": "attribute_exists(pk)",  # not if deleted meanwhile (a Segment delete)
            "ExpressionAttributeNames": {"#pending": UNSYNCED},
            "ExpressionAttributeValues": {":true": {"BOOL": True}},
        }

    _note(records, request, time_left)


def mark_synced(records: Sequence[LastTreatment], time_left: Callable[[], bool] = lambda: True) -> None:
    """Note that Segment received the identify of these last treatments, if they are still the stored ones.

    A newer one written since keeps the note: its own write saw it and reports it.
    """

    def request(record: LastTreatment) -> dict[str, Any]:
        return {
            "UpdateExpression": "REMOVE #pending",
            "ConditionExpression": "#time = :time AND #rank = :rank",
            "ExpressionAttributeNames": {"#pending": UNSYNCED, "#time": "time", "#rank": "rank"},
            "ExpressionAttributeValues": typed({":time": record.time, ":rank": record.rank}),
        }

    _note(records, request, time_left)


def _note(
    records: Sequence[LastTreatment],
    request: Callable[[LastTreatment], dict[str, Any]],
    time_left: Callable[[], bool],
) -> None:
    """One conditional ``UpdateItem`` per record, side by side; a failed condition is no error."""
    client = aws.client("dynamodb")

    def note(record: LastTreatment) -> None:
        if not time_left():
            return
        with contextlib.suppress(client.exceptions.ConditionalCheckFailedException):
            client.update_item(
                TableName=table_name(), Key=typed({"pk": record.pk, "sk": record.sk}), **request(record)
            )

    run_parallel(note, records)


class LastTreatmentsNotWritten(Exception):
    """Some writes failed (DynamoDB throttling past botocore's retries, a 5xx): ``written`` holds the
    outcomes of those that succeeded (their changes still owe Segment an identify), ``unwritten`` the
    records to write again."""

    def __init__(self, written: list[WriteOutcome], unwritten: list[LastTreatment], cause: Exception) -> None:
        super().__init__(f"{len(unwritten)} last treatments not written: {type(cause).__name__}")
        self.written = written
        self.unwritten = unwritten


def write_last_treatments(
    records: Sequence[LastTreatment], now_ms: int | None = None, concurrency: int = WRITE_CONCURRENCY
) -> list[WriteOutcome]:
    """Write many last treatments concurrently; the outcomes are in the order of ``records``.

    A DynamoDB error for some records raises :class:`LastTreatmentsNotWritten` once all the others
    were attempted, with the outcomes of those written: what they changed is not lost with the rest.
    """
    if not records:
        return []
    if len(records) == 1 or concurrency <= 1:
        attempts = [_attempt(r, now_ms) for r in records]
    else:
        with ThreadPoolExecutor(max_workers=min(concurrency, len(records))) as pool:
            attempts = list(pool.map(lambda r: _attempt(r, now_ms), records))
    written = [a for a in attempts if isinstance(a, WriteOutcome)]
    failures = [(r, a) for r, a in zip(records, attempts, strict=True) if not isinstance(a, WriteOutcome)]
    if failures:
        raise LastTreatmentsNotWritten(written, [r for r, _ in failures], failures[0][1])
    return written


def _attempt(record: LastTreatment, now_ms: int | None) -> WriteOutcome | ClientError | BotoCoreError:
    try:
        return write_last_treatment(record, now_ms)
    except (ClientError, BotoCoreError) as exc:
        return exc


# ---------------------------------------------------------------------------------------------
# Whole profile


def profile_items(pk: str, consistent: bool = False) -> list[dict[str, Any]]:
    """Every item of one identity (treatments and audience memberships)."""
    request = {
        "TableName": table_name(),
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": typed({":pk": pk}),
        "ConsistentRead": consistent,
    }
    return [python_item(item) for item in query_items(aws.client("dynamodb"), request)]


def delete_last_treatments(pk: str, time_left: TimeLeft = None) -> int:
    """Delete one identity's last treatments (a Segment user deletion); returns how many there were.

    Audience memberships stay: the deletion's stream records exit them, and the exit is sent to Segment.
    """
    client = aws.client("dynamodb")
    request = {
        "TableName": table_name(),
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
        "ExpressionAttributeValues": typed({":pk": pk, ":prefix": TREATMENT_PREFIX}),
        "ProjectionExpression": "pk, sk",
    }
    keys = list(query_items(client, request))
    if keys:
        deletes = [{"DeleteRequest": {"Key": key}} for key in keys]
        batch_write(client, table_name(), deletes, time_left=time_left)
    return len(keys)


def treatments_of(items: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{split: {"treatment", "time", "splitVersionNumber"}}`` from a profile's items."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if str(item.get("sk", "")).startswith(TREATMENT_PREFIX):
            out[item["split"]] = {
                "treatment": item["treatment"],
                "time": item["time"],
                "splitVersionNumber": item.get("splitVersionNumber"),
            }
    return out


# ---------------------------------------------------------------------------------------------
# Audience memberships


@dataclass(frozen=True)
class Membership:
    """The stored result of an audience for one identity.

    ``transitions`` counts entries and exits; it makes each transition's identify messageId unique
    and is the optimistic lock between concurrent evaluations.
    """

    pk: str
    audience: str
    member: bool
    transitions: int
    evaluated_at: int
    recheck_at: int | None = None
    # Stored before its identify was sent (a transition settling a concurrent evaluation): until the
    # identify is known delivered, every evaluation sends it again, with the same messageId.
    pending: bool = False

    @property
    def sk(self) -> str:
        return AUDIENCE_PREFIX + self.audience


def memberships_of(items: Iterable[dict[str, Any]]) -> dict[str, Membership]:
    out: dict[str, Membership] = {}
    for item in items:
        sk = str(item.get("sk", ""))
        if sk.startswith(AUDIENCE_PREFIX):
            name = sk[len(AUDIENCE_PREFIX) :]
            out[name] = Membership(
                pk=item["pk"],
                audience=name,
                member=bool(item.get("member")),
                transitions=int(item.get("transitions", 0)),
                evaluated_at=int(item.get("evaluatedAt", 0)),
                recheck_at=item.get("recheckAt"),
                pending=bool(item.get(UNSYNCED)),
            )
    return out


RECHECK_SHARDS = 8


def recheck_partition(audience: str, pk: str) -> str:
    """The RecheckIndex partition of a membership: spread so that a large audience has no hot key."""
    shard = zlib.crc32(pk.encode()) % RECHECK_SHARDS
    return f"{audience}#{shard}"


class MembershipConflict(Exception):
    """Another evaluation stored a transition first; its result stands."""


def put_membership(membership: Membership, expected_transitions: int | None) -> None:
    """Store a membership, only if nobody stored another transition since it was read.

    ``expected_transitions`` is None when there was no item. ``recheckAt`` puts the item on the
    sparse RecheckIndex that the scheduled sweep reads; without it the item is off the index.
    """
    client = aws.client("dynamodb")
    environment, traffic_type, key = split_profile_pk(membership.pk)
    item: dict[str, Any] = {
        "pk": membership.pk,
        "sk": membership.sk,
        "environment": environment,
        "trafficTypeName": traffic_type,
        "key": key,
        "audience": membership.audience,
        "member": membership.member,
        "transitions": membership.transitions,
        "evaluatedAt": membership.evaluated_at,
    }
    if membership.pending:
        item[UNSYNCED] = True
    if membership.recheck_at is not None:
        item["recheckAt"] = membership.recheck_at
        item["recheckPartition"] = recheck_partition(membership.audience, membership.pk)
    if expected_transitions is None:
        condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
    else:
        condition = {
            "ConditionExpression": "transitions = :expected",
            "ExpressionAttributeValues": typed({":expected": expected_transitions}),
        }
    try:
        client.put_item(TableName=table_name(), Item=typed(item), **condition)
    except client.exceptions.ConditionalCheckFailedException:
        raise MembershipConflict(f"{membership.pk} {membership.audience}") from None


def due_for_recheck(audience: str, now_ms: int, page_size: int = 500) -> Iterator[str]:
    """Profile keys (pk) of an audience whose result may have changed with time alone by ``now_ms``."""
    client = aws.client("dynamodb")
    for shard in range(RECHECK_SHARDS):
        request = {
            "TableName": table_name(),
            "IndexName": "RecheckIndex",
            "KeyConditionExpression": "recheckPartition = :p AND recheckAt <= :now",
            "ExpressionAttributeValues": typed({":p": f"{audience}#{shard}", ":now": now_ms}),
            "Limit": page_size,
        }
        for item in query_items(client, request):
            yield str(python_item(item)["pk"])
