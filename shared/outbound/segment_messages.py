"""The Segment ``track`` call an impression becomes (SPEC section 3).

    {"type": "track", "event": "get_treatment", "userId": "<key>",
     "timestamp": "2026-11-25T16:49:07.123Z", "messageId": "fme-<32 hex>",
     "properties": {"split", "treatment", "label", "environmentId", "environmentName",
                    "splitVersionNumber", "key", "bucketingKey", "machineIp", "machineName",
                    "sdk", "sdkVersion", ...custom impression properties},
     "context": {"library": {"name": "fme-segment-bridge", "version": "..."}}}

``messageId`` is a hash of the impression itself (and of what makes the Segment message differ:
the event name and the identity field), so a redelivered SQS message or a replay yields the same
id and Segment deduplicates it. Messages are serialised once, with pydantic-core's JSON encoder,
and packed into batches as bytes.
"""

from __future__ import annotations

import functools
import hashlib
import time
from typing import Any

from pydantic_core import to_json

from shared import __version__
from shared.config import OutboundConfig
from shared.outbound.impressions import Impression

LIBRARY_NAME = "fme-segment-bridge"
CONTEXT: dict[str, Any] = {"library": {"name": LIBRARY_NAME, "version": __version__}}

# Segment's HTTP Tracking API limits.
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1000  # the decimal reading of "500 KB": within either reading
MAX_BATCH_MESSAGES = 2500
MESSAGE_ID_MAX_LENGTH = 100

# The properties every track call carries, in this order; custom impression properties never
# overwrite them.
STANDARD_PROPERTIES = (
    "split",
    "treatment",
    "label",
    "environmentId",
    "environmentName",
    "splitVersionNumber",
    "key",
    "bucketingKey",
    "machineIp",
    "machineName",
    "sdk",
    "sdkVersion",
)


def traffic_type_of(impression: Impression, config: OutboundConfig) -> str:
    return impression.traffic_type or config.traffic_type_default


def identity_field(impression: Impression, config: OutboundConfig) -> str | None:
    """``userId`` / ``anonymousId`` for the impression's traffic type, None when the config maps none."""
    return config.identities.get(traffic_type_of(impression, config))


def message_id(impression: Impression, event_name: str, identity: str) -> str:
    """Deterministic, 36 characters: the same impression always yields the same id."""
    parts = (
        impression.environment_name or impression.environment_id or "",
        impression.split,
        impression.key,
        impression.bucketing_key or "",
        impression.treatment,
        impression.label or "",
        str(impression.time),
        "" if impression.split_version_number is None else str(impression.split_version_number),
        event_name,
        identity,
    )
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()
    return f"fme-{digest}"


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_timestamp(epoch_ms: int) -> str:
    """``1795483041109`` → ``"2026-11-24T22:37:21.109Z"`` (UTC, milliseconds)."""
    seconds, millis = divmod(epoch_ms, 1000)
    # Impressions of one batch mostly share their second: each second is formatted once.
    return f"{_second(seconds)}.{millis:03d}Z"


def track_message(impression: Impression, config: OutboundConfig, identity: str) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "split": impression.split,
        "treatment": impression.treatment,
        "label": impression.label,
        "environmentId": impression.environment_id,
        "environmentName": impression.environment_name,
        "splitVersionNumber": impression.split_version_number,
        "key": impression.key,
        "bucketingKey": impression.bucketing_key,
        "machineIp": impression.machine_ip,
        "machineName": impression.machine_name,
        "sdk": impression.sdk,
        "sdkVersion": impression.sdk_version,
    }
    if impression.properties:
        for name, value in impression.properties.items():
            properties.setdefault(name, value)
    return {
        "type": "track",
        "event": config.eventName,
        identity: impression.key,
        "timestamp": iso_timestamp(impression.time),
        "messageId": message_id(impression, config.eventName, identity),
        "properties": properties,
        "context": CONTEXT,
    }


def encode(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as it goes on the wire."""
    return to_json(message)
