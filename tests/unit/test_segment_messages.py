"""The Segment track call an impression becomes, and its deterministic messageId."""

from __future__ import annotations

import json
import time

import msgspec
import pytest

from shared.config import OutboundConfig
from shared.outbound.impressions import Impression
from shared.outbound.segment_messages import (
    STANDARD_PROPERTIES,
    TrackEncoder,
    encode,
    identity_field,
    iso_timestamp,
    message_id,
    track_message,
)

IMPRESSION = Impression(
    key="user-1",
    split="new_checkout",
    treatment="on",
    time=1795483041109,
    environment_id="env-id",
    environment_name="Production",
    traffic_type=None,
    label="default rule",
    split_version_number=17,
)
CONFIG = OutboundConfig.model_validate(
    {"environments": ["Production"], "identities": {"user": "userId", "anonymous": "anonymousId"}}
)


def test_timestamp_is_iso_8601_utc_with_milliseconds() -> None:
    assert iso_timestamp(1795483041109) == "2026-11-24T01:17:21.109Z"
    assert iso_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert iso_timestamp(1795483041000) == "2026-11-24T01:17:21.000Z"


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="time.tzset is POSIX-only")
def test_timestamps_are_utc_whatever_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.outbound import segment_messages

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    segment_messages._second.cache_clear()
    try:
        assert iso_timestamp(1795483041109) == "2026-11-24T01:17:21.109Z"
    finally:
        monkeypatch.undo()
        time.tzset()
        segment_messages._second.cache_clear()


def test_message_id_is_deterministic_and_short() -> None:
    first = message_id(IMPRESSION, "get_treatment", "userId", "segment")
    assert first == message_id(msgspec.structs.replace(IMPRESSION), "get_treatment", "userId", "segment")
    assert len(first) <= 100
    assert first.startswith("fme-")


@pytest.mark.parametrize(
    "change",
    [
        {"key": "user-2"},
        {"split": "other"},
        {"treatment": "off"},
        {"time": 1795483041110},
        {"environment_name": "Staging"},
        {"bucketing_key": "b"},
        {"label": "killed"},
        {"split_version_number": 18},
    ],
)
def test_message_id_differs_when_the_impression_differs(change: dict[str, object]) -> None:
    assert message_id(
        msgspec.structs.replace(IMPRESSION, **change), "get_treatment", "userId", "segment"
    ) != message_id(IMPRESSION, "get_treatment", "userId", "segment")


def test_message_id_differs_per_event_name_identity_and_outbound_config() -> None:
    base = message_id(IMPRESSION, "get_treatment", "userId", "segment")
    assert message_id(IMPRESSION, "other_event", "userId", "segment") != base
    assert message_id(IMPRESSION, "get_treatment", "anonymousId", "segment") != base
    # Segment deduplicates messageIds across all sources: two configs sharing one would lose one.
    assert message_id(IMPRESSION, "get_treatment", "userId", "all-environments") != base


def test_identity_follows_traffic_type_and_default() -> None:
    assert identity_field(IMPRESSION, CONFIG) == "userId"  # first mapped when no default
    anonymous = msgspec.structs.replace(IMPRESSION, traffic_type="anonymous")
    assert identity_field(anonymous, CONFIG) == "anonymousId"
    assert identity_field(msgspec.structs.replace(IMPRESSION, traffic_type="account"), CONFIG) is None
    defaulted = CONFIG.model_copy(update={"defaultTrafficType": "anonymous"})
    assert identity_field(IMPRESSION, defaulted) == "anonymousId"


def test_track_message_shape_and_custom_properties_never_overwrite() -> None:
    impression = msgspec.structs.replace(IMPRESSION, properties={"treatment": "forged", "page": "cart"})
    message = track_message(impression, CONFIG, "userId", "segment")
    assert list(message) == ["type", "event", "userId", "timestamp", "messageId", "properties", "context"]
    assert list(message["properties"])[: len(STANDARD_PROPERTIES)] == list(STANDARD_PROPERTIES)
    assert message["properties"]["treatment"] == "on"
    assert message["properties"]["page"] == "cart"
    assert message["properties"]["splitVersionNumber"] == 17
    assert json.loads(encode(message)) == message


def test_each_standard_property_carries_its_impression_field() -> None:
    impression = msgspec.structs.replace(
        IMPRESSION,
        bucketing_key="bucket-1",
        machine_ip="10.0.0.7",
        machine_name="web-7",
        sdk="java",
        sdk_version="4.13.0",
    )
    expected = {
        "split": "new_checkout",
        "treatment": "on",
        "label": "default rule",
        "environmentId": "env-id",
        "environmentName": "Production",
        "splitVersionNumber": 17,
        "key": "user-1",
        "bucketingKey": "bucket-1",
        "machineIp": "10.0.0.7",
        "machineName": "web-7",
        "sdk": "java",
        "sdkVersion": "4.13.0",
    }
    assert track_message(impression, CONFIG, "userId", "segment")["properties"] == expected
    encoded = TrackEncoder(CONFIG, "userId", "segment").encode(impression)
    assert json.loads(encoded)["properties"] == expected


def test_encoding_is_compact_utf8() -> None:
    impression = msgspec.structs.replace(IMPRESSION, key="josé")
    encoded = encode(track_message(impression, CONFIG, "userId", "segment"))
    assert b'"userId":"jos\xc3\xa9"' in encoded
    assert b", " not in encoded


@pytest.mark.parametrize("at", [0, 1_795_483_041_109, 8_591_284_457_574, 253_402_300_799_999])
def test_an_identify_has_the_track_calls_timestamp_to_the_millisecond(at: int) -> None:
    from shared.profiles.computed_traits import identify_message

    assert identify_message("userId", "u", {"t": "on"}, at, "m")["timestamp"] == iso_timestamp(at)
