"""Segment ``identify`` calls for computed traits (last treatment per flag) and audience membership.

Both are sent only when something changed, and carry a ``messageId`` derived from the change itself
and the outbound config it goes to: a retried or replayed change produces the same id, which Segment
deduplicates, and the same change sent to two configs two ids (Segment deduplicates across sources).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from shared import __version__
from shared.outbound.destinations import Destination
from shared.outbound.segment_messages import iso_timestamp
from shared.profiles_table import WriteOutcome

LIBRARY = {"name": "fme-segment-bridge", "version": __version__}


def message_id(kind: str, *parts: object) -> str:
    """``{kind}-`` and 40 hex characters of a hash over the parts: stable, well under 100 characters."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:40]
    return f"{kind}-{digest}"


def identify_message(
    id_field: str, key: str, traits: dict[str, Any], timestamp_ms: int, message_id: str
) -> dict[str, Any]:
    return {
        "type": "identify",
        id_field: key,
        "traits": traits,
        "timestamp": iso_timestamp(timestamp_ms),
        "messageId": message_id,
        "context": {"library": dict(LIBRARY)},
    }


def trait_name(template: str, split: str) -> str:
    return template.replace("{split}", split)


def computed_trait_identifies(
    outcomes: Iterable[WriteOutcome], destination: Destination
) -> list[dict[str, Any]]:
    """One identify per changed last treatment of a traffic type the destination's config maps; none
    if disabled.

    The identity mapping is the track calls' one: ``config.identities[trafficType]`` is the Segment
    field (``userId`` / ``anonymousId``) that carries the key.
    """
    config = destination.config
    if not config.computedTraits.enabled:
        return []
    messages = []
    for outcome in outcomes:
        if not outcome.changed:
            continue
        record = outcome.record
        id_field = config.identities.get(record.traffic_type)
        if id_field is None:
            continue
        name = trait_name(config.computedTraits.traitName, record.split)
        messages.append(
            identify_message(
                id_field,
                record.key,
                {name: record.treatment},
                record.time,
                message_id(
                    "fme-trait",
                    record.environment,
                    record.traffic_type,
                    record.key,
                    name,
                    record.treatment,
                    record.time,
                    record.rank,
                    destination.name,
                ),
            )
        )
    return messages
