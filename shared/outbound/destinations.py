"""Outbound configs as destinations, and which of them an impression goes to (docs/outbound.md).

Every config under ``{ConfigPrefix}/outbound/`` whose ``environments`` match the impression's
environment name or id (``"*"`` = all) and which maps the impression's traffic type (its own, or the
config's default) to a Segment identity receives the impression. None matching is a permanent error
for that impression, with a reason saying why.

An invalid config does not stop the valid ones. The impressions it may have been meant for (those of
the environments it names, when that much of it can be read; else all) are delivered to the valid
configs and retried, so that the fixed config receives them too (Segment drops the repeated
``messageId`` s at the others), or they reach the DLQ with the reason on their last receive.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from shared import config
from shared.config import ConfigError, ConfigInvalid, OutboundConfig
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


@dataclass(frozen=True)
class InvalidConfig:
    """An outbound config that does not validate, and which environments it names, when readable."""

    name: str
    reason: str
    environments: frozenset[str] | None  # None: unreadable, it may be meant for any environment

    def may_match(self, environment_name: str | None, environment_id: str | None) -> bool:
        if self.environments is None or "*" in self.environments:
            return True
        return environment_name in self.environments or environment_id in self.environments


def _named_environments(raw: str) -> frozenset[str] | None:
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    environments = document.get("environments") if isinstance(document, dict) else None
    if isinstance(environments, list) and environments and all(isinstance(e, str) for e in environments):
        return frozenset(environments)
    return None


@dataclass
class OutboundConfigs:
    destinations: list[Destination] = field(default_factory=list)
    invalid: list[InvalidConfig] = field(default_factory=list)


def load_outbound_configs() -> OutboundConfigs:
    """Every outbound config: the valid ones as destinations, the others with the reason."""
    found = OutboundConfigs()
    for name, value in sorted(config.list_parameters("outbound").items()):
        try:
            found.destinations.append(
                Destination(name, config.parse_config(OutboundConfig, value, config.outbound_name(name)))
            )
        except ConfigInvalid as exc:
            found.invalid.append(InvalidConfig(name, str(exc), _named_environments(value)))
    return found


def load_write_key(destination: Destination) -> str:
    return config.get_secret(config.outbound_name(destination.name))


class Router:
    """Routes impressions to destinations, memoised per (environment, traffic type)."""

    def __init__(self, destinations: list[Destination], invalid: list[InvalidConfig] | None = None) -> None:
        self.destinations = destinations
        self.invalid = invalid or []
        self._routes: dict[tuple[str | None, str | None, str | None], list[Route] | str] = {}
        self._blocked: dict[tuple[str | None, str | None], str | None] = {}

    def blocked(self, impression: Impression) -> str | None:
        """Why the impression is to be retried whatever its routes: an invalid config may be its."""
        if not self.invalid:
            return None
        cache_key = (impression.environment_name, impression.environment_id)
        if cache_key not in self._blocked:
            reasons = [
                f"outbound config {bad.name} is invalid: {bad.reason}"
                for bad in self.invalid
                if bad.may_match(impression.environment_name, impression.environment_id)
            ]
            self._blocked[cache_key] = "; ".join(reasons) or None
        return self._blocked[cache_key]

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
