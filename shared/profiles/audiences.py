"""The audience definition language (docs/profiles.md) and its evaluator.

An audience is an SSM parameter ``{ConfigPrefix}/audiences/{name}``::

    {"environment": "Production", "trafficType": "user",
     "rule": {"all": [{"performed": {"event": "checkout", "atLeast": 1, "withinDays": 7}},
                      {"treatment": {"split": "new_checkout", "is": "on"}},
                      {"not": {"attribute": {"name": "plan", "equals": "free"}}}]},
     "sync": ["<outbound config name>"]}

A rule is an object with exactly one key: ``all`` / ``any`` (a non-empty list of rules), ``not`` (one
rule), or a leaf — ``performed`` (stored FME events), ``treatment`` (last treatment of a flag),
``attribute`` (identity attribute). Evaluation is pure: it takes the profile's facts and a clock, and
also says when the result could next change with time alone (an event leaving a ``withinDays`` window),
which is what the scheduled re-check uses.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from shared.config import (
    EVENT_TYPE_ID_PATTERN,
    EnvironmentName,
    NonEmpty,
    TrafficTypeName,
    as_event_type_id,
    parse_config,
)

DAY_MS = 86_400_000
MAX_DEPTH = 8
MAX_LEAVES = 50
RULE_KINDS = ("all", "any", "not", "performed", "treatment", "attribute")
# An audience name becomes a Segment trait key and an SSM parameter name.
AUDIENCE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _event_type_id(value: str) -> str:
    """The event as stored: a rule may name it as Segment sends it (``Order Completed``), since the
    webhook stores a track's event with its spaces as ``_`` (``Order_Completed``)."""
    stored = as_event_type_id(value)
    if stored is not None:
        return stored
    raise ValueError(f"must be an FME event type id (matching ^{EVENT_TYPE_ID_PATTERN}$)")


EventTypeId = Annotated[str, AfterValidator(_event_type_id)]


def _scalar(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    raise ValueError("must be a string, a number or a boolean")


AttributeValue = Annotated[Any, AfterValidator(_scalar)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Performed(_Model):
    event: EventTypeId
    atLeast: int = Field(1, ge=1, le=100_000)
    withinDays: int | None = Field(None, ge=1, le=3650)


class TreatmentIs(_Model):
    split: NonEmpty
    is_: NonEmpty = Field(alias="is")


class AttributeEquals(_Model):
    name: NonEmpty
    equals: AttributeValue


class PerformedRule(_Model):
    performed: Performed


class TreatmentRule(_Model):
    treatment: TreatmentIs


class AttributeRule(_Model):
    attribute: AttributeEquals


class AllRule(_Model):
    all: list[Rule] = Field(min_length=1)


class AnyRule(_Model):
    any: list[Rule] = Field(min_length=1)


class NotRule(_Model):
    not_: Rule = Field(alias="not")


def _rule_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next(iter(value)) if len(value) == 1 else None
    if isinstance(value, BaseModel):
        return next(iter(value.model_fields_set), None)
    return None


Rule = Annotated[
    Annotated[AllRule, Tag("all")]
    | Annotated[AnyRule, Tag("any")]
    | Annotated[NotRule, Tag("not")]
    | Annotated[PerformedRule, Tag("performed")]
    | Annotated[TreatmentRule, Tag("treatment")]
    | Annotated[AttributeRule, Tag("attribute")],
    Discriminator(
        _rule_kind,
        custom_error_type="invalid_rule",
        custom_error_message=f"a rule is an object with exactly one key, one of: {', '.join(RULE_KINDS)}",
    ),
]

AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()


def _children(rule: BaseModel) -> list[BaseModel]:
    if isinstance(rule, AllRule):
        return list(rule.all)
    if isinstance(rule, AnyRule):
        return list(rule.any)
    if isinstance(rule, NotRule):
        return [rule.not_]
    return []


def _shape(rule: BaseModel, depth: int = 1) -> tuple[int, int]:
    """(depth, number of leaves) of a rule tree."""
    children = _children(rule)
    if not children:
        return depth, 1
    shapes = [_shape(c, depth + 1) for c in children]
    return max(d for d, _ in shapes), sum(n for _, n in shapes)


class AudienceConfig(_Model):
    environment: EnvironmentName
    trafficType: TrafficTypeName
    rule: Rule
    sync: list[NonEmpty] = Field(default_factory=list)

    @field_validator("rule")
    @classmethod
    def _bounded(cls, rule: BaseModel) -> BaseModel:
        # Every profile change evaluates every audience of its traffic type: keep rules small.
        depth, leaves = _shape(rule)
        if depth > MAX_DEPTH:
            raise ValueError(f"nests {depth} levels deep; at most {MAX_DEPTH} are allowed")
        if leaves > MAX_LEAVES:
            raise ValueError(f"has {leaves} conditions; at most {MAX_LEAVES} are allowed")
        return rule

    @field_validator("sync")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("names an outbound config more than once")
        return names

    def leaves(self) -> list[BaseModel]:
        out: list[BaseModel] = []
        stack: list[BaseModel] = [self.rule]
        while stack:
            rule = stack.pop()
            children = _children(rule)
            if children:
                stack.extend(children)
            else:
                out.append(rule)
        return out

    def performed(self) -> list[Performed]:
        return [leaf.performed for leaf in self.leaves() if isinstance(leaf, PerformedRule)]


def _location(loc: tuple[int | str, ...]) -> str:
    # A tagged union repeats the tag in the location (``rule.all.all.1``): keep one of each.
    parts: list[str] = []
    for part in map(str, loc):
        if not parts or parts[-1] != part:
            parts.append(part)
    return ".".join(parts) or "(document)"


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{_location(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors(include_url=False)
    )


def parse_audience(raw: str | bytes | dict[str, Any], source: str) -> AudienceConfig:
    """Validate an audience document; ``ConfigInvalid`` names ``source`` and the failing field."""
    return parse_config(AudienceConfig, raw, source, describe=_describe)


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class ProfileFacts:
    """What rules look at, for one identity."""

    attributes: Mapping[str, Any] = field(default_factory=dict)
    treatments: Mapping[str, str] = field(default_factory=dict)  # split -> last treatment
    # eventTypeId -> event timestamps (epoch ms), at least those inside the largest window needed
    event_times: Mapping[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    member: bool
    # The earliest time at which an event leaves a window that is currently satisfied; None if time
    # alone cannot change the result.
    recheck_at: int | None = None


def values_equal(stored: Any, wanted: Any) -> bool:
    """Whether an attribute value equals a rule's (or another stored value), as JSON values.

    True == 1 in Python; an attribute "true" (bool) must not match 1 (number) or the reverse.
    Numbers compare exactly (Python compares an int and a float by value): through ``float``,
    9007199254740993 would equal 9007199254740992.
    """
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    return bool(stored == wanted)


def _earliest(*times: int | None) -> int | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


def _evaluate(rule: BaseModel, facts: ProfileFacts, now_ms: int) -> tuple[bool, int | None]:
    if isinstance(rule, AllRule | AnyRule):
        children = rule.all if isinstance(rule, AllRule) else rule.any
        results = [_evaluate(c, facts, now_ms) for c in children]
        member = all(r for r, _ in results) if isinstance(rule, AllRule) else any(r for r, _ in results)
        return member, _earliest(*(t for _, t in results))
    if isinstance(rule, NotRule):
        member, recheck = _evaluate(rule.not_, facts, now_ms)
        return not member, recheck
    if isinstance(rule, PerformedRule):
        leaf = rule.performed
        times = sorted(facts.event_times.get(leaf.event, ()))
        if leaf.withinDays is None:
            return len(times) >= leaf.atLeast, None
        window = leaf.withinDays * DAY_MS
        inside = times[bisect.bisect_left(times, now_ms - window) :]
        if len(inside) < leaf.atLeast:
            return False, None  # fewer events can only become fewer with time
        # The result flips when the event that keeps the count at atLeast leaves the window.
        return True, inside[len(inside) - leaf.atLeast] + window
    if isinstance(rule, TreatmentRule):
        return facts.treatments.get(rule.treatment.split) == rule.treatment.is_, None
    if isinstance(rule, AttributeRule):
        name = rule.attribute.name
        return name in facts.attributes and values_equal(facts.attributes[name], rule.attribute.equals), None
    raise TypeError(f"unknown rule {type(rule).__name__}")


def evaluate(audience: AudienceConfig, facts: ProfileFacts, now_ms: int) -> Evaluation:
    member, recheck = _evaluate(audience.rule, facts, now_ms)
    return Evaluation(member, recheck)


@dataclass(frozen=True)
class EventNeeds:
    """Which stored events the audiences of one (environment, traffic type) look at."""

    event_types: frozenset[str]
    window_ms: int | None  # None: the whole stored history

    def since(self, now_ms: int) -> int:
        return 0 if self.window_ms is None else max(0, now_ms - self.window_ms)


def event_needs(audiences: Iterable[AudienceConfig]) -> EventNeeds:
    types: set[str] = set()
    window: int | None = 0
    for audience in audiences:
        for leaf in audience.performed():
            types.add(leaf.event)
            if leaf.withinDays is None or window is None:
                window = None
            else:
                window = max(window, leaf.withinDays * DAY_MS)
    return EventNeeds(frozenset(types), window)
