"""FME's impressions webhook → POST /impressions/{token} → the impressions queue → Segment.

Through the real handlers, with HTTP API v2 events as API Gateway builds them for FME's gzipped
posts, against moto."""

from __future__ import annotations

import base64
import contextlib
import copy
import gzip
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from shared.outbound import webhook_relay
from shared.sqs_batches import MAX_MESSAGE_BYTES
from tests.conftest import load_event, published_metrics, put_config, put_secret
from tests.integration import sqs_events
from tests.integration.policy_support import RawCall, authorised_as, statements, unauthorised, unused

TOKEN = "imp-7c1e94d2a0b35f68"
WRITE_KEY = "wk-webhook"


@pytest.fixture
def relay(stack: Stack, function_env: Callable[[str], dict[str, str]]) -> Stack:
    function_env("ImpressionsWebhookFunction")
    put_secret("impressions-webhook", TOKEN)
    return stack


def api_event(body: bytes, token: str = TOKEN, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The event an HTTP API hands the function for a post of FME's webhook: its gzipped body is
    binary, so base64-encoded."""
    event = copy.deepcopy(load_event("apigw_http_segment_webhook.json"))
    path = f"/impressions/{token}"
    event.update(
        routeKey="POST /impressions/{token}",
        rawPath=path,
        pathParameters={"token": token},
        body=base64.b64encode(body).decode(),
        isBase64Encoded=True,
        headers={
            "content-type": "application/json",
            "content-encoding": "gzip",
            "user-agent": "Apache-HttpClient/4.5.13 (Java/11.0.20)",
            **(headers or {}),
        },
    )
    event["requestContext"].update(routeKey=event["routeKey"])
    event["requestContext"]["http"].update(path=path)
    return event


def post(event: dict[str, Any], lambda_context: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    from functions.impressions_webhook import app

    response = app.lambda_handler(event, lambda_context)
    return response["statusCode"], json.loads(response["body"]), response["headers"]


def queued(stack: Stack) -> list[Any]:
    event = sqs_events.receive_event(
        stack.queues["ImpressionsQueue"], stack.queue_arns["ImpressionsQueue"], 100
    )
    return [json.loads(record["body"]) for record in event["Records"]]


@contextlib.contextmanager
def on_sends(**handlers: Callable[..., Any]) -> Iterator[None]:
    """botocore handlers on the functions' SQS client's SendMessageBatch calls while the block runs,
    by event (``before_call=…`` for ``before-call``)."""
    from shared import aws

    events = aws.client("sqs").meta.events
    named = [
        (f"{event.replace('_', '-')}.sqs.SendMessageBatch", handler) for event, handler in handlers.items()
    ]
    for name, handler in named:
        events.register(name, handler)
    try:
        yield
    finally:
        for name, handler in named:
            events.unregister(name, handler)


def webhook_impressions(count: int) -> list[dict[str, Any]]:
    [template, *_] = load_event("impressions_webhook.json")
    return [{**template, "key": f"user-{i}", "time": template["time"] + i} for i in range(count)]


@pytest.fixture
def sink() -> Iterator[SegmentSink]:
    with SegmentSink(write_keys={WRITE_KEY}) as server:
        yield server


def test_fmes_gzipped_post_reaches_segment_through_the_queue(
    relay: Stack,
    function_env: Callable[[str], dict[str, str]],
    sink: SegmentSink,
    lambda_context: Any,
) -> None:
    posted = load_event("impressions_webhook.json")

    status, body, _ = post(api_event(gzip.compress(json.dumps(posted).encode())), lambda_context)

    assert (status, body) == (
        200,
        {"received": len(posted), "queued": len(posted), "messages": 1, "tooLarge": 0, "refused": 0},
    )
    [message] = queued(relay)
    assert message == posted  # the array as FME posted it, for the impressions function

    from functions.impressions import app

    function_env("ImpressionsFunction")
    put_config(
        "outbound/production",
        {
            "environments": ["Production"],
            "identities": {"user": "userId", "anonymous": "anonymousId"},
            "endpoint": sink.endpoint,
        },
    )
    put_secret("outbound/production", WRITE_KEY)
    sqs_event = sqs_events.event(json.dumps(message))
    assert app.lambda_handler(sqs_event, lambda_context) == {"batchItemFailures": []}
    assert [(m["event"], m["properties"]["split"]) for m in sink.messages] == [
        ("get_treatment", i["split"]) for i in posted
    ]


@pytest.mark.parametrize(
    "encoding",
    ["gzip, base64", "gzip without the header", "plain text", "plain, base64"],
)
def test_a_body_is_read_however_it_arrives(relay: Stack, lambda_context: Any, encoding: str) -> None:
    posted = json.dumps(webhook_impressions(3)).encode()
    event = api_event(gzip.compress(posted))
    if encoding == "gzip without the header":
        del event["headers"]["content-encoding"]
    elif encoding == "plain text":  # a relay in between inflated it
        event.update(body=posted.decode(), isBase64Encoded=False)
        del event["headers"]["content-encoding"]
    elif encoding == "plain, base64":
        event.update(body=base64.b64encode(posted).decode())
        del event["headers"]["content-encoding"]

    status, body, _ = post(event, lambda_context)

    assert (status, body["queued"]) == (200, 3)
    assert queued(relay) == [json.loads(posted)]


@pytest.mark.parametrize("token", ["wrong-token", "", TOKEN + "x", TOKEN.upper()])
def test_a_post_without_the_token_is_refused_and_queues_nothing(
    relay: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str], token: str
) -> None:
    event = api_event(gzip.compress(json.dumps(webhook_impressions(2)).encode()), token=token)
    if not token:
        event["pathParameters"] = {}

    status, body, _ = post(event, lambda_context)

    assert (status, body) == (401, {"error": "unauthorized"})
    assert queued(relay) == []
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert metrics["ImpressionsWebhookUnauthorized"] == [1.0]


def test_no_secret_set_up_lets_nobody_in(
    stack: Stack, function_env: Callable[[str], dict[str, str]], lambda_context: Any
) -> None:
    function_env("ImpressionsWebhookFunction")
    status, _, _ = post(api_event(gzip.compress(b"[]"), token=TOKEN), lambda_context)
    assert status == 401


def test_the_token_is_compared_with_compare_digest(
    relay: Stack, lambda_context: Any, compared_digests: list[tuple[bytes, bytes]]
) -> None:
    assert post(api_event(gzip.compress(b"[]")), lambda_context)[0] == 200
    assert compared_digests == [(TOKEN.encode(), TOKEN.encode())]


def test_the_previous_token_works_while_a_rotation_goes_on(relay: Stack, lambda_context: Any) -> None:
    put_secret("impressions-webhook", "imp-new-token")
    for token in ("imp-new-token", TOKEN):
        status, _, _ = post(api_event(gzip.compress(b"[]"), token=token), lambda_context)
        assert status == 200, token


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (gzip.compress(b"{not json", mtime=0), "the request body is not JSON"),
        (
            gzip.compress(b'"impressions"', mtime=0),
            "the request body must be a JSON array of impressions, or an object",
        ),
        (gzip.compress(b"42", mtime=0), "the request body must be a JSON array of impressions, or an object"),
        (gzip.compress(b"\xff\xfe[]", mtime=0), "the request body is not JSON (not UTF-8)"),
        (gzip.compress(b'[{"key": "u\xff"}]', mtime=0), "the request body is not JSON (not UTF-8)"),
        (gzip.compress(b'[{"key": "u\xed\xa0\x80"}]', mtime=0), "the request body is not JSON (not UTF-8)"),
        (gzip.compress(b'[{"key": "u", "time": NaN}]', mtime=0), "the request body is not JSON"),
        (b"\x1f\x8b\x08\x00garbage", "the request body is not valid gzip"),
    ],
)
def test_a_body_that_is_not_impressions_is_a_400(
    relay: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str], body: bytes, error: str
) -> None:
    status, answer, _ = post(api_event(body), lambda_context)

    assert (status, answer) == (400, {"error": error})
    assert queued(relay) == []
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert metrics["ImpressionsWebhookBadRequests"] == [1.0]


def test_invalid_base64_is_a_400(relay: Stack, lambda_context: Any) -> None:
    event = api_event(b"")
    event["body"] = "not base64 at all!"
    status, answer, _ = post(event, lambda_context)
    assert (status, answer) == (400, {"error": "the request body is not valid base64"})


def test_a_body_inflating_past_the_limit_is_a_413(
    relay: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(webhook_relay, "MAX_INFLATED_BYTES", 1000)
    status, answer, _ = post(api_event(gzip.compress(b"[" + b" " * 2000 + b"]")), lambda_context)
    assert status == 413
    assert "1000" in answer["error"]
    assert queued(relay) == []
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert metrics["ImpressionsWebhookBadRequests"] == [1.0]


def test_a_large_post_is_cut_into_messages_sqs_takes_and_none_is_lost(
    relay: Stack, lambda_context: Any
) -> None:
    impressions = webhook_impressions(3000)  # about 1.2 MB: five messages or more

    status, body, _ = post(api_event(gzip.compress(json.dumps(impressions).encode())), lambda_context)

    assert status == 200
    messages = queued(relay)
    assert body == {"received": 3000, "queued": 3000, "messages": len(messages), "tooLarge": 0, "refused": 0}
    assert len(messages) >= 5
    assert all(len(json.dumps(m, separators=(",", ":"))) <= MAX_MESSAGE_BYTES for m in messages)
    received = [i for m in messages for i in m]
    assert sorted(i["key"] for i in received) == sorted(i["key"] for i in impressions)


def test_an_envelope_is_cut_into_envelopes_that_keep_its_fields(relay: Stack, lambda_context: Any) -> None:
    listener_items = [
        {
            "impression": {"keyName": f"u-{i}", "feature": "f", "treatment": "on", "time": i},
            "sdkLanguageVersion": "go-6.1.0",
        }
        for i in range(4000)
    ]
    envelope = {"environmentName": "Production", "trafficType": "user", "impressions": listener_items}

    status, body, _ = post(api_event(gzip.compress(json.dumps(envelope).encode())), lambda_context)

    assert (status, body["queued"]) == (200, 4000)
    messages = queued(relay)
    assert len(messages) == body["messages"] > 1
    assert {(m["environmentName"], m["trafficType"]) for m in messages} == {("Production", "user")}
    received = [i for m in messages for i in m["impressions"]]
    assert sorted(received, key=lambda i: i["impression"]["time"]) == listener_items


def test_an_impression_no_queue_message_can_hold_is_counted_and_the_rest_queued(
    relay: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    impressions = webhook_impressions(3)
    impressions[1]["properties"] = json.dumps({"blob": "x" * MAX_MESSAGE_BYTES})

    status, body, _ = post(api_event(gzip.compress(json.dumps(impressions).encode())), lambda_context)

    assert (status, body) == (200, {"received": 3, "queued": 2, "messages": 1, "tooLarge": 1, "refused": 0})
    assert queued(relay) == [[impressions[0], impressions[2]]]
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert metrics["ImpressionsWebhookTooLarge"] == [1.0]
    assert "impressions too large for a queue message, left out" in caplog.text


def test_one_impression_posted_alone_is_queued_as_it_is_and_counted_as_one(
    relay: Stack, lambda_context: Any
) -> None:
    [impression, *_] = load_event("impressions_webhook.json")

    status, body, _ = post(api_event(gzip.compress(json.dumps(impression).encode())), lambda_context)

    assert (status, body) == (200, {"received": 1, "queued": 1, "messages": 1, "tooLarge": 0, "refused": 0})
    assert queued(relay) == [impression]


def test_one_impression_posted_alone_that_no_message_can_hold_is_counted_as_left_out(
    relay: Stack, lambda_context: Any
) -> None:
    [impression, *_] = load_event("impressions_webhook.json")
    impression["properties"] = json.dumps({"blob": "x" * MAX_MESSAGE_BYTES})

    status, body, _ = post(api_event(gzip.compress(json.dumps(impression).encode())), lambda_context)

    assert (status, body) == (200, {"received": 1, "queued": 0, "messages": 0, "tooLarge": 1, "refused": 0})
    assert queued(relay) == []


def test_one_impression_posted_alone_that_sqs_refuses_for_good_is_counted_as_refused(
    relay: Stack, lambda_context: Any
) -> None:
    [impression, *_] = load_event("impressions_webhook.json")

    def refuse(params: dict[str, Any], **_: Any) -> None:
        params["Entries"][0]["DelaySeconds"] = 9999  # over SQS's 900: refused as the sender's fault

    with on_sends(before_parameter_build=refuse):
        status, body, _ = post(api_event(gzip.compress(json.dumps(impression).encode())), lambda_context)

    assert (status, body) == (200, {"received": 1, "queued": 0, "messages": 0, "tooLarge": 0, "refused": 1})
    assert queued(relay) == []


def test_an_empty_array_is_answered_and_queues_nothing(relay: Stack, lambda_context: Any) -> None:
    status, body, _ = post(api_event(gzip.compress(b"[]")), lambda_context)
    assert (status, body) == (200, {"received": 0, "queued": 0, "messages": 0, "tooLarge": 0, "refused": 0})
    assert queued(relay) == []


def test_a_queue_that_refuses_is_a_503_and_fmes_retry_queues_it(
    relay: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(webhook_relay.time, "sleep", lambda _: None)
    refused: list[int] = []

    def refuse(**_: Any) -> None:
        refused.append(1)
        raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "down"}}, "SendMessageBatch")

    posted = gzip.compress(json.dumps(webhook_impressions(2)).encode())
    with on_sends(before_call=refuse):
        status, body, headers = post(api_event(posted), lambda_context)

    assert (status, body, headers["Retry-After"]) == (
        503,
        {"error": "temporarily unavailable, retry later"},
        "5",
    )
    assert len(refused) == webhook_relay.SEND_ROUNDS
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert metrics["ImpressionsWebhookUnavailable"] == [1.0]

    status, _, _ = post(api_event(posted), lambda_context)  # FME sends it again
    assert status == 200
    assert len(queued(relay)) == 1


def test_entries_sqs_refuses_are_sent_again(relay: Stack, lambda_context: Any) -> None:
    calls: list[int] = []

    def fail_the_first_entry_once(parsed: dict[str, Any], **_: Any) -> None:
        calls.append(len(parsed.get("Successful", [])) + len(parsed.get("Failed", [])))
        if len(calls) == 1:
            first = parsed["Successful"].pop(0)
            parsed.setdefault("Failed", []).append(
                {"Id": first["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
            )

    with on_sends(after_call=fail_the_first_entry_once):
        status, body, _ = post(
            api_event(gzip.compress(json.dumps(webhook_impressions(2)).encode())), lambda_context
        )

    assert (status, body) == (200, {"received": 2, "queued": 2, "messages": 1, "tooLarge": 0, "refused": 0})
    assert len(calls) == 2
    # moto took the message the first time; SQS said it did not: sent again, a duplicate Segment drops.
    assert len(queued(relay)) == 2


def test_the_secret_unreadable_is_a_503(
    relay: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import config

    def unavailable(*_: Any, **__: Any) -> Any:
        raise config.ConfigUnavailable("Secrets Manager failing")

    monkeypatch.setattr(config, "get_secret", unavailable)
    status, _, headers = post(api_event(gzip.compress(b"[]")), lambda_context)
    assert (status, headers["Retry-After"]) == (503, "5")


def test_the_token_never_reaches_the_log(
    relay: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    post(api_event(gzip.compress(b"[]"), token="imp-guess"), lambda_context)
    big = webhook_impressions(2)
    big[0]["properties"] = "x" * MAX_MESSAGE_BYTES  # logged as left out
    post(api_event(gzip.compress(json.dumps(big).encode())), lambda_context)
    output = capsys.readouterr()
    logged = output.out + output.err + caplog.text
    assert "left out" in logged
    assert TOKEN not in logged
    assert "imp-guess" not in logged


def test_the_relay_makes_exactly_the_calls_its_policy_allows(
    relay: Stack, lambda_context: Any, calls: list[RawCall]
) -> None:
    assert (
        post(api_event(gzip.compress(json.dumps(webhook_impressions(2)).encode())), lambda_context)[0] == 200
    )
    assert post(api_event(gzip.compress(b"[]"), token="wrong"), lambda_context)[0] == 401
    used = authorised_as(calls)

    allowed = statements(relay, "ImpressionsWebhookFunction")
    assert unauthorised(used, allowed) == []
    # The secret's bare name only authorises asking for a secret that does not exist.
    bare_name = (
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:/fme-segment-bridge/dev/impressions-webhook"
    )
    assert unused(used, allowed) == [("secretsmanager:GetSecretValue", bare_name)]


def test_an_unexpected_error_is_a_json_500_that_fme_retries(
    relay: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(webhook_relay, "send", broken)
    status, body, _ = post(api_event(gzip.compress(b"[]")), lambda_context)
    assert (status, body) == (500, {"error": "internal error"})
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert metrics["ImpressionsWebhookErrors"] == [1.0]


def test_a_body_of_too_many_values_is_a_413_before_it_is_read(
    relay: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each item costs memory whatever its size: a post of millions of tiny ones would exhaust the
    function's, so the commas are counted first."""
    monkeypatch.setattr(webhook_relay, "MAX_COMMAS", 10)
    status, answer, _ = post(api_event(gzip.compress(b"[" + b",".join([b"0"] * 12) + b"]")), lambda_context)
    assert (status, answer) == (
        413,
        {"error": "the request body holds more than 10 values; send fewer per post"},
    )
    assert queued(relay) == []
    assert post(api_event(gzip.compress(b"[" + b",".join([b"{}"] * 11) + b"]")), lambda_context)[0] == 200


@pytest.mark.parametrize(("size", "status"), [(1000, 200), (1001, 413)])
def test_a_plain_body_over_the_limit_is_a_413(
    relay: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, size: int, status: int
) -> None:
    monkeypatch.setattr(webhook_relay, "MAX_INFLATED_BYTES", 1000)
    event = api_event(b"[" + b" " * (size - 2) + b"]")
    del event["headers"]["content-encoding"]
    assert post(event, lambda_context)[0] == status


def test_a_call_that_cannot_reach_sqs_is_sent_again(relay: Stack, lambda_context: Any) -> None:
    from botocore.exceptions import EndpointConnectionError

    failures = [EndpointConnectionError(endpoint_url="https://sqs.us-east-1.amazonaws.com")]

    def unreachable_once(**_: Any) -> None:
        if failures:
            raise failures.pop()

    with on_sends(before_call=unreachable_once):
        status, body, _ = post(
            api_event(gzip.compress(json.dumps(webhook_impressions(3)).encode())), lambda_context
        )
    assert (status, body["queued"], failures) == (200, 3, [])
    assert [len(message) for message in queued(relay)] == [3]


def test_a_body_inflated_on_the_way_with_its_header_kept_is_read(relay: Stack, lambda_context: Any) -> None:
    posted = json.dumps(webhook_impressions(2)).encode()
    status, body, _ = post(api_event(posted, headers={"content-encoding": "gzip"}), lambda_context)
    assert (status, body["queued"]) == (200, 2)


def test_no_backoff_runs_into_the_time_kept_to_answer(relay: Stack) -> None:
    """A round that failed is not followed by a pause when what is left is the answer's margin."""

    def failing(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "InternalError", "Message": "try again"}}, "SendMessageBatch")

    left = iter([10.0])  # for the first round's calls; then only the margin is left
    slept: list[float] = []
    with on_sends(before_call=failing):
        sent = webhook_relay.send(
            relay.queues["ImpressionsQueue"],
            ["[]", "[]"],
            lambda: next(left, webhook_relay.DEADLINE_MARGIN_S),
            sleep=slept.append,
        )
    assert (sent.unsent, slept) == (2, [])


def test_entries_of_a_call_are_sent_again_or_refused_each_for_its_own_message(relay: Stack) -> None:
    """Twelve messages go in two calls of ten and two: in the second, the first message is refused
    for good and the second fails once; in the first, the fourth fails once."""
    bodies = [json.dumps([impression]) for impression in webhook_impressions(12)]
    sent_bodies: list[str] = []
    failed_once: set[str] = set()

    def build(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["entries"] = params["Entries"]
        sent_bodies.extend(entry["MessageBody"] for entry in params["Entries"])
        for entry in params["Entries"]:
            if entry["MessageBody"] == bodies[10]:
                entry["DelaySeconds"] = 9999  # over SQS's 900: refused as the sender's fault

    def fail_once(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        by_id = {entry["Id"]: entry["MessageBody"] for entry in context["entries"]}
        for entry in list(parsed.get("Successful", [])):
            body = by_id[entry["Id"]]
            if body in (bodies[3], bodies[11]) and body not in failed_once:
                failed_once.add(body)
                parsed["Successful"].remove(entry)
                parsed.setdefault("Failed", []).append(
                    {"Id": entry["Id"], "SenderFault": False, "Code": "InternalError", "Message": "again"}
                )

    slept: list[float] = []
    with on_sends(before_parameter_build=build, after_call=fail_once):
        sent = webhook_relay.send(relay.queues["ImpressionsQueue"], bodies, lambda: 30.0, sleep=slept.append)

    assert (sent.unsent, sent.refused) == (0, {10: "InvalidParameterValue"})
    assert sorted(sent_bodies) == sorted([*bodies, bodies[3], bodies[11]])
    assert len(slept) == 1


def test_rounds_that_fail_are_separated_by_growing_pauses_and_a_round_that_succeeds_by_none(
    relay: Stack,
) -> None:
    def failing(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "InternalError", "Message": "try again"}}, "SendMessageBatch")

    slept: list[float] = []
    with on_sends(before_call=failing):
        sent = webhook_relay.send(relay.queues["ImpressionsQueue"], ["[]"], lambda: 30.0, sleep=slept.append)
    assert sent.unsent == 1
    # A pause between rounds, none after the last: the answer is not held up.
    assert len(slept) == webhook_relay.SEND_ROUNDS - 1
    assert all(0 <= pause <= 0.1 * 2**round_ for round_, pause in enumerate(slept))

    slept.clear()
    sent = webhook_relay.send(relay.queues["ImpressionsQueue"], ["[]"], lambda: 30.0, sleep=slept.append)
    assert (sent.unsent, slept) == (0, [])


def test_calls_are_waited_for_only_until_the_time_kept_to_answer(relay: Stack) -> None:
    import threading
    import time

    release = threading.Event()

    def hang(**_: Any) -> None:
        release.wait(timeout=10)

    started = time.monotonic()
    with on_sends(before_call=hang):
        sent = webhook_relay.send(
            relay.queues["ImpressionsQueue"], ["[]"], lambda: webhook_relay.DEADLINE_MARGIN_S
        )
    elapsed = time.monotonic() - started
    release.set()
    assert sent.unsent == 1
    # No time left beyond what is kept to answer: given up on at once, where waiting out those 1.5 s
    # would take the function's answer past its deadline. Bounded loosely for a loaded machine.
    assert elapsed < 1.0
    # The call given up on still ends: waited for here, not in the next test.
    deadline = time.monotonic() + 30
    while not queued(relay) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("refused", ["user-0", "user-599"], ids=["the first message", "the last message"])
def test_messages_sqs_refuses_for_good_are_counted_not_sent_again(
    relay: Stack,
    lambda_context: Any,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    refused: str,
) -> None:
    calls: list[int] = []

    def remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["entries"] = params["Entries"]

    def refuse_one(context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        entries = context["entries"]
        calls.append(len(entries))
        if not any(f'"key": "{refused}"' in e["MessageBody"] for e in entries):
            return None  # sent
        failed = [
            {"Id": e["Id"], "SenderFault": True, "Code": "InvalidMessageContents", "Message": "no"}
            for e in entries
        ]
        return AWSResponse("https://sqs", 200, {}, None), {"Successful": [], "Failed": failed}

    impressions = webhook_impressions(600)  # two messages of 256 KiB at most, one refused
    for impression in impressions:
        impression["properties"] = json.dumps({"note": "x" * 400})
    with on_sends(before_parameter_build=remember, before_call=refuse_one):
        status, body, _ = post(api_event(gzip.compress(json.dumps(impressions).encode())), lambda_context)

    assert status == 200  # sending the post again would not change SQS's answer
    assert calls == [1, 1]  # one call per message of about 256 KiB, and none again
    assert body["messages"] == 1
    on_the_queue = sum(len(message) for message in queued(relay))  # counted in impressions
    assert 0 < on_the_queue < 600
    assert (body["queued"], body["refused"]) == (on_the_queue, 600 - on_the_queue)
    (metrics,) = published_metrics(capsys.readouterr().out)
    assert metrics["ImpressionsWebhookReceived"] == [600.0]
    assert metrics["ImpressionsWebhookQueued"] == [float(on_the_queue)]
    assert metrics["ImpressionsWebhookRefused"] == [float(600 - on_the_queue)]
    [logged] = [
        r for r in caplog.records if r.getMessage() == "the impressions queue refused messages for good"
    ]
    assert logged.reasons == ["InvalidMessageContents"]  # type: ignore[attr-defined]


def test_calls_unanswered_near_the_deadline_are_given_up_and_the_answer_is_a_503(
    relay: Stack, lambda_context: Any
) -> None:
    import threading
    import time

    release = threading.Event()

    def hang(**_: Any) -> None:
        release.wait(timeout=10)

    lambda_context.remaining_ms = 2_000  # Lambda's clock, in milliseconds
    started = time.monotonic()
    with on_sends(before_call=hang):
        status, _, headers = post(
            api_event(gzip.compress(json.dumps(webhook_impressions(2)).encode())), lambda_context
        )
    elapsed = time.monotonic() - started
    assert (status, headers["Retry-After"]) == (503, "5")
    # About 0.5 s for the calls (the 2 s left less the 1.5 s kept to answer), not the 10 s they hang:
    # bounded loosely, since a loaded machine may take a second or more to run the rest.
    assert elapsed < 5

    # The call given up on still ends, and its message is queued (FME's retry queues it again; the
    # impressions' messageIds make Segment keep one): it is waited for here, not in the next test.
    release.set()
    deadline = time.monotonic() + 30
    messages: list[Any] = []
    while not messages and time.monotonic() < deadline:
        messages = queued(relay)
        time.sleep(0.05)
    assert [len(message) for message in messages] == [2]


def test_no_message_and_no_call_is_over_sqss_256_kib_in_utf_8(relay: Stack, lambda_context: Any) -> None:
    sent: list[list[int]] = []

    def sizes(params: dict[str, Any], **_: Any) -> None:
        sent.append([len(entry["MessageBody"].encode()) for entry in params["Entries"]])

    # Five messages of nearly 256 KiB and a sixth of 109 KB, which counted in characters (76,121)
    # would join the fifth (182,689) in one call of 371 KB.
    impressions = webhook_impressions(1430)
    for impression in impressions:
        impression["properties"] = json.dumps({"note": "é" * 300}, ensure_ascii=False)  # 2 bytes each
    body = json.dumps(impressions, ensure_ascii=False).encode()
    with on_sends(provide_client_params=sizes):
        assert post(api_event(gzip.compress(body)), lambda_context)[0] == 200
    assert len(sent) > 1
    assert max(sum(call) for call in sent) <= 256 * 1024
    assert max(size for call in sent for size in call) <= 256 * 1024
    assert sum(len(call) for call in sent) == len(queued(relay))
