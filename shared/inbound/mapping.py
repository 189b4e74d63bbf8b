"""Segment messages → FME events, identity updates and deletions: the mapping rules of docs/inbound.md.

Pure functions over pydantic models: no I/O, the clock is passed in. Every message ends in exactly
one of: events / identity updates / a deletion, a drop (with its reason), or ignored (with its
reason). A message with several targets (``userId`` and ``anonymousId``, event-level groups) can have
some targets dropped (``invalid_key``) while the others are kept.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from enum import StrEnum
from math import isfinite
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.config import TRAFFIC_TYPE_NAME_PATTERN, InboundConfig, as_event_type_id
from shared.inbound.messages import SegmentMessage, compact_json, key_of

TRAFFIC_TYPE_NAME = re.compile(TRAFFIC_TYPE_NAME_PATTERN)
MAX_KEY_LENGTH = 250
MAX_ATTRIBUTE_STRING = 255
MAX_PROPERTIES = 300
MAX_EVENT_BYTES = 32 * 1024
# An identity's attributes, their times and the messageIds it remembers, as compact JSON (a little
# more than DynamoDB counts): DynamoDB refuses items over 400 KB, so such an identity is dropped
# with a reason rather than failing its request on every retry.
MAX_IDENTITY_BYTES = 350 * 1024
# Becomes part of the event's sort key (1 KB at most in DynamoDB); Segment's own ids are ~40 chars.
MAX_MESSAGE_ID_LENGTH = 200
# How far back a message that carries no time is known by its messageId, so that a redelivery
# stores nothing new: its events are looked for among the identity's events, its traits in the
# identity's list of the untimed messages applied (at most this many, the newest: 20 KB at most).
UNTIMED_WINDOW_MS = 48 * 3_600_000
MAX_UNTIMED_MESSAGE_IDS = 100
# Timed identifies and groups that share a millisecond: the messages kept per timestamp, and the
# timestamps kept (the newest; a redelivery of an older message finds newer values in its way anyway).
MAX_TIED_MESSAGE_IDS = 20
MAX_TIED_TIMESTAMPS = 20
# What an FME event adds around its properties when sent: field names, quotes, value, timestamp.
_EVENT_ENVELOPE_BYTES = 160
# The estimate from the constant above is generous for the field names but does not count the escapes
# a key may need; an event estimated within this much of MAX_EVENT_BYTES is measured exactly.
_EXACT_SIZE_MARGIN = 2048
# A whole float from here up is written with an exponent (1e+20) but reaches FME with every digit
# (DynamoDB gives it back as a whole number): an event with one is measured exactly too.
_EXPONENT_FLOATS = 1e16


class DropReason(StrEnum):
    NOT_AN_OBJECT = "not_an_object"
    INVALID_MESSAGE = "invalid_message"
    INVALID_MESSAGE_ID = "invalid_message_id"
    MISSING_EVENT_TYPE_ID = "missing_event_type_id"
    INVALID_EVENT_TYPE_ID = "invalid_event_type_id"
    EVENT_TOO_LARGE = "event_too_large"
    INVALID_KEY = "invalid_key"
    INVALID_TRAFFIC_TYPE = "invalid_traffic_type"
    NO_IDENTITY = "no_identity"
    MISSING_USER_ID = "missing_user_id"
    IDENTITY_TOO_LARGE = "identity_too_large"
    INVALID_SPLIT = "invalid_split"


class IgnoreReason(StrEnum):
    ALIAS = "alias"
    UNKNOWN_TYPE = "unknown_type"
    TRACK_DISABLED = "track_disabled"
    IDENTIFY_DISABLED = "identify_disabled"
    PAGES_DISABLED = "pages_disabled"
    SCREENS_DISABLED = "screens_disabled"
    UNNAMED = "unnamed"
    GROUP_WITHOUT_SPLIT = "group_without_split"


Scalar = str | int | float | Decimal | bool | None


class FmeEvent(BaseModel):
    """One FME event; ``index`` is the position of its message in the webhook body."""

    model_config = ConfigDict(frozen=True)

    index: int
    environment: str
    trafficTypeName: str
    key: str
    eventTypeId: str
    value: int | float | None
    timestamp: int
    properties: dict[str, Any]
    messageId: str
    segmentType: str
    # The message carried no time: ``timestamp`` is the time of receipt, which a redelivery changes.
    untimed: bool = False


class IdentityUpdate(BaseModel):
    """Attributes one message sets on one identity; a None value removes the attribute."""

    model_config = ConfigDict(frozen=True)

    index: int
    environment: str
    trafficTypeName: str
    key: str
    attributes: dict[str, Any]
    timestamp: int
    messageId: str = ""
    # The message carried no time: ``timestamp`` is the time of receipt, which a redelivery changes.
    untimed: bool = False


class Deletion(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    environment: str
    trafficTypeName: str
    key: str


class Drop(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    reason: DropReason
    trafficType: str | None = None


class Mapped(BaseModel):
    """What a webhook body maps to, before anything is stored."""

    received: int
    events: list[FmeEvent] = Field(default_factory=list)
    identities: list[IdentityUpdate] = Field(default_factory=list)
    deletions: list[Deletion] = Field(default_factory=list)
    drops: list[Drop] = Field(default_factory=list)
    ignored: dict[int, IgnoreReason] = Field(default_factory=dict)
    strings_cut: int = 0
    properties_trimmed: int = 0


# ---------------------------------------------------------------------------------------------
# Values


def _storable_number(value: int | float) -> bool:
    """DynamoDB numbers: 38 significant digits, magnitude between 1e-130 and 1e126."""
    if isinstance(value, int):
        return len(str(abs(value))) <= 38
    return isfinite(value) and (value == 0 or 1e-130 <= abs(value) < 1e126)


def event_json_size(
    environment: str,
    traffic_type: str,
    key: str,
    type_id: str,
    value: int | float | None,
    timestamp: int,
    properties: dict[str, Scalar],
) -> int:
    """Bytes of the event's JSON as the Events API receives it: the event delivery builds from the
    stored item (its numbers read back from DynamoDB), serialised as delivery serialises it."""
    # Imported here: only events near the limit are measured, and ingest need not load them otherwise.
    from shared.delivery.fme_client import FmeEvent
    from shared.dynamodb import to_python

    def stored(number: Any) -> Any:  # what DynamoDB gives back for a float attribute_value wrote
        return Decimal(repr(number)) if isinstance(number, float) else number

    event = FmeEvent(
        eventTypeId=type_id,
        trafficTypeName=traffic_type,
        key=key,
        value=to_python(stored(value)),
        timestamp=timestamp,
        environmentName=environment,
        properties=to_python({name: stored(v) for name, v in properties.items()}),
    )
    return len(event.model_dump_json().encode())


def _has_exponent_floats(value: int | float | None, properties: dict[str, Scalar]) -> bool:
    numbers = (v for v in (value, *properties.values()) if isinstance(v, float))
    return any(abs(v) >= _EXPONENT_FLOATS for v in numbers)


def property_value(value: Any) -> Scalar:
    """An event property: string / number / bool / null kept, nested → its JSON string."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        return value if _storable_number(value) else str(value)
    return compact_json(value).decode()


def normalize_properties(properties: dict[str, Any] | None) -> tuple[dict[str, Scalar], int]:
    """Event properties without ``split``, at most :data:`MAX_PROPERTIES`; returns (kept, trimmed)."""
    if not properties:
        return {}, 0
    kept: dict[str, Scalar] = {}
    trimmed = 0
    for name, value in properties.items():
        if name == "split":
            continue
        if not name or len(kept) >= MAX_PROPERTIES:
            trimmed += 1
            continue
        kept[name] = property_value(value)
    return kept, trimmed


def normalize_attributes(traits: dict[str, Any], skip: str | None = None) -> tuple[dict[str, Scalar], int]:
    """Identity attributes from traits: nested → JSON string, strings cut to 255; returns (attrs, cut)."""
    attributes: dict[str, Scalar] = {}
    cut = 0
    for name, value in traits.items():
        if name == skip or not name:
            continue
        normalized = property_value(value)
        if isinstance(normalized, str) and len(normalized) > MAX_ATTRIBUTE_STRING:
            normalized = normalized[:MAX_ATTRIBUTE_STRING]
            cut += 1
        attributes[name] = normalized
    return attributes, cut


def event_type_id(raw: Any) -> str | DropReason:
    """The FME event type id from a raw value: spaces → ``_``, then the FME pattern, else a drop reason."""
    if raw is None or raw == "":
        return DropReason.MISSING_EVENT_TYPE_ID
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        return DropReason.INVALID_EVENT_TYPE_ID
    stored = as_event_type_id(str(raw))
    return DropReason.INVALID_EVENT_TYPE_ID if stored is None else stored


def numeric_value(raw: Any) -> int | float | None:
    """The event value: a (storable) number, else None."""
    if isinstance(raw, int | float) and not isinstance(raw, bool) and _storable_number(raw):
        return raw
    return None


def message_id_of(message: SegmentMessage, item: dict[str, Any]) -> str:
    """Segment's ``messageId``, or one derived from the content so a redelivery maps to the same id."""
    if message.messageId:
        return message.messageId
    return "sha1-" + hashlib.sha1(compact_json(item), usedforsecurity=False).hexdigest()


# ---------------------------------------------------------------------------------------------
# Messages


class _Mapper:
    def __init__(self, config: InboundConfig, now_ms: int, out: Mapped) -> None:
        self.config = config
        self.now_ms = now_ms
        self.out = out
        self.traffic_types = list(dict.fromkeys(m.trafficType for m in config.identities))

    def drop(self, index: int, reason: DropReason, traffic_type: str | None = None) -> None:
        self.out.drops.append(Drop(index=index, reason=reason, trafficType=traffic_type))

    def ignore(self, index: int, reason: IgnoreReason) -> None:
        self.out.ignored[index] = reason

    def split_pairs(self, index: int, split: Any) -> tuple[list[tuple[Any, Any]], bool]:
        """``{"account": "id"}`` or ``[{"account": "id"}, …]`` → [(traffic type, key), …], and
        whether an element was not such an object (a string, an empty object): each of those is
        dropped ``invalid_split``. ``null`` is no split at all."""
        pairs: list[tuple[Any, Any]] = []
        unusable = False
        for element in split if isinstance(split, list) else [] if split is None else [split]:
            if isinstance(element, dict) and element:
                pairs.extend(element.items())
            else:
                self.drop(index, DropReason.INVALID_SPLIT)
                unusable = True
        return pairs, unusable

    def mapped_identities(self, message: SegmentMessage) -> list[tuple[str, str]]:
        found = []
        for mapping in self.config.identities:
            key = getattr(message, mapping.segmentId)
            if key:
                found.append((mapping.trafficType, key))
        return found

    def valid_targets(self, index: int, targets: Iterable[tuple[Any, Any]]) -> list[tuple[str, str]]:
        """Targets whose traffic type and key FME accepts; the others are dropped with their reason."""
        valid: dict[tuple[str, str], None] = {}
        for traffic_type, raw_key in targets:
            if not isinstance(traffic_type, str) or not TRAFFIC_TYPE_NAME.fullmatch(traffic_type):
                self.drop(index, DropReason.INVALID_TRAFFIC_TYPE, str(traffic_type)[:80])
                continue
            key = key_of(raw_key)
            if key is None or len(key) > MAX_KEY_LENGTH:
                self.drop(index, DropReason.INVALID_KEY, traffic_type)
                continue
            valid[(traffic_type, key)] = None
        return list(valid)

    def map(self, index: int, item: Any) -> None:
        if not isinstance(item, dict):
            self.drop(index, DropReason.NOT_AN_OBJECT)
            return
        try:
            message = SegmentMessage.model_validate(item)
        except ValidationError:
            self.drop(index, DropReason.INVALID_MESSAGE)
            return
        message_id = message_id_of(message, item)
        if len(message_id) > MAX_MESSAGE_ID_LENGTH:
            self.drop(index, DropReason.INVALID_MESSAGE_ID)
            return
        kind = message.type.lower()
        config = self.config
        if kind == "track":
            if not config.enableTrack:
                self.ignore(index, IgnoreReason.TRACK_DISABLED)
                return
            type_id = event_type_id(message.lookup(config.eventTypeIdField))
            value = numeric_value(message.lookup(config.valueField)) if config.valueField else None
            self.events(index, message, message_id, type_id, value)
        elif kind in ("page", "screen"):
            if kind == "page" and not config.trackNamedPages:
                self.ignore(index, IgnoreReason.PAGES_DISABLED)
                return
            if kind == "screen" and not config.trackNamedScreens:
                self.ignore(index, IgnoreReason.SCREENS_DISABLED)
                return
            name = message.name
            # A name of spaces alone names nothing (it would make view___page).
            if not isinstance(name, str | int | float) or isinstance(name, bool) or str(name).strip() == "":
                self.ignore(index, IgnoreReason.UNNAMED)
                return
            template = config.pageEventTypeId if kind == "page" else config.screenEventTypeId
            type_id = event_type_id(template.replace("{name}", str(name)))
            self.events(index, message, message_id, type_id, None)
        elif kind == "identify":
            if not config.enableIdentify:
                self.ignore(index, IgnoreReason.IDENTIFY_DISABLED)
                return
            identities = self.mapped_identities(message)
            if not identities:
                self.drop(index, DropReason.NO_IDENTITY)
                return
            self.identify(index, message, message_id, identities, message.traits or {}, skip=None)
        elif kind == "group":
            if not config.enableIdentify:
                self.ignore(index, IgnoreReason.IDENTIFY_DISABLED)
                return
            traits = message.traits or {}
            pairs, unusable = self.split_pairs(index, traits.get("split"))
            if not pairs:
                if not unusable:  # no split at all, rather than an unusable one (dropped)
                    self.ignore(index, IgnoreReason.GROUP_WITHOUT_SPLIT)
                return
            self.identify(index, message, message_id, pairs, traits, skip="split")
        elif kind == "delete":
            if not message.userId:
                self.drop(index, DropReason.MISSING_USER_ID)
                return
            if len(message.userId) > MAX_KEY_LENGTH:
                self.drop(index, DropReason.INVALID_KEY)
                return
            for traffic_type in self.traffic_types:
                self.out.deletions.append(
                    Deletion(
                        index=index,
                        environment=config.environment,
                        trafficTypeName=traffic_type,
                        key=message.userId,
                    )
                )
        else:
            self.ignore(index, IgnoreReason.ALIAS if kind == "alias" else IgnoreReason.UNKNOWN_TYPE)

    def events(
        self,
        index: int,
        message: SegmentMessage,
        message_id: str,
        type_id: str | DropReason,
        value: int | float | None,
    ) -> None:
        if isinstance(type_id, DropReason):
            self.drop(index, type_id)
            return
        raw_properties = message.properties or {}
        targets: list[tuple[Any, Any]] = list(self.mapped_identities(message))
        pairs, unusable = self.split_pairs(index, raw_properties.get("split"))
        targets.extend(pairs)
        if not targets:
            if not unusable:  # else already dropped for its unusable split
                self.drop(index, DropReason.NO_IDENTITY)
            return
        properties, trimmed = normalize_properties(raw_properties)
        self.out.properties_trimmed += trimmed
        environment = self.config.environment
        base_size = len(compact_json(properties)) + len(type_id) + len(environment) + _EVENT_ENVELOPE_BYTES
        sent = message.sent_time_ms()
        timestamp = self.now_ms if sent is None else sent
        measure = _has_exponent_floats(value, properties)
        for traffic_type, key in self.valid_targets(index, targets):
            size = base_size + len(traffic_type) + len(key.encode())
            if measure or size > MAX_EVENT_BYTES - _EXACT_SIZE_MARGIN:
                size = event_json_size(environment, traffic_type, key, type_id, value, timestamp, properties)
            if size > MAX_EVENT_BYTES:
                self.drop(index, DropReason.EVENT_TOO_LARGE, traffic_type)
                continue
            # Constructed without re-validation: every value was produced (and checked) just above.
            self.out.events.append(
                FmeEvent.model_construct(
                    index=index,
                    environment=environment,
                    trafficTypeName=traffic_type,
                    key=key,
                    eventTypeId=type_id,
                    value=value,
                    timestamp=timestamp,
                    properties=properties,
                    messageId=message_id,
                    segmentType=message.type.lower(),
                    untimed=sent is None,
                )
            )

    def identify(
        self,
        index: int,
        message: SegmentMessage,
        message_id: str,
        targets: Sequence[tuple[Any, Any]],
        traits: dict[str, Any],
        skip: str | None,
    ) -> None:
        attributes, cut = normalize_attributes(traits, skip=skip)
        self.out.strings_cut += cut
        sent = message.sent_time_ms()
        # A group call's messageId is remembered with its type, as its events' keys carry it:
        # Segment's own spec examples give an identify and a group call one messageId and time.
        kind = message.type.lower()
        remembered_as = message_id if kind == "identify" else f"{message_id}#{kind}"
        for traffic_type, key in self.valid_targets(index, targets):
            self.out.identities.append(
                IdentityUpdate(
                    index=index,
                    environment=self.config.environment,
                    trafficTypeName=traffic_type,
                    key=key,
                    attributes=attributes,
                    timestamp=self.now_ms if sent is None else sent,
                    messageId=remembered_as,
                    untimed=sent is None,
                )
            )


def map_messages(items: Sequence[Any], config: InboundConfig, now_ms: int) -> Mapped:
    """Map every message of a webhook body; one bad message never affects the others."""
    out = Mapped(received=len(items))
    mapper = _Mapper(config, now_ms, out)
    for index, item in enumerate(items):
        mapper.map(index, item)
    return out


# ---------------------------------------------------------------------------------------------
# Identity merge


class StoredIdentity(BaseModel):
    """What the identities table holds for one identity (``version`` for optimistic concurrency)."""

    attributes: dict[str, Any] = Field(default_factory=dict)
    attributeTimestamps: dict[str, int] = Field(default_factory=dict)
    untimedMessageIds: dict[str, int] = Field(default_factory=dict)
    """The messageIds of the untimed messages applied lately, with their times of receipt."""
    timedMessageIds: dict[int, list[str]] = Field(default_factory=dict)
    """Per timestamp that is an attribute's current one, the messageIds of the messages applied at it."""
    version: int = 0


class MergedIdentity(BaseModel):
    # Frozen: ``size_bytes`` is computed once.
    model_config = ConfigDict(frozen=True)

    environment: str
    trafficTypeName: str
    key: str
    attributes: dict[str, Any]
    attributeTimestamps: dict[str, int]
    untimedMessageIds: dict[str, int] = Field(default_factory=dict)
    timedMessageIds: dict[int, list[str]] = Field(default_factory=dict)
    expected_version: int | None
    """The version read (None: the identity did not exist); the write is conditional on it."""
    effective: set[int]
    """Indices of the messages that changed something."""

    @functools.cached_property
    def size_bytes(self) -> int:
        """The attributes, their times and the remembered messageIds as compact UTF-8 JSON: a little
        more than DynamoDB counts."""
        # Stored numbers are Decimal.
        document = [self.attributes, self.attributeTimestamps, self.untimedMessageIds, self.timedMessageIds]
        return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str).encode())

    def too_large(self) -> bool:
        return self.size_bytes > MAX_IDENTITY_BYTES


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; an attribute turning from 1 into true is a change.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    # A stored number comes back as the Decimal of the float's repr (shared.dynamodb.attribute_value),
    # and Decimal("19.99") != 19.99.
    if isinstance(a, float):
        a = Decimal(repr(a))
    if isinstance(b, float):
        b = Decimal(repr(b))
    return bool(a == b)


def applied_id(message_id: str) -> str:
    """How ``timedMessageIds`` holds a messageId: 16 hex digits of a digest (messageIds run to 200
    characters, and an identity item carries one per timestamp an attribute keeps)."""
    return hashlib.blake2b(message_id.encode(), digest_size=8).hexdigest()


def merge_identity(
    stored: StoredIdentity | None, updates: Sequence[IdentityUpdate], now_ms: int
) -> MergedIdentity | None:
    """Apply updates to what is stored, the newer message timestamp winning per attribute.

    Returns None when nothing changes (a redelivered or older message). On equal timestamps the
    later message of the body wins. A removed attribute keeps its timestamp, so an older message
    cannot bring it back.

    A message without any time is stamped with its time of receipt (``now_ms``), which a redelivery
    changes: the identity remembers its ``messageId`` for :data:`UNTIMED_WINDOW_MS` (the newest
    :data:`MAX_UNTIMED_MESSAGE_IDS`), and a redelivery within that window changes nothing, even when
    newer messages changed the identity in between.

    Two messages of the same millisecond (an identify called twice in a row) tie: the later one
    wins. So that a redelivery of the earlier one cannot win the tie again and undo the later one,
    the identity remembers which messages were applied at each timestamp that is still an
    attribute's (``timedMessageIds``: digests, at most :data:`MAX_TIED_MESSAGE_IDS` each, for the
    newest :data:`MAX_TIED_TIMESTAMPS` timestamps): one of them arriving again changes nothing.
    """
    remembered = {
        message_id: at
        for message_id, at in (stored.untimedMessageIds if stored else {}).items()
        if at > now_ms - UNTIMED_WINDOW_MS
    }
    fresh = []
    for update in updates:
        if update.untimed:
            if update.messageId in remembered:
                continue  # applied before: a redelivery
            remembered[update.messageId] = now_ms
        fresh.append(update)
    if not fresh:
        return None
    if len(remembered) > MAX_UNTIMED_MESSAGE_IDS:
        newest = sorted(remembered.items(), key=lambda item: item[1])[-MAX_UNTIMED_MESSAGE_IDS:]
        remembered = dict(newest)
    attributes = dict(stored.attributes) if stored else {}
    stamps = dict(stored.attributeTimestamps) if stored else {}
    applied = {stamp: list(ids) for stamp, ids in (stored.timedMessageIds if stored else {}).items()}
    effective: set[int] = set()
    remembered_at: dict[int, set[int]] = {}
    # An untimed message is remembered even when it changes no attribute: redelivered after a
    # newer message, it would otherwise win as the newest.
    changed = stored is None or any(update.untimed for update in fresh)
    if stored is None:
        effective.add(fresh[0].index)
    for update in sorted(fresh, key=lambda u: u.timestamp):
        timed_id = "" if update.untimed or not update.messageId else applied_id(update.messageId)
        if timed_id and timed_id in applied.get(update.timestamp, ()):
            continue  # applied at this timestamp before: a redelivery must not win a tie again
        holds_a_stamp = False
        for name, value in update.attributes.items():
            previous_stamp = stamps.get(name)
            if previous_stamp is not None and previous_stamp > update.timestamp:
                continue
            holds_a_stamp = True
            if value is None:
                value_changed = name in attributes
                attributes.pop(name, None)
            else:
                value_changed = name not in attributes or not _same(attributes[name], value)
                attributes[name] = value
            if value_changed or previous_stamp != update.timestamp:
                stamps[name] = update.timestamp
                changed = True
                effective.add(update.index)
        if timed_id and holds_a_stamp:
            # Remembered even when it changed nothing: a later message of the same millisecond may.
            ids = applied.setdefault(update.timestamp, [])
            ids.append(timed_id)
            del ids[:-MAX_TIED_MESSAGE_IDS]
            remembered_at.setdefault(update.index, set()).add(update.timestamp)
    current = set(stamps.values())
    kept = sorted(stamp for stamp in applied if stamp in current)[-MAX_TIED_TIMESTAMPS:]
    applied = {stamp: applied[stamp] for stamp in kept}
    for index, at in remembered_at.items():
        # Remembering a message is a change only where the memory is kept: at a timestamp that the
        # pruning above drops (not among the newest kept), it would write the identity for nothing.
        if not at.isdisjoint(kept):
            changed = True
            effective.add(index)
    if not changed:
        return None
    first = fresh[0]
    return MergedIdentity(
        environment=first.environment,
        trafficTypeName=first.trafficTypeName,
        key=first.key,
        attributes=attributes,
        attributeTimestamps=stamps,
        untimedMessageIds=remembered,
        timedMessageIds=applied,
        expected_version=stored.version if stored else None,
        effective=effective,
    )
