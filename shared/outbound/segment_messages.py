"""The Segment ``track`` call an impression becomes (docs/outbound.md).

    {"type": "track", "event": "get_treatment", "userId": "<key>",
     "timestamp": "2026-11-25T16:49:07.123Z", "messageId": "fme-<32 hex>",
     "properties": {"split", "treatment", "label", "environmentId", "environmentName",
                    "splitVersionNumber", "key", "bucketingKey", "machineIp", "machineName",
                    "sdk", "sdkVersion", ...custom impression properties},
     "context": {"library": {"name": "fme-segment-bridge", "version": "..."}}}

``messageId`` is a hash of the impression itself and of where and how it goes: the outbound config
(the Segment source), the event name and the identity field. A redelivered SQS message or a replay
yields the same id and Segment deduplicates it; the same impression sent to two configs gets two
ids, since Segment deduplicates across all sources and workspaces. Messages are serialised once,
with msgspec's JSON encoder (about twice as fast as pydantic-core's on these messages), and packed
into batches as bytes.
"""

from __future__ import annotations

import functools
import hashlib
import time
from typing import Any, get_args

import msgspec

from shared import __version__
from shared.config import OutboundConfig, SegmentIdField
from shared.outbound.impressions import Impression

LIBRARY_NAME = "fme-segment-bridge"
CONTEXT: dict[str, Any] = {"library": {"name": LIBRARY_NAME, "version": __version__}}

# Segment's HTTP Tracking API limits.
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1000  # the decimal reading of "500 KB": within either reading
MAX_BATCH_MESSAGES = 2500


class _StandardProperties(msgspec.Struct):
    """The properties every track call carries, in this order; custom impression properties never
    overwrite them. A message without custom properties is serialised from this struct (faster than
    from a dict); one with them, from the dict :func:`_properties` makes of it.
    """

    split: str
    treatment: str
    label: str | None
    environmentId: str | None
    environmentName: str | None
    splitVersionNumber: int | None
    key: str
    bucketingKey: str | None
    machineIp: str | None
    machineName: str | None
    sdk: str | None
    sdkVersion: str | None


STANDARD_PROPERTIES: tuple[str, ...] = _StandardProperties.__struct_fields__


def _track_struct(identity: str) -> type[msgspec.Struct]:
    """A track call whose identity field (``userId`` / ``anonymousId``) is ``identity``, in wire order."""
    return msgspec.defstruct(
        f"Track_{identity}",
        [
            ("event", str),
            (identity, str),
            ("timestamp", str),
            ("messageId", str),
            ("properties", _StandardProperties | dict[str, Any]),
            ("context", msgspec.Raw),
        ],
        tag_field="type",
        tag="track",
    )


_TRACK_STRUCTS = {identity: _track_struct(identity) for identity in get_args(SegmentIdField)}


def traffic_type_of(impression: Impression, config: OutboundConfig) -> str:
    return impression.traffic_type or config.traffic_type_default


def identity_field(impression: Impression, config: OutboundConfig) -> str | None:
    """``userId`` / ``anonymousId`` for the impression's traffic type, None when the config maps none."""
    return config.identities.get(traffic_type_of(impression, config))


def message_id(impression: Impression, event_name: str, identity: str, destination: str) -> str:
    """Deterministic, 36 characters: the same impression to the same outbound config (``destination``,
    its name) always yields the same id."""
    return _message_id(impression, _message_id_suffix(event_name, identity, destination))


def _message_id_suffix(event_name: str, identity: str, destination: str) -> str:
    return f"\x1f{event_name}\x1f{identity}\x1f{destination}"


def _message_id(impression: Impression, suffix: str) -> str:
    # The digest input is fixed: a change gives a redelivered impression another id (and Segment a
    # duplicate). Fields joined by \x1f, then the event name, identity field and outbound config's
    # name (``suffix``; the name joined it once, docs/outbound.md, upgrading).
    version = impression.split_version_number
    text = (
        f"{impression.environment_name or impression.environment_id or ''}\x1f{impression.split}"
        f"\x1f{impression.key}\x1f{impression.bucketing_key or ''}\x1f{impression.treatment}"
        f"\x1f{impression.label or ''}\x1f{impression.time}\x1f{'' if version is None else version}"
        f"{suffix}"
    )
    return "fme-" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


def iso_timestamp(epoch_ms: int) -> str:
    """``1795483041109`` → ``"2026-11-24T01:17:21.109Z"`` (UTC, milliseconds)."""
    seconds, millis = divmod(epoch_ms, 1000)
    # Impressions of one batch mostly share their second: each second is formatted once.
    return _second(seconds) + _MILLIS[millis]


def _standard_properties(impression: Impression) -> _StandardProperties:
    return _StandardProperties(
        impression.split,
        impression.treatment,
        impression.label,
        impression.environment_id,
        impression.environment_name,
        impression.split_version_number,
        impression.key,
        impression.bucketing_key,
        impression.machine_ip,
        impression.machine_name,
        impression.sdk,
        impression.sdk_version,
    )


def _properties(impression: Impression) -> dict[str, Any]:
    """The standard properties, then the impression's custom ones whose names they leave free."""
    properties = msgspec.structs.asdict(_standard_properties(impression))
    if impression.properties:
        for name, value in impression.properties.items():
            properties.setdefault(name, value)
    return properties


def track_message(
    impression: Impression, config: OutboundConfig, identity: str, destination: str
) -> dict[str, Any]:
    return {
        "type": "track",
        "event": config.eventName,
        identity: impression.key,
        "timestamp": iso_timestamp(impression.time),
        "messageId": message_id(impression, config.eventName, identity, destination),
        "properties": _properties(impression),
        "context": CONTEXT,
    }


_ENCODER = msgspec.json.Encoder()
# The same for every message: serialised once (encoding the nested dict was about a fifth of
# msgspec's time per track message).
_CONTEXT_JSON = msgspec.Raw(_ENCODER.encode(CONTEXT))


def encode(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as it goes on the wire.

    NaN and ±Infinity (which a Python SDK's ``json.dumps`` writes into impression properties) become
    ``null``, as ``JSON.stringify`` makes them: bare, they are not JSON, and Segment would refuse the
    whole request.
    """
    return _ENCODER.encode(message)


class TrackEncoder:
    """``encode(track_message(impression, config, identity, destination))`` for one outbound config
    (``destination`` is its name) and identity field, cheaper.

    The end of the messageId's digest input, which every message of the pair shares, and the
    serialised ``context`` are prepared once, and the message is a struct rather than a dict. Byte
    for byte what :func:`track_message` and :func:`encode` give.
    """

    def __init__(self, config: OutboundConfig, identity: str, destination: str) -> None:
        self.identity = identity
        self._event = config.eventName
        self._id_suffix = _message_id_suffix(config.eventName, identity, destination)
        self._track = _TRACK_STRUCTS[identity]

    def encode(self, impression: Impression) -> bytes:
        properties = _properties(impression) if impression.properties else _standard_properties(impression)
        track = self._track(
            self._event,
            impression.key,
            iso_timestamp(impression.time),
            _message_id(impression, self._id_suffix),
            properties,
            _CONTEXT_JSON,
        )
        return _ENCODER.encode(track)
