"""FME impressions as they arrive on the impressions queue, and their parsing.

An SQS message body is JSON in one of three shapes, mixable in one batch (SPEC section 3):

- the Split **impressions-webhook** shape, one object or an array of them;
- the SDK **impression-listener** shape, ``{"impression": {...}, "attributes", "ip", "hostname",
  "sdkLanguageVersion"}`` with ``environmentName`` (and optionally ``trafficType``) beside it;
- an **envelope**, ``{"environmentName", "trafficType", "impressions": [either shape, ...]}``.

Each is normalised to one :class:`Impression`. The pydantic models below define what is valid. At
tens of thousands of impressions per second, validating every item through them cost more than all
the rest of the handler, so each item first goes through :func:`_fast_impression`, which accepts only
items whose every field already has exactly the type the model wants (no coercion needed) and builds
the same :class:`Impression` the model would. Anything else — a numeric key, a bad time, a list where
a string belongs — goes through the model, which coerces it or reports the item with its index and
reason, while the good items beside it still go out.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from shared.config import format_validation_error

Shape = Literal["webhook", "webhook_list", "listener", "envelope"]

# Machine-readable reasons, also the DLQ's ``errorCode`` attribute and the metric dimension.
INVALID_JSON = "invalid_json"
INVALID_BODY = "invalid_body"
INVALID_IMPRESSION = "invalid_impression"
NO_ENVIRONMENT = "no_environment"


class _Input(BaseModel):
    # Vendors add fields over time (``pt``, ``instance-id``): unknown fields are ignored, not errors.
    # Keys may be numbers in some SDKs; they are keys all the same.
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, frozen=True)


Text = Annotated[str, Field(min_length=1)]
# Epoch milliseconds, up to the last millisecond of year 9999.
EpochMillis = Annotated[int, Field(ge=0, le=253402300799999)]
# Custom impression properties: an object, or the JSON string of one (as the SDKs store them).
Properties = dict[str, Any] | str | None


class WebhookImpression(_Input):
    """One element of Split's impressions webhook payload."""

    key: Text
    split: Text
    environmentId: str | None = None
    environmentName: str | None = None
    treatment: Text
    time: EpochMillis
    bucketingKey: str | None = None
    label: str | None = None
    machineName: str | None = None
    machineIp: str | None = None
    splitVersionNumber: int | None = None
    sdk: str | None = None
    sdkVersion: str | None = None
    properties: Properties = None
    trafficType: str | None = None


class ListenerImpressionData(_Input):
    feature: Text
    keyName: Text
    treatment: Text
    time: EpochMillis
    bucketingKey: str | None = None
    label: str | None = None
    changeNumber: int | None = None
    properties: Properties = None


class ListenerImpression(_Input):
    """What an SDK's impression listener receives, plus the environment it runs in."""

    impression: ListenerImpressionData
    attributes: dict[str, Any] | None = None
    # The JavaScript SDK sets ip / hostname to false when IPAddressesEnabled is off.
    ip: str | bool | None = None
    hostname: str | bool | None = None
    sdkLanguageVersion: str | None = None
    # The Python and PHP SDKs name these two "sdk-language-version" and "instance-id".
    sdk_language_version: str | None = Field(None, alias="sdk-language-version")
    instance_id: str | bool | None = Field(None, alias="instance-id")
    environmentName: str | None = None
    environmentId: str | None = None
    trafficType: str | None = None


class _EnvelopeHeader(_Input):
    environmentName: str | None = None
    environmentId: str | None = None
    trafficType: str | None = None
    impressions: list[Any]


def _body_shape(value: Any) -> str | None:
    if isinstance(value, list):
        return "webhook_list"
    if isinstance(value, dict):
        if "impressions" in value:
            return "envelope"
        return "listener" if "impression" in value else "webhook"
    return None


# Not frozen: a frozen dataclass sets each field through ``object.__setattr__``, which made building
# an impression cost more than parsing its JSON. Nothing changes an impression once it is parsed.
@dataclass(slots=True)
class Impression:
    """One impression, whatever shape it came in (read-only by convention: observers share it)."""

    key: str
    split: str
    treatment: str
    time: int  # epoch milliseconds
    environment_id: str | None
    environment_name: str | None
    traffic_type: str | None  # None: each outbound config's default applies
    bucketing_key: str | None = None
    label: str | None = None
    split_version_number: int | None = None
    machine_ip: str | None = None
    machine_name: str | None = None
    sdk: str | None = None
    sdk_version: str | None = None
    properties: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ItemError:
    """An impression that cannot be delivered whatever is retried (a permanent error)."""

    index: int
    code: str
    reason: str


@dataclass(slots=True)
class ParsedBody:
    shape: Shape
    impressions: list[tuple[int, Impression]] = field(default_factory=list)  # (item index, impression)
    errors: list[ItemError] = field(default_factory=list)


class BodyError(Exception):
    """The whole message is unusable (not JSON, not one of the shapes)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Context:
    environment_name: str | None = None
    environment_id: str | None = None
    traffic_type: str | None = None


_NO_CONTEXT = _Context()


def parse_body(body: str | bytes) -> ParsedBody:
    """Parse one SQS message body; raises :class:`BodyError` when nothing in it is usable."""
    try:
        data = from_json(body)
    except ValueError:
        try:  # the standard library's message says where the JSON breaks, in familiar words
            json.loads(body)
        except ValueError as exc:
            raise BodyError(INVALID_JSON, f"body is not valid JSON: {exc}") from None
        except RecursionError:  # a permanent error of this message, not a failure of the batch
            raise BodyError(INVALID_JSON, "body is not valid JSON: nested too deeply") from None
        raise BodyError(INVALID_JSON, "body is not valid JSON") from None
    shape = _body_shape(data)
    if shape is None:
        raise BodyError(INVALID_BODY, f"body must be a JSON object or array, not {type(data).__name__}")
    context = _NO_CONTEXT
    items: list[Any]
    if shape == "envelope":
        try:
            header = _EnvelopeHeader.model_validate(data)
        except ValidationError as exc:
            raise BodyError(INVALID_BODY, f"envelope: {format_validation_error(exc)}") from None
        context = _Context(header.environmentName, header.environmentId, header.trafficType)
        items = header.impressions
    else:
        items = data if shape == "webhook_list" else [data]
    parsed = ParsedBody(shape)  # type: ignore[arg-type]
    for index, raw in enumerate(items):
        impression = _fast_impression(raw, context) if type(raw) is dict else None
        if impression is None:
            _add_validated(parsed, shape, index, raw, context)
        elif impression.environment_name is None and impression.environment_id is None:
            parsed.errors.append(ItemError(index, NO_ENVIRONMENT, _NO_ENVIRONMENT_REASON))
        else:
            parsed.impressions.append((index, impression))
    return parsed


def _add_validated(parsed: ParsedBody, shape: str, index: int, raw: Any, context: _Context) -> None:
    """One item through its pydantic model: coerced and added, or reported with its index and reason."""
    where = {"envelope": f"impressions.{index}", "webhook_list": f"{index}"}.get(shape, "")
    if not isinstance(raw, dict):
        reason = f"{where or '(document)'}: must be an impression object, not {type(raw).__name__}"
        parsed.errors.append(ItemError(index, INVALID_IMPRESSION, reason))
        return
    model = ListenerImpression if "impression" in raw else WebhookImpression
    try:
        item = model.model_validate(raw)
    except ValidationError as exc:
        reason = format_validation_error(exc)
        reason = f"{where}: {reason}" if where else reason
        parsed.errors.append(ItemError(index, INVALID_IMPRESSION, reason))
        return
    _add(parsed, index, item, context)


_MAX_TIME = 253402300799999
# What SDKs report for the machine's IP and name when IPAddressesEnabled is off (Java: "NA").
NO_VALUE = frozenset({"NA", "unknown", ""})
_NO_ENVIRONMENT_REASON = "no environmentName or environmentId on the impression or its envelope"


def _fast_impression(raw: dict[str, Any], context: _Context) -> Impression | None:
    """The :class:`Impression` the model would give, for an item that needs no coercion; else None.

    Every field the model declares is checked for exactly the type it accepts without conversion
    (``type(x) is int``, not ``isinstance``: the model refuses ``true`` as a number); one doubt and
    the item goes through the model instead (see the module docstring). The checks are written out
    rather than called, as this runs once per impression.
    """
    get = raw.get
    data = get("impression")
    if data is not None or "impression" in raw:
        if type(data) is not dict:
            return None
        d = data.get
        key, split, treatment, time = d("keyName"), d("feature"), d("treatment"), d("time")
        bucketing_key, label, change_number, properties = (
            d("bucketingKey"),
            d("label"),
            d("changeNumber"),
            d("properties"),
        )
        ip, hostname, language_version = get("ip"), get("hostname"), get("sdkLanguageVersion")
        instance_id, dashed_version = get("instance-id"), get("sdk-language-version")
        attributes = get("attributes")
        if not (
            (type(key) is str and key != "")
            and (type(split) is str and split != "")
            and (type(treatment) is str and treatment != "")
            and type(time) is int
            and 0 <= time <= _MAX_TIME
            and (bucketing_key is None or type(bucketing_key) is str)
            and (label is None or type(label) is str)
            and (change_number is None or type(change_number) is int)
            and (properties is None or type(properties) is dict or type(properties) is str)
            and (attributes is None or type(attributes) is dict)
            and (ip is None or type(ip) is str or type(ip) is bool)
            and (hostname is None or type(hostname) is str or type(hostname) is bool)
            and (language_version is None or type(language_version) is str)
            and (instance_id is None or type(instance_id) is str or type(instance_id) is bool)
            and (dashed_version is None or type(dashed_version) is str)
        ):
            return None
        if hostname is None:
            hostname = instance_id
        if language_version is None:
            language_version = dashed_version
        environment_name, environment_id, traffic_type = (
            get("environmentName"),
            get("environmentId"),
            get("trafficType"),
        )
        if not (
            (environment_name is None or type(environment_name) is str)
            and (environment_id is None or type(environment_id) is str)
            and (traffic_type is None or type(traffic_type) is str)
        ):
            return None
        sdk, sdk_version = split_sdk_language_version(language_version)
        # Positional, in field order: fifteen keywords cost more than all the checks above.
        return Impression(
            key,
            split,
            treatment,
            time,
            environment_id or context.environment_id,
            environment_name or context.environment_name,
            traffic_type or context.traffic_type,
            bucketing_key,
            label,
            change_number,  # split_version_number
            ip if type(ip) is str and ip not in NO_VALUE else None,  # machine_ip
            hostname if type(hostname) is str and hostname not in NO_VALUE else None,  # machine_name
            sdk,
            sdk_version,
            None if properties is None else _properties(properties),
        )
    key, split, treatment, time = get("key"), get("split"), get("treatment"), get("time")
    environment_name, environment_id, traffic_type = (
        get("environmentName"),
        get("environmentId"),
        get("trafficType"),
    )
    bucketing_key, label, version, properties = (
        get("bucketingKey"),
        get("label"),
        get("splitVersionNumber"),
        get("properties"),
    )
    machine_name, machine_ip, sdk, sdk_version = (
        get("machineName"),
        get("machineIp"),
        get("sdk"),
        get("sdkVersion"),
    )
    if not (
        (type(key) is str and key != "")
        and (type(split) is str and split != "")
        and (type(treatment) is str and treatment != "")
        and type(time) is int
        and 0 <= time <= _MAX_TIME
        and (environment_name is None or type(environment_name) is str)
        and (environment_id is None or type(environment_id) is str)
        and (traffic_type is None or type(traffic_type) is str)
        and (bucketing_key is None or type(bucketing_key) is str)
        and (label is None or type(label) is str)
        and (version is None or type(version) is int)
        and (properties is None or type(properties) is dict or type(properties) is str)
        and (machine_name is None or type(machine_name) is str)
        and (machine_ip is None or type(machine_ip) is str)
        and (sdk is None or type(sdk) is str)
        and (sdk_version is None or type(sdk_version) is str)
    ):
        return None
    return Impression(
        key,
        split,
        treatment,
        time,
        environment_id or context.environment_id,
        environment_name or context.environment_name,
        traffic_type or context.traffic_type,
        bucketing_key,
        label,
        version,
        machine_ip,
        machine_name,
        sdk,
        sdk_version,
        None if properties is None else _properties(properties),
    )


def _add(parsed: ParsedBody, index: int, item: Any, context: _Context) -> None:
    impression = normalise(item, context)
    if impression.environment_name is None and impression.environment_id is None:
        parsed.errors.append(ItemError(index, NO_ENVIRONMENT, _NO_ENVIRONMENT_REASON))
        return
    parsed.impressions.append((index, impression))


def normalise(item: WebhookImpression | ListenerImpression, context: _Context = _NO_CONTEXT) -> Impression:
    if isinstance(item, WebhookImpression):
        return Impression(
            key=item.key,
            split=item.split,
            treatment=item.treatment,
            time=item.time,
            environment_id=item.environmentId or context.environment_id,
            environment_name=item.environmentName or context.environment_name,
            traffic_type=item.trafficType or context.traffic_type,
            bucketing_key=item.bucketingKey,
            label=item.label,
            split_version_number=item.splitVersionNumber,
            machine_ip=item.machineIp,
            machine_name=item.machineName,
            sdk=item.sdk,
            sdk_version=item.sdkVersion,
            properties=_properties(item.properties),
        )
    data = item.impression
    language_version = item.sdkLanguageVersion
    sdk, sdk_version = split_sdk_language_version(
        language_version if language_version is not None else item.sdk_language_version
    )
    hostname = item.hostname if item.hostname is not None else item.instance_id
    return Impression(
        key=data.keyName,
        split=data.feature,
        treatment=data.treatment,
        time=data.time,
        environment_id=item.environmentId or context.environment_id,
        environment_name=item.environmentName or context.environment_name,
        traffic_type=item.trafficType or context.traffic_type,
        bucketing_key=data.bucketingKey,
        label=data.label,
        split_version_number=data.changeNumber,
        machine_ip=item.ip if isinstance(item.ip, str) and item.ip not in NO_VALUE else None,
        machine_name=hostname if isinstance(hostname, str) and hostname not in NO_VALUE else None,
        sdk=sdk,
        sdk_version=sdk_version,
        properties=_properties(data.properties),
    )


# A handful of SDK versions per batch: each is split once.
@functools.lru_cache(maxsize=256)
def split_sdk_language_version(value: str | None) -> tuple[str | None, str | None]:
    """``"javascript-10.22.0"`` → ``("javascript", "10.22.0")``, as the webhook reports them."""
    if not value:
        return None, None
    language, sep, version = value.partition("-")
    if not sep or not version[:1].isdigit():
        return value, None
    return language, version


def _properties(value: Properties) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value or None
    try:  # the body's own decoder: several times faster than json.loads on these short strings
        decoded = from_json(value)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        return decoded or None
    # Not an object: keep it visible rather than drop it.
    return {"impressionProperties": value} if value else None


def subset_body(body: str, indexes: list[int]) -> str:
    """The body reduced to the impressions at ``indexes``, in a shape the queue accepts again.

    Dead-lettering only the failed impressions of a message means a redrive after the fix sends
    exactly those; a message whose impressions all failed is kept as it came.
    """
    data = json.loads(body)
    shape = _body_shape(data)
    if shape == "envelope" and isinstance(data.get("impressions"), list):
        items = data["impressions"]
        if len(indexes) < len(items):
            return json.dumps({**data, "impressions": [items[i] for i in indexes]}, separators=(",", ":"))
    elif shape == "webhook_list" and len(indexes) < len(data):
        return json.dumps([data[i] for i in indexes], separators=(",", ":"))
    return body
