"""Parsing the three body shapes of the impressions queue (docs/outbound.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.outbound.impressions import (
    INVALID_BODY,
    INVALID_IMPRESSION,
    INVALID_JSON,
    NO_ENVIRONMENT,
    BodyError,
    Impression,
    parse_body,
    split_sdk_language_version,
    subset_body,
)
from tests.conftest import load_event


def test_webhook_array_from_split() -> None:
    parsed = parse_body(json.dumps(load_event("impressions_webhook.json")))
    assert parsed.shape == "webhook_list"
    assert parsed.errors == []
    (i0, first), (i1, second) = parsed.impressions
    assert (i0, i1) == (0, 1)
    assert first == Impression(
        key="7f244b10-9ca5-11e5-9706-16a11fb02dec",
        split="new_checkout",
        treatment="on",
        time=1795483041109,
        environment_id="194da2f0-3e22-11ea-ba75-12f2f63694e5",
        environment_name="Production",
        traffic_type=None,
        bucketing_key=None,
        label="default rule",
        split_version_number=1795482000000,
        machine_ip="10.0.1.17",
        machine_name="ip-10-0-1-17",
        sdk="java",
        sdk_version="4.13.0",
        properties=None,
    )
    assert second.traffic_type == "anonymous"
    assert second.properties == {"plan": "pro", "split": "must-not-overwrite"}  # a JSON string, decoded


def test_single_webhook_object() -> None:
    parsed = parse_body(json.dumps(load_event("impressions_webhook.json")[0]))
    assert parsed.shape == "webhook"
    assert [i.split for _, i in parsed.impressions] == ["new_checkout"]


def test_listener_shape_from_the_javascript_sdk() -> None:
    parsed = parse_body(json.dumps(load_event("impression_listener_js.json")))
    assert parsed.shape == "listener"
    [(_, impression)] = parsed.impressions
    assert impression.key == "41e51150-6825-11e8-9f57-0acd31e5aef0"
    assert impression.split == "new_checkout"
    assert impression.split_version_number == 1795482000000  # changeNumber
    assert (impression.sdk, impression.sdk_version) == ("javascript", "11.4.0")
    assert (impression.machine_ip, impression.machine_name) == ("10.0.2.5", "web-5")
    assert impression.environment_name == "Production"
    assert impression.traffic_type == "user"
    assert impression.properties == {"page": "cart"}


def test_listener_with_ip_addresses_disabled() -> None:
    body = load_event("impression_listener_js.json") | {"ip": False, "hostname": False}
    [(_, impression)] = parse_body(json.dumps(body)).impressions
    assert impression.machine_ip is None
    assert impression.machine_name is None


def test_listener_object_from_the_go_sdk() -> None:
    # Go's ILObject as encoding/json writes it: its field names, go-split-commons' one-letter ones.
    parsed = parse_body(json.dumps(load_event("impression_listener_go.json")))
    assert parsed.shape == "listener"
    assert parsed.errors == []
    [(_, impression)] = parsed.impressions
    assert (impression.key, impression.split, impression.treatment) == (
        "5a1e2f90-6825-11e8-9f57-0acd31e5aef0",
        "new_checkout",
        "on",
    )
    assert (impression.time, impression.label) == (1795483060000, "default rule")
    assert impression.split_version_number == 1795482000000
    assert impression.bucketing_key is None  # Go's "" is no bucketing key
    assert (impression.sdk, impression.sdk_version) == ("go", "6.7.0")
    assert impression.machine_name == "ip-10-0-3-9"
    assert (impression.environment_name, impression.traffic_type) == ("Production", "user")


def python_listener_impression(listener: dict[str, Any]) -> Any:
    """The one impression of the Python SDK's listener object (tests/events), read as it is sent."""
    parsed = parse_body(json.dumps(listener))
    assert parsed.errors == []
    [(_, impression)] = parsed.impressions
    assert (impression.key, impression.split, impression.treatment, impression.time) == (
        "6b2f3a01-6825-11e8-9f57-0acd31e5aef0",
        "new_checkout",
        "off",
        1795483070000,
    )
    return impression


def test_listener_object_from_the_python_sdk() -> None:
    # json.dumps of what splitio-client hands a listener: the Impression named tuple is a list.
    impression = python_listener_impression(load_event("impression_listener_python.json"))
    assert impression.split_version_number == 1795482000000
    assert (impression.sdk, impression.sdk_version, impression.machine_name) == (
        "python",
        "10.5.1",
        "worker-2",
    )
    assert impression.properties == {"page": "cart"}
    # ... and its _asdict(), by field name.
    fields = (
        "matching_key feature_name treatment label change_number bucketing_key time previous_time properties"
    )
    as_dict = load_event("impression_listener_python.json")
    as_dict["impression"] = dict(zip(fields.split(), as_dict["impression"], strict=True))
    assert parse_body(json.dumps(as_dict)).impressions == [(0, impression)]


def test_impression_alone_from_the_dotnet_sdk() -> None:
    # A KeyImpression unwrapped, in .NET's property names, the flag added beside them.
    body = load_event("impression_dotnet.json")
    [(_, impression)] = parse_body(json.dumps(body)).impressions
    assert (impression.key, impression.split, impression.treatment) == (
        "7c3a4b12-6825-11e8-9f57-0acd31e5aef0",
        "new_checkout",
        "on",
    )
    assert (impression.split_version_number, impression.traffic_type) == (1795482000000, "account")
    # Newtonsoft leaves Feature out: without the flag, the item is refused and says why.
    del body["Feature"]
    parsed = parse_body(json.dumps(body))
    assert parsed.impressions == []
    [error] = parsed.errors
    assert error.code == INVALID_IMPRESSION
    assert "impression.feature" in error.reason


def test_other_sdk_spellings_mix_with_the_others_in_an_envelope() -> None:
    go = load_event("impression_listener_go.json")
    webhook = load_event("impressions_webhook.json")[0]
    body = {"environmentName": "Staging", "impressions": [go, webhook, load_event("impression_dotnet.json")]}
    parsed = parse_body(json.dumps(body))
    assert parsed.errors == []
    assert [(i, imp.split) for i, imp in parsed.impressions] == [
        (0, "new_checkout"),
        (1, "new_checkout"),
        (2, "new_checkout"),
    ]
    # Each item's own environment wins over the envelope's, whatever its spelling.
    assert [imp.environment_name for _, imp in parsed.impressions] == [
        "Production",
        "Production",
        "Production",
    ]


@pytest.mark.parametrize("plain", [True, False])
def test_an_item_naming_its_environment_takes_nothing_of_the_envelopes(plain: bool) -> None:
    """An id of one environment and the name of another would route to the name's configs."""
    listener = load_event("impression_listener_python.json")
    listener.pop("environmentName", None)
    webhook = {"key": "u1", "split": "s", "treatment": "on", "time": 1}
    if not plain:
        webhook["time"] = "1"  # not the plain shape: read through the model
    items = [
        {**webhook, "environmentId": "staging-id"},
        {**listener, "environmentName": "Staging"},
        webhook,
        # Naming the envelope's environment again, by the one or the other: the same environment.
        {**webhook, "environmentId": "production-id"},
        {**listener, "environmentName": "Production"},
    ]
    body = {"environmentName": "Production", "environmentId": "production-id", "impressions": items}
    parsed = parse_body(json.dumps(body))
    assert parsed.errors == []
    assert [(i.environment_id, i.environment_name) for _, i in parsed.impressions] == [
        ("staging-id", None),
        (None, "Staging"),
        ("production-id", "Production"),
        ("production-id", "Production"),
        ("production-id", "Production"),
    ]


def test_envelope_gives_its_environment_and_traffic_type_to_both_shapes() -> None:
    parsed = parse_body(json.dumps(load_event("impressions_envelope.json")))
    assert parsed.shape == "envelope"
    assert [i for i, _ in parsed.impressions] == [0, 1]
    [(_, listener), (_, webhook)] = parsed.impressions
    assert listener.environment_name == webhook.environment_name == "Staging"
    assert listener.traffic_type == "user"
    assert webhook.traffic_type == "account"  # its own wins over the envelope's
    assert (listener.sdk, listener.sdk_version) == ("python", "10.7.0")


def test_numeric_keys_are_keys() -> None:
    [(_, impression)] = parse_body(
        json.dumps({"key": 42, "split": "s", "treatment": "on", "time": 1, "environmentName": "P"})
    ).impressions
    assert impression.key == "42"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{nope", INVALID_JSON),
        ("", INVALID_JSON),
        ('"text"', INVALID_BODY),
        ("42", INVALID_BODY),
        (b'{"key": "\xff"}', INVALID_JSON),  # not UTF-8
    ],
)
def test_unusable_bodies(body: str | bytes, code: str) -> None:
    with pytest.raises(BodyError) as caught:
        parse_body(body)
    assert caught.value.code == code


@pytest.mark.parametrize("body_type", [str, bytes])
def test_a_lone_surrogate_escape_reads_as_a_replacement_character_and_costs_nothing_beside_it(
    body_type: type,
) -> None:
    """JSON.stringify and json.dumps both write a string cut inside an emoji as a lone surrogate escape."""
    good = {"key": "k", "split": "s", "treatment": "on", "time": 1, "environmentName": "P"}
    text = json.dumps([good, {**good, "key": "cut \ud83d", "label": "\udc00 rule"}])
    assert "\\ud83d" in text  # the escape itself, as the queue holds it
    parsed = parse_body(text if body_type is str else text.encode())
    assert parsed.errors == []
    assert [(i.key, i.label) for _, i in parsed.impressions] == [("k", None), ("cut \ufffd", "\ufffd rule")]


def test_envelope_whose_impressions_is_not_a_list() -> None:
    with pytest.raises(BodyError, match="impressions"):
        parse_body(json.dumps({"environmentName": "P", "impressions": "all of them"}))


def test_bad_items_are_reported_by_index_and_the_rest_kept() -> None:
    good = {"key": "k", "split": "s", "treatment": "on", "time": 1}
    body = {
        "environmentName": "P",
        "impressions": [good, {**good, "time": -5}, "text", {**good, "split": ""}, good],
    }
    parsed = parse_body(json.dumps(body))
    assert [i for i, _ in parsed.impressions] == [0, 4]
    assert [(e.index, e.code) for e in parsed.errors] == [
        (1, INVALID_IMPRESSION),
        (2, INVALID_IMPRESSION),
        (3, INVALID_IMPRESSION),
    ]
    assert parsed.errors[0].reason.startswith("impressions.1: time:")
    assert "must be an impression object" in parsed.errors[1].reason


def test_bad_items_of_a_webhook_array_are_reported_by_their_index() -> None:
    good = {"key": "k", "split": "s", "treatment": "on", "time": 1, "environmentName": "P"}
    parsed = parse_body(json.dumps([good, {**good, "time": -5}, "text"]))
    first, second = parsed.errors
    assert first.reason.startswith("1: time:")
    assert second.reason == "2: must be an impression object, not str"


def test_no_environment_anywhere_is_an_error_per_impression() -> None:
    parsed = parse_body(json.dumps([{"key": "k", "split": "s", "treatment": "on", "time": 1}]))
    assert parsed.impressions == []
    assert [(e.index, e.code) for e in parsed.errors] == [(0, NO_ENVIRONMENT)]
    with_id = parse_body(
        json.dumps({"key": "k", "split": "s", "treatment": "on", "time": 1, "environmentId": "e1"})
    )
    assert with_id.errors == []


def test_properties_that_are_not_an_object_stay_visible() -> None:
    [(_, impression)] = parse_body(
        json.dumps(
            {
                "key": "k",
                "split": "s",
                "treatment": "on",
                "time": 1,
                "environmentName": "P",
                "properties": "x",
            }
        )
    ).impressions
    assert impression.properties == {"impressionProperties": "x"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("javascript-10.22.0", ("javascript", "10.22.0")),
        ("python-10.7.0", ("python", "10.7.0")),
        ("go-6.6.0", ("go", "6.6.0")),
        ("custom", ("custom", None)),
        (None, (None, None)),
        ("", (None, None)),
    ],
)
def test_sdk_language_version(value: str | None, expected: tuple[str | None, str | None]) -> None:
    assert split_sdk_language_version(value) == expected


def test_subset_body_keeps_a_shape_the_queue_accepts() -> None:
    envelope = {"environmentName": "P", "trafficType": "user", "impressions": [{"a": 1}, {"b": 2}, {"c": 3}]}
    assert json.loads(subset_body(json.dumps(envelope), [0, 2])) == {
        **envelope,
        "impressions": [{"a": 1}, {"c": 3}],
    }
    assert json.loads(subset_body(json.dumps([{"a": 1}, {"b": 2}]), [1])) == [{"b": 2}]
    whole = json.dumps([{"a": 1}])
    assert subset_body(whole, [0]) == whole
    single = json.dumps({"key": "k"})
    assert subset_body(single, [0]) == single


def test_subset_body_keeps_a_body_too_deep_to_take_apart_whole() -> None:
    deep = "[" * 20_000 + "]" * 20_000
    body = f'[{{"a": {deep}}}, {{"b": 2}}]'
    assert subset_body(body, [1]) == body


@pytest.mark.parametrize(
    "body",
    [
        {"KeyName": "real-user", "Feature": "f", "Treatment": "on", "Time": 1795483060000, "id": "evt-1"},
        {"impression": {"k": "real-user", "f": "f", "t": "on", "m": 1795483060000, "id": "evt-1"}},
        {"impression": {"keyName": "real-user", "feature": "f", "treatment": "on", "time": 1, "id": "evt-1"}},
    ],
)
def test_an_id_beside_a_matching_key_is_not_taken_for_it(body: dict[str, Any]) -> None:
    """``id`` is the matching key only in PHP's impression, which has no other name for it."""
    parsed = parse_body(json.dumps({**body, "environmentName": "Production"}))
    assert [impression.key for _, impression in parsed.impressions] == ["real-user"]


def test_a_body_nested_too_deeply_is_invalid_json_not_a_crash() -> None:
    """Too deep for every decoder: msgspec and the standard library raise RecursionError."""
    deep = "[" * 100_000 + "]" * 100_000
    item = '{"key": "k", "split": "s", "treatment": "on", "time": 1, "environmentName": "P"'
    for body in (deep, f'{item}, "properties": {{"p": {deep}}}}}'):  # msgspec goes deep in properties
        with pytest.raises(BodyError) as caught:
            parse_body(body)
        assert caught.value.code == INVALID_JSON


@pytest.mark.parametrize(
    "envelope",
    [
        {"environmentName": "P", "impressions": "all of them"},
        {"environmentName": ["P"], "impressions": []},
    ],
)
def test_an_envelope_that_does_not_validate_is_an_invalid_body(envelope: dict[str, Any]) -> None:
    with pytest.raises(BodyError) as caught:
        parse_body(json.dumps(envelope))
    assert caught.value.code == INVALID_BODY
    assert caught.value.reason.startswith("envelope: ")


def test_a_listener_items_own_traffic_type_wins_over_the_envelopes() -> None:
    listener = load_event("impression_listener_js.json") | {"trafficType": "account"}
    body = {"environmentName": "Production", "trafficType": "user", "impressions": [listener]}
    [(_, impression)] = parse_body(json.dumps(body)).impressions
    assert impression.traffic_type == "account"


@pytest.mark.parametrize("time", [1, "1"])  # plain, and through the model
def test_label_and_split_version_number_win_over_the_java_accessor_names(time: int | str) -> None:
    item = {
        "key": "k",
        "split": "s",
        "treatment": "on",
        "time": time,
        "environmentName": "P",
        "label": "default rule",
        "appliedRule": "in segment beta",
        "splitVersionNumber": 2,
        "changeNumber": 1,
    }
    [(_, impression)] = parse_body(json.dumps(item)).impressions
    assert (impression.label, impression.split_version_number) == ("default rule", 2)


def test_the_python_sdks_older_seven_field_tuple_is_read() -> None:
    """Before ``previous_time`` and ``properties``: the named tuple ends at ``time``."""
    listener = load_event("impression_listener_python.json")
    listener["impression"] = listener["impression"][:7]
    impression = python_listener_impression(listener)
    assert (impression.label, impression.split_version_number) == ("default rule", 1795482000000)
    assert impression.properties is None


def test_the_ruby_sdks_impression_properties_are_carried() -> None:
    ruby = load_event("impression_listener_ruby.json") | {"properties": {"page": "cart"}}
    [(_, impression)] = parse_body(json.dumps(ruby)).impressions
    assert impression.properties == {"page": "cart"}
    assert impression.label == "in segment beta_testers"


def test_an_items_empty_environment_is_none_and_takes_the_envelopes() -> None:
    item = {
        "key": "k",
        "split": "s",
        "treatment": "on",
        "time": 1,
        "environmentName": "",
        "environmentId": "",
    }
    body = {"environmentName": "Production", "environmentId": "prod-id", "impressions": [item]}
    [(_, impression)] = parse_body(json.dumps(body)).impressions
    assert (impression.environment_id, impression.environment_name) == ("prod-id", "Production")


def test_go_field_names_with_an_empty_bucketing_key_mean_none() -> None:
    go = load_event("impression_listener_go.json")
    fields = {"k": "KeyName", "b": "BucketingKey", "f": "FeatureName", "t": "Treatment", "m": "Time"}
    go["Impression"] = {fields.get(name, name): value for name, value in go["Impression"].items()}
    assert go["Impression"]["BucketingKey"] == ""
    [(_, impression)] = parse_body(json.dumps(go)).impressions
    assert (impression.key, impression.split) == ("5a1e2f90-6825-11e8-9f57-0acd31e5aef0", "new_checkout")
    assert impression.bucketing_key is None
    go["Impression"]["BucketingKey"] = "account-7"
    [(_, impression)] = parse_body(json.dumps(go)).impressions
    assert impression.bucketing_key == "account-7"


@pytest.mark.parametrize("value", ["node-red", "react-native", "go-"])
def test_a_hyphenated_name_without_a_version_after_it_is_the_sdk_whole(value: str) -> None:
    assert split_sdk_language_version(value) == (value, None)


def test_an_instance_id_that_is_an_ip_address_does_not_replace_the_listeners_own_ip() -> None:
    impression = {"keyName": "k", "feature": "f", "treatment": "on", "time": 1}
    listener = {"impression": impression, "environmentName": "P", "instance-id": "10.9.9.9"}
    [(_, alone)] = parse_body(json.dumps(listener)).impressions
    assert (alone.machine_ip, alone.machine_name) == ("10.9.9.9", None)  # PHP: the host's IP
    [(_, with_ip)] = parse_body(json.dumps({**listener, "ip": "10.0.0.1"})).impressions
    assert (with_ip.machine_ip, with_ip.machine_name) == ("10.0.0.1", "10.9.9.9")


def test_subset_body_keeps_an_envelope_whose_impressions_all_failed_verbatim() -> None:
    body = '{"impressions": [{"a": 1}, {"b": 2}],  "environmentName": "P"}'
    assert subset_body(body, [0, 1]) == body
    assert json.loads(subset_body(body, [1])) == {"impressions": [{"b": 2}], "environmentName": "P"}


@pytest.mark.parametrize("key", ["k", 42])  # plain, and through the model
def test_time_runs_from_the_epoch_to_the_last_millisecond_of_year_9999(key: str | int) -> None:
    item = {"key": key, "split": "s", "treatment": "on", "environmentName": "P"}
    times = [0, 253_402_300_799_999, -1, 253_402_300_800_000]
    parsed = parse_body(json.dumps([{**item, "time": time} for time in times]))
    assert [impression.time for _, impression in parsed.impressions] == times[:2]
    assert [(e.index, e.code) for e in parsed.errors] == [(2, INVALID_IMPRESSION), (3, INVALID_IMPRESSION)]


@pytest.mark.parametrize("time", [1, "1"])  # plain, and through the model
def test_an_envelopes_empty_environment_name_and_traffic_type_are_none(time: int | str) -> None:
    item = {"key": "k", "split": "s", "treatment": "on", "time": time}
    by_id = {"environmentName": "", "environmentId": "prod-id", "trafficType": "", "impressions": [item]}
    [(_, impression)] = parse_body(json.dumps(by_id)).impressions
    assert (impression.environment_id, impression.environment_name, impression.traffic_type) == (
        "prod-id",
        None,
        None,
    )
    parsed = parse_body(json.dumps({"environmentName": "", "impressions": [item]}))
    assert [(e.index, e.code) for e in parsed.errors] == [(0, NO_ENVIRONMENT)]


@pytest.mark.parametrize("placeholder", ["NA", "unknown", ""])
def test_what_sdks_report_for_a_hidden_ip_address_and_host_name_is_none(placeholder: str) -> None:
    body = load_event("impression_listener_js.json") | {"ip": placeholder, "hostname": placeholder}
    [(_, impression)] = parse_body(json.dumps(body)).impressions
    assert (impression.machine_ip, impression.machine_name) == (None, None)


@pytest.mark.parametrize("time", [1, "1"])  # plain, and through the model
def test_a_listener_impressions_own_names_win_over_another_sdks_spelling_beside_them(time: int | str) -> None:
    impression = {"keyName": "real-user", "feature": "f", "treatment": "on", "time": time, "k": "other"}
    [(_, parsed)] = parse_body(json.dumps({"impression": impression, "environmentName": "P"})).impressions
    assert parsed.key == "real-user"


@pytest.mark.parametrize("properties", ["", "{}", {}])  # Go's zero value, and empty objects
def test_empty_impression_properties_are_none(properties: str | dict[str, Any]) -> None:
    item = {"key": "k", "split": "s", "treatment": "on", "time": 1, "environmentName": "P"}
    [(_, impression)] = parse_body(json.dumps({**item, "properties": properties})).impressions
    assert impression.properties is None


@pytest.mark.parametrize(
    "name", ["impression_dotnet.json", "impression_listener_java.json", "impression_listener_ruby.json"]
)
def test_an_unwrapped_impression_may_name_its_environment_by_id(name: str) -> None:
    body = load_event(name)
    del body["environmentName"]
    [(_, impression)] = parse_body(json.dumps({**body, "environmentId": "prod-id"})).impressions
    assert (impression.environment_id, impression.environment_name) == ("prod-id", None)


def test_a_ruby_impression_whose_treatment_is_a_plain_string_is_read() -> None:
    ruby = load_event("impression_listener_ruby.json") | {"treatment": "off"}
    [(_, impression)] = parse_body(json.dumps(ruby)).impressions
    assert (impression.split, impression.treatment, impression.label) == ("new_checkout", "off", None)
