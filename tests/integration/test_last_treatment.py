"""Last treatment per (identity, flag) in ProfilesTable, against moto."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fme_bridge.template import Stack
from shared import aws
from shared.config import OutboundConfig
from shared.outbound.destinations import Destination
from shared.profiles.computed_traits import computed_trait_identifies
from shared.profiles.last_treatment import LastTreatmentRecorder, newest_per_flag
from shared.profiles_table import (
    LastTreatment,
    delete_last_treatments,
    mark_synced,
    mark_unsynced,
    profile_items,
    profile_pk,
    write_last_treatment,
)

OUTBOUND = OutboundConfig.model_validate(
    {
        "environments": ["Production"],
        "identities": {"user": "userId", "anonymous": "anonymousId"},
        "computedTraits": {"enabled": True, "traitName": "split_{split}"},
    }
)


def seen(
    key: str, split: str, treatment: str, time: int, version: int | None = 1, tt: str = "user"
) -> LastTreatment:
    return LastTreatment("Production", tt, key, split, treatment, time, version, "default rule")


@pytest.fixture
def profiles(stack: Stack, function_env: Callable[[str], dict[str, str]]) -> Stack:
    function_env("ImpressionsFunction")
    return stack


def stored(key: str, tt: str = "user") -> dict[str, dict[str, Any]]:
    return {i["split"]: i for i in profile_items(profile_pk("Production", tt, key)) if "split" in i}


def test_first_impression_is_stored_and_is_a_change(profiles: Stack) -> None:
    outcome = write_last_treatment(seen("u1", "new_checkout", "on", 1_000, 17))
    assert (outcome.applied, outcome.changed, outcome.previous) == (True, True, None)
    item = stored("u1")["new_checkout"]
    assert item["pk"] == "Production#user#u1"
    assert item["sk"] == "treatment#new_checkout"
    assert (item["treatment"], item["time"], item["splitVersionNumber"]) == ("on", 1_000, 17)
    assert (item["environment"], item["trafficTypeName"], item["key"]) == ("Production", "user", "u1")


def test_an_older_impression_arriving_late_never_overwrites_a_newer_one(profiles: Stack) -> None:
    write_last_treatment(seen("u1", "f", "on", 2_000))
    late = write_last_treatment(seen("u1", "f", "off", 1_000))
    assert (late.applied, late.changed) == (False, False)
    assert stored("u1")["f"]["treatment"] == "on"
    assert stored("u1")["f"]["time"] == 2_000


def test_a_newer_impression_with_the_same_treatment_is_no_change_but_moves_the_time(profiles: Stack) -> None:
    write_last_treatment(seen("u1", "f", "on", 1_000))
    again = write_last_treatment(seen("u1", "f", "on", 5_000))
    assert (again.applied, again.changed, again.previous) == (True, False, "on")
    assert stored("u1")["f"]["time"] == 5_000
    flipped = write_last_treatment(seen("u1", "f", "off", 6_000))
    assert (flipped.changed, flipped.previous) == (True, "on")


def test_a_redelivered_winning_impression_still_reports_its_change(profiles: Stack) -> None:
    """A crash after the write and before the identify: the redelivery must send the identify again."""
    write_last_treatment(seen("u1", "f", "on", 1_000))
    first = write_last_treatment(seen("u1", "f", "off", 2_000))
    replay = write_last_treatment(seen("u1", "f", "off", 2_000))
    assert first.changed
    assert (replay.replay, replay.changed, replay.previous) == (True, True, "on")
    # ... and produces the same identify, which Segment deduplicates by messageId.
    assert computed_trait_identifies([first], Destination("segment", OUTBOUND)) == computed_trait_identifies(
        [replay], Destination("segment", OUTBOUND)
    )


def test_identities_whose_names_hold_hashes_keep_their_own_last_treatments(profiles: Stack) -> None:
    """Environment "a#b" with traffic type "c", and "a" with "b#c": once one profile, now two."""
    first = write_last_treatment(LastTreatment("a#b", "c", "k", "f", "on", 1_000))
    second = write_last_treatment(LastTreatment("a", "b#c", "k", "f", "off", 1_000))
    assert (first.changed, second.changed) == (True, True)
    for environment, traffic_type, treatment in (("a#b", "c", "on"), ("a", "b#c", "off")):
        [item] = profile_items(profile_pk(environment, traffic_type, "k"))
        assert (item["environment"], item["trafficTypeName"], item["treatment"]) == (
            environment,
            traffic_type,
            treatment,
        )


def test_no_read_before_write(profiles: Stack) -> None:
    calls: list[str] = []
    # The client is created once per process; the writes below go through this very instance.
    aws.client("dynamodb").meta.events.register(
        "before-call.dynamodb.*", lambda model, **_: calls.append(model.name)
    )
    LastTreatmentRecorder().record([seen("u1", "f", "on", 1_000), seen("u2", "f", "on", 1_000)])
    assert calls == ["UpdateItem", "UpdateItem"]


def test_a_batch_collapses_to_the_newest_impression_per_identity_and_flag() -> None:
    batch = [seen("u1", "f", "on", t) for t in (5, 1, 9, 3)] + [
        seen("u1", "g", "x", 1),
        seen("u2", "f", "off", 2),
    ]
    newest = newest_per_flag(batch)
    assert [(r.key, r.split, r.time) for r in newest] == [("u1", "f", 9), ("u1", "g", 1), ("u2", "f", 2)]


def test_ties_in_a_millisecond_order_by_version_whatever_its_size() -> None:
    versions = [None, -5, 0, 17, 2**63 - 1, 10**30]  # absent, odd, a Java long, more than fits
    ranks = [seen("u1", "f", "on", 1, version).rank for version in versions]
    assert all(len(rank.split("#")[0]) == 20 for rank in ranks)
    assert ranks == sorted(ranks)
    assert ranks[0] == ranks[1]  # below -1 counts as absent


def test_the_cache_skips_what_was_already_written_and_synced(profiles: Stack) -> None:
    recorder = LastTreatmentRecorder()
    outcomes = recorder.record([seen("u1", "f", "on", 1_000)])
    assert len(outcomes) == 1
    # Not remembered yet (its identify may have failed): a redelivery is written again.
    assert len(recorder.record([seen("u1", "f", "on", 1_000)])) == 1
    recorder.remember(outcomes)
    assert recorder.record([seen("u1", "f", "on", 1_000), seen("u1", "f", "off", 500)]) == []
    assert recorder.skipped == 1  # the batch collapsed to one record first
    # An older one is written (and fails the condition): what is stored may owe Segment a change.
    [older] = recorder.record([seen("u1", "f", "off", 500)])
    assert (older.applied, older.changed) == (False, False)
    newer = recorder.record([seen("u1", "f", "off", 2_000)])
    assert [o.changed for o in newer] == [True]
    # Remembering the newer write, then the older one's (a late batch finishing after): the cache
    # keeps the newer, skips its replay, and still writes the older impression.
    recorder.remember(newer)
    recorder.remember([older])
    before = recorder.skipped
    assert recorder.record([seen("u1", "f", "off", 2_000)]) == []
    assert recorder.skipped == before + 1
    assert len(recorder.record([seen("u1", "f", "off", 500)])) == 1


def test_the_cache_is_bounded(profiles: Stack) -> None:
    recorder = LastTreatmentRecorder(cache_size=2)
    recorder.remember(recorder.record([seen(f"u{i}", "f", "on", 1) for i in range(3)]))
    assert len(recorder.record([seen("u0", "f", "on", 1)])) == 1  # evicted: written again
    assert recorder.record([seen("u2", "f", "on", 1)]) == []


def test_the_cache_evicts_the_least_recently_synced_first(profiles: Stack) -> None:
    recorder = LastTreatmentRecorder(cache_size=2)
    recorder.remember(recorder.record([seen(f"u{i}", "f", "on", 1) for i in range(2)]))
    recorder.remember(recorder.record([seen("u0", "f", "off", 2)]))  # u0 synced again, u1 the oldest
    recorder.remember(recorder.record([seen("u2", "f", "on", 1)]))
    assert recorder.record([seen("u0", "f", "off", 2)]) == []
    assert len(recorder.record([seen("u1", "f", "on", 1)])) == 1  # evicted: written again


@pytest.mark.parametrize("order", [("off", "on"), ("on", "off")])
def test_a_tie_in_time_and_version_goes_to_the_greater_treatment_name_in_any_order(
    profiles: Stack, order: tuple[str, str]
) -> None:
    outcomes = [write_last_treatment(seen("u1", "f", treatment, 1_000, 17)) for treatment in order]
    assert stored("u1")["f"]["treatment"] == "on"
    # The losing impression is no change: Segment must not be told its treatment.
    assert [o.changed for o in outcomes] == [True, order[1] == "on"]


def test_a_version_or_label_the_newer_impression_lacks_is_removed_not_kept_or_null(profiles: Stack) -> None:
    write_last_treatment(seen("u1", "f", "on", 1_000, 17))
    assert (stored("u1")["f"]["splitVersionNumber"], stored("u1")["f"]["label"]) == (17, "default rule")
    write_last_treatment(LastTreatment("Production", "user", "u1", "f", "off", 2_000))
    item = stored("u1")["f"]
    assert item["treatment"] == "off"
    assert "splitVersionNumber" not in item
    assert "label" not in item


def test_the_synced_note_of_an_older_last_treatment_leaves_a_newer_ones_pending(profiles: Stack) -> None:
    """Segment received the identify of the older one; what replaced it still owes its own."""
    older, newer = seen("u1", "f", "on", 1_000), seen("u1", "f", "off", 2_000)
    write_last_treatment(older)
    mark_unsynced([older])
    assert write_last_treatment(newer).unsynced
    mark_synced([older])
    assert stored("u1")["f"]["identifyPending"] is True
    mark_synced([newer])
    assert "identifyPending" not in stored("u1")["f"]


def test_a_note_on_a_last_treatment_deleted_meanwhile_leaves_nothing_stored(profiles: Stack) -> None:
    """A Segment user deletion between the write and the note: the note must not bring back an item."""
    record = seen("u1", "f", "on", 1_000)
    write_last_treatment(record)
    delete_last_treatments(record.pk)
    mark_unsynced([record])
    assert profile_items(record.pk) == []


IMPRESSIONS = st.lists(
    st.builds(
        seen,
        key=st.sampled_from(["u1", "u2", "u3"]),
        split=st.sampled_from(["f", "g"]),
        treatment=st.sampled_from(["on", "off", "v2"]),
        time=st.integers(min_value=1, max_value=6),  # few values: many same-millisecond ties
        version=st.sampled_from([None, 1, 2]),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(impressions=IMPRESSIONS, seed=st.integers(), batch_size=st.integers(min_value=1, max_value=6))
def test_any_delivery_order_ends_with_the_same_last_treatments_and_traits(
    profiles: Stack, impressions: list[LastTreatment], seed: int, batch_size: int
) -> None:
    """Shuffle and re-batch the impressions: the stored last treatments and the traits Segment ends
    with (the last identify per user and trait) are those of the newest impression per flag."""
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(profiles.tables["ProfilesTable"])
    for item in table.scan()["Items"]:
        table.delete_item(Key={"pk": item["pk"], "sk": item["sk"]})

    shuffled = list(impressions)
    random.Random(seed).shuffle(shuffled)
    recorder = LastTreatmentRecorder()
    traits: dict[str, dict[str, str]] = {}
    sent_ids: list[str] = []
    for start in range(0, len(shuffled), batch_size):
        outcomes = recorder.record(shuffled[start : start + batch_size])
        for message in computed_trait_identifies(outcomes, Destination("segment", OUTBOUND)):
            traits.setdefault(message["userId"], {}).update(message["traits"])
            sent_ids.append(message["messageId"])
        recorder.remember(outcomes)

    expected = {(r.key, r.split): r for r in newest_per_flag(sorted(impressions, key=lambda r: r.order))}
    for (key, split), winner in expected.items():
        item = stored(key)[split]
        assert (item["treatment"], item["time"]) == (winner.treatment, winner.time)
        assert traits[key][f"split_{split}"] == winner.treatment
    assert len(sent_ids) == len(set(sent_ids))
