"""The computed-trait identifies one outbound config gets for a batch of last-treatment writes."""

from __future__ import annotations

from typing import Any

from shared import __version__
from shared.config import OutboundConfig
from shared.outbound.destinations import Destination
from shared.profiles.computed_traits import computed_trait_identifies
from shared.profiles_table import LastTreatment, WriteOutcome

T0 = 1_795_483_041_109


def config(**computed_traits: Any) -> OutboundConfig:
    return OutboundConfig.model_validate(
        {
            "environments": ["Production"],
            "identities": {"user": "userId", "anonymous": "anonymousId"},
            "computedTraits": computed_traits,
        }
    )


def written(key: str, treatment: str, previous: str | None, traffic_type: str = "user") -> WriteOutcome:
    record = LastTreatment("Production", traffic_type, key, "new_checkout", treatment, T0, 17)
    return WriteOutcome(record, applied=True, previous=previous)


def test_one_identify_per_changed_treatment_with_the_config_identity_field() -> None:
    outcomes = [
        written("user-1", "on", None),
        written("user-2", "on", "off"),
        written("visitor-1", "v2", "v1", traffic_type="anonymous"),
    ]
    messages = computed_trait_identifies(outcomes, Destination("segment", config(enabled=True)))
    assert [(m.get("userId"), m.get("anonymousId"), m["traits"]) for m in messages] == [
        ("user-1", None, {"new_checkout": "on"}),
        ("user-2", None, {"new_checkout": "on"}),
        (None, "visitor-1", {"new_checkout": "v2"}),
    ]


def test_the_identify_is_the_documented_one_at_the_impression_time() -> None:
    """docs/profiles.md: the trait named by the template, the impression's time, the library."""
    destination = Destination("segment", config(enabled=True, traitName="split_{split}"))
    [message] = computed_trait_identifies([written("user-123", "on", "off")], destination)
    assert message == {
        "type": "identify",
        "userId": "user-123",
        "traits": {"split_new_checkout": "on"},
        "timestamp": "2026-11-24T01:17:21.109Z",
        "messageId": message["messageId"],
        "context": {"library": {"name": "fme-segment-bridge", "version": __version__}},
    }
    assert message["messageId"].startswith("fme-trait-")


def test_an_unchanged_treatment_sends_nothing() -> None:
    same = written("user-1", "on", "on")
    older = WriteOutcome(same.record, applied=False)
    assert computed_trait_identifies([same, older], Destination("segment", config(enabled=True))) == []


def test_a_config_without_computed_traits_enabled_sends_nothing() -> None:
    outcome = written("user-1", "on", None)
    assert computed_trait_identifies([outcome], Destination("segment", config())) == []
    assert (
        computed_trait_identifies(
            [outcome], Destination("segment", config(enabled=False, traitName="fme_{split}"))
        )
        == []
    )


def test_a_traffic_type_the_config_does_not_map_sends_nothing() -> None:
    outcome = written("account-1", "on", None, traffic_type="account")
    assert computed_trait_identifies([outcome], Destination("segment", config(enabled=True))) == []


def test_the_same_change_gets_another_message_id_for_each_outbound_config() -> None:
    """Segment deduplicates messageIds across all sources: two configs sharing one would lose one."""
    outcome = written("user-1", "on", None)
    [first] = computed_trait_identifies([outcome], Destination("production", config(enabled=True)))
    [again] = computed_trait_identifies([outcome], Destination("production", config(enabled=True)))
    [other] = computed_trait_identifies([outcome], Destination("all-environments", config(enabled=True)))
    assert first["messageId"] == again["messageId"]
    assert other["messageId"] != first["messageId"]
    assert {k: v for k, v in other.items() if k != "messageId"} == {
        k: v for k, v in first.items() if k != "messageId"
    }


def test_a_treatment_that_comes_back_gets_a_new_message_id() -> None:
    """on → off → on: the second "on" is a change of its own, which Segment must not drop as a duplicate."""
    destination = Destination("segment", config(enabled=True))
    first, back = (
        WriteOutcome(
            LastTreatment("Production", "user", "user-1", "new_checkout", "on", at, 17),
            applied=True,
            previous=prev,
        )
        for at, prev in ((T0, None), (T0 + 60_000, "off"))
    )
    [sent_first] = computed_trait_identifies([first], destination)
    [sent_back] = computed_trait_identifies([back], destination)
    assert sent_first["traits"] == sent_back["traits"] == {"new_checkout": "on"}
    assert sent_first["messageId"] != sent_back["messageId"]


def test_a_treatment_that_comes_back_within_the_same_millisecond_gets_a_new_message_id() -> None:
    """on (version 17) → off (18) → on (19), all at T0: the flag's versions tell the changes apart."""
    destination = Destination("segment", config(enabled=True))
    first, back = (
        WriteOutcome(
            LastTreatment("Production", "user", "user-1", "new_checkout", "on", T0, version),
            applied=True,
            previous=prev,
        )
        for version, prev in ((17, None), (19, "off"))
    )
    [sent_first] = computed_trait_identifies([first], destination)
    [sent_back] = computed_trait_identifies([back], destination)
    assert sent_first["messageId"] != sent_back["messageId"]


def test_the_same_change_of_two_identities_gets_a_message_id_each() -> None:
    """Another key, or the same key in another environment or traffic type: Segment must keep both."""
    outcomes = [
        WriteOutcome(LastTreatment(environment, traffic_type, key, "new_checkout", "on", T0, 17), True, None)
        for environment, traffic_type, key in [
            ("Production", "user", "user-1"),
            ("Production", "user", "user-2"),
            ("Staging", "user", "user-1"),
            ("Production", "anonymous", "user-1"),
        ]
    ]
    messages = computed_trait_identifies(outcomes, Destination("segment", config(enabled=True)))
    assert len({m["messageId"] for m in messages}) == 4


def test_two_flags_changing_in_the_same_impression_batch_get_a_message_id_each() -> None:
    """One page evaluating two flags: the same key, time, version and treatment, only the trait differs."""
    outcomes = [
        WriteOutcome(LastTreatment("Production", "user", "user-1", split, "on", T0, 17), True, None)
        for split in ("new_checkout", "new_search")
    ]
    messages = computed_trait_identifies(outcomes, Destination("segment", config(enabled=True)))
    assert [m["traits"] for m in messages] == [{"new_checkout": "on"}, {"new_search": "on"}]
    assert len({m["messageId"] for m in messages}) == 2
