"""The prepared track encoder gives, byte for byte, what the readable track message serialises to.

Impressions are generated with every field varied (text with quotes, escapes and non-ASCII, absent
optionals, custom properties that collide with the standard ones), for several configs and both
identity fields; the messageId keeps its digest input.
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config import OutboundConfig
from shared.outbound.impressions import Impression
from shared.outbound.segment_messages import TrackEncoder, encode, message_id, track_message

TEXT = st.text(min_size=1, max_size=12)
OPTIONAL_TEXT = st.one_of(st.none(), st.text(max_size=12))
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
PROPERTIES = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["split", "key", "page", "plan", "é"]), JSON_VALUE, max_size=4),
)
IMPRESSIONS = st.builds(
    Impression,
    key=TEXT,
    split=TEXT,
    treatment=TEXT,
    time=st.integers(min_value=0, max_value=253402300799999),
    environment_id=OPTIONAL_TEXT,
    environment_name=OPTIONAL_TEXT,
    traffic_type=OPTIONAL_TEXT,
    bucketing_key=OPTIONAL_TEXT,
    label=OPTIONAL_TEXT,
    split_version_number=st.one_of(st.none(), st.integers(min_value=0, max_value=2**63)),
    machine_ip=OPTIONAL_TEXT,
    machine_name=OPTIONAL_TEXT,
    sdk=OPTIONAL_TEXT,
    sdk_version=OPTIONAL_TEXT,
    properties=PROPERTIES,
)
CONFIGS = st.builds(
    lambda event: OutboundConfig.model_validate(
        {"environments": ["*"], "identities": {"user": "userId"}, "eventName": event}
    ),
    st.one_of(st.just("get_treatment"), st.text(min_size=1, max_size=8)),
)


def digest_as_defined(impression: Impression, event_name: str, identity: str, destination: str) -> str:
    """The messageId's definition: fields joined by \\x1f, hashed with BLAKE2b-128."""
    parts = (
        impression.environment_name or impression.environment_id or "",
        impression.split,
        impression.key,
        impression.bucketing_key or "",
        impression.treatment,
        impression.label or "",
        str(impression.time),
        "" if impression.split_version_number is None else str(impression.split_version_number),
        event_name,
        identity,
        destination,
    )
    return "fme-" + hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


@settings(max_examples=400, deadline=None)
@given(impression=IMPRESSIONS, config=CONFIGS, identity=st.sampled_from(["userId", "anonymousId"]))
def test_encoder_matches_the_track_message(
    impression: Impression, config: OutboundConfig, identity: str
) -> None:
    expected = encode(track_message(impression, config, identity, "segment"))
    assert TrackEncoder(config, identity, "segment").encode(impression) == expected


@settings(max_examples=300, deadline=None)
@given(
    impression=IMPRESSIONS,
    event=TEXT,
    identity=st.sampled_from(["userId", "anonymousId"]),
    destination=TEXT,
)
def test_message_id_keeps_its_digest_input(
    impression: Impression, event: str, identity: str, destination: str
) -> None:
    expected = digest_as_defined(impression, event, identity, destination)
    assert message_id(impression, event, identity, destination) == expected


def test_message_ids_are_pinned() -> None:
    # A redelivered impression must get the id it got before an upgrade, or Segment keeps both. These
    # changed once, when the outbound config's name joined the digest (docs/outbound.md, upgrading).
    impression = Impression(
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
    assert (
        message_id(impression, "get_treatment", "userId", "segment") == "fme-051e1baebd25d7b1739e339a8cecae21"
    )
    impression = Impression(
        key="josé",
        split="s",
        treatment="off",
        time=0,
        environment_id="env-id",
        environment_name=None,
        traffic_type=None,
        bucketing_key="b",
    )
    assert message_id(impression, "other", "anonymousId", "segment") == "fme-2f558b643aa973a0e38b8142faffbb04"
