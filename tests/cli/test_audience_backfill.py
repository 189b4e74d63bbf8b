"""`config audience backfill NAME`: an audience evaluated for the identities already stored."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest

from fme_bridge.commands import dlq as dlq_command
from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from shared.profiles.audience_sync import AudienceEvaluator, AudienceSet
from shared.profiles.audiences import parse_audience
from shared.profiles.backfill import backfill, stored_identities
from shared.profiles.identify_sender import IdentifySender
from shared.profiles_table import (
    LastTreatment,
    Membership,
    memberships_of,
    profile_items,
    put_membership,
    write_last_treatment,
)
from tests.cli.conftest import PREFIX, Cli
from tests.delivery_support import event_item, events_table, store

REGION = "us-east-1"
NAME = "checkout_fans"
AUDIENCE = {
    "environment": "Production",
    "trafficType": "user",
    "rule": {
        "any": [
            {
                "all": [
                    {"performed": {"event": "checkout", "atLeast": 1, "withinDays": 7}},
                    {"attribute": {"name": "plan", "equals": "pro"}},
                ]
            },
            {"treatment": {"split": "new_checkout", "is": "on"}},
        ]
    },
    "sync": ["segment-prod"],
}


@pytest.fixture
def segment(cli: Cli, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[SegmentSink]:
    monkeypatch.setenv("PROFILES_TABLE", stack.tables["ProfilesTable"])
    with SegmentSink(write_keys={"WRITE_KEY"}) as sink:
        ssm = boto3.client("ssm", region_name=REGION)
        outbound = {
            "environments": ["Production"],
            "identities": {"user": "userId"},
            "endpoint": sink.endpoint,
        }
        ssm.put_parameter(Name=f"{PREFIX}/outbound/segment-prod", Value=json.dumps(outbound), Type="String")
        ssm.put_parameter(Name=f"{PREFIX}/audiences/{NAME}", Value=json.dumps(AUDIENCE), Type="String")
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=f"{PREFIX}/outbound/segment-prod", SecretString="WRITE_KEY"
        )
        yield sink


def table(stack: Stack, logical: str) -> Any:
    return boto3.resource("dynamodb", region_name=REGION).Table(stack.tables[logical])


def put_event(stack: Stack, environment: str, key: str, event_type: str = "checkout") -> None:
    now = int(time.time() * 1000) - 60_000
    item = event_item(
        key,
        event_type,
        now,
        message_id=f"m-{key}",
        environment=environment,
        value=Decimal(1),
        received_at=now,
    )
    store(events_table(stack), item)


def put_identity(stack: Stack, environment: str, key: str, plan: str) -> None:
    table(stack, "IdentitiesTable").put_item(
        Item={"pk": f"{environment}#user#{key}", "attributes": {"plan": plan}, "updatedAt": 1}
    )


@pytest.fixture
def stored(stack: Stack, segment: SegmentSink) -> None:
    """Identities stored before the audience existed, found in each of the three tables."""
    put_event(stack, "Production", "buyer")  # events and attributes: a member
    put_identity(stack, "Production", "buyer", "pro")
    put_event(stack, "Production", "free-buyer")  # events, but the wrong plan: not a member
    put_identity(stack, "Production", "free-buyer", "free")
    # Only a last treatment (ProfilesTable): a member through the treatment rule.
    write_last_treatment(LastTreatment("Production", "user", "flagged", "new_checkout", "on", 1, 1))
    put_event(stack, "Staging", "buyer")  # another environment: not this audience's
    put_identity(stack, "Staging", "buyer", "pro")


def memberships(key: str, environment: str = "Production") -> dict[str, bool]:
    items = profile_items(f"{environment}#user#{key}")
    return {name: m.member for name, m in memberships_of(items).items()}


def entered(sink: SegmentSink) -> dict[str, Any]:
    return {m["userId"]: m["traits"] for m in sink.messages if m["type"] == "identify"}


def test_a_dry_run_counts_and_changes_nothing(cli: Cli, segment: SegmentSink, stored: None) -> None:
    result = cli("config", "audience", "backfill", NAME, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "3 identities evaluated: 2 would enter, 0 would leave" in result.stdout
    assert "identify calls sent" not in result.stdout
    assert segment.messages == []
    assert memberships("buyer") == {}
    assert memberships("flagged") == {}


def test_stored_identities_enter_once_and_again_nothing_changes(
    cli: Cli, segment: SegmentSink, stored: None
) -> None:
    result = cli("config", "audience", "backfill", NAME)
    assert result.exit_code == 0, result.output
    assert "3 identities evaluated: 2 entered, 0 left" in result.stdout
    assert "identify calls sent to Segment: 2" in result.stdout
    assert entered(segment) == {"buyer": {NAME: True}, "flagged": {NAME: True}}
    assert memberships("buyer") == {NAME: True}
    assert memberships("flagged") == {NAME: True}
    assert not memberships("free-buyer").get(NAME)
    assert memberships("buyer", "Staging") == {}

    again = cli("config", "audience", "backfill", NAME)
    assert again.exit_code == 0, again.output
    assert "3 identities evaluated: 0 entered, 0 left" in again.stdout
    assert len(segment.messages) == 2


def test_an_owed_entry_is_sent_again_and_not_counted_as_a_new_one(
    cli: Cli, segment: SegmentSink, stored: None
) -> None:
    """Stored before its identify was known sent: the back-fill sends it again, as its dry run says."""
    put_membership(Membership("Production#user#buyer", NAME, True, 1, 1, pending=True), None)
    dry = cli("config", "audience", "backfill", NAME, "--dry-run")
    assert "3 identities evaluated: 1 would enter, 0 would leave" in dry.stdout

    result = cli("config", "audience", "backfill", NAME)
    assert result.exit_code == 0, result.output
    assert "3 identities evaluated: 1 entered, 0 left" in result.stdout
    assert entered(segment) == {"buyer": {NAME: True}, "flagged": {NAME: True}}


def test_an_identity_that_no_longer_qualifies_leaves(
    cli: Cli, stack: Stack, segment: SegmentSink, stored: None
) -> None:
    assert cli("config", "audience", "backfill", NAME).exit_code == 0
    put_identity(stack, "Production", "buyer", "free")  # as if the stream had been missed
    segment.clear()

    result = cli("config", "audience", "backfill", NAME)
    assert result.exit_code == 0, result.output
    assert "1 left" in result.stdout
    assert entered(segment) == {"buyer": {NAME: False}}
    assert memberships("buyer") == {NAME: False}


def test_segment_failing_stores_nothing_and_says_to_run_again(
    cli: Cli, segment: SegmentSink, stored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fme_bridge.commands.profiles.BACKFILL_SEND_BUDGET_MS", 2_000)
    segment.fail_fraction(1.0, status=503)
    result = cli("config", "audience", "backfill", NAME)
    assert result.exit_code == 1
    assert "2 identities could not be evaluated or synced" in result.output
    assert "run the back-fill again" in result.output
    assert memberships("buyer") == {}
    assert memberships("flagged") == {}

    segment.fail_fraction(0)
    assert cli("config", "audience", "backfill", NAME).exit_code == 0
    assert memberships("buyer") == {NAME: True}


def test_an_identity_stored_in_several_tables_is_found_once(
    cli: Cli, stack: Stack, segment: SegmentSink, stored: None
) -> None:
    found = list(stored_identities("Production", "user"))
    assert sorted(found) == ["Production#user#buyer", "Production#user#flagged", "Production#user#free-buyer"]


def test_each_round_of_a_backfill_is_evaluated_at_its_own_time(
    cli: Cli, stack: Stack, segment: SegmentSink, stored: None
) -> None:
    """A back-fill of many rounds takes a while: a window is judged by the time of its round."""
    start = int(time.time() * 1000)
    clock = iter([start, start + 1_000])
    evaluator = AudienceEvaluator(
        AudienceSet({NAME: parse_audience(AUDIENCE, NAME)}), IdentifySender(lambda: 30_000)
    )
    pks = ["Production#user#buyer", "Production#user#flagged"]
    report = backfill(evaluator, pks, lambda: next(clock), per_round=1)
    assert (report.evaluated, report.entered) == (2, 2)
    evaluated_at = [memberships_of(profile_items(pk))[NAME].evaluated_at for pk in pks]
    assert evaluated_at == [start, start + 1_000]


def test_an_unknown_audience_is_one_line(cli: Cli, segment: SegmentSink) -> None:
    result = cli("config", "audience", "backfill", "nobody")
    assert result.exit_code == 1
    assert f"no audience 'nobody' under {PREFIX}" in result.output


def dead_letter(shard: str) -> str:
    """Lambda's on-failure record of a stream batch the audiences function gave up on."""
    return json.dumps(
        {
            "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": 11},
            "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
            "version": "1.0",
            "DDBStreamBatchInfo": {
                "shardId": shard,
                "startSequenceNumber": "100",
                "endSequenceNumber": "140",
                "approximateArrivalOfFirstRecord": "2026-11-26T08:00:00Z",
                "batchSize": 3,
                "streamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x",
            },
        }
    )


@pytest.fixture
def audiences_dlq(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> str:
    url = stack.queues["AudiencesDeadLetterQueue"]
    monkeypatch.setenv("AUDIENCES_DLQ_URL", url)
    return url


def test_the_audiences_dead_letters_are_shown_as_the_stream_batches_they_describe(
    cli: Cli, audiences_dlq: str
) -> None:
    boto3.client("sqs", region_name=REGION).send_message(
        QueueUrl=audiences_dlq, MessageBody=dead_letter("shard-1")
    )
    result = cli("dlq", "show", "--queue", "audiences", "--json")
    assert result.exit_code == 0, result.output
    [shown] = json.loads(result.stdout)
    assert shown["reason"].startswith("RetryAttemptsExhausted: a stream batch of 3 record(s)")
    assert "shard shard-1, sequence 100 to 140" in shown["reason"]


def test_the_audiences_redrive_evaluates_every_audience_and_removes_the_dead_letters(
    cli: Cli, segment: SegmentSink, stored: None, audiences_dlq: str
) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    for n in range(11):  # more than one receive and one delete call
        sqs.send_message(QueueUrl=audiences_dlq, MessageBody=dead_letter(f"shard-{n}"))
    time.sleep(0.01)  # the dead letters were sent before the redrive began

    result = cli("dlq", "redrive", "--queue", "audiences")
    assert result.exit_code == 0, result.output
    assert "3 identities evaluated: 2 entered, 0 left" in result.stdout
    assert entered(segment) == {"buyer": {NAME: True}, "flagged": {NAME: True}}
    assert "removed 11 dead letter(s)" in result.stdout
    left = sqs.get_queue_attributes(QueueUrl=audiences_dlq, AttributeNames=["All"])["Attributes"]
    assert (left["ApproximateNumberOfMessages"], left["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")


def test_a_dead_letter_arriving_during_an_audiences_redrive_waits_for_the_next(
    cli: Cli, segment: SegmentSink, stored: None, audiences_dlq: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream batch that failed while every audience was being evaluated may hold a change the
    evaluation did not see: it is not removed with the dead letters the evaluation settled."""
    sqs = boto3.client("sqs", region_name=REGION)
    sqs.send_message(QueueUrl=audiences_dlq, MessageBody=dead_letter("shard-1"))
    evaluate = dlq_command.reevaluate_every_audience

    def evaluated_while_another_fails(tgt: Any) -> Any:
        time.sleep(0.01)
        sqs.send_message(QueueUrl=audiences_dlq, MessageBody=dead_letter("shard-2"))
        return evaluate(tgt)

    monkeypatch.setattr(dlq_command, "reevaluate_every_audience", evaluated_while_another_fails)
    result = cli("dlq", "redrive", "--queue", "audiences")
    assert result.exit_code == 0, result.output
    assert "removed 1 dead letter(s)" in result.stdout
    [left] = json.loads(cli("dlq", "show", "--queue", "audiences", "--json").stdout)
    assert "shard shard-2" in left["reason"]


def test_an_audiences_redrive_that_could_not_sync_keeps_the_dead_letters(
    cli: Cli, segment: SegmentSink, stored: None, audiences_dlq: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fme_bridge.commands.profiles.BACKFILL_SEND_BUDGET_MS", 2_000)
    segment.fail_fraction(1.0, status=503)
    boto3.client("sqs", region_name=REGION).send_message(
        QueueUrl=audiences_dlq, MessageBody=dead_letter("shard-1")
    )
    result = cli("dlq", "redrive", "--queue", "audiences")
    assert result.exit_code == 1
    assert "the dead letters stay" in result.output
    assert len(json.loads(cli("dlq", "show", "--queue", "audiences", "--json").stdout)) == 1


def test_a_backfill_whose_sync_target_is_gone_is_one_line_and_sends_nothing(
    cli: Cli, segment: SegmentSink, stored: None
) -> None:
    """Its outbound config deleted since the audience was written (--force): entries would be
    stored and never sent."""
    boto3.client("ssm", region_name=REGION).delete_parameter(Name=f"{PREFIX}/outbound/segment-prod")

    result = cli("config", "audience", "backfill", NAME)

    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {PREFIX}/audiences/{NAME}: sync: no outbound config 'segment-prod' under {PREFIX}\n"
    )
    assert segment.messages == []
    assert memberships("buyer") == {}


def test_identify_calls_refused_for_good_are_said_and_their_memberships_stored(
    cli: Cli, segment: SegmentSink, stored: None
) -> None:
    """As the audiences functions do it: a config without its write key is a config error, not a
    failure to retry, and each refusal is a line of the output."""
    boto3.client("secretsmanager", region_name=REGION).delete_secret(
        SecretId=f"{PREFIX}/outbound/segment-prod", ForceDeleteWithoutRecovery=True
    )

    result = cli("config", "audience", "backfill", NAME)

    assert result.exit_code == 0, result.output
    assert "identify calls sent to Segment: 0" in result.stdout
    assert "not sent: outbound segment-prod: 2 identify calls refused" in result.stdout
    assert segment.messages == []
    assert memberships("buyer") == {NAME: True}
