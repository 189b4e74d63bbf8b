"""The audience language: what it accepts, how it rejects, and how rules evaluate."""

from __future__ import annotations

import pytest

from shared.config import ConfigInvalid
from shared.profiles.audience_sync import AudienceSet, StoredChange, SyncReport, profiles_to_evaluate
from shared.profiles.audiences import (
    AUDIENCE_NAME_PATTERN,
    DAY_MS,
    AudienceConfig,
    Evaluation,
    ProfileFacts,
    evaluate,
    event_needs,
    parse_audience,
)
from tests.docs_examples import documented_audience

NOW = 100 * DAY_MS


def audience(rule: dict[str, object]) -> AudienceConfig:
    return parse_audience({"environment": "Production", "trafficType": "user", "rule": rule}, "test")


def test_the_documented_example_parses() -> None:
    parsed = parse_audience(documented_audience(), "/p/audiences/checkout_fans")
    assert parsed.sync == ["segment-prod"]
    assert [p.event for p in parsed.performed()] == ["checkout"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"perfomed": {"event": "checkout"}},
            "rule: a rule is an object with exactly one key, one of: all, any",
        ),
        ({"performed": {"event": "x"}, "treatment": {"split": "a", "is": "on"}}, "rule: a rule is an object"),
        ("checkout", "rule: a rule is an object"),
        ({"all": []}, "rule.all: List should have at least 1 item"),
        ({"any": []}, "rule.any: List should have at least 1 item"),
        (
            {"all": [{"performed": {"event": "x"}}, {"treatment": {"split": "f"}}]},
            "rule.all.1.treatment.is: Field required",
        ),
        (
            {"performed": {"event": "x", "atLeast": 0}},
            "rule.performed.atLeast: Input should be greater than or equal to 1",
        ),
        ({"performed": {"event": "x", "withinDays": 0}}, "rule.performed.withinDays"),
        (  # the limits docs/profiles.md gives
            {"performed": {"event": "x", "atLeast": 100_001}},
            "rule.performed.atLeast: Input should be less than or equal to 100000",
        ),
        (
            {"performed": {"event": "x", "withinDays": 3651}},
            "rule.performed.withinDays: Input should be less than or equal to 3650",
        ),
        ({"performed": {"event": "bad event!"}}, "rule.performed.event: must be an FME event type id"),
        ({"performed": {"event": "x" * 81}}, "rule.performed.event: must be an FME event type id"),
        ({"performed": {"event": "x", "within": 7}}, "rule.performed.within: Extra inputs are not permitted"),
        (
            {"attribute": {"name": "plan", "equals": ["pro"]}},
            "rule.attribute.equals: must be a string, a number or a boolean",
        ),
        ({"attribute": {"name": "plan", "equals": None}}, "rule.attribute.equals"),
        ({"not": [{"performed": {"event": "x"}}]}, "rule.not: a rule is an object"),
        (
            {
                "not": {
                    "not": {"not": {"not": {"not": {"not": {"not": {"not": {"performed": {"event": "x"}}}}}}}}
                }
            },
            "rule: nests 9 levels deep",
        ),
        ({"any": [{"performed": {"event": f"e{i}"}} for i in range(51)]}, "rule: has 51 conditions"),
        (  # counted through every level, not per list
            {"any": [{"all": [{"performed": {"event": f"e{i}"}} for i in range(26)]} for _ in range(2)]},
            "rule: has 52 conditions",
        ),
    ],
)
def test_malformed_rules_are_rejected_naming_the_problem(rule: object, message: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        audience(rule)  # type: ignore[arg-type]
    assert str(info.value).startswith("test: ")
    assert message in str(info.value)


def test_rules_at_the_limits_parse() -> None:
    """At most 8 levels deep and 50 conditions (docs/profiles.md): exactly those are taken."""
    rule: dict[str, object] = {"performed": {"event": "x"}}
    for _ in range(7):
        rule = {"not": rule}
    audience(rule)  # 8 levels
    audience({"any": [{"performed": {"event": f"e{i}"}} for i in range(50)]})


def test_events_out_of_order_count_by_their_own_times() -> None:
    facts = ProfileFacts(event_times={"c": [NOW, NOW - 10 * DAY_MS]})
    parsed = audience({"performed": {"event": "c", "withinDays": 3}})
    assert evaluate(parsed, facts, NOW) == Evaluation(True, NOW + 3 * DAY_MS)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**documented_audience(), "trafficType": "bad type"}, "trafficType: String should match pattern"),
        ({**documented_audience(), "environment": "Prod#EU"}, "environment: must not contain '#'"),
        ({**documented_audience(), "sync": ["a", "a"]}, "sync: names an outbound config more than once"),
        ({k: v for k, v in documented_audience().items() if k != "rule"}, "rule: Field required"),
        ({**documented_audience(), "syncs": []}, "syncs: Extra inputs are not permitted"),
        ("not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
    ],
)
def test_malformed_documents_are_rejected_naming_the_field(document: object, message: str) -> None:
    with pytest.raises(ConfigInvalid, match=r"^/p/audiences/a: ") as info:
        parse_audience(document, "/p/audiences/a")  # type: ignore[arg-type]
    assert message in str(info.value)


def facts(
    plan: object = "pro", treatment: str | None = "on", checkouts: list[int] | None = None
) -> ProfileFacts:
    return ProfileFacts(
        attributes={} if plan is None else {"plan": plan},
        treatments={} if treatment is None else {"new_checkout": treatment},
        event_times={"checkout": checkouts if checkouts is not None else [NOW - DAY_MS]},
    )


def test_the_spec_example_evaluates() -> None:
    spec = parse_audience(documented_audience(), "a")
    assert evaluate(spec, facts(), NOW) == Evaluation(True, NOW - DAY_MS + 7 * DAY_MS)
    assert not evaluate(spec, facts(treatment="off"), NOW).member
    assert not evaluate(spec, facts(treatment=None), NOW).member
    assert not evaluate(spec, facts(checkouts=[NOW - 8 * DAY_MS]), NOW).member
    assert not evaluate(spec, facts(plan="free"), NOW).member
    assert evaluate(spec, facts(plan="team"), NOW).member  # not free
    assert evaluate(spec, facts(plan=None), NOW).member  # no plan at all is "not free"


@pytest.mark.parametrize(
    ("times", "at_least", "member", "recheck"),
    [
        ([], 1, False, None),
        ([NOW - 2 * DAY_MS], 1, True, NOW + DAY_MS),
        ([NOW - 2 * DAY_MS, NOW - 1 * DAY_MS], 2, True, NOW + DAY_MS),
        # Three inside the window, two needed: membership holds until the second-oldest leaves.
        ([NOW - 2 * DAY_MS, NOW - DAY_MS, NOW], 2, True, NOW + 2 * DAY_MS),
        ([NOW - 4 * DAY_MS, NOW - DAY_MS], 2, False, None),  # one is outside the 3-day window
        ([NOW - 3 * DAY_MS], 1, True, NOW),  # exactly on the window's edge: still inside
    ],
)
def test_performed_within_days(times: list[int], at_least: int, member: bool, recheck: int | None) -> None:
    rule = audience({"performed": {"event": "checkout", "atLeast": at_least, "withinDays": 3}})
    result = evaluate(rule, ProfileFacts(event_times={"checkout": times}), NOW)
    assert result == Evaluation(member, recheck)


def test_performed_without_a_window_counts_everything_and_never_expires() -> None:
    rule = audience({"performed": {"event": "signup", "atLeast": 2}})
    assert evaluate(rule, ProfileFacts(event_times={"signup": [1, 2]}), NOW) == Evaluation(True, None)
    assert not evaluate(rule, ProfileFacts(event_times={"signup": [1]}), NOW).member


def test_not_performed_enters_when_the_window_closes() -> None:
    rule = audience({"not": {"performed": {"event": "checkout", "withinDays": 7}}})
    recent = ProfileFacts(event_times={"checkout": [NOW - DAY_MS]})
    assert evaluate(rule, recent, NOW) == Evaluation(False, NOW + 6 * DAY_MS)
    assert evaluate(rule, recent, NOW + 6 * DAY_MS + 1).member


@pytest.mark.parametrize(
    ("stored", "wanted", "equal"),
    [
        ("pro", "pro", True),
        ("Pro", "pro", False),
        (3, 3.0, True),
        (True, True, True),
        (True, False, False),
        (True, 1, False),
        (1, True, False),
        ("1", 1, False),
        (False, 0, False),
        (0.1, 0.1, True),
        # Exactly: through float these large ids would be equal.
        (9007199254740992, 9007199254740993, False),
        (10**17 + 1, 10**17, False),
        (10**17, 1e17, True),
    ],
)
def test_attribute_equals_is_type_aware(stored: object, wanted: object, equal: bool) -> None:
    rule = audience({"attribute": {"name": "a", "equals": wanted}})
    assert evaluate(rule, ProfileFacts(attributes={"a": stored}), NOW).member is equal


def test_any_all_and_recheck_takes_the_earliest_window() -> None:
    rule = audience(
        {
            "any": [
                {"performed": {"event": "a", "withinDays": 1}},
                {"performed": {"event": "b", "withinDays": 5}},
            ]
        }
    )
    result = evaluate(rule, ProfileFacts(event_times={"a": [NOW], "b": [NOW]}), NOW)
    assert result == Evaluation(True, NOW + DAY_MS)


def test_an_event_named_as_segment_sends_it_is_the_stored_event() -> None:
    """The webhook stores a track's event with its spaces as ``_``; a rule may use either spelling."""
    rule = audience({"performed": {"event": "Order Completed", "withinDays": 3}})
    assert evaluate(rule, ProfileFacts(event_times={"Order_Completed": [NOW]}), NOW).member
    assert event_needs([rule]).event_types == {"Order_Completed"}
    with pytest.raises(ConfigInvalid, match=r"rule\.performed\.event: must be an FME event type id"):
        audience({"performed": {"event": " Order Completed"}})


def test_event_needs_cover_every_audience() -> None:
    a = parse_audience(documented_audience(), "a")
    b = audience({"performed": {"event": "signup", "withinDays": 30}})
    c = audience({"performed": {"event": "login"}})
    assert event_needs([a, b]).event_types == {"checkout", "signup"}
    assert event_needs([a, b]).since(NOW) == NOW - 30 * DAY_MS
    assert event_needs([a, b, c]).since(NOW) == 0
    assert event_needs([c, a]).since(NOW) == 0  # a window after an unbounded rule still needs it all


PK = "Production#user#user-1"


def evaluated(change: StoredChange, rule: dict[str, object]) -> bool:
    audiences = AudienceSet(audiences={"a": audience(rule)})
    return profiles_to_evaluate([change], audiences) == [PK]


NOT_FREE = {"not": {"attribute": {"name": "plan", "equals": "free"}}}


def test_a_profile_appearing_is_evaluated_for_an_audience_of_what_it_lacks_and_nothing_else_is() -> None:
    """A new identity or first last treatment may enter a ``not`` audience with no named field changing;
    a changed identity's unnamed attribute, or an unnamed event, changes nothing of it."""
    appeared = {"attributes": {"email": "a@example.com"}}
    assert evaluated(StoredChange("identities", PK, {}, appeared), NOT_FREE)
    assert evaluated(StoredChange("profiles", PK, {}, {"split": "any_flag", "treatment": "on"}), NOT_FREE)
    changed = {"attributes": {"email": "b@example.com"}}
    assert not evaluated(StoredChange("identities", PK, appeared, changed), NOT_FREE)
    assert not evaluated(StoredChange("events", PK, {}, {"eventTypeId": "page_view"}), NOT_FREE)
    # Without such an audience, a new identity with nothing a rule names is no trigger.
    assert not evaluated(
        StoredChange("identities", PK, {}, appeared), {"attribute": {"name": "plan", "equals": "pro"}}
    )


def test_a_profile_appearing_is_evaluated_when_any_audience_of_its_kind_asks_for_what_it_lacks() -> None:
    pro = audience({"attribute": {"name": "plan", "equals": "pro"}})
    audiences = AudienceSet(audiences={"not_free": audience(NOT_FREE), "pros": pro})
    appeared = StoredChange("identities", PK, {}, {"attributes": {"email": "a@example.com"}})
    assert profiles_to_evaluate([appeared], audiences) == [PK]


def test_a_removed_last_treatment_is_matched_to_audiences_by_its_old_flag() -> None:
    """A REMOVE (a Segment user deletion) has no new image: the flag is the old image's."""
    rule = {"treatment": {"split": "new_checkout", "is": "on"}}
    removed = {"split": "new_checkout", "treatment": "on"}
    assert evaluated(StoredChange("profiles", PK, removed, {}), rule)
    assert not evaluated(StoredChange("profiles", PK, {**removed, "split": "other"}, {}), rule)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("checkout_fans", True),
        ("Pro.Users-2", True),
        ("9lives", True),
        ("a" * 100, True),
        ("a" * 101, False),
        ("_private", False),
        ("-dash", False),
        ("two words", False),
        ("a/b", False),
        ("", False),
    ],
    ids=[
        "snake",
        "dots-dashes",
        "digit-first",
        "100-chars",
        "101-chars",
        "underscore-first",
        "dash-first",
        "space",
        "slash",
        "empty",
    ],
)
def test_an_audience_name_is_a_trait_key_of_at_most_100_characters(name: str, valid: bool) -> None:
    """docs/profiles.md: letters, digits, ``_ . -``, starting with a letter or digit."""
    assert bool(AUDIENCE_NAME_PATTERN.fullmatch(name)) is valid


def test_a_report_added_to_another_counts_everything_of_both() -> None:
    """The re-check and the back-fill total their rounds this way: each metric is the sum."""
    total = SyncReport(evaluated=1, entered=1, exited=0, stored=1, conflicts=0, sent=1, not_sent=["a"])
    total.failed.add("Production#user#user-1")
    round_two = SyncReport(evaluated=2, entered=0, exited=2, stored=3, conflicts=1, sent=2, not_sent=["b"])
    round_two.failed.update({"Production#user#user-1", "Production#user#user-2"})
    total.add(round_two)
    assert total == SyncReport(
        evaluated=3,
        entered=1,
        exited=2,
        stored=4,
        conflicts=1,
        sent=3,
        not_sent=["a", "b"],
        failed={"Production#user#user-1", "Production#user#user-2"},
    )


@pytest.mark.parametrize(
    "change",
    [
        StoredChange("events", PK, {}, {"eventTypeId": "checkout"}),
        StoredChange(
            "profiles",
            PK,
            {"split": "new_checkout", "treatment": "off"},
            {"split": "new_checkout", "treatment": "on"},
        ),
        StoredChange("identities", PK, {"attributes": {"plan": "team"}}, {"attributes": {"plan": "pro"}}),
    ],
    ids=["event", "treatment", "attribute"],
)
def test_what_any_branch_of_a_nested_rule_names_is_a_trigger(change: StoredChange) -> None:
    """The documented audience names its event, flag and attribute at different depths."""
    audiences = AudienceSet(audiences={"checkout_fans": parse_audience(documented_audience(), "a")})
    assert profiles_to_evaluate([change], audiences) == [PK]


def test_removed_events_are_a_trigger_only_where_some_rule_counts_events() -> None:
    """A removal carries no event type: with a ``performed`` rule it may change a count; without, nothing."""
    removed = StoredChange("events", PK, {}, {})
    assert evaluated(removed, {"performed": {"event": "checkout"}})
    assert not evaluated(removed, {"attribute": {"name": "plan", "equals": "pro"}})
