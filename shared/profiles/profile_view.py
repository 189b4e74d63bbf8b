"""The profile the API and the CLI show: attributes, last treatments, audiences, recent events."""

from __future__ import annotations

from typing import Any

from shared.profiles import sources
from shared.profiles_table import memberships_of, profile_items, profile_pk, treatments_of

DEFAULT_EVENTS_LIMIT = 25
MAX_EVENTS_LIMIT = 100


class ProfileNotFound(Exception):
    """No identity, no last treatment, no audience state and no event for this key."""


def load_profile(
    environment: str,
    traffic_type: str,
    key: str,
    limit: int = DEFAULT_EVENTS_LIMIT,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The profile document (docs/profiles.md).

    Raises :class:`ProfileNotFound`, or ``sources.InvalidCursor`` for a cursor it did not give out.
    """
    pk = profile_pk(environment, traffic_type, key)
    page = sources.events_page(pk, limit, cursor)
    identity = sources.identity_item(pk)
    items = profile_items(pk)
    if identity is None and not items and not page.events and (cursor is None or not sources.has_events(pk)):
        raise ProfileNotFound(pk)
    return {
        "environment": environment,
        "trafficType": traffic_type,
        "key": key,
        "attributes": (identity or {}).get("attributes") or {},
        "treatments": treatments_of(items),
        # Audiences the identity is in or has left; not those it was only evaluated for (kept for
        # the scheduled re-check of a withinDays rule).
        "audiences": {
            name: m.member for name, m in sorted(memberships_of(items).items()) if m.member or m.transitions
        },
        "events": page.events,
        "next": page.next_cursor,
    }
