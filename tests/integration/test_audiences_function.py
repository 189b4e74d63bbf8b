"""Audience entry and exit through the real stream and re-check handlers, moto and a Segment fake."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from boto3.dynamodb.types import TypeSerializer

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from shared import aws
from shared import config as config_store
from shared.config import ConfigUnavailable
from shared.profiles.audiences import DAY_MS
from shared.profiles_table import LastTreatment, delete_last_treatments, profile_items, write_last_treatment

if TYPE_CHECKING:
    from shared.profiles.audience_sync import SyncReport
from tests.conftest import load_event, pages_cut_at, published_metrics, put_config, put_secret
from tests.delivery_support import event_item, events_table, store
from tests.docs_examples import documented_audience
from tests.integration.policy_support import RawCall, authorised_as, statements, unauthorised, unused

# Handler modules are imported once the function environment is set (Powertools reads it at import).
audiences_app: Any = None
sweep: Any = None

PK = "Production#user#user-123"
NOW = 1_795_483_041_109
AUDIENCE = documented_audience()
# Those whose last checkout left the 7-day window: time alone brings them in.
LAPSED_BUYERS = {**AUDIENCE, "rule": {"not": {"performed": {"event": "checkout", "withinDays": 7}}}}
_serialize = TypeSerializer().serialize


@pytest.fixture(autouse=True)
def handlers(stack: Stack, function_env: Callable[[str], dict[str, str]]) -> None:
    global audiences_app, sweep
    function_env("AudiencesFunction")
    from functions.audiences import app
    from functions.audiences import sweep as sweep_module

    audiences_app, sweep = app, sweep_module


@pytest.fixture
def segment() -> Iterator[SegmentSink]:
    with SegmentSink(write_keys={"WRITE_KEY"}) as sink:
        yield sink


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    now = [NOW]
    monkeypatch.setattr(audiences_app, "now_ms", lambda: now[0])
    return now


@pytest.fixture
def env(stack: Stack, function_env: Callable[[str], dict[str, str]], segment: SegmentSink) -> Stack:
    function_env("AudiencesFunction")
    put_config(
        "outbound/segment-prod",
        {
            "environments": ["Production"],
            "identities": {"user": "userId"},
            "endpoint": segment.endpoint,
        },
    )
    put_secret("outbound/segment-prod", "WRITE_KEY")
    put_config("audiences/checkout_fans", AUDIENCE)
    return stack


def table(stack: Stack, logical: str) -> Any:
    return boto3.resource("dynamodb", region_name="us-east-1").Table(stack.tables[logical])


def put_identity(stack: Stack, plan: str) -> dict[str, Any]:
    item = {
        "pk": PK,
        "environment": "Production",
        "trafficTypeName": "user",
        "key": "user-123",
        "attributes": {"plan": plan},
        "updatedAt": NOW,
    }
    table(stack, "IdentitiesTable").put_item(Item=item)
    return item


def put_event(stack: Stack, timestamp: int, event_type: str = "checkout") -> dict[str, Any]:
    item = event_item(
        "user-123",
        event_type,
        timestamp,
        message_id=f"m-{timestamp}",
        value=Decimal(1),
        received_at=timestamp,
    )
    return store(events_table(stack), item)


def stream_event(
    stack: Stack,
    logical: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None = None,
    sequence: int = 1,
) -> dict[str, Any]:
    event = copy.deepcopy(load_event("dynamodb_stream_record.json"))
    record = event["Records"][0]
    image = new or old or {}
    record["eventName"] = "INSERT" if old is None else ("REMOVE" if new is None else "MODIFY")
    record["eventSourceARN"] = record["eventSourceARN"].replace("TABLE_NAME", stack.tables[logical])
    stream = record["dynamodb"]
    stream["Keys"] = {k: _serialize(image[k]) for k in ("pk", "sk") if k in image}
    stream["SequenceNumber"] = str(44215845000000000 + sequence)
    del stream["NewImage"]
    if new is not None:
        stream["NewImage"] = {k: _serialize(v) for k, v in new.items()}
    if old is not None:
        stream["OldImage"] = {k: _serialize(v) for k, v in old.items()}
    stream["StreamViewType"] = "NEW_AND_OLD_IMAGES"
    return event


def membership(stack: Stack, name: str = "checkout_fans") -> dict[str, Any] | None:
    return next((i for i in profile_items(PK) if i["sk"] == f"audience#{name}"), None)


def setup_member(stack: Stack) -> dict[str, Any]:
    put_identity(stack, "pro")
    write_last_treatment(LastTreatment("Production", "user", "user-123", "new_checkout", "on", NOW - 10))
    return put_event(stack, NOW - DAY_MS)


def test_entry_is_sent_once_as_an_identify_and_stored(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    event_item = setup_member(env)
    response = audiences_app.lambda_handler(stream_event(env, "EventsTable", event_item), lambda_context)

    assert response == {"batchItemFailures": []}
    assert len(segment.requests) == 1
    request = segment.requests[0]
    assert (request.path, request.write_key, request.status) == ("/v1/batch", "WRITE_KEY", 200)
    (message,) = request.messages
    assert message["type"] == "identify"
    assert message["userId"] == "user-123"
    assert message["traits"] == {"checkout_fans": True}
    assert message["messageId"].startswith("fme-audience-")
    assert message["timestamp"] == "2026-11-24T01:17:21.109Z"  # the evaluation time
    assert "anonymousId" not in message
    stored = membership(env)
    assert stored is not None
    assert (stored["member"], stored["transitions"]) == (True, 1)
    assert stored["recheckAt"] == NOW - DAY_MS + 7 * DAY_MS

    # The same change again (a stream retry, another event): no change, no identify.
    audiences_app.lambda_handler(stream_event(env, "EventsTable", put_event(env, NOW - 5)), lambda_context)
    assert len(segment.requests) == 1


@pytest.mark.parametrize("logical", ["EventsTable", "IdentitiesTable", "ProfilesTable"])
@pytest.mark.parametrize("source", [None, "arn:aws:dynamodb:us-east-1:123456789012:table/{logical}/stream/x"])
def test_a_record_whose_stream_arn_names_no_table_of_the_stack_is_told_apart_by_its_keys(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any, logical: str, source: str | None
) -> None:
    """A hand-built stream event may name no table (or the template's logical name): each table's
    changes still reach the audiences."""
    event_item = setup_member(env)
    changed = {
        "EventsTable": event_item,
        "IdentitiesTable": table(env, "IdentitiesTable").get_item(Key={"pk": PK})["Item"],
        "ProfilesTable": next(i for i in profile_items(PK) if i["sk"].startswith("treatment#")),
    }[logical]
    event = stream_event(env, logical, changed)
    if source is None:
        del event["Records"][0]["eventSourceARN"]
    else:
        event["Records"][0]["eventSourceARN"] = source.format(logical=logical)

    assert audiences_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}]


@pytest.mark.parametrize("second_send_fails", [False, True])
@pytest.mark.parametrize("window", [True, False])
def test_a_transition_that_a_concurrent_evaluation_overtakes_is_settled(
    env: Stack,
    segment: SegmentSink,
    clock: list[int],
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
    window: bool,
    second_send_fails: bool,
) -> None:
    """The events stream's invocation sends an entry; while it does, the plan becomes free and the
    identities stream's invocation evaluates it first. With a withinDays rule, that evaluation stores
    a non-membership (kept for the re-check) and the entry's store loses; without one, it stores
    nothing and the entry's store wins. Either way, Segment and the store must end on the result of
    what the profile holds, even when the identify that settles it fails and the stream retries."""
    if not window:
        rule = {"all": [leaf for leaf in AUDIENCE["rule"]["all"] if "performed" not in leaf]}
        put_config("audiences/checkout_fans", {**AUDIENCE, "rule": rule})
    real_evaluator = audiences_app.evaluator
    interleaved: list[dict[str, Any]] = []

    def evaluator(context: Any) -> Any:
        evaluating = real_evaluator(context)
        send = evaluating.send

        def send_while_the_plan_changes(batches: Any) -> Any:
            if not interleaved:
                old, new = put_identity(env, "pro"), put_identity(env, "free")
                interleaved.append(
                    audiences_app.lambda_handler(
                        stream_event(env, "IdentitiesTable", new, old, sequence=2), lambda_context
                    )
                )
            elif second_send_fails:
                segment.fail_fraction(1.0, status=503)
            return send(batches)

        evaluating.send = send_while_the_plan_changes
        return evaluating

    monkeypatch.setattr(audiences_app, "evaluator", evaluator)
    event_item = setup_member(env)
    treatment_item = next(i for i in profile_items(PK) if i["sk"].startswith("treatment#"))
    # What the audience refers to changed: the event, or (without the events rule) the treatment.
    trigger = (
        stream_event(env, "EventsTable", event_item)
        if window
        else stream_event(env, "ProfilesTable", treatment_item)
    )
    lambda_context.remaining_ms = 2_500  # a failing send is not retried for long
    response = audiences_app.lambda_handler(trigger, lambda_context)

    assert interleaved[0] == {"batchItemFailures": []}
    if second_send_fails:
        assert response["batchItemFailures"]  # retried by the stream
        segment.fail_fraction(0)
        monkeypatch.setattr(audiences_app, "evaluator", real_evaluator)
        response = audiences_app.lambda_handler(trigger, lambda_context)
    assert response == {"batchItemFailures": []}
    stored = membership(env)
    assert stored is not None
    assert stored["member"] is False  # the plan is free
    assert [m["traits"] for m in segment.messages][-1] == {"checkout_fans": False}  # Segment agrees
    ids = [m["messageId"] for m in segment.messages]
    assert len(ids) == len(set(ids))  # the settling identify is not deduplicated away
    assert "identifyPending" not in stored  # delivered


def interleaving(monkeypatch: pytest.MonkeyPatch, *steps: Callable[[Any], None]) -> list[SyncReport]:
    """The audiences functions' evaluator, running ``steps[n]`` before its n-th send (what other
    invocations do meanwhile); the reports of its evaluations."""
    real_evaluator = audiences_app.evaluator
    sends: list[int] = []
    reports: list[SyncReport] = []

    def evaluator(context: Any) -> Any:
        evaluating = real_evaluator(context)
        send, sync = evaluating.send, evaluating.sync_profiles

        def interleaved_send(batches: Any) -> Any:
            sends.append(1)
            if len(sends) <= len(steps):
                steps[len(sends) - 1](context)
            return send(batches)

        def reporting_sync(*args: Any, **kwargs: Any) -> SyncReport:
            report = sync(*args, **kwargs)
            reports.append(report)
            return report

        evaluating.send, evaluating.sync_profiles = interleaved_send, reporting_sync
        return evaluating

    monkeypatch.setattr(audiences_app, "evaluator", evaluator)
    return reports


def plan_change(env: Stack, old: str, new: str, sequence: int, handled: bool = True) -> Callable[[Any], None]:
    def step(context: Any) -> None:
        before, after = put_identity(env, old), put_identity(env, new)
        if handled:
            audiences_app.lambda_handler(
                stream_event(env, "IdentitiesTable", after, before, sequence), context
            )

    return step


def test_a_settling_transition_overtaken_in_turn_is_owed_and_sent_by_the_retry(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the entry is sent the plan becomes free (evaluated and stored first); while the exit
    that settles it is sent, pro again (evaluated and stored first too)."""
    trigger = stream_event(env, "EventsTable", setup_member(env))
    real_evaluator = audiences_app.evaluator
    interleaving(monkeypatch, plan_change(env, "pro", "free", 2), plan_change(env, "free", "pro", 3))
    assert audiences_app.lambda_handler(trigger, lambda_context)["batchItemFailures"]  # retried
    monkeypatch.setattr(audiences_app, "evaluator", real_evaluator)
    assert audiences_app.lambda_handler(trigger, lambda_context) == {"batchItemFailures": []}
    stored = membership(env)
    assert stored is not None
    assert stored["member"] is True  # the plan is pro
    assert segment.messages[-1]["traits"] == {"checkout_fans": True}
    assert "identifyPending" not in stored


def test_an_owed_identify_the_recheck_could_not_send_is_due_for_the_next_run(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    clock[0] = NOW + 6 * DAY_MS + 1  # the checkout left the window: the re-check exits the member

    def reentered(context: Any) -> None:  # while the exit is sent: a new checkout, evaluated first
        new_event = put_event(env, clock[0] - 5)
        audiences_app.lambda_handler(stream_event(env, "EventsTable", new_event, sequence=3), context)

    def segment_fails(context: Any) -> None:  # and the entry that follows the exit is not delivered
        segment.fail_fraction(1.0, status=503)

    real_evaluator = audiences_app.evaluator
    interleaving(monkeypatch, reentered, segment_fails)
    monkeypatch.setattr(sweep, "RESERVE_MS", 1_000)
    lambda_context.remaining_ms = 2_500
    with pytest.raises(sweep.RecheckIncomplete):
        sweep.lambda_handler({}, lambda_context)
    owed = membership(env)
    assert owed is not None
    assert owed.get("identifyPending") is True
    segment.fail_fraction(0)
    monkeypatch.setattr(audiences_app, "evaluator", real_evaluator)
    lambda_context.remaining_ms = 60_000
    assert sweep.lambda_handler({}, lambda_context)["evaluated"] == 1  # due: sent now
    stored = membership(env)
    assert stored is not None
    assert "identifyPending" not in stored
    assert stored["member"] is True
    assert segment.messages[-1]["traits"] == {"checkout_fans": True}


def test_an_entry_made_by_settling_is_counted(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan becomes free (evaluated and stored first), then pro again with its record still to
    come: the settling evaluation is the one that enters the member."""

    def free_then_pro(context: Any) -> None:
        plan_change(env, "pro", "free", 2)(context)
        put_identity(env, "pro")

    reports = interleaving(monkeypatch, free_then_pro)
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    stored = membership(env)
    assert stored is not None
    assert stored["member"] is True
    assert sum(r.entered for r in reports) - sum(r.exited for r in reports) == 1
    # The entry's store lost to the plan change's (a conflict), and the settling entry went out too.
    assert (reports[-1].conflicts, reports[-1].sent, reports[-1].stored) == (1, 2, 1)


def test_an_entry_settled_back_to_what_was_stored_is_counted_neither_as_entry_nor_exit(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan becomes free while the entry is sent, and that evaluation stores a non-member first:
    the exit that settles it moves the stored membership nowhere."""
    reports = interleaving(monkeypatch, plan_change(env, "pro", "free", 2))
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}, {"checkout_fans": False}]
    stored = membership(env)
    assert stored is not None
    assert stored["member"] is False
    assert [(r.entered, r.exited) for r in reports] == [(0, 0), (0, 0)]


def test_an_entry_the_profile_no_longer_supports_once_stored_is_followed_by_the_exit_and_both_counted(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan becomes free while the entry is sent, its own record still to come: the evaluation
    that made the entry finds it out of date once stored, and sends the exit itself."""
    reports = interleaving(monkeypatch, plan_change(env, "pro", "free", 2, handled=False))
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}, {"checkout_fans": False}]
    stored = membership(env)
    assert stored is not None
    assert (stored["member"], "identifyPending" in stored) == (False, False)
    assert [(r.entered, r.exited) for r in reports] == [(1, 1)]


def test_a_sync_target_without_its_write_key_does_not_hold_up_the_stream(
    env: Stack,
    segment: SegmentSink,
    clock: list[int],
    lambda_context: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A config error, as an outbound config missing altogether: counted, the membership stored."""
    boto3.client("secretsmanager", region_name="us-east-1").delete_secret(
        SecretId=f"{env.function_environment('AudiencesFunction')['CONFIG_PREFIX']}/outbound/segment-prod",
        ForceDeleteWithoutRecovery=True,
    )
    config_store.clear_caches()
    event = stream_event(env, "EventsTable", setup_member(env))
    capsys.readouterr()
    assert audiences_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    assert segment.requests == []
    stored = membership(env)
    assert stored is not None
    assert stored["member"] is True
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert (metrics["AudienceSyncNotSent"], metrics["AudienceIdentifiesSent"]) == ([1.0], [0.0])
    assert (metrics["AudienceEntries"], metrics["AudienceMembershipsStored"]) == ([1.0], [1.0])


def test_a_sync_target_that_does_not_exist_is_counted_and_the_other_targets_still_get_the_entry(
    env: Stack,
    segment: SegmentSink,
    clock: list[int],
    lambda_context: Any,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    put_config("audiences/checkout_fans", {**AUDIENCE, "sync": ["segment-gone", "segment-prod"]})
    config_store.clear_caches()
    event = stream_event(env, "EventsTable", setup_member(env))
    capsys.readouterr()
    assert audiences_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}]
    assert membership(env)["member"] is True  # type: ignore[index]
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert (metrics["AudienceSyncNotSent"], metrics["AudienceIdentifiesSent"]) == ([1.0], [1.0])
    [logged] = [r for r in caplog.records if r.getMessage() == "audience membership not sent"]
    assert "audience checkout_fans: outbound segment-gone" in logged.problem  # type: ignore[attr-defined]


def test_an_audience_of_a_traffic_type_the_sync_config_does_not_map_is_stored_and_not_sent(
    env: Stack,
    segment: SegmentSink,
    clock: list[int],
    lambda_context: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    put_config("audiences/accounts", {**NOT_FREE, "trafficType": "account"})
    config_store.clear_caches()
    account = {
        **put_identity(env, "pro"),
        "pk": "Production#account#acme",
        "trafficTypeName": "account",
        "key": "acme",
    }
    table(env, "IdentitiesTable").put_item(Item=account)
    capsys.readouterr()
    response = audiences_app.lambda_handler(stream_event(env, "IdentitiesTable", account), lambda_context)
    assert response == {"batchItemFailures": []}
    assert segment.requests == []
    stored = next(i for i in profile_items("Production#account#acme") if i["sk"] == "audience#accounts")
    assert stored["member"] is True
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert metrics["AudienceSyncNotSent"] == [1.0]


def test_an_event_without_records_is_answered_with_no_failures(
    env: Stack, segment: SegmentSink, lambda_context: Any
) -> None:
    assert audiences_app.lambda_handler({"Records": []}, lambda_context) == {"batchItemFailures": []}
    assert audiences_app.lambda_handler({}, lambda_context) == {"batchItemFailures": []}
    assert segment.messages == []


def test_a_new_profile_enters_an_audience_that_asks_only_for_what_it_lacks(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """Nothing the rule names changes when such a profile appears: it is evaluated all the same."""
    put_config(
        "audiences/not_free",
        {**AUDIENCE, "rule": {"not": {"attribute": {"name": "plan", "equals": "free"}}}},
    )
    config_store.clear_caches()
    newcomer = {**put_identity(env, "pro"), "attributes": {"email": "a@example.com"}}
    free = {**newcomer, "pk": "Production#user#user-456", "key": "user-456", "attributes": {"plan": "free"}}
    for item in (newcomer, free):
        table(env, "IdentitiesTable").put_item(Item=item)
        response = audiences_app.lambda_handler(stream_event(env, "IdentitiesTable", item), lambda_context)
        assert response == {"batchItemFailures": []}
    # A new user's first impression counts as its appearance as well.
    write_last_treatment(LastTreatment("Production", "user", "user-789", "any_flag", "on", NOW - 10))
    [treatment] = profile_items("Production#user#user-789")
    audiences_app.lambda_handler(stream_event(env, "ProfilesTable", treatment), lambda_context)

    assert sorted((m["userId"], m["traits"]) for m in segment.messages) == [
        ("user-123", {"not_free": True}),
        ("user-789", {"not_free": True}),
    ]


def test_an_audience_of_another_traffic_type_identifies_its_members_by_that_types_identity(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """The same identity mapping as the track calls: anonymous profiles go out as ``anonymousId``."""
    put_config(
        "outbound/segment-prod",
        {
            "environments": ["Production"],
            "identities": {"user": "userId", "anonymous": "anonymousId"},
            "endpoint": segment.endpoint,
        },
    )
    put_config(
        "audiences/anonymous_pros",
        {
            **AUDIENCE,
            "trafficType": "anonymous",
            "rule": {"attribute": {"name": "plan", "equals": "pro"}},
        },
    )
    # The same rule for users: an anonymous profile that meets it is not one of its members.
    put_config("audiences/user_pros", {**AUDIENCE, "rule": {"attribute": {"name": "plan", "equals": "pro"}}})
    config_store.clear_caches()
    visitor = {
        "pk": "Production#anonymous#anon-9",
        "environment": "Production",
        "trafficTypeName": "anonymous",
        "key": "anon-9",
        "attributes": {"plan": "pro"},
        "updatedAt": NOW,
    }
    table(env, "IdentitiesTable").put_item(Item=visitor)
    response = audiences_app.lambda_handler(stream_event(env, "IdentitiesTable", visitor), lambda_context)

    assert response == {"batchItemFailures": []}
    (message,) = segment.messages
    assert message["anonymousId"] == "anon-9"
    assert "userId" not in message
    assert message["traits"] == {"anonymous_pros": True}
    items = profile_items("Production#anonymous#anon-9")
    assert [i["sk"] for i in items if i["sk"].startswith("audience#")] == ["audience#anonymous_pros"]


def test_exit_when_an_attribute_changes(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    old = put_identity(env, "pro")
    new = put_identity(env, "free")
    audiences_app.lambda_handler(stream_event(env, "IdentitiesTable", new, old), lambda_context)
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}, {"checkout_fans": False}]
    assert len({m["messageId"] for m in segment.messages}) == 2
    stored = membership(env)
    assert stored is not None
    assert (stored["member"], stored["transitions"]) == (False, 2)


def test_entry_and_exit_reach_every_outbound_config_the_audience_syncs_to(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    with SegmentSink(write_keys={"MARKETING_KEY"}) as marketing:
        put_config(
            "outbound/segment-marketing",
            {
                "environments": ["Production"],
                "identities": {"user": "userId"},
                "endpoint": marketing.endpoint,
            },
        )
        put_secret("outbound/segment-marketing", "MARKETING_KEY")
        put_config("audiences/checkout_fans", {**AUDIENCE, "sync": ["segment-prod", "segment-marketing"]})
        config_store.clear_caches()

        audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
        old = put_identity(env, "pro")
        new = put_identity(env, "free")
        audiences_app.lambda_handler(stream_event(env, "IdentitiesTable", new, old), lambda_context)

        for sink in (segment, marketing):
            assert [(m["userId"], m["traits"]) for m in sink.messages] == [
                ("user-123", {"checkout_fans": True}),
                ("user-123", {"checkout_fans": False}),
            ]
        assert {r.write_key for r in marketing.requests} == {"MARKETING_KEY"}
        # Segment deduplicates messageIds across all sources: each config gets its own.
        ids = [{m["messageId"] for m in sink.messages} for sink in (segment, marketing)]
        assert len(ids[0]) == len(ids[1]) == 2
        assert not ids[0] & ids[1]


def test_an_audience_of_one_environment_leaves_another_environments_profiles_alone(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    # Everything the Production audience asks for, but in Staging: no member, nothing sent.
    staging = "Staging#user#user-123"
    identity = {**put_identity(env, "pro"), "pk": staging, "environment": "Staging"}
    table(env, "IdentitiesTable").delete_item(Key={"pk": PK})
    table(env, "IdentitiesTable").put_item(Item=identity)
    write_last_treatment(LastTreatment("Staging", "user", "user-123", "new_checkout", "on", NOW - 10))
    staging_event = {**put_event(env, NOW - DAY_MS), "pk": staging, "environment": "Staging"}
    table(env, "EventsTable").delete_item(Key={"pk": PK, "sk": staging_event["sk"]})
    table(env, "EventsTable").put_item(Item=staging_event)

    response = audiences_app.lambda_handler(stream_event(env, "EventsTable", staging_event), lambda_context)

    assert response == {"batchItemFailures": []}
    assert segment.requests == []
    assert [i for i in profile_items(staging) if i["sk"].startswith("audience#")] == []


def test_a_treatment_change_is_a_trigger_and_an_unrelated_one_is_not(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    setup_member(env)
    before = {"pk": PK, "sk": "treatment#new_checkout", "split": "new_checkout", "treatment": "off"}
    after = {**before, "treatment": "on"}
    unrelated = {"pk": PK, "sk": "treatment#other", "split": "other", "treatment": "on"}
    audiences_app.lambda_handler(
        stream_event(env, "ProfilesTable", {**unrelated, "treatment": "v2"}, unrelated), lambda_context
    )
    audiences_app.lambda_handler(stream_event(env, "ProfilesTable", after, after), lambda_context)
    assert segment.requests == []  # neither a referenced flag nor a changed treatment
    audiences_app.lambda_handler(stream_event(env, "ProfilesTable", after, before), lambda_context)
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}]


def test_a_user_deletion_exits_the_audience_through_the_removed_events(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    event_item = setup_member(env)
    audiences_app.lambda_handler(stream_event(env, "EventsTable", event_item), lambda_context)
    # What the webhook's delete leaves: no events (nor, here, anything else the rule reads once its
    # `performed` part fails). The events stream carries new images only, so a removal has just keys.
    table(env, "EventsTable").delete_item(Key={"pk": event_item["pk"], "sk": event_item["sk"]})
    removal = stream_event(env, "EventsTable", None, old=event_item, sequence=2)
    stream = removal["Records"][0]["dynamodb"]
    del stream["OldImage"]
    stream["StreamViewType"] = "NEW_IMAGE"

    audiences_app.lambda_handler(removal, lambda_context)

    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}, {"checkout_fans": False}]
    stored = membership(env)
    assert stored is not None
    assert (stored["member"], stored["transitions"]) == (False, 2)


def test_an_unreferenced_event_type_evaluates_nothing(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    setup_member(env)
    audiences_app.lambda_handler(
        stream_event(env, "EventsTable", put_event(env, NOW, "page_view")), lambda_context
    )
    assert segment.requests == []
    assert membership(env) is None


def test_a_rule_may_name_the_event_as_segment_sends_it(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """``track("Order Completed")`` is stored as ``Order_Completed``: a rule naming either spelling
    counts it."""
    put_config(
        "audiences/buyers",
        {**AUDIENCE, "rule": {"performed": {"event": "Order Completed", "withinDays": 7}}},
    )
    put_identity(env, "pro")
    audiences_app.lambda_handler(
        stream_event(env, "EventsTable", put_event(env, NOW - DAY_MS, "Order_Completed")), lambda_context
    )
    stored = membership(env, "buyers")
    assert stored is not None
    assert stored["member"] is True
    assert [m["traits"] for r in segment.requests for m in r.messages] == [{"buyers": True}]


def test_within_days_expiry_exits_on_the_scheduled_recheck(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)

    clock[0] = NOW + 5 * DAY_MS  # the checkout is 6 days old: still a member, nothing due
    assert sweep.lambda_handler({}, lambda_context)["evaluated"] == 0

    clock[0] = NOW + 6 * DAY_MS + 1  # 7 days and a millisecond: the window has closed
    summary = sweep.lambda_handler({}, lambda_context)
    assert (summary["evaluated"], summary["exited"]) == (1, 1)
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}, {"checkout_fans": False}]
    stored = membership(env)
    assert stored is not None
    assert stored["member"] is False
    assert "recheckAt" not in stored  # off the index: time alone cannot bring it back

    assert sweep.lambda_handler({}, lambda_context)["evaluated"] == 0


def test_the_recheck_takes_every_profile_due_in_every_time_bound_audience(
    env: Stack,
    segment: SegmentSink,
    clock: list[int],
    lambda_context: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Members whose window closed, in two audiences: every one exits in one run, and the run says so."""
    from shared.profiles_table import Membership, put_membership

    put_config("audiences/repeat_buyers", AUDIENCE)
    config_store.clear_caches()
    members = {
        "checkout_fans": ["user-0", "user-1", "user-2"],
        "repeat_buyers": ["user-3", "user-4", "user-5"],
    }
    for name, keys in members.items():
        for key in keys:  # no checkout stored: once evaluated, none of them is a member
            put_membership(
                Membership(f"Production#user#{key}", name, True, 1, NOW - DAY_MS, recheck_at=NOW), None
            )
    capsys.readouterr()

    summary = sweep.lambda_handler({}, lambda_context)

    assert summary == {"evaluated": 6, "entered": 0, "exited": 6, "failed": 0, "finished": True}
    assert sorted((m["userId"], m["traits"]) for m in segment.messages) == sorted(
        (key, {name: False}) for name, keys in members.items() for key in keys
    )
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert (metrics["AudienceProfilesEvaluated"], metrics["AudienceExits"]) == ([6.0], [6.0])
    assert (metrics["AudienceIdentifiesSent"], metrics["AudienceMembershipsStored"]) == ([6.0], [6.0])
    assert sweep.lambda_handler({}, lambda_context)["evaluated"] == 0


def test_the_recheck_sends_what_is_owed_in_an_audience_without_a_window(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """A transition owed (stored, its send failed) in an audience that time alone never changes: the
    next run sends it, rather than the identity's next change."""
    from shared.profiles_table import Membership, put_membership

    put_config("audiences/pro_users", {**AUDIENCE, "rule": {"attribute": {"name": "plan", "equals": "pro"}}})
    config_store.clear_caches()
    put_identity(env, "pro")
    put_membership(Membership(PK, "pro_users", True, 1, NOW, recheck_at=NOW, pending=True), None)

    assert sweep.lambda_handler({}, lambda_context)["evaluated"] == 1

    assert [m["traits"] for m in segment.messages] == [{"pro_users": True}]
    stored = membership(env, "pro_users")
    assert stored is not None
    assert "identifyPending" not in stored
    assert stored["transitions"] == 1  # the owed transition itself: its messageId is the one owed
    assert "recheckAt" not in stored  # off the index: nothing left for time to change
    assert sweep.lambda_handler({}, lambda_context)["evaluated"] == 0


def test_a_recheck_run_by_hand_without_a_lambda_clock_has_time_for_its_rounds(
    env: Stack, segment: SegmentSink, clock: list[int]
) -> None:
    """A script or a test invoking the handler with no context still re-checks what is due."""
    from shared.profiles_table import Membership, put_membership

    put_membership(Membership(PK, "checkout_fans", True, 1, NOW - DAY_MS, recheck_at=NOW), None)
    summary = sweep.lambda_handler({}, None)
    assert (summary["evaluated"], summary["exited"], summary["finished"]) == (1, 1, True)


def test_the_recheck_starts_no_round_in_its_last_15_seconds(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """A round must have time to finish its sends and stores (docs/profiles.md)."""
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    clock[0] = NOW + 6 * DAY_MS + 1
    lambda_context.remaining_ms = 14_900
    summary = sweep.lambda_handler({}, lambda_context)
    assert (summary["evaluated"], summary["finished"]) == (0, False)
    lambda_context.remaining_ms = 15_500
    summary = sweep.lambda_handler({}, lambda_context)
    assert (summary["evaluated"], summary["exited"], summary["finished"]) == (1, 1, True)


def test_a_profile_that_time_alone_will_bring_in_is_stored_due_and_enters_on_the_recheck(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """Not a member yet, but one once its last checkout leaves the window: kept on the re-check index."""
    put_config("audiences/lapsed_buyers", LAPSED_BUYERS)
    config_store.clear_caches()
    checkout = put_event(env, NOW - DAY_MS)
    audiences_app.lambda_handler(stream_event(env, "EventsTable", checkout), lambda_context)

    assert segment.messages == []
    stored = membership(env, "lapsed_buyers")
    assert stored is not None
    assert (stored["member"], stored["recheckAt"]) == (False, NOW - DAY_MS + 7 * DAY_MS)

    clock[0] = NOW + 6 * DAY_MS + 1  # the checkout is 7 days and a millisecond old
    summary = sweep.lambda_handler({}, lambda_context)
    assert summary["entered"] == 1
    assert [m["traits"] for m in segment.messages] == [{"lapsed_buyers": True}]
    stored = membership(env, "lapsed_buyers")
    assert stored is not None
    assert stored["member"] is True


def test_a_profile_known_only_by_an_event_older_than_the_window_is_not_taken_for_an_empty_one(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """A checkout eight days old, arriving late: it is stored, so the profile is not one with nothing
    stored (which is in no audience), and it is a lapsed buyer."""
    put_config("audiences/lapsed_buyers", LAPSED_BUYERS)
    config_store.clear_caches()
    old_checkout = put_event(env, NOW - 8 * DAY_MS)
    response = audiences_app.lambda_handler(stream_event(env, "EventsTable", old_checkout), lambda_context)
    assert response == {"batchItemFailures": []}
    assert [m["traits"] for m in segment.messages] == [{"lapsed_buyers": True}]
    assert membership(env, "lapsed_buyers")["member"] is True  # type: ignore[index]


def test_a_member_of_an_audience_moved_to_another_environment_exits_when_it_is_due(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """Its re-check would otherwise find no audience of its environment to evaluate, and stay due."""
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    put_config("audiences/checkout_fans", {**AUDIENCE, "environment": "Staging"})
    config_store.clear_caches()

    clock[0] = NOW + 6 * DAY_MS + 1
    summary = sweep.lambda_handler({}, lambda_context)
    assert (summary["evaluated"], summary["exited"]) == (1, 1)
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}, {"checkout_fans": False}]
    stored = membership(env)
    assert stored is not None
    assert (stored["member"], "recheckAt" in stored) == (False, False)
    assert sweep.lambda_handler({}, lambda_context)["evaluated"] == 0


def test_a_recheck_that_could_not_sync_fails_and_leaves_the_identity_due(
    env: Stack,
    segment: SegmentSink,
    clock: list[int],
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its errors are what AudienceRecheckErrorsAlarm watches: nothing retries it, and no queue holds it."""
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    clock[0] = NOW + 6 * DAY_MS + 1
    monkeypatch.setattr(sweep, "RESERVE_MS", 1_000)
    lambda_context.remaining_ms = 2_500  # a round starts, and the 503s are not retried for long
    segment.fail_fraction(1.0, status=503)
    with pytest.raises(sweep.RecheckIncomplete, match="1 identities could not be evaluated or synced"):
        sweep.lambda_handler({}, lambda_context)
    [logged] = [r for r in caplog.records if r.getMessage() == "audience re-check"]
    assert (logged.evaluated, logged.failed, logged.finished) == (1, 1, True)  # type: ignore[attr-defined]
    segment.fail_fraction(0)
    lambda_context.remaining_ms = 60_000
    summary = sweep.lambda_handler({}, lambda_context)  # still due: the next run exits it
    assert (summary["evaluated"], summary["exited"], summary["failed"]) == (1, 1, 0)


def test_a_failed_send_retries_the_record_and_resends_the_same_message(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    event = stream_event(env, "EventsTable", setup_member(env), sequence=7)
    lambda_context.remaining_ms = 2_500  # little time: the 503s are not retried for long
    segment.fail_next(100, status=503, accept=True)  # stored by Segment, but the answers are errors
    response = audiences_app.lambda_handler(event, lambda_context)
    assert response == {"batchItemFailures": [{"itemIdentifier": "44215845000000007"}]}
    assert membership(env) is None  # not stored: the retry must find the transition again
    first_ids = {m["messageId"] for m in segment.messages}
    assert len(first_ids) == 1

    segment.clear()
    lambda_context.remaining_ms = 30_000
    assert audiences_app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}
    assert set(segment.unique_messages()) == first_ids  # the same messageId: Segment keeps one
    assert membership(env) is not None


def test_an_invalid_audience_does_not_stop_the_valid_ones(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any, caplog: pytest.LogCaptureFixture
) -> None:
    put_config("audiences/broken", {"environment": "Production", "trafficType": "user", "rule": {"nope": {}}})
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}]
    [logged] = [
        r for r in caplog.records if r.getMessage() == "audience definition is invalid and is skipped"
    ]
    assert logged.audience == "broken"  # type: ignore[attr-defined]
    assert "rule: a rule is an object with exactly one key" in logged.problem  # type: ignore[attr-defined]


def test_an_audience_named_with_a_leading_underscore_is_reported_and_not_evaluated(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """An audience name begins with a letter or digit: "_draft" is reported invalid, never synced."""
    from shared.profiles.audience_sync import load_audiences

    put_config("audiences/_draft", AUDIENCE)
    config_store.clear_caches()
    assert set(load_audiences().invalid) == {"_draft"}
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}]


def test_every_count_of_the_report_is_published_as_a_metric() -> None:
    from shared.profiles.audience_sync import SyncReport

    report = SyncReport(evaluated=5, entered=2, exited=1, stored=3, conflicts=1, sent=3, not_sent=["x"])
    report.failed.add(PK)
    published: dict[str, int] = {}

    class Sink:
        def add_metric(self, name: str, unit: Any, value: int) -> None:
            published[name] = value

    audiences_app.publish(report, audiences_app.logger, Sink())
    assert published == {
        "AudienceProfilesEvaluated": 5,
        "AudienceEntries": 2,
        "AudienceExits": 1,
        "AudienceIdentifiesSent": 3,
        "AudienceMembershipsStored": 3,
        "AudienceMembershipConflicts": 1,
        "AudienceProfilesFailed": 1,
        "AudienceSyncNotSent": 1,
    }


def test_an_evaluation_reads_what_it_decides_on_strongly_consistent(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    from shared import aws

    reads: list[tuple[str, str, Any]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        reads.append((model.name, params["TableName"], params.get("ConsistentRead")))

    events = aws.client("dynamodb").meta.events
    events.register("provide-client-params.dynamodb.*", record)
    try:
        audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    finally:
        events.unregister("provide-client-params.dynamodb.*", record)
    decided_on = {(op, table) for op, table, _ in reads if op in ("Query", "GetItem")}
    assert decided_on == {
        ("Query", env.tables["ProfilesTable"]),
        ("GetItem", env.tables["IdentitiesTable"]),
        ("Query", env.tables["EventsTable"]),
    }
    assert all(consistent for op, _, consistent in reads if op in ("Query", "GetItem")), reads


NOT_FREE = {
    "environment": "Production",
    "trafficType": "user",
    "rule": {"not": {"attribute": {"name": "plan", "equals": "free"}}},
    "sync": ["segment-prod"],
}


@pytest.mark.parametrize(
    ("attributes", "sent"),
    [
        ({"plan": "free"}, []),
        ({"plan": "pro"}, [{"not_free": True}, {"not_free": False}]),
        # Removing it changes no attribute the rule names (no plan before, none after).
        ({"email": "a@example.com"}, [{"not_free": True}, {"not_free": False}]),
    ],
)
def test_a_segment_user_deletion_takes_the_user_out_of_every_audience(
    env: Stack,
    segment: SegmentSink,
    clock: list[int],
    lambda_context: Any,
    attributes: dict[str, str],
    sent: list[dict[str, bool]],
) -> None:
    """A `not` rule holds for a profile with no attributes: a deleted non-member must not enter on
    that, and a deleted member exits."""
    put_config("audiences/not_free", NOT_FREE)
    config_store.clear_caches()
    identity = {**put_identity(env, "pro"), "attributes": attributes}
    table(env, "IdentitiesTable").put_item(Item=identity)
    audiences_app.lambda_handler(stream_event(env, "IdentitiesTable", identity), lambda_context)
    # Segment `delete`: the webhook removes the identity (IdentitiesTable REMOVE).
    table(env, "IdentitiesTable").delete_item(Key={"pk": PK})
    audiences_app.lambda_handler(
        stream_event(env, "IdentitiesTable", None, old=identity, sequence=2), lambda_context
    )
    assert [m["traits"] for m in segment.messages if "not_free" in m["traits"]] == sent
    stored = membership(env, "not_free")
    assert (stored or {}).get("member", False) is False


def test_a_deleted_user_known_by_a_last_treatment_only_exits(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """The flag is one no rule names: its removal (ProfilesTable REMOVE) still ends the membership."""
    put_config("audiences/not_free", NOT_FREE)
    config_store.clear_caches()
    write_last_treatment(LastTreatment("Production", "user", "user-123", "any_flag", "on", NOW - 10))
    [treatment] = profile_items(PK)
    audiences_app.lambda_handler(stream_event(env, "ProfilesTable", treatment), lambda_context)
    delete_last_treatments(PK)  # what the webhook does for a Segment `delete`
    audiences_app.lambda_handler(
        stream_event(env, "ProfilesTable", None, old=treatment, sequence=2), lambda_context
    )
    assert [m["traits"] for m in segment.messages] == [{"not_free": True}, {"not_free": False}]
    assert membership(env, "not_free")["member"] is False  # type: ignore[index]


@pytest.mark.parametrize(("old", "new", "equals"), [(1, True, True), (0, False, False), (True, 1, 1)])
def test_an_attribute_turning_between_a_number_and_a_boolean_is_a_change(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any, old: Any, new: Any, equals: Any
) -> None:
    """``true`` does not equal ``1`` in a rule, so a change between them can enter an audience."""
    put_config("audiences/beta", {**NOT_FREE, "rule": {"attribute": {"name": "beta", "equals": equals}}})
    config_store.clear_caches()
    before = {**put_identity(env, "pro"), "attributes": {"beta": old}}
    after = {**before, "attributes": {"beta": new}}
    table(env, "IdentitiesTable").put_item(Item=after)
    response = audiences_app.lambda_handler(
        stream_event(env, "IdentitiesTable", after, before), lambda_context
    )
    assert response == {"batchItemFailures": []}
    assert [m["traits"] for m in segment.messages] == [{"beta": True}]


def test_a_transient_ssm_failure_reading_the_sync_config_does_not_lose_the_entry(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSM throttled while the `sync` outbound config loads: the record is retried, nothing stored."""
    real = config_store.get_parameter

    def flaky(name: str) -> str:
        if "/outbound/" in name:
            raise ConfigUnavailable(f"{name}: ThrottlingException")
        return real(name)

    monkeypatch.setattr(config_store, "get_parameter", flaky)
    event_item = setup_member(env)
    response = audiences_app.lambda_handler(stream_event(env, "EventsTable", event_item), lambda_context)
    assert response["batchItemFailures"] != []
    assert membership(env, "checkout_fans") is None
    assert segment.messages == []
    # Once SSM answers again, the retry of the record sends the entry.
    monkeypatch.setattr(config_store, "get_parameter", real)
    audiences_app.lambda_handler(stream_event(env, "EventsTable", event_item), lambda_context)
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}]


def test_a_members_new_checkout_moves_its_recheck_and_is_no_transition(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """Stored though nothing is sent: the window now closes later, and the sweep must not come early."""
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    later = put_event(env, NOW - 5)
    audiences_app.lambda_handler(stream_event(env, "EventsTable", later, sequence=2), lambda_context)
    assert len(segment.messages) == 1
    stored = membership(env)
    assert stored is not None
    assert (stored["member"], stored["transitions"]) == (True, 1)
    assert stored["recheckAt"] == NOW - 5 + 7 * DAY_MS


def test_entering_again_after_an_exit_is_a_new_message_id(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """The transition count is in the id: Segment would drop the second entry as the first's duplicate."""
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    for sequence, (old, new) in enumerate([("pro", "free"), ("free", "pro")], start=2):
        before, after = put_identity(env, old), put_identity(env, new)
        audiences_app.lambda_handler(
            stream_event(env, "IdentitiesTable", after, before, sequence), lambda_context
        )
    assert [m["traits"]["checkout_fans"] for m in segment.messages] == [True, False, True]
    assert len({m["messageId"] for m in segment.messages}) == 3
    assert membership(env)["transitions"] == 3  # type: ignore[index]


def test_a_deleted_audience_makes_no_one_exit(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """Its stored memberships stay as they are: there is no audience left to say what its members are."""
    audiences_app.lambda_handler(stream_event(env, "EventsTable", setup_member(env)), lambda_context)
    boto3.client("ssm", region_name="us-east-1").delete_parameter(
        Name=f"{env.function_environment('AudiencesFunction')['CONFIG_PREFIX']}/audiences/checkout_fans"
    )
    put_config("audiences/not_free", NOT_FREE)
    config_store.clear_caches()
    before, after = put_identity(env, "pro"), put_identity(env, "free")
    response = audiences_app.lambda_handler(
        stream_event(env, "IdentitiesTable", after, before, 2), lambda_context
    )
    assert response == {"batchItemFailures": []}
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}]
    assert membership(env)["member"] is True  # type: ignore[index]


def test_a_member_of_an_audience_moved_away_exits_when_another_audience_evaluates_it(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """Without a window the re-check never takes it: an evaluation for an audience of its environment
    and traffic type does (docs/profiles.md)."""
    pro_users = {**AUDIENCE, "rule": {"attribute": {"name": "plan", "equals": "pro"}}}
    put_config("audiences/pro_users", pro_users)
    config_store.clear_caches()
    identity = put_identity(env, "pro")
    audiences_app.lambda_handler(stream_event(env, "IdentitiesTable", identity), lambda_context)
    put_config("audiences/pro_users", {**pro_users, "environment": "Staging"})
    config_store.clear_caches()

    # checkout_fans, still of Production, names the plan: the change evaluates the profile.
    changed = put_identity(env, "free")
    response = audiences_app.lambda_handler(
        stream_event(env, "IdentitiesTable", changed, identity, sequence=2), lambda_context
    )
    assert response == {"batchItemFailures": []}
    assert [m["traits"] for m in segment.messages] == [{"pro_users": True}, {"pro_users": False}]
    stored = membership(env, "pro_users")
    assert stored is not None
    assert (stored["member"], stored["transitions"]) == (False, 2)


def test_a_non_member_due_for_an_audience_moved_away_is_taken_off_the_recheck(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    """Not only members leave a moved audience: one kept for its re-check would be due on every run."""
    put_config("audiences/lapsed_buyers", LAPSED_BUYERS)
    config_store.clear_caches()
    audiences_app.lambda_handler(
        stream_event(env, "EventsTable", put_event(env, NOW - DAY_MS)), lambda_context
    )
    assert "recheckAt" in membership(env, "lapsed_buyers")  # type: ignore[operator]
    put_config("audiences/lapsed_buyers", {**LAPSED_BUYERS, "environment": "Staging"})
    config_store.clear_caches()

    clock[0] = NOW + 6 * DAY_MS + 1
    assert sweep.lambda_handler({}, lambda_context)["evaluated"] == 1
    stored = membership(env, "lapsed_buyers")
    assert stored is not None
    assert (stored["member"], "recheckAt" in stored) == (False, False)
    assert sweep.lambda_handler({}, lambda_context)["evaluated"] == 0
    assert [m["traits"] for m in segment.messages if "lapsed_buyers" in m["traits"]] == []


def test_a_first_membership_is_not_stored_over_one_a_concurrent_evaluation_stored(env: Stack) -> None:
    """Two evaluations of a new profile both read no membership: the second store loses, to settle."""
    from shared.profiles_table import Membership, MembershipConflict, put_membership

    put_membership(Membership(PK, "checkout_fans", True, 1, NOW), None)
    with pytest.raises(MembershipConflict):
        put_membership(Membership(PK, "checkout_fans", False, 0, NOW, recheck_at=NOW + DAY_MS), None)
    stored = membership(env)
    assert stored is not None
    assert (stored["member"], stored["transitions"]) == (True, 1)


def test_the_recheck_finds_what_is_due_in_every_shard_of_the_index(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any
) -> None:
    from shared.profiles_table import (
        RECHECK_SHARDS,
        Membership,
        due_for_recheck,
        put_membership,
        recheck_partition,
    )

    pks = [f"Production#user#user-{n}" for n in range(40)]
    assert {recheck_partition("checkout_fans", pk) for pk in pks} == {
        f"checkout_fans#{shard}" for shard in range(RECHECK_SHARDS)
    }
    for pk in pks:
        put_membership(Membership(pk, "checkout_fans", True, 1, NOW, recheck_at=NOW), None)
    assert sorted(due_for_recheck("checkout_fans", NOW)) == sorted(pks)


def test_the_events_of_a_window_are_read_past_the_first_page(stack: Stack, function_env: Any) -> None:
    """DynamoDB pages a query at 1 MB; here, at two items a page."""
    from shared.profiles import sources

    function_env("AudiencesFunction")
    for at in range(NOW - 5, NOW):
        put_event(stack, at)

    pages_cut_at(aws.client("dynamodb"), "dynamodb.Query", 2)
    times = sources.event_times(PK, NOW - DAY_MS, ["checkout"])
    assert sorted(times["checkout"]) == list(range(NOW - 5, NOW))


def test_asked_for_more_event_types_than_one_filter_names_only_those_are_read(
    stack: Stack, function_env: Any
) -> None:
    """A DynamoDB IN takes at most 100 values: past that, the types are picked out of the query's items."""
    from shared.profiles import sources

    function_env("AudiencesFunction")
    put_event(stack, NOW - 2)
    put_event(stack, NOW - 1, "view_signup_page")
    asked = ["checkout", *(f"other_{n}" for n in range(100))]
    assert sources.event_times(PK, NOW - DAY_MS, asked) == {"checkout": [NOW - 2]}


def test_the_audience_functions_make_exactly_the_calls_their_policies_allow(
    env: Stack, segment: SegmentSink, clock: list[int], lambda_context: Any, calls: list[RawCall]
) -> None:
    # An entry through the stream function, then the exit through the scheduled re-check.
    event_item = setup_member(env)
    calls.clear()
    audiences_app.lambda_handler(stream_event(env, "EventsTable", event_item), lambda_context)
    stream_calls = authorised_as(calls)
    config_store.clear_caches()  # another container: configs and write keys are read again
    aws.reset_clients()
    clock[0] = NOW + 6 * DAY_MS + 1
    calls.clear()
    assert sweep.lambda_handler({}, lambda_context)["exited"] == 1
    recheck_calls = authorised_as(calls)
    assert [m["traits"] for m in segment.messages] == [{"checkout_fans": True}, {"checkout_fans": False}]

    stream_allowed = statements(env, "AudiencesFunction")
    recheck_allowed = statements(env, "AudienceRecheckFunction")
    assert unauthorised(stream_calls, stream_allowed) == []
    assert unauthorised(recheck_calls, recheck_allowed) == []
    # All of it is used; the stream function's failure destination by Lambda itself, with its role.
    assert unused(stream_calls, stream_allowed) == [
        (
            "sqs:SendMessage",
            f"arn:aws:sqs:us-east-1:123456789012:{env.queues['AudiencesDeadLetterQueue'].rsplit('/', 1)[-1]}",
        )
    ]
    assert unused(recheck_calls, recheck_allowed) == []
