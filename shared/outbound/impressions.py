"""FME impressions as they arrive on the impressions queue, and their parsing.

An SQS message body is JSON in one of three shapes, mixable in one batch (docs/outbound.md):

- the Split **impressions-webhook** shape, one object or an array of them;
- the SDK **impression-listener** shape, ``{"impression": {...}, "attributes", "ip", "hostname",
  "sdkLanguageVersion"}`` with ``environmentName`` (and optionally ``trafficType``) beside it;
- an **envelope**, ``{"environmentName", "trafficType", "impressions": [either shape, ...]}``.

Each is normalised to one :class:`Impression`. The pydantic models below define what is valid. At
tens of thousands of impressions per second, validating every item through them cost more than all
the rest of the handler, so a body is first decoded by msgspec into plain structs that accept only
what the models accept without coercion (exactly these types: ``true`` is no number, ``1.0`` no
integer), checked while the JSON is read. Only a body that does not decode that way — a numeric key,
a bad time, a list where a string belongs, or not JSON at all — is read again item by item: each item
that fits the plain struct still needs no model, and the others go through theirs, which coerces them
or reports them with their index and reason, while the good items beside them still go out.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from shared.config import format_validation_error
from shared.surrogates import replace_lone_surrogates

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
_MAX_TIME = 253402300799999
EpochMillis = Annotated[int, Field(ge=0, le=_MAX_TIME)]
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
    # The Java SDK's ``Impression`` accessors name these two; label / splitVersionNumber win.
    appliedRule: str | None = None
    changeNumber: int | None = None


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
        return "listener" if "impression" in value or "Impression" in value else "webhook"
    return None


# What other SDKs hand their impression listeners, serialised as they come, in the listener shape's
# names (docs/outbound.md): Go's ``ILObject`` (``Impression``, ``Attributes``, ``InstanceID``,
# ``SDKLanguageVersion``, the impression in the one-letter names of go-split-commons or as Go's field
# names), Python's ``Impression`` named tuple (``_asdict()``, or ``json.dumps`` of it: a list in
# field order), Ruby's impression router hash (``split_name``, ``matching_key``, ``treatment`` a hash
# of ``treatment``, ``label``, ``change_number``), and the impression alone, unwrapped, as .NET's
# ``KeyImpression`` (its ``Feature`` is ``[JsonIgnore]``d: its senders add the flag themselves) or
# Java's ``Impression`` serialised field by field (``_key``, ``_split``, ``_appliedRule``, …). PHP's
# listener data is the listener shape but for the matching key, which its ``Impression`` names ``id``.
_LISTENER_NAMES = {
    "Impression": "impression",
    "Attributes": "attributes",
    "InstanceID": "instance-id",
    "SDKLanguageVersion": "sdkLanguageVersion",
}
_IMPRESSION_NAMES = {
    **dict.fromkeys(("k", "KeyName", "matching_key", "matchingKey", "_key"), "keyName"),
    **dict.fromkeys(
        ("f", "Feature", "FeatureName", "featureName", "feature_name", "_split", "_featureFlag"), "feature"
    ),
    **dict.fromkeys(("t", "Treatment", "_treatment"), "treatment"),
    **dict.fromkeys(("m", "Time", "_time"), "time"),
    **dict.fromkeys(("b", "BucketingKey", "bucketing_key", "_bucketingKey"), "bucketingKey"),
    **dict.fromkeys(("r", "Label", "_appliedRule", "appliedRule"), "label"),
    **dict.fromkeys(("c", "ChangeNumber", "change_number", "_changeNumber"), "changeNumber"),
    **dict.fromkeys(("Properties", "_properties"), "properties"),
}
# Ruby's router hash: the impression's own fields, its treatment a hash of three.
_RUBY_NAMES = {
    "split_name": "feature",
    "matching_key": "keyName",
    "bucketing_key": "bucketingKey",
    "time": "time",
}
_RUBY_TREATMENT_NAMES = {"treatment": "treatment", "label": "label", "change_number": "changeNumber"}
_PYTHON_FIELDS = (
    "matching_key", "feature_name", "treatment", "label", "change_number", "bucketing_key", "time",
    "previous_time", "properties",
)  # fmt: skip
# The named tuple's fields up to ``time`` are always there; ``previous_time`` and ``properties`` came later.
_PYTHON_REQUIRED = 7
_CONTEXT_FIELDS = ("environmentName", "environmentId", "trafficType")


def listener_spelling(raw: dict[str, Any]) -> dict[str, Any] | None:
    """``raw`` in the listener shape's names, or None if it is not another SDK's spelling of it."""
    item: dict[str, Any]
    data: Any
    translated = False
    if "Impression" in raw and "impression" not in raw:
        item = {_LISTENER_NAMES.get(name, name): value for name, value in raw.items()}
        data, translated = item["impression"], True
    elif "impression" in raw:
        item, data = dict(raw), raw["impression"]
    elif "split_name" in raw and "matching_key" in raw:
        item = {name: raw[name] for name in (*_CONTEXT_FIELDS, "attributes") if name in raw}
        data = {canonical: raw[name] for name, canonical in _RUBY_NAMES.items() if name in raw}
        treatment = raw.get("treatment")
        if isinstance(treatment, dict):
            data.update((c, treatment[n]) for n, c in _RUBY_TREATMENT_NAMES.items() if n in treatment)
        elif "treatment" in raw:
            data["treatment"] = treatment
        if "properties" in raw:
            data["properties"] = raw["properties"]
        translated = True
    elif ("keyName" in raw or "KeyName" in raw or "_key" in raw) and "key" not in raw and "split" not in raw:
        item = {name: raw[name] for name in _CONTEXT_FIELDS if name in raw}
        data, translated = raw, True
    else:
        return None
    if isinstance(data, list) and _PYTHON_REQUIRED <= len(data) <= len(_PYTHON_FIELDS):
        data, translated = dict(zip(_PYTHON_FIELDS, data, strict=False)), True
    if not isinstance(data, dict):
        return None
    renamed = {}
    for name, value in data.items():
        canonical = _IMPRESSION_NAMES.get(name, name)
        if canonical != name and canonical in data:
            continue  # the listener shape's own name wins over another SDK's
        if name == "id" and not any(_IMPRESSION_NAMES.get(n, n) == "keyName" for n in data):
            canonical = "keyName"  # PHP's name for the matching key, when the impression has no other
        translated = translated or canonical != name
        # Go's zero value: no bucketing key.
        renamed[canonical] = None if value == "" and name in ("b", "BucketingKey") else value
    if not translated:
        return None
    item["impression"] = renamed
    return item


# A struct rather than a dataclass: built once per impression, it is constructed in C (under half
# the time) and, as nothing it holds can refer back to it, left out of the garbage collector's
# tracking. Not frozen: nothing changes an impression once it is parsed.
class Impression(msgspec.Struct, gc=False):
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

# Exactly what the models above accept without coercion, for msgspec to check while it decodes: a
# body that decodes into these needs no model (see the module docstring). Shapes are told apart as
# _body_shape tells them: an item with ``impression`` is a listener item, one without a webhook item.
_PlainText = Annotated[str, msgspec.Meta(min_length=1)]
_PlainMillis = Annotated[int, msgspec.Meta(ge=0, le=_MAX_TIME)]
_PlainProperties = dict[str, Any] | str | None


class _PlainListenerData(msgspec.Struct):
    feature: _PlainText
    keyName: _PlainText
    treatment: _PlainText
    time: _PlainMillis
    bucketingKey: str | None = None
    label: str | None = None
    changeNumber: int | None = None
    properties: _PlainProperties = None


class _PlainItem(msgspec.Struct):
    """The fields of both item shapes; the webhook shape's required ones are checked on conversion."""

    environmentName: str | None = None
    environmentId: str | None = None
    trafficType: str | None = None
    # The webhook shape.
    key: _PlainText | None = None
    split: _PlainText | None = None
    treatment: _PlainText | None = None
    time: _PlainMillis | None = None
    bucketingKey: str | None = None
    label: str | None = None
    machineName: str | None = None
    machineIp: str | None = None
    splitVersionNumber: int | None = None
    sdk: str | None = None
    sdkVersion: str | None = None
    properties: _PlainProperties = None
    appliedRule: str | None = None
    changeNumber: int | None = None
    # The listener shape (``"impression": null`` is not one: the model refuses it).
    impression: _PlainListenerData | msgspec.UnsetType = msgspec.UNSET
    attributes: dict[str, Any] | None = None
    ip: str | bool | None = None
    hostname: str | bool | None = None
    sdkLanguageVersion: str | None = None
    sdk_language_version: str | None = msgspec.field(default=None, name="sdk-language-version")
    instance_id: str | bool | None = msgspec.field(default=None, name="instance-id")


class _PlainBody(_PlainItem):
    """A single item, or an envelope (its header is the item fields it shares)."""

    impressions: list[_PlainItem] | msgspec.UnsetType = msgspec.UNSET


_PLAIN_BODY = msgspec.json.Decoder(_PlainBody | list[_PlainItem])


def parse_body(body: str | bytes) -> ParsedBody:
    """Parse one SQS message body; raises :class:`BodyError` when nothing in it is usable."""
    try:
        plain = _PLAIN_BODY.decode(body)
    # Not JSON (or not UTF-8), too deep, or something in it needs a model: the path below tells.
    # msgspec's decode and validation errors are ValueErrors, as is a str that is not text.
    except (ValueError, RecursionError):
        pass
    else:
        parsed = _parse_plain(plain)
        if parsed is not None:
            return parsed
    try:
        data = from_json(body)
    except (ValueError, TypeError):  # TypeError: a str that is not text (a lone surrogate)
        try:  # the standard library's message says where the JSON breaks, in familiar words
            data = json.loads(body)
        except ValueError as exc:
            raise BodyError(INVALID_JSON, f"body is not valid JSON: {exc}") from None
        except RecursionError:  # a permanent error of this message, not a failure of the batch
            raise BodyError(INVALID_JSON, "body is not valid JSON: nested too deeply") from None
        # JSON that only the standard library reads: a lone surrogate escape (a string cut inside
        # an emoji), read as U+FFFD as the webhook does, so that its impression is sent as well.
        data = replace_lone_surrogates(data)
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
        context = _Context(
            header.environmentName or None, header.environmentId or None, header.trafficType or None
        )
        items = header.impressions
    else:
        items = data if shape == "webhook_list" else [data]
    parsed = ParsedBody(shape)  # type: ignore[arg-type]
    for index, raw in enumerate(items):
        # The items beside a coercible or invalid one need no model either.
        try:
            impression = _from_plain(msgspec.convert(raw, _PlainItem), context)
        except msgspec.ValidationError:
            impression = None
        if impression is None:
            _add_validated(parsed, shape, index, raw, context)
        else:
            _add(parsed, index, impression)
    return parsed


def _parse_plain(plain: _PlainBody | list[_PlainItem]) -> ParsedBody | None:
    """The body msgspec decoded, or None if one of its items needs its model after all."""
    context = _NO_CONTEXT
    items: list[_PlainItem]
    if isinstance(plain, list):
        shape, items = "webhook_list", plain
    elif plain.impressions is msgspec.UNSET:
        shape, items = ("webhook" if plain.impression is msgspec.UNSET else "listener"), [plain]
    else:
        shape, items = "envelope", plain.impressions
        context = _Context(
            plain.environmentName or None, plain.environmentId or None, plain.trafficType or None
        )
    parsed = ParsedBody(shape)  # type: ignore[arg-type]
    for index, item in enumerate(items):
        impression = _from_plain(item, context)
        if impression is None:
            return None
        _add(parsed, index, impression)
    return parsed


def _add_validated(parsed: ParsedBody, shape: str, index: int, raw: Any, context: _Context) -> None:
    """One item through its pydantic model: coerced and added, or reported with its index and reason."""
    where = {"envelope": f"impressions.{index}", "webhook_list": f"{index}"}.get(shape, "")
    if not isinstance(raw, dict):
        reason = f"{where or '(document)'}: must be an impression object, not {type(raw).__name__}"
        parsed.errors.append(ItemError(index, INVALID_IMPRESSION, reason))
        return
    listener = listener_spelling(raw)
    if listener is not None:
        raw = listener
    model = ListenerImpression if "impression" in raw else WebhookImpression
    try:
        item = model.model_validate(raw)
    except ValidationError as exc:
        reason = format_validation_error(exc)
        reason = f"{where}: {reason}" if where else reason
        parsed.errors.append(ItemError(index, INVALID_IMPRESSION, reason))
        return
    _add(parsed, index, normalise(item, context))


# What SDKs report for the machine's IP and name when IPAddressesEnabled is off (Java: "NA").
NO_VALUE = frozenset({"NA", "unknown", ""})
_NO_ENVIRONMENT_REASON = "no environmentName or environmentId on the impression or its envelope"


def _add(parsed: ParsedBody, index: int, impression: Impression) -> None:
    if impression.environment_name is None and impression.environment_id is None:
        parsed.errors.append(ItemError(index, NO_ENVIRONMENT, _NO_ENVIRONMENT_REASON))
    else:
        parsed.impressions.append((index, impression))


def _from_plain(item: _PlainItem, context: _Context) -> Impression | None:
    """The item's impression; None when a field its shape requires is missing (its model says which)."""
    if item.impression is not msgspec.UNSET:
        return _listener(item, item.impression, context)
    if item.key is None or item.split is None or item.treatment is None or item.time is None:
        return None
    return _webhook(item, context)


def normalise(item: WebhookImpression | ListenerImpression, context: _Context = _NO_CONTEXT) -> Impression:
    if isinstance(item, WebhookImpression):
        return _webhook(item, context)
    return _listener(item, item.impression, context)


# The two below take a validated model or its plain twin, which have the same attribute names. They
# pass the impression's fields by position, in field order: keywords cost more than the rest here.


def impression_environment(
    own_id: str | None, own_name: str | None, outer_id: str | None, outer_name: str | None
) -> tuple[str | None, str | None]:
    """(id, name) of an impression: its own, completed by its envelope's only where the envelope
    names the same environment (an id of one environment and the name of another would route the
    impression to the name's configs). Empty is none."""
    own_id, own_name = own_id or None, own_name or None
    if own_id is None and own_name is None:
        return outer_id, outer_name
    if own_id is None and own_name == outer_name:
        return outer_id, own_name
    if own_name is None and own_id == outer_id:
        return own_id, outer_name
    return own_id, own_name


def _webhook(item: Any, context: _Context) -> Impression:
    environment_id, environment_name = impression_environment(
        item.environmentId, item.environmentName, context.environment_id, context.environment_name
    )
    return Impression(
        item.key,
        item.split,
        item.treatment,
        item.time,
        environment_id,
        environment_name,
        item.trafficType or context.traffic_type,
        item.bucketingKey,
        item.label if item.label is not None else item.appliedRule,
        item.splitVersionNumber if item.splitVersionNumber is not None else item.changeNumber,
        item.machineIp,
        item.machineName,
        item.sdk,
        item.sdkVersion,
        None if item.properties is None else _properties(item.properties),
    )


def _listener(item: Any, data: Any, context: _Context) -> Impression:
    language_version = item.sdkLanguageVersion
    sdk, sdk_version = split_sdk_language_version(
        language_version if language_version is not None else item.sdk_language_version
    )
    hostname, ip = item.hostname, item.ip
    if hostname is None:
        hostname = item.instance_id
        if ip is None and type(hostname) is str and _is_ip_address(hostname):
            hostname, ip = None, hostname  # PHP's instance-id is the host's IP address
    environment_id, environment_name = impression_environment(
        item.environmentId, item.environmentName, context.environment_id, context.environment_name
    )
    return Impression(
        data.keyName,
        data.feature,
        data.treatment,
        data.time,
        environment_id,
        environment_name,
        item.trafficType or context.traffic_type,
        data.bucketingKey,
        data.label,
        data.changeNumber,
        ip if type(ip) is str and ip not in NO_VALUE else None,  # machine_ip
        hostname if type(hostname) is str and hostname not in NO_VALUE else None,  # machine_name
        sdk,
        sdk_version,
        None if data.properties is None else _properties(data.properties),
    )


@functools.lru_cache(maxsize=256)
def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


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
    try:
        data = json.loads(body)
    except RecursionError:  # valid, but nested deeper than this decoder goes: kept as it came
        return body
    shape = _body_shape(data)
    if shape == "envelope" and isinstance(data.get("impressions"), list):
        items = data["impressions"]
        if len(indexes) < len(items):
            return json.dumps({**data, "impressions": [items[i] for i in indexes]}, separators=(",", ":"))
    elif shape == "webhook_list" and len(indexes) < len(data):
        return json.dumps([data[i] for i in indexes], separators=(",", ":"))
    return body
