"""Body shapes, bad input and limits through the real handler: clear errors, nothing lost, never a 500."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from tests.conftest import published_metrics
from tests.integration.ingest_support import CONNECTION, SECRET, Webhook, segment_message


def test_every_segment_spec_example_in_one_array(webhook: Webhook) -> None:
    names = [
        "track",
        "identify",
        "page",
        "screen",
        "group",
        "alias",
        "group_split",
        "track_event_level_group",
    ]
    messages = [segment_message(name, messageId=f"m-{i}") for i, name in enumerate(names)]
    answer = webhook.post(messages)
    assert answer.status == 200
    assert answer.body["received"] == 8
    # track, identify, page, screen, group with traits.split, event-level groups
    assert answer.body["stored"] == 6
    assert answer.body["ignored"] == 2  # group without traits.split, alias
    assert answer.body["dropped"] == 0
    assert webhook.stored_events("user", "97980cfea0067")[0]["eventTypeId"] in {
        "view_Home_page",
        "view_Home_screen",
    }
    assert webhook.identity("account", "4d3405a0-9ca5-11e5-9706-16a11fb02dec") is not None


def test_segment_spec_examples_sharing_one_message_id_are_each_stored(webhook: Webhook) -> None:
    """Segment's page and screen examples (and its common-fields track example) carry the same
    messageId, time and user: they are different messages all the same. A redelivery of each is
    still a duplicate."""
    shared_id = {"messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db", "timestamp": "2015-02-23T22:28:55.111Z"}
    track = segment_message("track", **shared_id, userId="97980cfea0067", event="Registered")
    page, screen = segment_message("page"), segment_message("screen")
    assert {page["messageId"], screen["messageId"]} == {shared_id["messageId"]}

    first = webhook.post(page)
    rest = webhook.post([screen, track])
    again = webhook.post([page, screen, track])
    assert (first.body["stored"], rest.body["stored"], rest.body["duplicate"]) == (1, 2, 0)
    assert (again.body["stored"], again.body["duplicate"]) == (0, 3)
    assert sorted(e["eventTypeId"] for e in webhook.stored_events("user", "97980cfea0067")) == [
        "Registered",
        "view_Home_page",
        "view_Home_screen",
    ]


def test_untimed_messages_sharing_one_message_id_are_each_stored_and_each_found_again(
    webhook: Webhook,
) -> None:
    untimed = {"timestamp": None, "originalTimestamp": None, "receivedAt": None, "sentAt": None}
    page = segment_message("page", anonymousId=None, **untimed)
    screen = segment_message("screen", anonymousId=None, **untimed)
    assert page["messageId"] == screen["messageId"]
    first = webhook.post([page, screen])
    again = webhook.post([screen, page])
    assert (first.body["stored"], first.body["duplicate"]) == (2, 0)
    assert (again.body["stored"], again.body["duplicate"]) == (0, 2)
    assert len(webhook.stored_events("user", "97980cfea0067")) == 2


def test_batch_envelope_body(webhook: Webhook) -> None:
    answer = webhook.post({"batch": [segment_message("track")], "context": {}})
    assert answer.status == 200
    assert answer.body["stored"] == 1


def test_base64_encoded_body(webhook: Webhook) -> None:
    answer = webhook.post(segment_message("track"), base64_encoded=True)
    assert answer.status == 200
    assert answer.body["events"] == 2


def test_invalid_base64_is_a_400(webhook: Webhook) -> None:
    event = webhook.event(segment_message("track"))
    event["isBase64Encoded"] = True
    event["body"] = "%%%not-base64%%%"
    answer = webhook.invoke(event)
    assert answer.status == 400
    assert answer.body["error"] == "invalid_base64"


@pytest.mark.parametrize(
    ("encoding", "error"),
    [({"isBase64Encoded": True, "body": "%%%"}, "invalid_base64"), ({"body": "not gzip"}, "invalid_gzip")],
)
def test_an_unreadable_body_is_a_400_only_for_a_request_with_the_secret_in_its_headers(
    webhook: Webhook, encoding: dict[str, Any], error: str
) -> None:
    """Without credentials a request is answered 401, whatever its body (no oracle); a signature,
    computed over a body that cannot be read, cannot be checked."""
    for headers, status in [
        ({"authorization": f"Bearer {SECRET}"}, 400),
        ({}, 401),
        ({"authorization": "Bearer wrong"}, 401),
        ({"x-signature": "0" * 40}, 401),
    ]:
        event = webhook.event(segment_message("track"), headers={**headers, "content-encoding": "gzip"})
        event.update(encoding)
        answer = webhook.invoke(event)
        assert answer.status == status, (headers, answer)
        if status == 400:
            assert answer.body["error"] == error


def test_a_gzip_body_without_its_content_encoding_is_a_400_that_says_so(webhook: Webhook) -> None:
    compressed = gzip.compress(json.dumps(segment_message("track")).encode())
    answer = webhook.post(compressed, base64_encoded=True)  # binary: API Gateway encodes it
    assert (answer.status, answer.body["error"]) == (400, "invalid_json")
    assert answer.body["message"] == (
        "the request body is gzip without Content-Encoding: gzip; send that header"
    )


def test_bad_bodies_are_400_with_a_json_error(webhook: Webhook) -> None:
    cases = [
        (b"", "empty_body"),
        (b"{not json", "invalid_json"),
        (b'"just a string"', "invalid_body_type"),
        (b"[]", "empty_batch"),
        (b'{"batch": "nope"}', "invalid_batch"),
    ]
    for body, error in cases:
        answer = webhook.post(body)
        assert answer.status == 400, body
        assert answer.body["error"] == error
        assert answer.body["message"]
        assert "Traceback" not in json.dumps(answer.body)


def test_body_over_the_size_limit_is_413_naming_the_limit(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    big = segment_message("track", properties={"blob": "x" * 4096})
    answer = webhook.post(big)
    assert answer.status == 413
    assert answer.body["limit"] == 2048
    assert "2048" in answer.body["message"]
    assert webhook.count_events() == 0
    [metrics] = published_metrics(capsys.readouterr().out)
    assert metrics["PayloadTooLarge"] == [1.0]
    assert "BadRequests" not in metrics  # a 400 is the sender's body; a 413 its batch settings


@pytest.mark.parametrize(
    ("headers", "connection"),
    [({}, CONNECTION), ({"authorization": "Bearer wrong"}, CONNECTION), (None, "unknown")],
    ids=["none", "wrong", "unknown-connection"],
)
def test_a_body_over_the_size_limit_is_413_whatever_its_credentials(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch, headers: dict[str, str] | None, connection: str
) -> None:
    """Refused before its credentials are read: the 413 tells Segment's operator what to change."""
    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    big = segment_message("track", properties={"blob": "x" * 4096})
    answer = webhook.post(big, headers=headers, connection=connection)
    assert (answer.status, answer.body["limit"]) == (413, 2048)


def test_more_than_4000_messages_is_413_naming_that_limit(webhook: Webhook) -> None:
    messages = [segment_message("track", messageId=f"m-{n}") for n in range(4_001)]
    answer = webhook.post(messages)
    assert answer.status == 413
    assert (answer.body["error"], answer.body["limit"]) == ("payload_too_large", 4_000)
    assert webhook.count_events() == 0


def test_an_unexpected_error_is_a_503_without_a_stack_trace(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a 500: Segment retries a 503, and storing is idempotent."""
    from shared.inbound import ingest

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ingest, "map_messages", broken)
    answer = webhook.post(segment_message("track"))
    assert answer.status == 503
    assert "Retry-After" in {k.title() for k in answer.headers}
    assert "Traceback" not in json.dumps(answer.body)
    assert "a bug" not in json.dumps(answer.body)


@pytest.mark.parametrize(("size", "status"), [(2048, 200), (2049, 413)])
def test_a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch, size: int, status: int
) -> None:
    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    body = json.dumps(segment_message("track", properties={"blob": ""})).encode()
    padded = body.replace(b'"blob": ""', b'"blob": "' + b"x" * (size - len(body)) + b'"')
    assert len(padded) == size
    assert webhook.post(padded).status == status


def test_one_bad_message_never_loses_the_good_ones(webhook: Webhook) -> None:
    messages: list[Any] = [
        segment_message("track", messageId="good-1"),
        "not a message",
        segment_message("track", messageId="bad-event", event="no/slashes/allowed"),
        {"type": "track", "event": "x", "userId": "u", "properties": ["not", "an", "object"]},
        segment_message("track", messageId="good-2", event="Order Completed"),
        segment_message("track", messageId="no-event", event=None),
    ]
    answer = webhook.post(messages)
    assert answer.status == 200
    assert answer.body["stored"] == 2
    assert answer.body["dropped"] == 4
    assert sorted((d["index"], d["reason"]) for d in answer.body["drops"]) == [
        (1, "not_an_object"),
        (2, "invalid_event_type_id"),
        (3, "invalid_message"),
        (5, "missing_event_type_id"),
    ]
    assert {e["messageId"] for e in webhook.stored_events("user", "AiUGstSDIg")} == {"good-1", "good-2"}


def test_empty_arrays_for_properties_traits_and_context_are_empty_objects(webhook: Webhook) -> None:
    # analytics-php (json_encode) writes an empty array where the object is empty.
    messages = [
        segment_message("track", messageId="php-track", properties=[], context=[]),
        segment_message("identify", messageId="php-identify", traits=[]),
    ]
    answer = webhook.post(messages)
    assert answer.status == 200
    assert (answer.body["stored"], answer.body["dropped"]) == (2, 0)
    assert {e["messageId"] for e in webhook.stored_events("user", "AiUGstSDIg")} == {"php-track"}


def test_lone_surrogates_become_replacement_characters_and_lose_nothing(webhook: Webhook) -> None:
    # Valid JSON: a library that cut a string inside an emoji leaves half of a surrogate pair.
    good = json.dumps(segment_message("track", messageId="good"))
    cut = json.dumps(segment_message("track", messageId="cut", properties={"title": "PLACEHOLDER"}))
    cut = cut.replace("PLACEHOLDER", "sale \\ud83d")
    pair = json.dumps(segment_message("track", messageId="pair", properties={"title": "sale \U0001f600"}))
    answer = webhook.post(f"[{good},{cut},{pair}]".encode())
    assert answer.status == 200, answer.body
    assert (answer.body["stored"], answer.body["dropped"]) == (3, 0)
    titles = {
        e["messageId"]: e["properties"].get("title") for e in webhook.stored_events("user", "AiUGstSDIg")
    }
    assert titles["cut"] == "sale \ufffd"
    assert titles["pair"] == "sale \U0001f600"  # an escaped pair is one character, kept as it is
    assert "good" in titles


def test_a_lone_low_surrogate_escaped_in_capitals_in_a_name_or_a_value_loses_nothing(
    webhook: Webhook,
) -> None:
    # Jackson and other Java encoders write escapes in capitals; a string cut at the start of an
    # emoji keeps its second half (a low surrogate), in a property's name as well as in its value.
    cut = json.dumps(segment_message("track", messageId="cut", properties={"NAME": "VALUE"}))
    cut = cut.replace('"NAME"', '"size \\uDE00"').replace('"VALUE"', '"\\uDC00 sale"')
    plain = json.dumps(segment_message("track", messageId="plain"))
    answer = webhook.post(f"[{cut},{plain}]".encode())
    assert answer.status == 200, answer.body
    assert (answer.body["stored"], answer.body["dropped"]) == (2, 0)
    properties = {e["messageId"]: e["properties"] for e in webhook.stored_events("user", "AiUGstSDIg")}
    assert properties["cut"]["size \ufffd"] == "\ufffd sale"
    assert "plain" in properties


def test_a_lone_surrogate_beside_deep_nesting_loses_nothing(webhook: Webhook) -> None:
    depth = 1500  # json.loads reads it; Python would not recurse that deep
    deep: Any = "\ud800"
    for _ in range(depth):
        deep = [deep]
    message = segment_message("track", messageId="deep", properties={"nested": "PLACEHOLDER"})
    body = json.dumps(message).replace('"PLACEHOLDER"', json.dumps(deep))
    answer = webhook.post(f"[{body},{json.dumps(segment_message('track', messageId='plain'))}]".encode())
    assert answer.status == 200, answer.body
    assert answer.body["stored"] == 2
    events = webhook.stored_events("user", "AiUGstSDIg")
    nested = {e["messageId"]: e["properties"].get("nested") for e in events}
    assert nested["deep"].endswith('"\ufffd"' + "]" * depth)  # a nested value is stored as its JSON


def test_an_integer_too_long_for_python_loses_nothing(webhook: Webhook) -> None:
    # Valid JSON; Python converts at most 4,300 digits, and json.loads refused the whole body.
    digits = "9" * 5000
    big = json.dumps(segment_message("track", messageId="big", properties={"n": "PLACEHOLDER", "revenue": 1}))
    big = big.replace('"PLACEHOLDER"', digits)
    plain = json.dumps(segment_message("track", messageId="plain"))
    answer = webhook.post(f"[{big},{plain}]".encode())
    assert answer.status == 200, answer.body
    assert (answer.body["stored"], answer.body["dropped"]) == (2, 0)
    stored = {e["messageId"]: e for e in webhook.stored_events("user", "AiUGstSDIg")}
    assert stored["big"]["properties"]["n"] == digits  # as text, like any number DynamoDB cannot hold
    assert stored["big"]["properties"]["revenue"] == 1
    assert "plain" in stored


def test_a_timestamp_integer_past_any_float_falls_through_and_loses_nothing(webhook: Webhook) -> None:
    huge = "1" + "0" * 400
    bad = json.dumps(segment_message("track", messageId="huge", timestamp="T", originalTimestamp="O"))
    bad = bad.replace('"T"', huge).replace('"O"', huge)
    plain = json.dumps(segment_message("track", messageId="plain"))
    answer = webhook.post(f"[{bad},{plain}]".encode())
    assert answer.status == 200, answer.body
    assert (answer.body["stored"], answer.body["dropped"]) == (2, 0)
    stored = {e["messageId"]: e for e in webhook.stored_events("user", "AiUGstSDIg")}
    assert stored["huge"]["timestamp"] == 1449947461266  # receivedAt, the next in line
    assert "plain" in stored


def test_drops_are_metrics_with_their_reason(webhook: Webhook, capsys: pytest.CaptureFixture[str]) -> None:
    webhook.post([segment_message("track", event=None), segment_message("track", userId="u" * 300)])
    metric_lines = published_metrics(capsys.readouterr().out)
    dropped = {line["reason"]: line["MessagesDropped"] for line in metric_lines if "MessagesDropped" in line}
    assert dropped == {"missing_event_type_id": [1.0], "invalid_key": [1.0]}


def test_drops_publish_no_metric_where_metrics_are_disabled(
    webhook: Webhook, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the local stack runs the functions: no CloudWatch to read them, no EMF lines on its console."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    answer = webhook.post([segment_message("track", event=None)])
    assert answer.body["dropped"] == 1
    assert published_metrics(capsys.readouterr().out) == []


def test_counts_add_up_and_truncations_are_reported(webhook: Webhook) -> None:
    traits = {"bio": "b" * 400}
    properties = {f"p{i}": i for i in range(305)}
    messages = [
        segment_message("identify", traits=traits, anonymousId=None),
        segment_message("track", properties=properties, anonymousId=None),
        segment_message("alias"),
        segment_message("page", name=None),
    ]
    body = webhook.post(messages).body
    assert body["truncated"] == {"strings": 1, "properties": 5}
    assert (
        body["received"]
        == body["stored"] + body["duplicate"] + body["dropped"] + body["ignored"] + body["deleted"]
    )
    assert (body["stored"], body["ignored"]) == (2, 2)
    assert webhook.identity("user", "97980cfea0067")["attributes"]["bio"] == "b" * 255  # type: ignore[index]


def test_unknown_route_is_a_404_not_an_error(webhook: Webhook) -> None:
    event = webhook.event(segment_message("track"))
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/elsewhere"
    assert webhook.invoke(event).status == 404


@pytest.mark.parametrize("prefixed", [True, False])
def test_a_named_stage_routes_with_or_without_its_prefix_on_the_path(
    webhook: Webhook, prefixed: bool
) -> None:
    event = webhook.event(segment_message("track"))
    event["requestContext"]["stage"] = "prod"
    if prefixed:  # as API Gateway sends it
        event["rawPath"] = event["requestContext"]["http"]["path"] = "/prod" + event["rawPath"]
    assert webhook.invoke(event).status == 200


def test_gzip_body_from_a_segment_sdk(webhook: Webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    body = gzip.compress(json.dumps({"batch": [segment_message("track")]}).encode())
    answer = webhook.post(
        body, headers={"authorization": f"Bearer {SECRET}", "content-encoding": "gzip"}, base64_encoded=True
    )
    assert answer.status == 200
    assert answer.body["stored"] == 1
    monkeypatch.setenv("MAX_BODY_BYTES", "4096")
    bomb = gzip.compress(b"[" + b" " * 100_000 + b"]")  # small on the wire, over the limit inflated
    too_big = webhook.post(
        bomb, headers={"authorization": f"Bearer {SECRET}", "content-encoding": "gzip"}, base64_encoded=True
    )
    assert too_big.status == 413
    broken = webhook.post(
        b"not gzip", headers={"authorization": f"Bearer {SECRET}", "content-encoding": "gzip"}
    )
    assert broken.status == 400
    # Cut short on the way: what it inflates to is not the whole body, and is not read as one.
    cut = webhook.post(
        body[: len(body) // 2],
        headers={"authorization": f"Bearer {SECRET}", "content-encoding": "gzip"},
        base64_encoded=True,
    )
    assert (cut.status, cut.body["error"]) == (400, "invalid_gzip")


@pytest.mark.parametrize("encoding", ["GZIP", " gzip", "Gzip "])
def test_the_content_encoding_is_read_whatever_its_case_and_spacing(webhook: Webhook, encoding: str) -> None:
    import gzip

    body = gzip.compress(json.dumps(segment_message("track")).encode())
    headers = {"authorization": f"Bearer {SECRET}", "content-encoding": encoding}
    answer = webhook.post(body, headers=headers, base64_encoded=True)
    assert (answer.status, answer.body.get("stored")) == (200, 1)


def test_a_processed_request_publishes_its_counts(
    webhook: Webhook, capsys: pytest.CaptureFixture[str]
) -> None:
    webhook.post(segment_message("track"))
    capsys.readouterr()
    messages = [
        segment_message("track"),  # stored before: a duplicate
        segment_message("identify", traits={"bio": "b" * 400}),
        segment_message(
            "track", messageId="new", anonymousId=None, properties={f"p{i}": i for i in range(301)}
        ),
        segment_message("alias"),
        segment_message("delete", userId="someone-else"),
    ]
    assert webhook.post(messages).status == 200
    [metrics] = [m for m in published_metrics(capsys.readouterr().out) if "MessagesReceived" in m]
    counts = {
        "MessagesReceived": 5,
        "MessagesStored": 2,
        "MessagesDuplicate": 1,
        "MessagesIgnored": 1,
        "MessagesDeleted": 1,
        "EventsStored": 1,
        "IdentitiesChanged": 2,
        "Truncated_strings": 1,
        "Truncated_properties": 1,
    }
    assert {name: metrics.get(name) for name in counts} == {name: [float(n)] for name, n in counts.items()}
