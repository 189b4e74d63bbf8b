"""Impressions decoded by msgspec without their models give exactly what the pydantic models give.

Items are generated with every field either right, absent, or of a wrong or coercible type; each
parsed body must equal, item by item, what validating that item through its model and normalising
it yields — the same impressions, the same items refused. And the vendors' own payloads need no model
at all: if the plain structs drifted from the shapes, every impression would go through its model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.outbound.impressions import (
    _PLAIN_BODY,
    ListenerImpression,
    WebhookImpression,
    _Context,
    _parse_plain,
    normalise,
    parse_body,
)

EVENTS = Path(__file__).parents[1] / "events"

ODD = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=4),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**62),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.lists(st.integers(max_value=9), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(max_value=9), max_size=2),
)
TEXT = st.text(min_size=1, max_size=12)
OPTIONAL_TEXT = st.one_of(st.none(), st.text(max_size=12))
TIME = st.integers(min_value=0, max_value=253402300799999)
PROPERTIES = st.one_of(st.none(), st.just('{"plan":"pro"}'), st.just("[1]"), st.just({"a": 1}), st.just({}))
ABSENT = object()


def fields(good: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Every field right, or all right but one: missing, or of another (maybe coercible) type."""

    def spoil(item: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
        spoiled = {k: v for k, v in item.items() if k != name}
        if value is not ABSENT:
            spoiled[name] = value
        return spoiled

    right = st.fixed_dictionaries(good)
    one_wrong = st.builds(spoil, right, st.sampled_from(sorted(good)), st.one_of(ODD, st.just(ABSENT)))
    return st.one_of(right, one_wrong)


WEBHOOK = fields(
    {
        "key": TEXT,
        "split": TEXT,
        "environmentId": OPTIONAL_TEXT,
        "environmentName": OPTIONAL_TEXT,
        "treatment": TEXT,
        "time": TIME,
        "bucketingKey": OPTIONAL_TEXT,
        "label": OPTIONAL_TEXT,
        "machineName": OPTIONAL_TEXT,
        "machineIp": OPTIONAL_TEXT,
        "splitVersionNumber": st.one_of(st.none(), st.integers(min_value=0, max_value=2**53)),
        "sdk": OPTIONAL_TEXT,
        "sdkVersion": OPTIONAL_TEXT,
        "properties": PROPERTIES,
        "trafficType": OPTIONAL_TEXT,
    }
)
LISTENER_DATA = fields(
    {
        "feature": TEXT,
        "keyName": TEXT,
        "treatment": TEXT,
        "time": TIME,
        "bucketingKey": OPTIONAL_TEXT,
        "label": OPTIONAL_TEXT,
        "changeNumber": st.one_of(st.none(), st.integers(min_value=0, max_value=2**53)),
        "properties": PROPERTIES,
    }
)
LISTENER = st.builds(
    lambda data, rest: {"impression": data, **rest},
    st.one_of(LISTENER_DATA, LISTENER_DATA, LISTENER_DATA, ODD),
    fields(
        {
            "attributes": st.one_of(st.none(), st.just({"plan": "free"})),
            "ip": st.one_of(OPTIONAL_TEXT, st.just(False), st.just("NA")),
            "hostname": st.one_of(OPTIONAL_TEXT, st.just(False), st.just("unknown")),
            "sdkLanguageVersion": st.one_of(st.none(), st.just("javascript-11.4.0"), st.just("python")),
            # The Python and PHP SDKs' names of the two above.
            "instance-id": st.one_of(OPTIONAL_TEXT, st.just("NA")),
            "sdk-language-version": st.one_of(st.none(), st.just("python-10.2.0"), st.just("")),
            "environmentName": OPTIONAL_TEXT,
            "environmentId": OPTIONAL_TEXT,
            "trafficType": OPTIONAL_TEXT,
        }
    ),
)
ITEM = st.one_of(WEBHOOK, LISTENER)


def through_the_models(items: list[Any], context: _Context) -> tuple[list[tuple[int, Any]], list[int]]:
    impressions, refused = [], []
    for index, raw in enumerate(items):
        model = ListenerImpression if "impression" in raw else WebhookImpression
        try:
            impression = normalise(model.model_validate(raw), context)
        except ValueError:
            refused.append(index)
            continue
        if impression.environment_name is None and impression.environment_id is None:
            refused.append(index)
        else:
            impressions.append((index, impression))
    return impressions, refused


@settings(max_examples=300, deadline=None)
@given(items=st.lists(ITEM, min_size=1, max_size=6), environment=OPTIONAL_TEXT, traffic_type=OPTIONAL_TEXT)
def test_envelopes_parse_as_the_models_validate(
    items: list[dict[str, Any]], environment: str | None, traffic_type: str | None
) -> None:
    body = json.dumps({"environmentName": environment, "trafficType": traffic_type, "impressions": items})
    parsed = parse_body(body)
    # An envelope's empty field is none, as an impression's is.
    expected, refused = through_the_models(items, _Context(environment or None, None, traffic_type or None))
    assert parsed.impressions == expected
    assert sorted(error.index for error in parsed.errors) == refused


@settings(max_examples=200, deadline=None)
@given(items=st.lists(ITEM, min_size=1, max_size=4))
def test_webhook_arrays_and_single_objects_parse_as_the_models_validate(items: list[dict[str, Any]]) -> None:
    parsed = parse_body(json.dumps(items))
    expected, refused = through_the_models(items, _Context())
    assert parsed.impressions == expected
    assert sorted(error.index for error in parsed.errors) == refused
    single_expected, single_refused = through_the_models(items[:1], _Context())
    single = parse_body(json.dumps(items[0]))
    assert single.impressions == single_expected
    assert [error.index for error in single.errors] == single_refused


@pytest.mark.parametrize(
    "name", ["impressions_webhook.json", "impressions_envelope.json", "impression_listener_js.json"]
)
def test_vendor_payloads_need_no_model(name: str) -> None:
    body = (EVENTS / name).read_text()
    parsed = _parse_plain(_PLAIN_BODY.decode(body))
    assert parsed is not None
    assert parsed.impressions
    assert parsed == parse_body(body)
    data = json.loads(body)
    if "impressions" in data:  # an envelope: its items take its environment and traffic type
        context = _Context(data.get("environmentName"), data.get("environmentId"), data.get("trafficType"))
        items = data["impressions"]
    else:
        context, items = _Context(), data if isinstance(data, list) else [data]
    expected, refused = through_the_models(items, context)
    assert parsed.impressions == expected
    assert not refused


def test_an_item_that_needs_its_model_leaves_the_others_plain() -> None:
    """A coercible item (a numeric key) is coerced by its model; the items beside it are as before."""
    items = json.loads((EVENTS / "impressions_webhook.json").read_text())
    coercible = {**items[0], "key": 42}
    parsed = parse_body(json.dumps([coercible, *items]))
    assert parsed.impressions[0][1].key == "42"
    assert [i for _, i in parsed.impressions[1:]] == [i for _, i in parse_body(json.dumps(items)).impressions]
    assert not parsed.errors
