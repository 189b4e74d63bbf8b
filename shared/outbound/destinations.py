"""Outbound configs as destinations, and which of them an impression goes to (SPEC section 1.2).

Every config under ``{ConfigPrefix}/outbound/`` whose ``environments`` match the impression's
environment name or id (``"*"`` = all) and which maps the impression's traffic type (its own, or the
config's default) to a Segment identity receives the impression. None matching is a permanent error
for that impression, with a reason saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared import config
from shared.config import ConfigError, OutboundConfig
from shared.outbound.impressions import Impression
from shared.outbound.segment_messages import identity_field, traffic_type_of

NO_MATCHING_CONFIG = "no_matching_config"


@dataclass(frozen=True)
class Destination:
    """One outbound config: a Segment source (write key) at an endpoint."""

    name: str
    config: OutboundConfig

    @property
    def endpoint(self) -> str:
        return self.config.endpoint_base


Route = tuple[Destination, str]  # destination, identity field (userId / anonymousId)


def load_destinations() -> list[Destination]:
    """Every outbound config, validated; :class:`shared.config.ConfigInvalid` names a bad one."""
    raw = config.list_parameters("outbound")
    return [
        Destination(name, config.parse_config(OutboundConfig, value, config.outbound_name(name)))
        for name, value in sorted(raw.items())
    ]


def load_write_key(destination: Destination) -> str:
    return config.get_secret(config.outbound_name(destination.name))


class Router:
    """Routes impressions to destinations, memoised per (environment, traffic type)."""

    def __init__(self, destinations: list[Destination]) -> None:
        self.destinations = destinations
        self._routes: dict[tuple[str | None, str | None, str | None], list[Route] | str] = {}

    def routes(self, impression: Impression) -> list[Route] | str:
        """The (destination, identity field) pairs, or the reason there are none."""
        cache_key = (impression.environment_name, impression.environment_id, impression.traffic_type)
        found = self._routes.get(cache_key)
        if found is None:
            found = self._route(impression)
            self._routes[cache_key] = found
        return found

    def _route(self, impression: Impression) -> list[Route] | str:
        in_environment = [
            d
            for d in self.destinations
            if d.config.matches_environment(impression.environment_name, impression.environment_id)
        ]
        routes: list[Route] = []
        for destination in in_environment:
            identity = identity_field(impression, destination.config)
            if identity is not None:
                routes.append((destination, identity))
        if routes:
            return routes
        environment = impression.environment_name or impression.environment_id
        if not in_environment:
            return f"no outbound config matches environment {environment!r}"
        traffic_types = sorted({traffic_type_of(impression, d.config) for d in in_environment})
        names = ", ".join(d.name for d in in_environment)
        return f"traffic type {'/'.join(traffic_types)!r} is not mapped by outbound config(s) {names}"


class WriteKeys:
    """Write keys looked up once per destination per invocation (the lookup itself is cached)."""

    def __init__(self, lookup: Callable[[Destination], str] = load_write_key) -> None:
        self._lookup = lookup
        self._keys: dict[str, str | ConfigError] = {}

    def get(self, destination: Destination) -> str:
        if destination.name not in self._keys:
            try:
                self._keys[destination.name] = self._lookup(destination)
            except ConfigError as exc:
                self._keys[destination.name] = exc
        found = self._keys[destination.name]
        if isinstance(found, ConfigError):
            raise found
        return found
