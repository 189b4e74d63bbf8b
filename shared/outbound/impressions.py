"""FME impressions as they arrive on the impressions queue, and their parsing.

An SQS message body is JSON in one of three shapes, mixable in one batch (SPEC section 3):

- the Split **impressions-webhook** shape, one object or an array of them;
- the SDK **impression-listener** shape, ``{"impression": {...}, "attributes", "ip", "hostname",
  "sdkLanguageVersion"}`` with ``environmentName`` (and optionally ``trafficType``) beside it;
- an **envelope**, ``{"environmentName", "trafficType", "impressions": [either shape, ...]}``.

Each is normalised to one :class:`Impression`. A body is first validated whole, straight from JSON
(the fast path); only when that fails is it taken apart item by item, so that one bad impression is
reported with its index and reason while the good ones beside it still go out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

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
    environmentName: str | None = None
    environmentId: str | None = None
    trafficType: str | None = None


def _item_shape(value: Any) -> str | None:
    if isinstance(value, dict):
        return "listener" if "impression" in value else "webhook"
    if isinstance(value, ListenerImpression | WebhookImpression):
        return "listener" if isinstance(value, ListenerImpression) else "webhook"
    return None


Item = Annotated[
    Annotated[WebhookImpression, Tag("webhook")] | Annotated[ListenerImpression, Tag("listener")],
    Discriminator(_item_shape),
]


class Envelope(_Input):
    """Many impressions in one SQS message: the cheap way at volume."""

    environmentName: str | None = None
    environmentId: str | None = None
    trafficType: str | None = None
    impressions: list[Item]


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


_BODY = TypeAdapter[Any](
    Annotated[
        Annotated[Envelope, Tag("envelope")]
        | Annotated[list[Item], Tag("webhook_list")]
        | Annotated[ListenerImpression, Tag("listener")]
        | Annotated[WebhookImpression, Tag("webhook")],
        Discriminator(_body_shape),
    ]
)


@dataclass(frozen=True, slots=True)
class Impression:
    """One impression, whatever shape it came in."""

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
        value = _BODY.validate_json(body)
    except ValidationError:
        return _parse_item_by_item(body)
    if isinstance(value, Envelope):
        parsed = ParsedBody("envelope")
        context = _Context(value.environmentName, value.environmentId, value.trafficType)
        for index, item in enumerate(value.impressions):
            _add(parsed, index, item, context)
    elif isinstance(value, list):
        parsed = ParsedBody("webhook_list")
        for index, item in enumerate(value):
            _add(parsed, index, item, _NO_CONTEXT)
    else:
        parsed = ParsedBody("listener" if isinstance(value, ListenerImpression) else "webhook")
        _add(parsed, 0, value, _NO_CONTEXT)
    return parsed


def _parse_item_by_item(body: str | bytes) -> ParsedBody:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BodyError(INVALID_JSON, f"body is not valid JSON: {exc}") from None
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
        where = {"envelope": f"impressions.{index}", "webhook_list": f"{index}"}.get(shape, "")
        if not isinstance(raw, dict):
            reason = f"{where or '(document)'}: must be an impression object, not {type(raw).__name__}"
            parsed.errors.append(ItemError(index, INVALID_IMPRESSION, reason))
            continue
        model = ListenerImpression if "impression" in raw else WebhookImpression
        try:
            item = model.model_validate(raw)
        except ValidationError as exc:
            reason = format_validation_error(exc)
            reason = f"{where}: {reason}" if where else reason
            parsed.errors.append(ItemError(index, INVALID_IMPRESSION, reason))
            continue
        _add(parsed, index, item, context)
    return parsed


def _add(parsed: ParsedBody, index: int, item: Any, context: _Context) -> None:
    impression = normalise(item, context)
    if impression.environment_name is None and impression.environment_id is None:
        parsed.errors.append(
            ItemError(
                index,
                NO_ENVIRONMENT,
                "no environmentName or environmentId on the impression or its envelope",
            )
        )
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
    sdk, sdk_version = split_sdk_language_version(item.sdkLanguageVersion)
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
        machine_ip=item.ip if isinstance(item.ip, str) else None,
        machine_name=item.hostname if isinstance(item.hostname, str) else None,
        sdk=sdk,
        sdk_version=sdk_version,
        properties=_properties(data.properties),
    )


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
    try:
        decoded = json.loads(value)
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
