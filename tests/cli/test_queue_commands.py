"""`send-impressions`, `replay` and `dlq`: impressions into the queue, failures back out of the DLQ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from fme_bridge.commands.common import CliError, out
from fme_bridge.commands.impressions import MAX_MESSAGE_BYTES, _send, envelopes
from fme_bridge.commands.queue_messages import peeked, queue_depth
from fme_bridge.template import Stack
from shared.outbound.dead_letters import send_dead_letters
from shared.outbound.delivery import DeadLetter
from tests.cli.conftest import Cli, wrap_clients
from tests.conftest import EVENTS_DIR, load_event

REGION = "us-east-1"


def drain(url: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name=REGION)
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=60
    ).get("Messages", []):
        messages.extend(batch)
    return messages


def test_send_impressions_sends_each_value_as_one_message_in_any_spec_shape(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    values = [
        load_event(name)
        for name in ("impressions_webhook.json", "impression_listener_js.json", "impressions_envelope.json")
    ]
    jsonl = tmp_path / "impressions.jsonl"
    jsonl.write_text("\n".join(json.dumps(v) for v in values) + "\n")

    result = cli("send-impressions", str(jsonl))
    assert result.exit_code == 0, result.output
    assert "sent 3 message(s)" in result.stdout
    bodies = [json.loads(m["Body"]) for m in drain(stack.queues["ImpressionsQueue"])]
    assert len(bodies) == 3
    assert sorted(values, key=json.dumps) == sorted(bodies, key=json.dumps)


def test_send_impressions_reads_a_json_array_as_one_message_per_element(cli: Cli, stack: Stack) -> None:
    result = cli("send-impressions", str(EVENTS_DIR / "impressions_webhook.json"))
    assert result.exit_code == 0, result.output
    document = load_event("impressions_webhook.json")
    expected = len(document) if isinstance(document, list) else 1
    assert len(drain(stack.queues["ImpressionsQueue"])) == expected


def test_a_bad_line_sends_nothing(cli: Cli, stack: Stack, tmp_path: Path) -> None:
    jsonl = tmp_path / "impressions.jsonl"
    good = json.dumps(load_event("impression_listener_js.json"))
    jsonl.write_text(f"{good}\n{good}\n{{not json\n")
    result = cli("send-impressions", str(jsonl))
    assert result.exit_code == 1
    assert f"{jsonl}:3: not valid JSON" in result.stderr
    assert drain(stack.queues["ImpressionsQueue"]) == []

    for bad in ('{"hello": "world"}', '{"split": "s"}', "[]"):
        jsonl.write_text(f"{good}\n{bad}\n")
        result = cli("send-impressions", str(jsonl))
        assert result.exit_code == 1
        assert f"{jsonl}:2: not an impression" in result.stderr
    assert drain(stack.queues["ImpressionsQueue"]) == []


def test_a_bad_value_in_json_lines_is_named_by_its_line_blank_lines_counted(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    jsonl = tmp_path / "blank.jsonl"
    good = load_event("impression_listener_js.json")
    jsonl.write_text(f'{json.dumps(good)}\n\n{json.dumps(good)}\n   \n{{"hello": "world"}}\n')
    for command in ("send-impressions", "replay"):
        result = cli(command, str(jsonl))
        assert result.exit_code == 1
        assert result.stderr.startswith(f"error: {jsonl}:5: not an impression"), result.stderr
    # U+2028 may stand in a JSON string; it ends no line.
    odd = json.dumps({**good, "hostname": "a\u2028b"}, ensure_ascii=False)
    jsonl.write_text(f'{odd}\n{{"hello": "world"}}\n', encoding="utf-8")
    result = cli("send-impressions", str(jsonl))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {jsonl}:2: not an impression"), result.stderr
    assert drain(stack.queues["ImpressionsQueue"]) == []

    array = tmp_path / "impressions.json"
    array.write_text(json.dumps([good, {"hello": "world"}], indent=2))
    result = cli("send-impressions", str(array))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {array} item 2: not an impression"), result.stderr


LISTENER_FILES = [
    "impression_listener_go.json",
    "impression_listener_java.json",
    "impression_listener_js.json",
    "impression_listener_php.json",
    "impression_listener_python.json",
    "impression_listener_ruby.json",
    "impression_dotnet.json",
]


@pytest.mark.parametrize("name", LISTENER_FILES)
def test_what_every_sdk_hands_its_listener_is_sent_and_replayed(cli: Cli, stack: Stack, name: str) -> None:
    """The shapes the impressions function reads (docs/outbound.md), the other SDKs' spellings too."""
    path = str(EVENTS_DIR / name)
    sent = cli("send-impressions", path)
    assert sent.exit_code == 0, sent.output
    [message] = drain(stack.queues["ImpressionsQueue"])
    assert json.loads(message["Body"]) == load_event(name)

    replayed = cli("replay", path)
    assert replayed.exit_code == 0, replayed.output
    [message] = drain(stack.queues["ImpressionsQueue"])
    envelope = json.loads(message["Body"])
    assert envelope["impressions"] == [load_event(name)]
    assert envelope["environmentName"] == "Production"


@pytest.mark.parametrize(
    ("content", "error"), [("[]", "no impressions"), ("", "empty file"), ("\n\n", "empty file")]
)
def test_a_file_without_impressions_is_an_error_for_both_commands(
    cli: Cli, tmp_path: Path, content: str, error: str
) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(content)
    for command in ("send-impressions", "replay"):
        result = cli(command, str(empty))
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr.strip() == f"error: {empty}: {error}"


def test_send_impressions_refuses_an_envelope_without_impressions(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    jsonl = tmp_path / "envelopes.jsonl"
    good = load_event("impressions_envelope.json")
    jsonl.write_text(json.dumps(good) + "\n" + json.dumps({**good, "impressions": []}) + "\n")
    result = cli("send-impressions", str(jsonl))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {jsonl}:2: an envelope without impressions"
    assert drain(stack.queues["ImpressionsQueue"]) == []


def test_replay_keeps_each_impressions_environment_whole(cli: Cli, stack: Stack, tmp_path: Path) -> None:
    """An envelope or --environment completes an impression's environment only where it is the same
    one: never the name of one beside the id of another."""
    bare = {"key": "u1", "split": "s", "treatment": "on", "time": 1795483041109}
    envelope = {
        "environmentName": "Production",
        "environmentId": "production-id",
        "impressions": [
            {**bare, "environmentId": "staging-id"},
            {**bare, "environmentId": "production-id"},
            bare,
        ],
    }
    backfill = tmp_path / "backfill.jsonl"
    backfill.write_text(json.dumps(envelope) + "\n" + json.dumps({**bare, "environmentId": "dev-id"}) + "\n")
    result = cli("replay", str(backfill), "--environment", "Production")
    assert result.exit_code == 0, result.output
    heads = sorted(
        (body.get("environmentName", ""), body.get("environmentId", ""), len(body["impressions"]))
        for body in (json.loads(m["Body"]) for m in drain(stack.queues["ImpressionsQueue"]))
    )
    assert heads == [("", "dev-id", 1), ("", "staging-id", 1), ("Production", "production-id", 2)]


@pytest.mark.parametrize(
    ("envelope", "impression"),
    [
        ({"environmentName": "Production", "environmentId": "123"}, {"environmentId": 123}),
        ({"environmentName": "Production", "environmentId": 123}, {"environmentId": "123"}),
        ({"environmentName": 5, "environmentId": "e5"}, {"environmentName": "5"}),
        ({"environmentName": "", "environmentId": "e1"}, {}),
        (
            {"environmentName": "Production", "environmentId": "p"},
            {"environmentName": "", "environmentId": "s"},
        ),
        ({"environmentName": "Production"}, {"environmentId": "s"}),
    ],
)
def test_replay_reads_an_impressions_environment_as_the_function_does(
    envelope: dict[str, Any], impression: dict[str, Any]
) -> None:
    from fme_bridge.commands.impressions import impressions_of
    from shared.outbound.impressions import parse_body

    item = {"key": "u1", "split": "s", "treatment": "on", "time": 1795483041109, **impression}
    body = {**envelope, "impressions": [item]}
    [(_, function)] = parse_body(json.dumps(body)).impressions
    [(_, (name, environment_id, _), _)] = impressions_of(body, "file")
    replayed = {"impressions": [item], "environmentName": name, "environmentId": environment_id}
    [(_, again)] = parse_body(json.dumps({k: v for k, v in replayed.items() if v is not None})).impressions
    assert (again.environment_id, again.environment_name) == (
        function.environment_id,
        function.environment_name,
    )
    assert (environment_id, name) == (function.environment_id, function.environment_name)


def webhook_impression(n: int, environment: str) -> dict[str, Any]:
    return {
        "key": f"user-{n}",
        "split": "new_checkout",
        "environmentId": f"id-{environment}",
        "environmentName": environment,
        "treatment": "on" if n % 2 else "off",
        "time": 1795483041109 + n,
        "bucketingKey": None,
        "label": "default rule",
        "machineName": "m",
        "machineIp": "10.0.0.1",
        "splitVersionNumber": 1,
        "sdk": "go",
        "sdkVersion": "6.0.0",
        "properties": None,
    }


def test_replay_batches_a_backfill_into_envelopes_per_environment(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    impressions = [webhook_impression(n, "Production") for n in range(700)]
    impressions += [webhook_impression(n, "Staging") for n in range(500)]
    backfill = tmp_path / "backfill.jsonl"
    backfill.write_text("\n".join(json.dumps(i) for i in impressions))

    result = cli("replay", str(backfill), "--traffic-type", "user")
    assert result.exit_code == 0, result.output
    assert "replayed 1200 impression(s) in 3 message(s)" in result.stdout

    bodies = [json.loads(m["Body"]) for m in drain(stack.queues["ImpressionsQueue"])]
    assert sorted((b["environmentName"], len(b["impressions"])) for b in bodies) == [
        ("Production", 200),
        ("Production", 500),
        ("Staging", 500),
    ]
    assert all(b["trafficType"] == "user" for b in bodies)
    replayed = sorted((i for b in bodies for i in b["impressions"]), key=json.dumps)
    assert replayed == sorted(impressions, key=json.dumps)
    assert cli("replay", str(backfill), "--per-message", "5001").exit_code == 2


def test_replay_fills_in_the_traffic_type_only_where_an_impression_has_none(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    impressions = [webhook_impression(0, "Production"), webhook_impression(1, "Production")]
    envelope = {"environmentName": "Production", "trafficType": "account", "impressions": [impressions[1]]}
    backfill = tmp_path / "backfill.jsonl"
    backfill.write_text("\n".join(json.dumps(value) for value in (impressions[0], envelope)))
    result = cli("replay", str(backfill), "--traffic-type", "user")
    assert result.exit_code == 0, result.output
    bodies = [json.loads(m["Body"]) for m in drain(stack.queues["ImpressionsQueue"])]
    # Read as the function reads it: the impression's own, else its envelope's.
    by_key = {i["key"]: i.get("trafficType") or b["trafficType"] for b in bodies for i in b["impressions"]}
    assert by_key == {impressions[0]["key"]: "user", impressions[1]["key"]: "account"}


def without_environment(impression: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in impression.items() if k not in ("environmentName", "environmentId")}


def test_replay_of_impressions_without_an_environment_sends_nothing(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    impressions = [webhook_impression(0, "Production"), without_environment(webhook_impression(1, "x"))]
    impressions += [{**webhook_impression(2, "x"), "environmentName": None, "environmentId": ""}]
    backfill = tmp_path / "backfill.jsonl"
    backfill.write_text(
        f"{json.dumps(impressions[0])}\n\n{json.dumps(impressions[1])}\n{json.dumps(impressions[2])}\n"
    )

    result = cli("replay", str(backfill), "--per-message", "500")
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: no environment on 2 impression(s), the first at {backfill}:3: pass --environment, "
        "or set environmentName or environmentId in the file\n"
    )
    assert drain(stack.queues["ImpressionsQueue"]) == []

    result = cli("replay", str(backfill), "--environment", "Staging")
    assert result.exit_code == 0, result.output
    bodies = [json.loads(m["Body"]) for m in drain(stack.queues["ImpressionsQueue"])]
    assert sorted((b["environmentName"], len(b["impressions"])) for b in bodies) == [
        ("Production", 1),
        ("Staging", 2),
    ]


def test_replay_of_an_environment_that_is_not_a_string_is_one_line(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    backfill = tmp_path / "backfill.jsonl"
    backfill.write_text(json.dumps({**webhook_impression(0, "x"), "environmentName": ["Production"]}) + "\n")
    result = cli("replay", str(backfill))
    assert result.exit_code == 1
    expected = f"error: {backfill} item 1: environmentName must be a string, not an array"
    assert result.stderr.strip() == expected
    for value in (True, False):  # false too, though an empty value gives way to the envelope's
        backfill.write_text(json.dumps({**webhook_impression(0, "x"), "environmentName": value}) + "\n")
        result = cli("replay", str(backfill))
        expected = f"error: {backfill} item 1: environmentName must be a string, not a boolean"
        assert result.stderr.strip() == expected
    assert drain(stack.queues["ImpressionsQueue"]) == []


def test_replay_keeps_the_environment_an_envelope_gives_its_impressions(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    # An impression's empty environmentId gives way to its envelope's, as the impressions function reads it.
    inner = [
        without_environment(webhook_impression(0, "x")),
        {**without_environment(webhook_impression(1, "x")), "environmentId": ""},
    ]
    backfill = tmp_path / "backfill.json"
    backfill.write_text(
        json.dumps({"environmentId": "id-Production", "trafficType": "user", "impressions": inner})
    )

    result = cli("replay", str(backfill))
    assert result.exit_code == 0, result.output
    [body] = [json.loads(m["Body"]) for m in drain(stack.queues["ImpressionsQueue"])]
    assert body == {"environmentId": "id-Production", "trafficType": "user", "impressions": inner}

    backfill.write_text(json.dumps({"trafficType": "user", "impressions": inner}))
    result = cli("replay", str(backfill))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: no environment on 2 impression(s), the first at {backfill} item 1 impressions[0]: "
    ), result.stderr
    assert drain(stack.queues["ImpressionsQueue"]) == []


def test_send_impressions_without_an_environment_sends_nothing(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    listener = load_event("impression_listener_js.json")
    jsonl = tmp_path / "impressions.jsonl"
    values = [
        listener,
        {"environmentName": "Production", "impressions": [without_environment(listener)]},
        [webhook_impression(0, "Production"), without_environment(webhook_impression(1, "x"))],
        {"impressions": [webhook_impression(2, "Production"), without_environment(listener)]},
        without_environment(listener),
    ]
    jsonl.write_text("\n".join(json.dumps(v) for v in values) + "\n")

    result = cli("send-impressions", str(jsonl))
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: no environment on 3 impression(s), the first at {jsonl}:3[1]: set environmentName or "
        "environmentId on them or their envelope, or use replay --environment\n"
    )
    assert drain(stack.queues["ImpressionsQueue"]) == []

    jsonl.write_text("\n".join(json.dumps(v) for v in values[:2]) + "\n")
    result = cli("send-impressions", str(jsonl))
    assert result.exit_code == 0, result.output
    assert len(drain(stack.queues["ImpressionsQueue"])) == 2


def test_send_impressions_names_a_refused_impression_by_its_place_in_its_envelope(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    envelope = {
        "impressions": [webhook_impression(0, "Production"), without_environment(webhook_impression(1, "x"))]
    }
    document = tmp_path / "envelope.json"
    document.write_text(json.dumps(envelope))
    result = cli("send-impressions", str(document))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: no environment on 1 impression(s), the first at {document} item 1 impressions[1]: "
    )
    assert drain(stack.queues["ImpressionsQueue"]) == []


def test_replay_of_an_unreadable_file_is_one_line(cli: Cli, tmp_path: Path) -> None:
    result = cli("replay", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot read")


def test_envelopes_stay_under_the_sqs_message_limit() -> None:
    big = {"key": "k", "split": "s", "treatment": "on", "time": 1, "label": "x" * 20_000}
    bodies = envelopes([(("Production", None, "user"), big)] * 40, per_message=500)
    assert sorted(i for _, held in bodies for i in held) == list(range(40))
    assert len(bodies) > 1
    assert all(len(body.encode()) <= MAX_MESSAGE_BYTES for body, _ in bodies)


def dead_letter(stack: Stack, body: str, reason: str | None, code: str = "no_matching_config") -> None:
    """Dead-letter ``body`` the way the impressions function does, or as SQS's redrive does (no reason)."""
    url = stack.queues["ImpressionsDeadLetterQueue"]
    if reason is None:
        boto3.client("sqs", region_name=REGION).send_message(QueueUrl=url, MessageBody=body)
        return
    letter = DeadLetter(
        record=0,
        source_message_id="m-1",
        body=body,
        error_codes=(code,),
        reason=reason,
        failed_impressions=1,
    )
    assert send_dead_letters(url, [letter]) == {}


def test_dlq_show_lists_messages_with_reasons_and_leaves_them_there(cli: Cli, stack: Stack) -> None:
    dead_letter(stack, '{"key": "u1", "split": "s"}', "no outbound config matches environment 'Dev'")
    dead_letter(stack, '{"key": "u2", "split": "s"}', None)

    result = cli("dlq", "show", "--json")
    assert result.exit_code == 0, result.output
    shown = {json.loads(m["body"])["key"]: m for m in json.loads(result.stdout)}
    assert shown["u1"]["reason"] == "no outbound config matches environment 'Dev'"
    assert shown["u1"]["errorCode"] == "no_matching_config"
    assert shown["u1"]["sourceMessageId"] == "m-1"
    assert shown["u1"]["receiveCount"] == 1  # this show's receive, as a number
    assert shown["u2"]["reason"] == (
        "retries exhausted (moved by SQS after maxReceiveCount receives; no reason recorded)"
    )
    table = cli("dlq", "show")
    assert table.exit_code == 0, table.output
    assert "dead-letter queue: 2 message(s)" in table.stdout
    assert len(drain(stack.queues["ImpressionsDeadLetterQueue"])) == 2  # still there, visible again


def test_dlq_show_gives_the_error_code_as_reason_when_the_function_recorded_none(
    cli: Cli, stack: Stack
) -> None:
    letter = DeadLetter(
        record=0,
        source_message_id="",
        body="{}",
        error_codes=("segment_rejected",),
        reason="",
        failed_impressions=1,
    )
    assert send_dead_letters(stack.queues["ImpressionsDeadLetterQueue"], [letter]) == {}
    [shown] = json.loads(cli("dlq", "show", "--json").stdout)
    assert (shown["reason"], shown["errorCode"], shown["sourceMessageId"]) == (
        "segment_rejected",
        "segment_rejected",
        None,
    )


def test_dlq_show_lists_bodies_that_are_no_json_object_and_cuts_long_ones_in_the_table(
    cli: Cli, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    url = stack.queues["ImpressionsDeadLetterQueue"]
    bodies = ["{not json", "[1, 2]", "z" * 200]
    ids = {sqs.send_message(QueueUrl=url, MessageBody=body)["MessageId"]: body for body in bodies}

    result = cli("dlq", "show", "--json")
    assert result.exit_code == 0, result.output
    assert {m["messageId"]: m["body"] for m in json.loads(result.stdout)} == ids
    monkeypatch.setattr(out, "width", 400)  # a terminal wide enough for the whole body
    table = cli("dlq", "show")
    assert table.exit_code == 0, table.output
    assert (table.stdout.count("z"), table.stdout.count("…")) == (117, 1)


def test_dlq_show_of_an_empty_queue_says_so(cli: Cli, stack: Stack) -> None:
    result = cli("dlq", "show")
    assert result.exit_code == 0, result.output
    assert " ".join(result.stdout.split()) == (
        f"the dead-letter queue is empty ({stack.queues['ImpressionsDeadLetterQueue']})"
    )
    assert json.loads(cli("dlq", "show", "--json").stdout) == []


def test_dlq_show_shows_up_to_50_messages_by_default_and_limit_fewer(cli: Cli, stack: Stack) -> None:
    for n in range(52):
        dead_letter(stack, json.dumps({"key": f"u{n}"}), "impression 0: segment_rejected")
    assert len(json.loads(cli("dlq", "show", "--json").stdout)) == 50
    assert len(json.loads(cli("dlq", "show", "--json", "--limit", "3").stdout)) == 3
    assert cli("dlq", "show", "--limit", "0").exit_code == 2


def test_peeked_messages_are_visible_again_even_when_the_look_fails(stack: Stack) -> None:
    url = stack.queues["ImpressionsDeadLetterQueue"]
    sqs = boto3.client("sqs", region_name=REGION)
    for n in range(12):
        sqs.send_message(QueueUrl=url, MessageBody=str(n))
    assert queue_depth(sqs, url) == 12
    seen: list[int] = []

    def look() -> None:
        with peeked(sqs, url, 11) as messages:
            seen.append(len(messages))
            raise RuntimeError("the command failed")

    with pytest.raises(RuntimeError, match="the command failed"):
        look()
    assert seen == [11]
    assert sorted(int(m["Body"]) for m in drain(url)) == list(range(12))


@pytest.mark.parametrize("queue", ["impressions", "last-treatments", "audiences"])
def test_dlq_redrive_of_an_empty_queue_says_so(
    cli: Cli, stack: Stack, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIENCES_DLQ_URL", stack.queues["AudiencesDeadLetterQueue"])
    result = cli("dlq", "redrive", "--queue", queue)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("the dead-letter queue is empty (")
    assert "moved" not in result.stdout


def test_dlq_redrive_moves_messages_back_without_their_failure_reason(cli: Cli, stack: Stack) -> None:
    for n in range(13):
        dead_letter(stack, json.dumps({"n": n}), "impression 0: segment_rejected")
    result = cli("dlq", "redrive")
    assert result.exit_code == 0, result.output
    assert "moved 13 message(s)" in result.stdout
    assert drain(stack.queues["ImpressionsDeadLetterQueue"]) == []
    moved = drain(stack.queues["ImpressionsQueue"])
    assert sorted(json.loads(m["Body"])["n"] for m in moved) == list(range(13))
    assert all(not (m.get("MessageAttributes") or {}) for m in moved)


def test_dlq_redrive_keeps_the_message_attributes_other_than_the_failure_reason(
    cli: Cli, stack: Stack
) -> None:
    text = {"DataType": "String", "StringValue": "x"}
    boto3.client("sqs", region_name=REGION).send_message(
        QueueUrl=stack.queues["ImpressionsDeadLetterQueue"],
        MessageBody="{}",
        MessageAttributes={
            "errorCode": text,
            "reason": text,
            "origin": {"DataType": "String", "StringValue": "sdk"},
        },
    )
    result = cli("dlq", "redrive")
    assert result.exit_code == 0, result.output
    [moved] = drain(stack.queues["ImpressionsQueue"])
    assert {name: value["StringValue"] for name, value in moved["MessageAttributes"].items()} == {
        "origin": "sdk"
    }


class RefusingLastEntry:
    """An SQS client whose SendMessageBatch refuses its last entry, as SQS may (moto never does)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        *sent, refused = Entries
        result = self._client.send_message_batch(QueueUrl=QueueUrl, Entries=sent) if sent else {}
        failed = {"Id": refused["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
        return {"Successful": result.get("Successful", []), "Failed": [failed]}


def queue_total(url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=url, AttributeNames=names
    )
    return sum(int(attributes["Attributes"][name]) for name in names)


def test_dlq_redrive_keeps_what_sqs_refused_in_the_dead_letter_queue_and_fails(
    cli: Cli, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrap_clients(monkeypatch, "sqs", RefusingLastEntry)
    for n in range(3):
        dead_letter(stack, json.dumps({"n": n}), "impression 0: segment_rejected")
    result = cli("dlq", "redrive")
    assert result.exit_code == 1, result.output
    assert "1 message(s) not moved: InternalError" in " ".join(result.output.split())
    assert queue_total(stack.queues["ImpressionsDeadLetterQueue"]) == 1  # kept, never lost
    assert len(drain(stack.queues["ImpressionsQueue"])) == 2


def test_dlq_redrive_moves_at_most_limit_messages(cli: Cli, stack: Stack) -> None:
    for n in range(5):
        dead_letter(stack, json.dumps({"n": n}), "impression 0: segment_rejected")
    result = cli("dlq", "redrive", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "moved 2 message(s)" in result.stdout
    assert len(drain(stack.queues["ImpressionsQueue"])) == 2
    assert queue_total(stack.queues["ImpressionsDeadLetterQueue"]) == 3


def test_dlq_redrive_says_which_messages_were_dead_lettered_for_their_body(cli: Cli, stack: Stack) -> None:
    dead_letter(stack, "{not json", "body is not valid JSON", code="invalid_json")
    dead_letter(stack, json.dumps({"key": "u1"}), "no environment", code="no_environment")
    dead_letter(stack, json.dumps({"key": "u2"}), "no outbound config matches environment 'Dev'")
    dead_letter(stack, json.dumps([{"key": "u3"}]), "two kinds", code="no_matching_config,invalid_impression")
    dead_letter(stack, json.dumps({"impressions": 5}), "not a body the queue takes", code="invalid_body")
    result = cli("dlq", "redrive")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "moved 5 message(s)" in text
    assert (
        "of them, 1 invalid_body, 1 invalid_impression, 1 invalid_json, 1 no_environment: "
        "dead-lettered for their body" in text
    )
    assert len(drain(stack.queues["ImpressionsQueue"])) == 5  # moved all the same: the function decides


def test_dlq_redrive_of_large_dead_letters_sends_them_in_calls_within_sqs_limit(
    cli: Cli, stack: Stack
) -> None:
    # Ten of them would be 2 MB in one SendMessageBatch, over SQS's limit for a call.
    for n in range(10):
        dead_letter(stack, json.dumps({"n": n, "pad": "x" * 200_000}), "impression 0: segment_rejected")
    result = cli("dlq", "redrive")
    assert result.exit_code == 0, result.output
    assert "moved 10 message(s)" in result.stdout
    assert drain(stack.queues["ImpressionsDeadLetterQueue"]) == []
    assert sorted(json.loads(m["Body"])["n"] for m in drain(stack.queues["ImpressionsQueue"])) == list(
        range(10)
    )


def test_the_last_treatments_dead_letter_queue_is_shown_and_redriven_to_its_own_queue(
    cli: Cli, stack: Stack
) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    sqs.send_message(QueueUrl=stack.queues["LastTreatmentsDeadLetterQueue"], MessageBody='{"n": 1}')
    sqs.send_message(QueueUrl=stack.queues["ImpressionsDeadLetterQueue"], MessageBody='{"n": 2}')

    shown = cli("dlq", "show", "--json", "--queue", "last-treatments")
    assert shown.exit_code == 0, shown.output
    assert [json.loads(m["body"]) for m in json.loads(shown.stdout)] == [{"n": 1}]

    result = cli("dlq", "redrive", "--queue", "last-treatments")
    assert result.exit_code == 0, result.output
    assert [json.loads(m["Body"]) for m in drain(stack.queues["LastTreatmentsQueue"])] == [{"n": 1}]
    assert drain(stack.queues["ImpressionsQueue"]) == []
    assert len(drain(stack.queues["ImpressionsDeadLetterQueue"])) == 1


class BatchSqs:
    """SendMessageBatch calls as the bodies they carried; the ``refuse``-th call fails its last entry."""

    def __init__(self, refuse: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.refuse = refuse

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.calls.append([entry["MessageBody"] for entry in Entries])
        if len(self.calls) == self.refuse:
            return {"Failed": [{"Id": Entries[-1]["Id"], "Code": "Throttled", "Message": "slow down"}]}
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries]}


def test_messages_go_ten_to_a_call_and_a_call_within_sqs_size_limit() -> None:
    big = "b" * (MAX_MESSAGE_BYTES - 10)
    bodies = ["s"] * 12 + [big, big]
    sqs, sent_indexes = BatchSqs(), []
    assert _send(sqs, "queue", bodies, sent_indexes.append) == 14
    assert [len(call) for call in sqs.calls] == [10, 3, 1]
    assert sent_indexes == list(range(14))


def test_a_refused_message_stops_the_sending_and_says_how_far_it_got() -> None:
    with pytest.raises(CliError, match=r"SQS refused 1 message\(s\) \(Throttled: slow down\); 13 of 14 sent"):
        _send(BatchSqs(refuse=2), "queue", ["s"] * 14, lambda index: None)


@pytest.mark.parametrize("command", ["send-impressions", "replay"])
def test_impressions_the_function_would_dead_letter_are_refused_before_anything_is_sent(
    cli: Cli, stack: Stack, tmp_path: Path, command: str
) -> None:
    no_treatment = {k: v for k, v in webhook_impression(1, "Production").items() if k != "treatment"}
    jsonl = tmp_path / "impressions.jsonl"
    jsonl.write_text(f"{json.dumps(webhook_impression(0, 'Production'))}\n{json.dumps(no_treatment)}\n")

    result = cli(command, str(jsonl))
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: 1 impression(s) the impressions function would dead-letter, the first at {jsonl}:2: "
        "invalid_impression: treatment: Field required\n"
    )
    assert drain(stack.queues["ImpressionsQueue"]) == []


def test_replay_names_the_first_refused_impression_in_file_order_those_without_an_environment_first(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    def no_treatment(n: int, environment: str) -> dict[str, Any]:
        return {k: v for k, v in webhook_impression(n, environment).items() if k != "treatment"}

    # Regrouped by environment, the Staging envelope holding line 3 goes before the Production one.
    lines = [webhook_impression(0, "Staging"), no_treatment(1, "Production"), no_treatment(2, "Staging")]
    jsonl = tmp_path / "impressions.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = cli("replay", str(jsonl))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: 2 impression(s) the impressions function would dead-letter, the first at {jsonl}:2: "
    ), result.stderr

    jsonl.write_text("\n".join(json.dumps(line) for line in [*lines, without_environment(lines[0])]) + "\n")
    result = cli("replay", str(jsonl))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: no environment on 1 impression(s), the first at {jsonl}:4: ")
    assert drain(stack.queues["ImpressionsQueue"]) == []


def test_an_impression_too_large_for_one_sqs_message_is_refused_by_both_commands(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    big = {**webhook_impression(0, "Production"), "label": "x" * MAX_MESSAGE_BYTES}
    size = len(json.dumps(big, separators=(",", ":")))
    backfill = tmp_path / "big.json"
    backfill.write_text(json.dumps(big))

    sent = cli("send-impressions", str(backfill))
    assert sent.exit_code == 1
    assert (
        sent.stderr.strip()
        == f"error: {backfill} item 1: {size} bytes, over SQS's 256 KiB message limit; use replay"
    )
    replayed = cli("replay", str(backfill))
    assert replayed.exit_code == 1
    assert replayed.stderr.strip() == f"error: an impression of {size} bytes does not fit in an SQS message"
    assert drain(stack.queues["ImpressionsQueue"]) == []


def test_an_envelope_the_function_would_dead_letter_whole_is_refused_before_anything_is_sent(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    envelope = {
        "environmentName": {"name": "Production"},
        "impressions": [webhook_impression(0, "Production")],
    }
    jsonl = tmp_path / "impressions.jsonl"
    jsonl.write_text(json.dumps(webhook_impression(1, "Production")) + "\n" + json.dumps(envelope) + "\n")

    result = cli("send-impressions", str(jsonl))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: 1 impression(s) the impressions function would dead-letter, "
        f"the first at {jsonl}:2: invalid_body: "
    ), result.stderr
    assert drain(stack.queues["ImpressionsQueue"]) == []
