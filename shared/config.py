"""User-facing configuration: pydantic models and their cached loading from SSM / Secrets Manager.

Names and shapes are those of docs/inbound.md, docs/outbound.md and docs/profiles.md. Configs are
JSON documents in SSM Parameter Store under ``CONFIG_PREFIX``; secrets are Secrets Manager
SecretStrings of the same name. Both are cached in the container (Powertools parameters,
``CONFIG_CACHE_SECONDS``) so that a hot path does not call SSM or Secrets Manager per request.

Three failures are kept apart, because callers answer them differently:
- :class:`ConfigNotFound`: the parameter or secret does not exist (an unknown connection → 401);
- :class:`ConfigInvalid`: it exists but does not validate; the message names the field;
- :class:`ConfigUnavailable`: SSM / Secrets Manager failed (throttling, outage) → retry later (503).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)

from shared import aws

# The local stack's prefix (`fme-bridge local`). The template sets CONFIG_PREFIX for every function;
# a function run without it (a test, a script) reads the local stack's configs.
LOCAL_CONFIG_PREFIX = "/fme-segment-bridge/local"
DEFAULT_SEGMENT_ENDPOINT = "https://api.segment.io/v1"  # an outbound config's, when it names none
DEFAULT_CACHE_SECONDS = 120

SegmentIdField = Literal["userId", "anonymousId"]
NonEmpty = Annotated[str, Field(min_length=1, max_length=200)]
# An FME traffic type or environment name: what FME's own UI accepts.
TRAFFIC_TYPE_NAME_PATTERN = r"[a-zA-Z0-9][-_a-zA-Z0-9]{0,79}"
TrafficTypeName = Annotated[str, Field(pattern=f"^{TRAFFIC_TYPE_NAME_PATTERN}$")]


def _no_hash(value: str) -> str:
    if "#" in value:
        raise ValueError(
            "must not contain '#': it separates environment, traffic type and key in stored keys"
        )
    return value


# An FME environment as a config names it; "#" would make a stored profile's key ambiguous.
EnvironmentName = Annotated[NonEmpty, AfterValidator(_no_hash)]
# A dotted path into a Segment message, e.g. ``event`` or ``properties.eventName``; names may hold
# anything but a dot (``properties.Order Total``: Segment does not restrict property names).
FieldPath = Annotated[str, Field(pattern=r"^[^.]+(\.[^.]+)*$", max_length=200)]
# An FME event type id, once spaces have become "_".
EVENT_TYPE_ID_PATTERN = r"[a-zA-Z0-9][-_.:a-zA-Z0-9]{0,79}"
_EVENT_TYPE_ID = re.compile(EVENT_TYPE_ID_PATTERN)


def as_event_type_id(name: str) -> str | None:
    """``name`` as the bridge stores it as an FME event type id (spaces become ``_``: a track's
    ``Order Completed`` is ``Order_Completed``), or None when FME would not take it."""
    candidate = name.replace(" ", "_")
    return candidate if _EVENT_TYPE_ID.fullmatch(candidate) else None


class ConfigError(Exception):
    """Base class of configuration failures."""


class ConfigNotFound(ConfigError):
    """The parameter or secret does not exist."""


class ConfigInvalid(ConfigError):
    """The parameter exists but is not a valid document; the message names the field.

    ``problem`` is the message without the parameter's name: what a caller may be told.
    """

    def __init__(self, source: str, problem: str = "does not validate") -> None:
        super().__init__(f"{source}: {problem}")
        self.problem = problem


class ConfigUnavailable(ConfigError):
    """SSM or Secrets Manager could not be reached or refused for a transient reason."""


class _Model(BaseModel):
    # Unknown fields are an error: a typo such as ``enableTrak`` must not become a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Inbound: Segment -> FME (docs/inbound.md, docs/delivery.md)


class IdentityMapping(_Model):
    segmentId: SegmentIdField
    trafficType: TrafficTypeName


class DeliveryConfig(_Model):
    """Delivery of stored events and identities into FME itself (docs/delivery.md)."""

    enabled: bool = False
    eventsEndpoint: HttpUrl = HttpUrl("https://events.split.io/api")
    identitiesEndpoint: HttpUrl = HttpUrl("https://api.split.io/internal/api/v2")


class InboundConfig(_Model):
    environment: EnvironmentName
    identities: list[IdentityMapping] = Field(min_length=1)
    enableIdentify: bool = True
    enableTrack: bool = True
    eventTypeIdField: FieldPath = "event"
    valueField: FieldPath | None = None
    trackNamedPages: bool = True
    trackNamedScreens: bool = True
    pageEventTypeId: NonEmpty = "view_{name}_page"
    screenEventTypeId: NonEmpty = "view_{name}_screen"
    delivery: DeliveryConfig = DeliveryConfig()

    @field_validator("eventTypeIdField", "valueField")
    @classmethod
    def _no_space_around_names(cls, value: str | None) -> str | None:
        if value is not None and any(part != part.strip() for part in value.split(".")):
            raise ValueError("a name in the path starts or ends with a space")
        return value

    @field_validator("pageEventTypeId", "screenEventTypeId")
    @classmethod
    def _makes_event_type_ids(cls, value: str) -> str:
        sample = value.replace("{name}", "x")
        if "{" in sample or "}" in sample:
            raise ValueError("the only placeholder is {name}")
        if as_event_type_id(sample) is None:
            raise ValueError(
                "must make FME event type ids: letters, digits, '-', '_', '.', ':' (spaces become '_'), "
                "starting with a letter or digit"
            )
        return value


class FmeKeys(_Model):
    """Secret ``{prefix}/inbound/{connectionId}/fme``: the keys used to deliver into FME."""

    sdkKey: NonEmpty
    adminKey: NonEmpty | None = None


# ---------------------------------------------------------------------------------------------
# Outbound: FME impressions -> Segment (docs/outbound.md, docs/profiles.md)


class ComputedTraitsConfig(_Model):
    enabled: bool = False
    traitName: NonEmpty = "{split}"

    @field_validator("traitName")
    @classmethod
    def _has_split_placeholder(cls, value: str) -> str:
        if "{split}" not in value:
            raise ValueError("must contain the placeholder {split}")
        return value


class OutboundConfig(_Model):
    environments: list[NonEmpty] = Field(min_length=1)
    identities: dict[TrafficTypeName, SegmentIdField] = Field(min_length=1)
    defaultTrafficType: TrafficTypeName | None = None
    endpoint: HttpUrl = HttpUrl(DEFAULT_SEGMENT_ENDPOINT)
    eventName: NonEmpty = "get_treatment"
    # Requests compressed (Content-Encoding: gzip): about a sixth of the bytes, for a few
    # microseconds of CPU per message. Off by default, as in Segment's own libraries, because a
    # proxy or sink in front of Segment may not inflate bodies.
    gzip: bool = False
    computedTraits: ComputedTraitsConfig = ComputedTraitsConfig()

    @model_validator(mode="after")
    def _default_traffic_type_is_mapped(self) -> OutboundConfig:
        if self.defaultTrafficType is not None and self.defaultTrafficType not in self.identities:
            raise ValueError(
                f"defaultTrafficType {self.defaultTrafficType!r} is not a key of identities "
                f"({', '.join(sorted(self.identities))})"
            )
        return self

    @property
    def traffic_type_default(self) -> str:
        """The traffic type of an impression that names none: the configured one, else the first mapped."""
        return self.defaultTrafficType or next(iter(self.identities))

    def matches_environment(self, name: str | None, environment_id: str | None) -> bool:
        if "*" in self.environments:
            return True
        return (name is not None and name in self.environments) or (
            environment_id is not None and environment_id in self.environments
        )

    @property
    def endpoint_base(self) -> str:
        return str(self.endpoint).rstrip("/")


# ---------------------------------------------------------------------------------------------
# Parsing with errors that name the field

M = TypeVar("M", bound=BaseModel)


def format_validation_error(exc: ValidationError) -> str:
    """``identities.0.segmentId: Input should be 'userId' or 'anonymousId'; …``"""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_config(
    model: type[M],
    raw: str | bytes | dict[str, Any],
    source: str,
    describe: Callable[[ValidationError], str] = format_validation_error,
) -> M:
    """Validate a config document; :class:`ConfigInvalid` names ``source`` and the failing fields."""
    try:
        data = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except ValueError as exc:
        raise ConfigInvalid(source, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigInvalid(source, "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigInvalid(source, describe(exc)) from None


# ---------------------------------------------------------------------------------------------
# Cached loading


def config_prefix() -> str:
    # An empty (or "/") prefix would put every config at the root: it means the local stack's.
    return os.environ.get("CONFIG_PREFIX", "").rstrip("/") or LOCAL_CONFIG_PREFIX


def cache_seconds() -> int:
    return int(os.environ.get("CONFIG_CACHE_SECONDS", DEFAULT_CACHE_SECONDS))


def inbound_name(connection_id: str) -> str:
    return f"{config_prefix()}/inbound/{connection_id}"


def outbound_name(name: str) -> str:
    return f"{config_prefix()}/outbound/{name}"


def audience_name(name: str) -> str:
    return f"{config_prefix()}/audiences/{name}"


# Powertools caches by name only, so the previous secret version needs a provider of its own.
_providers: dict[str, Any] = {}


def _provider(kind: str) -> Any:
    if kind not in _providers:
        # The same short timeouts and bounded retries as every other client: with botocore's
        # defaults (60 s timeouts, legacy retries) an SSM outage outlasts the webhook's 9 s and
        # Segment sees a Lambda timeout instead of a 503.
        # The process's shared clients (shared.aws), not a new session each: see shared.aws.
        _providers[kind] = (
            SSMProvider(boto3_client=aws.client("ssm"))
            if kind == "ssm"
            else SecretsProvider(boto3_client=aws.client("secretsmanager"))
        )
    return _providers[kind]


def clear_caches() -> None:
    """Drop every cached config and secret (tests, and the CLI after a write)."""
    parameters.clear_caches()
    for provider in _providers.values():
        provider.clear_cache()
    _providers.clear()


_NOT_FOUND_CODES = {"ParameterNotFound", "ResourceNotFoundException", "ParameterVersionNotFound"}


def _aws_error_code(exc: BaseException) -> str | None:
    """Powertools wraps SDK errors in GetParameterError; the original is its ``__context__``."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
        seen = seen.__cause__ or seen.__context__
    return None


def _fetch(kind: str, name: str, fresh: bool = False, **sdk_options: Any) -> str:
    try:
        value = _provider(kind).get(name, max_age=cache_seconds(), force_fetch=fresh, **sdk_options)
    except parameters.exceptions.GetParameterError as exc:
        code = _aws_error_code(exc)
        # A secret scheduled for deletion answers InvalidRequestException: for the bridge it is gone.
        if code in _NOT_FOUND_CODES or (kind != "ssm" and code == "InvalidRequestException"):
            raise ConfigNotFound(name) from None
        raise ConfigUnavailable(f"{name}: {code or 'error'}") from None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def get_parameter(name: str) -> str:
    # A SecureString config is read decrypted; decryption changes nothing for a String.
    return _fetch("ssm", name, decrypt=True)


def get_secret(name: str, previous: bool = False, fresh: bool = False) -> str:
    """A SecretString; ``previous=True`` reads the ``AWSPREVIOUS`` version (rotation), ``fresh=True``
    reads past the cache (and caches what it read)."""
    if previous:
        return _fetch("secret-previous", name, fresh, VersionStage="AWSPREVIOUS")
    return _fetch("secret", name, fresh)


def load_inbound(connection_id: str) -> InboundConfig:
    name = inbound_name(connection_id)
    return parse_config(InboundConfig, get_parameter(name), name)


def load_outbound(name: str) -> OutboundConfig:
    full = outbound_name(name)
    return parse_config(OutboundConfig, get_parameter(full), full)


def list_parameters(kind: str) -> dict[str, str]:
    """All parameters below ``{prefix}/{kind}/`` as ``{short name: raw value}`` (cached)."""
    path = f"{config_prefix()}/{kind}"
    try:
        values = _provider("ssm").get_multiple(path, max_age=cache_seconds(), recursive=False, decrypt=True)
    except parameters.exceptions.GetParameterError as exc:
        raise ConfigUnavailable(f"{path}: {_aws_error_code(exc) or 'error'}") from None
    return {str(k).rsplit("/", 1)[-1]: str(v) for k, v in values.items()}
