"""The mapping rules of docs/inbound.md, one test (at least) per rule, on Segment's own example payloads."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from shared.config import InboundConfig
from shared.inbound.mapping import (
    MAX_PROPERTIES,
    MAX_TIED_MESSAGE_IDS,
    MAX_TIED_TIMESTAMPS,
    MAX_UNTIMED_MESSAGE_IDS,
    UNTIMED_WINDOW_MS,
    DropReason,
    IdentityUpdate,
    IgnoreReason,
    Mapped,
    MergedIdentity,
    StoredIdentity,
    applied_id,
    map_messages,
    merge_identity,
)
from tests.conftest import load_event

NOW = 1_795_625_347_000
BOTH_IDENTITIES = [
    {"segmentId": "userId", "trafficType": "user"},
    {"segmentId": "anonymousId", "trafficType": "anonymous"},
]


def connection(**overrides: Any) -> InboundConfig:
    return InboundConfig.model_validate(
        {"environment": "Production", "identities": BOTH_IDENTITIES, **overrides}
    )


def segment(fixture: str, /, **changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = load_event(f"segment/{fixture}.json")
    message.update(changes)
    return message


def map_one(message: Any, **overrides: Any) -> Mapped:
    return map_messages([message], connection(**overrides), NOW)


def drop_reasons(mapped: Mapped) -> list[str]:
    return [drop.reason.value for drop in mapped.drops]


# ---------------------------------------------------------------------------------------------
# Identities → traffic types


def test_one_event_per_mapped_identity_present() -> None:
    mapped = map_one(segment("track"))
    assert {(e.trafficTypeName, e.key) for e in mapped.events} == {
        ("user", "AiUGstSDIg"),
        ("anonymous", "23adfd82-aa0f-45a7-a756-24f2a7a4c895"),
    }
    assert all(e.environment == "Production" for e in mapped.events)


def test_only_mapped_identities_yield_events() -> None:
    mapped = map_one(segment("track"), identities=[{"segmentId": "userId", "trafficType": "customer"}])
    assert [(e.trafficTypeName, e.key) for e in mapped.events] == [("customer", "AiUGstSDIg")]


def test_message_without_any_mapped_identity_is_dropped() -> None:
    message = segment("track")
    del message["userId"]
    mapped = map_one(message, identities=[{"segmentId": "userId", "trafficType": "user"}])
    assert mapped.events == []
    assert drop_reasons(mapped) == ["no_identity"]


def test_numeric_user_id_is_used_as_a_string_key() -> None:
    mapped = map_one(segment("track", userId=12345, anonymousId=None))
    assert [(e.trafficTypeName, e.key) for e in mapped.events] == [("user", "12345")]


# ---------------------------------------------------------------------------------------------
# track


def test_track_event_type_id_from_the_event_field_with_spaces_replaced() -> None:
    mapped = map_one(segment("track"))
    assert {e.eventTypeId for e in mapped.events} == {"Course_Clicked"}
    assert {e.segmentType for e in mapped.events} == {"track"}


def test_event_type_id_field_is_a_dotted_path() -> None:
    message = segment("track", event=None, properties={"eventName": "checkout", "page": "eCommerce"})
    mapped = map_one(message, eventTypeIdField="properties.eventName")
    assert {e.eventTypeId for e in mapped.events} == {"checkout"}


def test_event_type_id_path_into_an_unknown_top_level_field() -> None:
    message = segment("track", eventId="231344")
    mapped = map_one(message, eventTypeIdField="eventId")
    assert {e.eventTypeId for e in mapped.events} == {"231344"}


@pytest.mark.parametrize("event", [None, ""])
def test_missing_event_type_id_is_dropped(event: Any) -> None:
    mapped = map_one(segment("track", event=event))
    assert mapped.events == []
    assert drop_reasons(mapped) == ["missing_event_type_id"]


def test_misconfigured_event_type_id_field_drops_the_event() -> None:
    # The troubleshooting case: the field names the event itself instead of where it is.
    mapped = map_one(segment("track"), eventTypeIdField="checkout")
    assert drop_reasons(mapped) == ["missing_event_type_id"]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("sample event", "sample_event"),
        ("Order Completed", "Order_Completed"),
        ("a" * 80, "a" * 80),
        ("page.view:home-1", "page.view:home-1"),
        ("9lives", "9lives"),
    ],
)
def test_valid_event_type_ids(event: str, expected: str) -> None:
    assert {e.eventTypeId for e in map_one(segment("track", event=event)).events} == {expected}


@pytest.mark.parametrize(
    "event",
    ["a" * 81, "_leading", "-leading", "with/slash", "emoji🙂", "tab\tinside", "ends\n", {"nested": 1}, True],
)
def test_invalid_event_type_ids_are_dropped(event: Any) -> None:
    mapped = map_one(segment("track", event=event))
    assert mapped.events == []
    assert drop_reasons(mapped) == ["invalid_event_type_id"]


def test_a_numeric_event_is_its_text() -> None:
    mapped = map_one(segment("track", event=404))
    assert ({e.eventTypeId for e in mapped.events}, mapped.drops) == ({"404"}, [])


def test_value_is_the_number_at_value_field() -> None:
    message = segment("track", properties={"revenue": 19.99, "currency": "USD"})
    mapped = map_one(message, valueField="properties.revenue")
    assert {e.value for e in mapped.events} == {19.99}


def test_paths_reach_property_names_with_spaces() -> None:
    message = segment("track", properties={"Order Total": 42, "Event Name": "Order Placed"})
    mapped = map_one(message, valueField="properties.Order Total", eventTypeIdField="properties.Event Name")
    assert {(e.eventTypeId, e.value) for e in mapped.events} == {("Order_Placed", 42)}


@pytest.mark.parametrize("revenue", ["19.99", None, True, {"amount": 1}])
def test_value_that_is_not_a_number_is_null(revenue: Any) -> None:
    message = segment("track", properties={"revenue": revenue})
    mapped = map_one(message, valueField="properties.revenue")
    assert len(mapped.events) == 2
    assert {e.value for e in mapped.events} == {None}


def test_value_is_null_without_value_field() -> None:
    mapped = map_one(segment("track", properties={"revenue": 5}))
    assert {e.value for e in mapped.events} == {None}


def test_named_pages_and_screens_have_no_value_whatever_the_value_field() -> None:
    message = segment("page", name="signup", properties={"revenue": 10})
    mapped = map_one(message, valueField="properties.revenue")
    assert {(e.eventTypeId, e.value) for e in mapped.events} == {("view_signup_page", None)}


def test_track_disabled_is_ignored() -> None:
    mapped = map_one(segment("track"), enableTrack=False)
    assert mapped.events == []
    assert mapped.ignored == {0: IgnoreReason.TRACK_DISABLED}


# ---------------------------------------------------------------------------------------------
# page / screen


def test_named_page_becomes_view_name_page() -> None:
    mapped = map_one(segment("page", name="signup"))
    assert {e.eventTypeId for e in mapped.events} == {"view_signup_page"}
    assert {e.segmentType for e in mapped.events} == {"page"}
    assert mapped.events[0].properties == {"title": "Welcome | Initech", "url": "http://www.example.com"}


def test_named_screen_becomes_view_name_screen() -> None:
    mapped = map_one(segment("screen"))
    assert {e.eventTypeId for e in mapped.events} == {"view_Home_screen"}
    assert {e.segmentType for e in mapped.events} == {"screen"}


def test_page_and_screen_templates_are_configurable() -> None:
    config = {"pageEventTypeId": "page.{name}", "screenEventTypeId": "screen:{name}"}
    assert map_one(segment("page", name="Sign Up"), **config).events[0].eventTypeId == "page.Sign_Up"
    assert map_one(segment("screen"), **config).events[0].eventTypeId == "screen:Home"


def test_a_template_without_the_name_makes_every_named_page_one_event_type() -> None:
    mapped = map_one(segment("page", name="signup"), pageEventTypeId="page_view")
    assert {e.eventTypeId for e in mapped.events} == {"page_view"}


@pytest.mark.parametrize("name", [None, "", "   ", "\t"])
def test_unnamed_page_and_screen_are_ignored(name: Any) -> None:
    for kind in ("page", "screen"):
        message = segment(kind, name=name)
        mapped = map_one(message)
        assert mapped.events == []
        assert mapped.drops == []
        assert mapped.ignored == {0: IgnoreReason.UNNAMED}


def test_page_name_that_makes_an_invalid_event_type_id_is_dropped() -> None:
    mapped = map_one(segment("page", name="Pricing / Plans"))
    assert drop_reasons(mapped) == ["invalid_event_type_id"]


def test_track_named_pages_and_screens_switches() -> None:
    assert map_one(segment("page"), trackNamedPages=False).ignored == {0: IgnoreReason.PAGES_DISABLED}
    assert map_one(segment("screen"), trackNamedScreens=False).ignored == {0: IgnoreReason.SCREENS_DISABLED}
    assert map_one(segment("screen"), trackNamedPages=False).events


# ---------------------------------------------------------------------------------------------
# Event-level groups


def test_properties_split_adds_one_event_per_group_and_is_not_a_property() -> None:
    mapped = map_one(segment("track_event_level_group"))
    targets = {(e.trafficTypeName, e.key) for e in mapped.events}
    assert targets == {
        ("user", "41e51150-6825-11e8-9f57-0acd31e5aef0"),
        ("anonymous", "23adfd82-aa0f-45a7-a756-24f2a7a4c895"),
        ("account", "4d3405a0-9ca5-11e5-9706-16a11fb02dec"),
    }
    assert all(e.properties == {"title": "Intro to Analytics"} for e in mapped.events)


def test_properties_split_with_several_groups() -> None:
    split = [{"account": "a-1"}, {"account": "a-2"}, {"team": "t-9"}]
    mapped = map_one(segment("track", userId=None, anonymousId=None, properties={"split": split}))
    assert {(e.trafficTypeName, e.key) for e in mapped.events} == {
        ("account", "a-1"),
        ("account", "a-2"),
        ("team", "t-9"),
    }


def test_properties_split_with_an_invalid_traffic_type_drops_only_that_group() -> None:
    mapped = map_one(segment("track", properties={"split": [{"bad type!": "x"}, {"account": "a-1"}]}))
    assert ("account", "a-1") in {(e.trafficTypeName, e.key) for e in mapped.events}
    assert drop_reasons(mapped) == ["invalid_traffic_type"]


@pytest.mark.parametrize("split", ["acme", ["acme", {"account": "a-1"}], [{}], 42])
def test_a_properties_split_element_that_is_not_an_object_is_dropped_and_the_rest_stored(split: Any) -> None:
    mapped = map_one(segment("track", properties={"split": split}))
    assert {e.trafficTypeName for e in mapped.events} >= {"user", "anonymous"}  # the message's identities
    assert "split" not in mapped.events[0].properties
    assert set(drop_reasons(mapped)) == {"invalid_split"}


def test_a_message_whose_only_target_was_an_unusable_split_is_dropped_once_for_it() -> None:
    mapped = map_one(segment("track", userId=None, anonymousId=None, properties={"split": "acme"}))
    assert (mapped.events, drop_reasons(mapped)) == ([], ["invalid_split"])


def test_a_null_properties_split_is_no_split() -> None:
    mapped = map_one(segment("track", properties={"split": None}))
    assert {e.trafficTypeName for e in mapped.events} == {"user", "anonymous"}
    assert mapped.drops == []


@pytest.mark.parametrize("blank", ["", " \t"], ids=["empty", "whitespace"])
def test_a_properties_split_with_an_empty_key_drops_that_group_and_keeps_the_rest(blank: str) -> None:
    mapped = map_one(segment("track", properties={"split": [{"account": blank}]}))
    assert {e.trafficTypeName for e in mapped.events} == {"user", "anonymous"}
    assert [(d.reason.value, d.trafficType) for d in mapped.drops] == [("invalid_key", "account")]


# ---------------------------------------------------------------------------------------------
# Keys, properties, sizes


def test_key_longer_than_250_characters_is_dropped_per_identity() -> None:
    mapped = map_one(segment("track", userId="u" * 251))
    assert [(e.trafficTypeName) for e in mapped.events] == ["anonymous"]
    assert [(d.reason.value, d.trafficType) for d in mapped.drops] == [("invalid_key", "user")]


@pytest.mark.parametrize("blank", ["", " ", "\t \n"], ids=["empty", "space", "whitespace"])
def test_an_empty_or_blank_user_id_counts_as_absent(blank: str) -> None:
    beside = map_one(segment("track", userId=blank))
    assert [e.trafficTypeName for e in beside.events] == ["anonymous"]
    assert beside.drops == []
    alone = map_one(segment("track", userId=blank, anonymousId=None))
    assert alone.events == []
    assert drop_reasons(alone) == ["no_identity"]
    identify = map_one(segment("identify", anonymousId=blank))
    assert [i.trafficTypeName for i in identify.identities] == ["user"]


def test_a_key_with_spaces_around_it_is_kept_as_sent() -> None:
    mapped = map_one(segment("track", userId=" u-42 ", anonymousId=None))
    assert [e.key for e in mapped.events] == [" u-42 "]


def test_key_of_exactly_250_characters_is_kept() -> None:
    mapped = map_one(segment("track", userId="u" * 250, anonymousId=None))
    assert [e.key for e in mapped.events] == ["u" * 250]


def test_the_key_limit_counts_characters_not_bytes() -> None:
    mapped = map_one(segment("track", userId="é" * 250, anonymousId="匿" * 251))  # 500 and 753 bytes
    assert [e.key for e in mapped.events] == ["é" * 250]
    assert [(d.reason.value, d.trafficType) for d in mapped.drops] == [("invalid_key", "anonymous")]


def test_nested_property_values_become_json_strings() -> None:
    properties = {"cart": {"items": [1, 2]}, "tags": ["a", "b"], "n": 3, "ok": True, "none": None, "s": "x"}
    mapped = map_one(segment("track", properties=properties))
    assert mapped.events[0].properties == {
        "cart": '{"items":[1,2]}',
        "tags": '["a","b"]',
        "n": 3,
        "ok": True,
        "none": None,
        "s": "x",
    }


def test_properties_beyond_300_are_trimmed_and_counted() -> None:
    properties = {f"p{i:03d}": i for i in range(MAX_PROPERTIES + 7)}
    mapped = map_one(segment("track", properties=properties, anonymousId=None))
    assert len(mapped.events[0].properties) == MAX_PROPERTIES
    assert "p000" in mapped.events[0].properties
    assert "p300" not in mapped.events[0].properties
    assert mapped.properties_trimmed == 7


def test_event_over_32_kb_is_dropped() -> None:
    mapped = map_one(segment("track", properties={"blob": "x" * 33_000}))
    assert mapped.events == []
    assert drop_reasons(mapped) == ["event_too_large", "event_too_large"]


def test_event_just_under_32_kb_is_kept() -> None:
    mapped = map_one(segment("track", properties={"blob": "x" * 32_000}, anonymousId=None))
    assert len(mapped.events) == 1


def _as_the_events_api_receives_it(event: Any) -> int:
    """Bytes of the JSON delivery sends for one event, after its round trip through DynamoDB."""
    from shared.delivery.fme_client import FmeEvent as SentEvent
    from shared.dynamodb import attribute_value
    from shared.dynamodb import deserialize_item as stored
    from shared.dynamodb import to_python as delivered

    item = stored({"value": attribute_value(event.value), "properties": attribute_value(event.properties)})
    sent = SentEvent(
        eventTypeId=event.eventTypeId,
        trafficTypeName=event.trafficTypeName,
        key=event.key,
        value=delivered(item["value"]),
        timestamp=event.timestamp,
        environmentName=event.environment,
        properties=delivered(item["properties"]),
    )
    return len(sent.model_dump_json().encode())


def test_whole_floats_count_with_every_digit_fme_receives() -> None:
    """1e125 is 6 characters in the webhook's JSON and 126 digits in what FME receives."""
    dropped = map_one(segment("track", anonymousId=None, properties={f"p{i}": 1e125 for i in range(250)}))
    assert drop_reasons(dropped) == ["event_too_large"]
    kept = map_one(segment("track", anonymousId=None, properties={f"p{i}": 1e125 for i in range(200)}))
    assert _as_the_events_api_receives_it(kept.events[0]) <= 32 * 1024


@pytest.mark.parametrize("user_id", ["AiUGstSDIg", 'quote"and\\backslash' * 12, "ünïcødé-用户"])
@pytest.mark.parametrize("over", [0, 1])
def test_the_32_kb_limit_is_the_events_json_as_sent_to_fme(user_id: str, over: int) -> None:
    """32 KB is 32,768 bytes of the event as the Events API receives it: kept at the limit, dropped
    one byte over, whatever escapes the key needs."""

    def track(blob: str) -> Mapped:
        # Numbers whose JSON differs from Python's: 1.5e-7 (not 1.5e-07), 2 (not 2.0), 1e20 in full.
        properties = {"blob": blob, "small": 1.5e-07, "whole": 2.0, "large": 1e20}
        return map_one(segment("track", userId=user_id, anonymousId=None, properties=properties))

    small = track("x").events[0]
    blob = "x" * (32 * 1024 - _as_the_events_api_receives_it(small) + 1 + over)
    mapped = track(blob)
    if over:
        assert mapped.events == []
        assert drop_reasons(mapped) == ["event_too_large"]
    else:
        assert _as_the_events_api_receives_it(mapped.events[0]) == 32 * 1024
        assert mapped.drops == []


def test_numbers_dynamodb_cannot_hold_become_strings() -> None:
    mapped = map_one(segment("track", properties={"huge": 10**40, "tiny": 1e-200, "fine": 1.5}))
    assert mapped.events[0].properties == {"huge": str(10**40), "tiny": "1e-200", "fine": 1.5}


# ---------------------------------------------------------------------------------------------
# Timestamps


def test_timestamp_precedence() -> None:
    full = segment("track")
    assert map_one(full).events[0].timestamp == 1449947461249  # timestamp
    del full["timestamp"]
    assert map_one(full).events[0].timestamp == 1449947461152  # originalTimestamp
    del full["originalTimestamp"]
    assert map_one(full).events[0].timestamp == 1449947461266  # receivedAt
    del full["receivedAt"]
    assert map_one(full).events[0].timestamp == NOW


def test_unparseable_timestamp_falls_through_to_the_next() -> None:
    message = segment("track", timestamp="not a date")
    assert map_one(message).events[0].timestamp == 1449947461152


def test_timestamp_with_offset_and_numeric_timestamps() -> None:
    assert (
        map_one(segment("track", timestamp="2015-12-12T20:11:01.249+01:00")).events[0].timestamp
        == 1449947461249
    )
    assert map_one(segment("track", timestamp=1449947461249)).events[0].timestamp == 1449947461249
    assert map_one(segment("track", timestamp=1449947461)).events[0].timestamp == 1449947461000


# ---------------------------------------------------------------------------------------------
# identify / group


def test_identify_traits_become_attributes_of_each_mapped_identity() -> None:
    mapped = map_one(segment("identify"))
    assert {(u.trafficTypeName, u.key) for u in mapped.identities} == {
        ("user", "97980cfea0067"),
        ("anonymous", "507f191e810c19729de860ea"),
    }
    attributes = mapped.identities[0].attributes
    assert attributes["name"] == "Peter Gibbons"
    assert attributes["logins"] == 5
    # traits.company-style objects arrive as their JSON string
    assert json.loads(attributes["address"]) == segment("identify")["traits"]["address"]
    assert mapped.identities[0].timestamp == 1424730535111


def test_identify_strings_longer_than_255_are_cut_and_counted() -> None:
    traits = {"bio": "b" * 300, "short": "s" * 255, "company": {"name": "n" * 300}}
    mapped = map_one(segment("identify", traits=traits, anonymousId=None))
    attributes = mapped.identities[0].attributes
    assert attributes["bio"] == "b" * 255
    assert attributes["short"] == "s" * 255
    assert len(attributes["company"]) == 255
    assert mapped.strings_cut == 2


def test_the_trait_limit_counts_characters_not_bytes() -> None:
    traits = {"city": "ü" * 255, "bio": "名" * 300}
    mapped = map_one(segment("identify", traits=traits, anonymousId=None))
    attributes = mapped.identities[0].attributes
    assert attributes["city"] == "ü" * 255  # 510 bytes, kept whole
    assert attributes["bio"] == "名" * 255
    assert mapped.strings_cut == 1


def test_strings_cut_are_counted_over_the_whole_body() -> None:
    messages = [
        segment("identify", traits={"bio": "b" * 300}, anonymousId=None, messageId=f"m-{n}") for n in range(2)
    ]
    assert map_messages(messages, connection(), NOW).strings_cut == 2


def test_an_identify_trait_named_split_is_an_attribute_like_any_other() -> None:
    # Only a group call's traits.split names a traffic type to identify.
    mapped = map_one(
        segment("identify", traits={"split": {"account": "a-1"}, "plan": "pro"}, anonymousId=None)
    )
    assert mapped.identities[0].attributes == {"split": '{"account":"a-1"}', "plan": "pro"}


def test_a_trait_without_a_name_is_not_an_attribute() -> None:
    mapped = map_one(segment("identify", traits={"": "x", "plan": "pro"}, anonymousId=None))
    assert mapped.identities[0].attributes == {"plan": "pro"}


def test_identify_disabled_is_ignored() -> None:
    assert map_one(segment("identify"), enableIdentify=False).ignored == {0: IgnoreReason.IDENTIFY_DISABLED}
    assert map_one(segment("group_split"), enableIdentify=False).ignored == {
        0: IgnoreReason.IDENTIFY_DISABLED
    }


def test_group_with_traits_split_identifies_that_traffic_type() -> None:
    mapped = map_one(segment("group_split"))
    assert [(u.trafficTypeName, u.key) for u in mapped.identities] == [
        ("account", "4d3405a0-9ca5-11e5-9706-16a11fb02dec")
    ]
    assert mapped.identities[0].attributes == {
        "name": "Initech",
        "industry": "Technology",
        "employees": 329,
        "plan": "enterprise",
    }


def test_group_traits_follow_the_attribute_value_rules() -> None:
    message = segment("group_split")
    address = {"street": "6th St", "city": "San Francisco"}
    message["traits"].update(address=address, tags=["b2b", "trial"], bio="b" * 300, short="s" * 255)
    mapped = map_one(message)
    attributes = mapped.identities[0].attributes
    assert json.loads(attributes["address"]) == address  # nested objects and arrays: their JSON string
    assert attributes["tags"] == '["b2b","trial"]'
    assert attributes["bio"] == "b" * 255
    assert attributes["short"] == "s" * 255
    assert "split" not in attributes
    assert mapped.strings_cut == 1


@pytest.mark.parametrize("split", ["acme", ["acme"], {}])
def test_a_group_whose_traits_split_is_unusable_is_dropped_with_the_reason(split: Any) -> None:
    message = segment("group_split")
    message["traits"]["split"] = split
    mapped = map_one(message)
    assert (mapped.identities, drop_reasons(mapped), mapped.ignored) == ([], ["invalid_split"], {})


@pytest.mark.parametrize("blank", ["", "  "], ids=["empty", "spaces"])
def test_a_group_whose_traits_split_key_is_empty_is_dropped_as_an_invalid_key(blank: str) -> None:
    message = segment("group_split")
    message["traits"]["split"] = {"account": blank}
    mapped = map_one(message)
    assert (mapped.identities, [(d.reason.value, d.trafficType) for d in mapped.drops]) == (
        [],
        [("invalid_key", "account")],
    )


def test_group_without_traits_split_is_ignored() -> None:
    mapped = map_one(segment("group"))
    assert mapped.identities == []
    assert mapped.ignored == {0: IgnoreReason.GROUP_WITHOUT_SPLIT}


# ---------------------------------------------------------------------------------------------
# alias, unknown, delete, bad messages


def test_alias_and_unknown_types_are_ignored() -> None:
    mapped = map_messages([segment("alias"), segment("track", type="experiment")], connection(), NOW)
    assert mapped.ignored == {0: IgnoreReason.ALIAS, 1: IgnoreReason.UNKNOWN_TYPE}
    assert mapped.events == mapped.drops == []


def test_delete_targets_the_user_in_every_mapped_traffic_type() -> None:
    mapped = map_one(segment("delete"))
    assert {(d.trafficTypeName, d.key) for d in mapped.deletions} == {
        ("user", "97980cfea0067"),
        ("anonymous", "97980cfea0067"),
    }


def test_delete_of_a_key_longer_than_250_characters_is_dropped() -> None:
    mapped = map_one(segment("delete", userId="u" * 251))
    assert drop_reasons(mapped) == ["invalid_key"]
    assert mapped.deletions == []
    assert [d.key for d in map_one(segment("delete", userId="u" * 250)).deletions] == ["u" * 250] * 2


def test_delete_without_user_id_is_dropped() -> None:
    message = segment("delete")
    del message["userId"]
    assert drop_reasons(map_one(message)) == ["missing_user_id"]
    assert drop_reasons(map_one(segment("delete", userId=" "))) == ["missing_user_id"]


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("a string", DropReason.NOT_AN_OBJECT),
        (["nested"], DropReason.NOT_AN_OBJECT),
        ({"event": "no type"}, DropReason.INVALID_MESSAGE),
        (
            {"type": "track", "event": "x", "userId": "u", "properties": "not an object"},
            DropReason.INVALID_MESSAGE,
        ),
        (
            {"type": "track", "event": "x", "userId": "u", "messageId": "m" * 201},
            DropReason.INVALID_MESSAGE_ID,
        ),
    ],
)
def test_bad_messages_are_dropped_and_the_others_kept(item: Any, reason: DropReason) -> None:
    mapped = map_messages([segment("track"), item, segment("page")], connection(), NOW)
    assert [(d.index, d.reason) for d in mapped.drops] == [(1, reason)]
    assert {e.index for e in mapped.events} == {0, 2}


def test_message_without_message_id_gets_a_deterministic_one() -> None:
    message = segment("track")
    del message["messageId"]
    first = map_one(message).events[0].messageId
    assert first == map_one(dict(message)).events[0].messageId
    assert first != map_one(segment("track", event="Other")).events[0].messageId  # has its messageId
    other = dict(message, event="Other")
    assert first != map_one(other).events[0].messageId  # derived from the whole content


# ---------------------------------------------------------------------------------------------
# Identity merge: newer message timestamp wins per attribute


def update(index: int, timestamp: int, **attributes: Any) -> IdentityUpdate:
    return IdentityUpdate(
        index=index,
        environment="Production",
        trafficTypeName="user",
        key="u1",
        attributes=attributes,
        timestamp=timestamp,
    )


def untimed(index: int, message_id: str, received: int, **attributes: Any) -> IdentityUpdate:
    """An update of a message that carries no time: stamped with its time of receipt."""
    return update(index, received, **attributes).model_copy(update={"messageId": message_id, "untimed": True})


def test_merge_into_nothing_creates_the_identity() -> None:
    merged = merge_identity(None, [update(0, 100, plan="pro")], now_ms=0)
    assert merged is not None
    assert merged.attributes == {"plan": "pro"}
    assert merged.attributeTimestamps == {"plan": 100}
    assert merged.expected_version is None


def test_newer_message_wins_per_attribute() -> None:
    stored = StoredIdentity(
        attributes={"plan": "pro", "seats": 3}, attributeTimestamps={"plan": 200, "seats": 50}, version=4
    )
    merged = merge_identity(stored, [update(0, 100, plan="free", seats=5)], now_ms=0)
    assert merged is not None
    assert merged.attributes == {"plan": "pro", "seats": 5}  # plan is older than stored, seats newer
    assert merged.expected_version == 4
    assert merged.effective == {0}


def test_out_of_order_updates_in_one_body() -> None:
    merged = merge_identity(
        None, [update(0, 300, plan="enterprise"), update(1, 100, plan="free", seats=1)], now_ms=0
    )
    assert merged is not None
    assert merged.attributes == {"plan": "enterprise", "seats": 1}


def test_redelivered_update_changes_nothing() -> None:
    stored = StoredIdentity(attributes={"plan": "pro"}, attributeTimestamps={"plan": 100}, version=1)
    assert merge_identity(stored, [update(0, 100, plan="pro")], now_ms=0) is None


@pytest.mark.parametrize("value", [19.99, 1e20, 0.1, 20, "19.99"])
def test_a_redelivered_number_equals_what_dynamodb_gives_back(value: Any) -> None:
    """Stored numbers come back as Decimal; the float a message carries is the same number."""
    stored_value = json.loads(json.dumps(value), parse_float=Decimal)
    stored = StoredIdentity(attributes={"price": stored_value}, attributeTimestamps={"price": 100}, version=1)
    assert merge_identity(stored, [update(0, 100, price=value)], now_ms=0) is None
    assert merge_identity(stored, [update(0, 100, price=True)], now_ms=0) is not None


def test_null_trait_removes_the_attribute_and_keeps_its_time() -> None:
    stored = StoredIdentity(attributes={"plan": "pro"}, attributeTimestamps={"plan": 100}, version=1)
    merged = merge_identity(stored, [update(0, 200, plan=None)], now_ms=0)
    assert merged is not None
    assert merged.attributes == {}
    assert merged.attributeTimestamps == {"plan": 200}
    assert (
        merge_identity(
            StoredIdentity(attributes={}, attributeTimestamps={"plan": 200}),
            [update(1, 150, plan="x")],
            now_ms=0,
        )
        is None
    )


def test_type_change_is_a_change() -> None:
    stored = StoredIdentity(attributes={"beta": 1}, attributeTimestamps={"beta": 100}, version=1)
    merged = merge_identity(stored, [update(0, 100, beta=True)], now_ms=0)
    assert merged is not None
    assert merged.attributes == {"beta": True}


def test_an_untimed_message_is_remembered_and_its_redelivery_changes_nothing() -> None:
    first = merge_identity(None, [untimed(0, "m-1", 1_000, plan="free")], now_ms=1_000)
    assert first is not None
    assert first.untimedMessageIds == {"m-1": 1_000}
    stored = StoredIdentity(
        attributes=first.attributes,
        attributeTimestamps=first.attributeTimestamps,
        untimedMessageIds=first.untimedMessageIds,
        version=1,
    )
    # A newer message changes the plan; the untimed one, sent again later, must not win as newest.
    newer = merge_identity(stored, [update(0, 2_000, plan="pro")], now_ms=2_500)
    assert newer is not None
    assert newer.untimedMessageIds == {"m-1": 1_000}  # carried over
    stored = StoredIdentity(
        attributes=newer.attributes,
        attributeTimestamps=newer.attributeTimestamps,
        untimedMessageIds=newer.untimedMessageIds,
        version=2,
    )
    assert merge_identity(stored, [untimed(0, "m-1", 3_000, plan="free")], now_ms=3_000) is None
    # Another untimed message is news.
    other = merge_identity(stored, [untimed(0, "m-2", 3_000, plan="free")], now_ms=3_000)
    assert other is not None
    assert other.attributes == {"plan": "free"}
    assert other.untimedMessageIds == {"m-1": 1_000, "m-2": 3_000}


def test_an_untimed_message_that_changes_nothing_is_remembered_all_the_same() -> None:
    # The stored plan is from a message stamped later than this one's receipt (a client's clock).
    stored = StoredIdentity(attributes={"plan": "pro"}, attributeTimestamps={"plan": 5_000}, version=1)
    merged = merge_identity(stored, [untimed(0, "m-1", 1_000, plan="free")], now_ms=1_000)
    assert merged is not None  # written, so that its redelivery after a newer message is known
    assert merged.untimedMessageIds == {"m-1": 1_000}
    assert merged.attributes == {"plan": "pro"}
    assert merged.effective == set()  # but it stored nothing new: reported as a duplicate


def test_an_untimed_message_twice_in_one_body_counts_once() -> None:
    merged = merge_identity(
        None, [untimed(0, "m-1", 1_000, plan="free"), untimed(1, "m-1", 1_000, plan="free")], now_ms=1_000
    )
    assert merged is not None
    assert merged.effective == {0}


def test_untimed_message_ids_are_kept_for_the_window_and_at_most_the_newest_hundred() -> None:
    now = 10 * UNTIMED_WINDOW_MS
    remembered = {f"old-{i}": now - UNTIMED_WINDOW_MS for i in range(3)}  # just out of the window
    remembered |= {f"m-{i:03d}": now - UNTIMED_WINDOW_MS + 1 + i for i in range(MAX_UNTIMED_MESSAGE_IDS)}
    stored = StoredIdentity(untimedMessageIds=remembered, version=1)
    assert merge_identity(stored, [untimed(0, "old-0", now, plan="x")], now_ms=now) is not None  # forgotten
    merged = merge_identity(stored, [untimed(0, "new", now, plan="x")], now_ms=now)
    assert merged is not None
    assert len(merged.untimedMessageIds) == MAX_UNTIMED_MESSAGE_IDS
    assert "new" in merged.untimedMessageIds
    assert "m-000" not in merged.untimedMessageIds  # the oldest made room
    assert not any(message_id.startswith("old-") for message_id in merged.untimedMessageIds)


def ids(*message_ids: str) -> list[str]:
    return [applied_id(message_id) for message_id in message_ids]


def timed(index: int, message_id: str, timestamp: int, **attributes: Any) -> IdentityUpdate:
    return update(index, timestamp, **attributes).model_copy(update={"messageId": message_id})


def kept(merged: MergedIdentity | None, version: int) -> StoredIdentity:
    """What the identities table holds after ``merged`` was written."""
    assert merged is not None
    return StoredIdentity(
        attributes=merged.attributes,
        attributeTimestamps=merged.attributeTimestamps,
        untimedMessageIds=merged.untimedMessageIds,
        timedMessageIds=merged.timedMessageIds,
        version=version,
    )


def test_a_message_redelivered_after_a_later_one_of_its_millisecond_changes_nothing() -> None:
    first = merge_identity(None, [timed(0, "A", 100, plan="free", seats=1)], now_ms=0)
    assert first is not None
    assert first.timedMessageIds == {100: ids("A")}
    # Called twice in a row: the same millisecond, and the later message wins the tie.
    second = merge_identity(kept(first, 1), [timed(0, "B", 100, plan="pro")], now_ms=0)
    assert second is not None
    assert second.attributes == {"plan": "pro", "seats": 1}
    assert second.timedMessageIds == {100: ids("A", "B")}
    # A, redelivered, must not win it back.
    assert merge_identity(kept(second, 2), [timed(0, "A", 100, plan="free", seats=1)], now_ms=0) is None
    assert merge_identity(kept(second, 2), [timed(0, "B", 100, plan="pro")], now_ms=0) is None
    # A third message of that millisecond is news, and wins.
    third = merge_identity(kept(second, 2), [timed(0, "C", 100, plan="enterprise")], now_ms=0)
    assert third is not None
    assert third.attributes == {"plan": "enterprise", "seats": 1}
    assert third.effective == {0}


def test_a_message_of_a_tie_that_changes_nothing_is_remembered_all_the_same() -> None:
    first = kept(merge_identity(None, [timed(0, "A", 100, plan="free")], now_ms=0), 1)
    same = merge_identity(first, [timed(0, "B", 100, plan="free")], now_ms=0)
    assert same is not None
    assert same.timedMessageIds == {100: ids("A", "B")}
    changed = kept(merge_identity(kept(same, 2), [timed(0, "C", 100, plan="pro")], now_ms=0), 3)
    assert merge_identity(changed, [timed(0, "B", 100, plan="free")], now_ms=0) is None


def test_tied_message_ids_are_kept_only_while_their_time_is_an_attributes() -> None:
    first = kept(merge_identity(None, [timed(0, "A", 100, plan="free", seats=1)], now_ms=0), 1)
    partly = merge_identity(first, [timed(0, "D", 200, plan="pro")], now_ms=0)
    assert partly is not None
    assert partly.timedMessageIds == {100: ids("A"), 200: ids("D")}  # seats is still A's
    wholly = merge_identity(kept(partly, 2), [timed(0, "E", 300, plan="x", seats=2)], now_ms=0)
    assert wholly is not None
    assert wholly.timedMessageIds == {300: ids("E")}
    # An older message that no attribute keeps is not remembered (sent again, it changes nothing).
    older = merge_identity(kept(wholly, 3), [timed(0, "F", 50, plan="y", seats=9)], now_ms=0)
    assert older is None


def test_tied_message_ids_are_kept_for_the_newest_few_times_only() -> None:
    # One trait per identify, each at its own time: every time stays an attribute's.
    stored = kept(merge_identity(None, [timed(0, "m-000", 1000, t0=0)], now_ms=0), 1)
    for i in range(1, MAX_TIED_TIMESTAMPS + 10):
        stored = kept(
            merge_identity(stored, [timed(0, f"m-{i:03d}", 1000 + i, **{f"t{i}": i})], now_ms=0), i + 1
        )
    assert len(stored.attributeTimestamps) == MAX_TIED_TIMESTAMPS + 10
    assert sorted(stored.timedMessageIds) == list(range(1010, 1010 + MAX_TIED_TIMESTAMPS))
    assert all(len(digest) == 16 for digests in stored.timedMessageIds.values() for digest in digests)


def test_tied_message_ids_are_at_most_the_newest_few_per_time() -> None:
    stored = kept(merge_identity(None, [timed(0, "m-00", 100, n=0)], now_ms=0), 1)
    for i in range(1, MAX_TIED_MESSAGE_IDS + 5):
        stored = kept(merge_identity(stored, [timed(0, f"m-{i:02d}", 100, n=i)], now_ms=0), i + 1)
    ids = stored.timedMessageIds[100]
    assert len(ids) == MAX_TIED_MESSAGE_IDS
    assert ids[-1] == applied_id(f"m-{MAX_TIED_MESSAGE_IDS + 4:02d}")


def test_an_identity_is_too_large_by_its_utf8_bytes_not_its_escaped_json() -> None:
    def identity(characters: int) -> MergedIdentity:
        attributes = {f"bio_{i}": "ж" * 250 for i in range(characters // 250)}  # 2 bytes each in UTF-8
        timestamps = dict.fromkeys(attributes, NOW)
        return MergedIdentity(
            environment="Production",
            trafficTypeName="user",
            key="u",
            attributes=attributes,
            attributeTimestamps=timestamps,
            expected_version=None,
            effective={0},
        )

    assert not identity(150_000).too_large()  # about 300 KB in DynamoDB; 900 KB as \\u escapes
    assert identity(190_000).too_large()


# ---------------------------------------------------------------------------------------------
# Boundaries, each at its exact value (literal numbers: a test must not move with the constant)


def test_the_32_kb_limit_holds_for_a_key_of_escapes_alone() -> None:
    """A key of control characters takes six bytes each in the JSON FME receives: measured, not guessed."""

    def track(blob: str) -> Mapped:
        return map_one(segment("track", userId="\u0001" * 250, anonymousId=None, properties={"blob": blob}))

    blob = "x" * (32_768 - _as_the_events_api_receives_it(track("x").events[0]) + 2)
    mapped = track(blob)
    assert mapped.events == []
    assert drop_reasons(mapped) == ["event_too_large"]
    kept = track(blob[:-1])
    assert _as_the_events_api_receives_it(kept.events[0]) == 32_768


def test_numbers_are_kept_up_to_what_dynamodb_holds() -> None:
    """38 digits and magnitudes below 1e126 stay numbers; past them, strings."""
    properties = {"digits38": 10**38 - 1, "digits39": 10**38, "below": 9.9e125, "at": 1e126}
    mapped = map_one(segment("track", properties=properties))
    assert mapped.events[0].properties == {
        "digits38": 10**38 - 1,
        "digits39": str(10**38),
        "below": 9.9e125,
        "at": "1e+126",
    }


def test_a_value_dynamodb_cannot_hold_is_no_value() -> None:
    mapped = map_one(segment("track", properties={"revenue": 1e200}), valueField="properties.revenue")
    assert {e.value for e in mapped.events} == {None}


def test_a_property_without_a_name_is_trimmed_and_counted() -> None:
    mapped = map_one(segment("track", anonymousId=None, properties={"": "x", "a": 1}))
    assert mapped.events[0].properties == {"a": 1}
    assert mapped.properties_trimmed == 1


def test_event_level_group_ids_are_text_numbers_included_and_booleans_not() -> None:
    mapped = map_one(
        segment("track", anonymousId=None, properties={"split": [{"account": 42}, {"team": True}]})
    )
    assert {(e.trafficTypeName, e.key) for e in mapped.events} == {("user", "AiUGstSDIg"), ("account", "42")}
    assert drop_reasons(mapped) == ["invalid_key"]


def test_an_event_level_group_naming_the_messages_own_identity_is_one_event() -> None:
    mapped = map_one(segment("track", anonymousId=None, properties={"split": [{"user": "AiUGstSDIg"}]}))
    assert [(e.trafficTypeName, e.key) for e in mapped.events] == [("user", "AiUGstSDIg")]


def test_a_message_id_of_200_characters_is_taken() -> None:
    mapped = map_one(segment("track", anonymousId=None, messageId="m" * 200))
    assert len(mapped.events) == 1
    assert mapped.drops == []


def test_the_message_type_is_read_whatever_its_case() -> None:
    mapped = map_one(segment("track", type="Track", anonymousId=None))
    assert [e.segmentType for e in mapped.events] == ["track"]


def test_a_page_named_by_a_number_is_named_and_one_named_true_is_not() -> None:
    assert [e.eventTypeId for e in map_one(segment("page", name=404, anonymousId=None)).events] == [
        "view_404_page"
    ]
    unnamed = map_one(segment("page", name=True))
    assert unnamed.events == []
    assert unnamed.ignored == {0: IgnoreReason.UNNAMED}


def test_an_identify_without_any_identity_is_dropped_and_counted() -> None:
    mapped = map_one(segment("identify", userId=None, anonymousId=None))
    assert drop_reasons(mapped) == ["no_identity"]
    assert mapped.identities == []
    assert mapped.ignored == {}


def test_an_older_message_loses_to_a_newer_one_of_the_same_value() -> None:
    """The same value again, newer, moves the attribute's time: an older message cannot win after it."""
    first = merge_identity(None, [update(0, 1000, x=1)], now_ms=0)
    assert first is not None
    stored = StoredIdentity(
        attributes=first.attributes, attributeTimestamps=first.attributeTimestamps, version=1
    )
    again = merge_identity(stored, [update(0, 3000, x=1)], now_ms=0)
    assert again is not None
    assert again.attributeTimestamps["x"] == 3000
    stored = StoredIdentity(
        attributes=again.attributes, attributeTimestamps=again.attributeTimestamps, version=2
    )
    assert merge_identity(stored, [update(0, 2000, x=2)], now_ms=0) is None
