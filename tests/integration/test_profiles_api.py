"""The profile API through the real handler, with HTTP API v2 events, against moto."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import boto3
import pytest

from fme_bridge.template import Stack
from shared.events_table import event_sk
from shared.inbound.mapping import MAX_MESSAGE_ID_LENGTH
from shared.profiles.sources import encode_cursor
from shared.profiles_table import LastTreatment, Membership, profile_pk, put_membership, write_last_treatment
from tests.conftest import load_event, pages_cut_at, published_metrics, put_secret
from tests.integration.policy_support import RawCall, authorised_as, statements, unauthorised, unused

SECRET = "profiles-secret-value"
PK = "Production#user#user-123"


@pytest.fixture
def api(stack: Stack, function_env: Callable[[str], dict[str, str]]) -> Stack:
    function_env("ProfilesFunction")
    put_secret("profiles", SECRET)
    return stack


def call(
    lambda_context: Any,
    key: str = "user-123",
    authorization: str | None = f"Bearer {SECRET}",
    query: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    from functions.profiles import app

    event = copy.deepcopy(load_event("profiles_get.json"))
    path = f"/profiles/Production/user/{quote(key, safe='')}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["pathParameters"]["key"] = key
    if authorization is None:
        del event["headers"]["authorization"]
    else:
        event["headers"]["authorization"] = authorization
    if query:
        event["queryStringParameters"] = query
        event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
    response = app.lambda_handler(event, lambda_context)
    return response["statusCode"], json.loads(response["body"]), response.get("headers", {})


@pytest.mark.parametrize("key", ["org#42", "tenant/7", "a%41b", "x/y#z%25", "q?x=1", "ünï cödé"])
@pytest.mark.parametrize("asked", ["encoded twice", "encoded once"])
def test_a_key_is_found_whatever_characters_it_holds(
    api: Stack, lambda_context: Any, key: str, asked: str
) -> None:
    from functions.profiles import app

    identities = boto3.resource("dynamodb", region_name="us-east-1").Table(api.tables["IdentitiesTable"])
    identities.put_item(
        Item={
            "pk": profile_pk("Production", "user", key),
            "environment": "Production",
            "trafficTypeName": "user",
            "key": key,
            "attributes": {"plan": "pro"},
            "updatedAt": 1,
        }
    )
    # As API Gateway hands it over: the path decoded once, the parameter decoded once more. A client
    # that encodes only once (fine for '#', '?' and non-ASCII) leaves a path decoded all the way.
    event = copy.deepcopy(load_event("profiles_get.json"))
    segment = quote(key, safe="") if asked == "encoded twice" else key
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/profiles/Production/user/{segment}"
    event["pathParameters"]["key"] = key
    event["headers"]["authorization"] = f"Bearer {SECRET}"

    response = app.lambda_handler(event, lambda_context)

    assert response["statusCode"] == 200, response["body"]
    assert json.loads(response["body"])["key"] == key


def store_event(
    stack: Stack, timestamp: int, message_id: str, event_type: str = "checkout", segment_type: str = "track"
) -> None:
    boto3.resource("dynamodb", region_name="us-east-1").Table(stack.tables["EventsTable"]).put_item(
        Item={
            "pk": PK,
            "sk": event_sk(timestamp, message_id, segment_type),
            "environment": "Production",
            "trafficTypeName": "user",
            "key": "user-123",
            "eventTypeId": event_type,
            "value": Decimal("19.99"),
            "timestamp": timestamp,
            "properties": {"plan": "pro", "items": 2},
            "messageId": message_id,
            "segmentType": segment_type,
            "receivedAt": timestamp + 500,
            "connectionId": "web",
            "expiresAt": 1_900_000_000,
        }
    )


def store_identity(stack: Stack) -> None:
    boto3.resource("dynamodb", region_name="us-east-1").Table(stack.tables["IdentitiesTable"]).put_item(
        Item={
            "pk": PK,
            "environment": "Production",
            "trafficTypeName": "user",
            "key": "user-123",
            "attributes": {"plan": "pro", "seats": 3, "beta": True},
            "updatedAt": 1_795_483_000_000,
            "attributeTimestamps": {"plan": 1_795_483_000_000},
        }
    )


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Basic {SECRET}", SECRET, f"Bearer {SECRET}x", "Bearer  "],
)
def test_bad_or_missing_credentials_are_401(
    api: Stack, lambda_context: Any, authorization: str | None
) -> None:
    store_identity(api)
    status, body, headers = call(lambda_context, authorization=authorization)
    assert status == 401
    assert body == {"error": "unauthorized"}
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_spaces_around_the_secret_are_not_part_of_it(api: Stack, lambda_context: Any) -> None:
    store_identity(api)
    assert call(lambda_context, authorization=f"Bearer  {SECRET} ")[0] == 200


def test_the_secret_is_compared_with_compare_digest(
    api: Stack, lambda_context: Any, compared_digests: list[tuple[bytes, bytes]]
) -> None:
    store_identity(api)
    assert call(lambda_context)[0] == 200
    assert compared_digests == [(SECRET.encode(), SECRET.encode())]


def test_unknown_profile_is_401_before_authentication_and_404_after(api: Stack, lambda_context: Any) -> None:
    assert call(lambda_context, key="nobody", authorization="Bearer wrong")[0] == 401
    status, body, _ = call(lambda_context, key="nobody")
    assert (status, body) == (404, {"error": "profile not found"})


def test_without_the_secret_nobody_gets_in(
    stack: Stack, function_env: Callable[[str], Any], lambda_context: Any
) -> None:
    function_env("ProfilesFunction")
    store_identity(stack)
    assert call(lambda_context)[0] == 401


def test_a_secret_created_after_a_refusal_works_at_once(
    stack: Stack, function_env: Callable[[str], Any], lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONFIG_CACHE_SECONDS", "120")
    function_env("ProfilesFunction")
    store_identity(stack)
    assert call(lambda_context)[0] == 401
    put_secret("profiles", SECRET)
    assert call(lambda_context)[0] == 200


def test_the_previous_secret_works_during_rotation(api: Stack, lambda_context: Any) -> None:
    store_identity(api)
    put_secret("profiles", "the-new-secret")
    from shared import config

    config.clear_caches()
    assert call(lambda_context, authorization="Bearer the-new-secret")[0] == 200
    assert call(lambda_context, authorization=f"Bearer {SECRET}")[0] == 200
    assert call(lambda_context, authorization="bearer the-new-secret")[0] == 200


def test_a_rotation_works_at_once_in_a_warm_container(
    api: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONFIG_CACHE_SECONDS", "120")
    store_identity(api)
    assert call(lambda_context)[0] == 200  # the secret is cached now
    put_secret("profiles", "the-new-secret")
    assert call(lambda_context, authorization="Bearer the-new-secret")[0] == 200
    assert call(lambda_context, authorization=f"Bearer {SECRET}")[0] == 200


def test_the_profile_has_exactly_the_documented_shape(api: Stack, lambda_context: Any) -> None:
    store_identity(api)
    write_last_treatment(
        LastTreatment(
            "Production", "user", "user-123", "new_checkout", "on", 1_795_483_041_109, 17, "in segment"
        )
    )
    put_membership(Membership(PK, "checkout_fans", True, 1, 1_795_483_050_000), None)
    put_membership(Membership(PK, "trial_users", False, 2, 1_795_483_050_000), None)  # entered, then left
    put_membership(Membership(PK, "lapsed", False, 0, 1_795_483_050_000, 1_795_500_000_000), None)  # never in
    store_event(api, 1_795_483_000_000, "m-old")
    store_event(api, 1_795_483_100_000, "m-new", "view_signup_page")

    status, body, headers = call(lambda_context)

    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body == {
        "environment": "Production",
        "trafficType": "user",
        "key": "user-123",
        "attributes": {"plan": "pro", "seats": 3, "beta": True},
        "treatments": {
            "new_checkout": {"treatment": "on", "time": 1_795_483_041_109, "splitVersionNumber": 17}
        },
        "audiences": {"checkout_fans": True, "trial_users": False},
        "events": [
            {
                "environment": "Production",
                "trafficTypeName": "user",
                "key": "user-123",
                "eventTypeId": event_type,
                "value": 19.99,
                "timestamp": ts,
                "properties": {"plan": "pro", "items": 2},
                "messageId": mid,
                "segmentType": "track",
                "receivedAt": ts + 500,
            }
            for ts, mid, event_type in [
                (1_795_483_100_000, "m-new", "view_signup_page"),
                (1_795_483_000_000, "m-old", "checkout"),
            ]
        ],
        "next": None,
    }


def test_a_profile_with_only_events_or_only_treatments_exists(api: Stack, lambda_context: Any) -> None:
    store_event(api, 1_000, "m1")
    status, body, _ = call(lambda_context)
    assert status == 200
    assert (body["attributes"], body["treatments"], body["audiences"]) == ({}, {}, {})
    write_last_treatment(LastTreatment("Production", "user", "anon/42 é", "f", "off", 5))
    status, body, _ = call(lambda_context, key="anon/42 é")
    assert status == 200
    assert body["key"] == "anon/42 é"
    assert body["treatments"] == {"f": {"treatment": "off", "time": 5, "splitVersionNumber": None}}


def test_events_page_newest_first_with_an_opaque_cursor(api: Stack, lambda_context: Any) -> None:
    for i in range(7):
        store_event(api, 1_000 + i, f"m{i}")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while pages < 5:  # three pages of 3, 3 and 1; a cursor that does not move on fails, not loops
        query = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        status, body, _ = call(lambda_context, query=query)
        assert status == 200
        pages += 1
        seen.extend(e["messageId"] for e in body["events"])
        cursor = body["next"]
        if cursor is None:
            break
        assert "#" not in cursor  # opaque: not the raw sort key
    assert seen == [f"m{i}" for i in range(6, -1, -1)]
    assert pages == 3


def test_a_cursor_after_a_message_id_holding_a_newline_pages_on(api: Stack, lambda_context: Any) -> None:
    for i in range(3):
        store_event(api, 1_000 + i, f"m{i}\nx")
    first = call(lambda_context, query={"limit": "2"})[1]
    status, second, _ = call(lambda_context, query={"limit": "2", "cursor": first["next"]})
    assert status == 200, second
    assert [e["messageId"] for e in second["events"]] == ["m0\nx"]


@pytest.mark.parametrize("segment_type", ["track", "page", "screen"])
def test_a_cursor_after_the_longest_message_id_pages_on(
    api: Stack, lambda_context: Any, segment_type: str
) -> None:
    """The webhook takes messageIds of up to 200 characters; a page or screen event's key adds its type."""
    for i in range(3):
        store_event(api, 1_000 + i, f"m{i}".ljust(MAX_MESSAGE_ID_LENGTH, "x"), segment_type=segment_type)
    first = call(lambda_context, query={"limit": "2"})[1]
    status, second, _ = call(lambda_context, query={"limit": "2", "cursor": first["next"]})
    assert status == 200, second
    assert [e["messageId"][:2] for e in second["events"]] == ["m0"]


def test_a_secret_stored_with_a_trailing_newline_is_the_secret(api: Stack, lambda_context: Any) -> None:
    store_identity(api)
    put_secret("profiles", "the-secret\n")
    from shared import config

    config.clear_caches()
    assert call(lambda_context, authorization="Bearer the-secret")[0] == 200


def test_a_page_without_a_limit_holds_25_events(api: Stack, lambda_context: Any) -> None:
    for i in range(26):
        store_event(api, 1_000 + i, f"m{i:02d}")
    status, body, _ = call(lambda_context)
    assert status == 200
    assert [e["messageId"] for e in body["events"]] == [f"m{i:02d}" for i in range(25, 0, -1)]
    last = call(lambda_context, query={"cursor": body["next"]})[1]
    assert ([e["messageId"] for e in last["events"]], last["next"]) == (["m00"], None)


def test_another_profiles_cursor_does_not_make_an_unknown_profile_exist(
    api: Stack, lambda_context: Any
) -> None:
    for i in range(3):
        store_event(api, 1_000 + i, f"m{i}")
    cursor = call(lambda_context, query={"limit": "2"})[1]["next"]
    status, body, _ = call(lambda_context, key="nobody", query={"cursor": cursor})
    assert status == 404, body


def test_an_exact_last_page_has_no_next_cursor(api: Stack, lambda_context: Any) -> None:
    for i in range(4):
        store_event(api, 1_000 + i, f"m{i}")
    first = call(lambda_context, query={"limit": "2"})[1]
    second = call(lambda_context, query={"limit": "2", "cursor": first["next"]})[1]
    assert [e["messageId"] for e in second["events"]] == ["m1", "m0"]
    assert second["next"] is None


def test_a_cursor_past_events_that_expired_meanwhile_is_an_empty_last_page(
    api: Stack, lambda_context: Any
) -> None:
    """The profile still exists (its newer events): not a 404 because its older ones are gone."""
    for i in range(3):
        store_event(api, 1_000 + i, f"m{i}")
    first = call(lambda_context, query={"limit": "2"})[1]
    events = boto3.resource("dynamodb", region_name="us-east-1").Table(api.tables["EventsTable"])
    events.delete_item(Key={"pk": PK, "sk": event_sk(1_000, "m0", "track")})  # its TTL passed
    status, body, _ = call(lambda_context, query={"limit": "2", "cursor": first["next"]})
    assert status == 200
    assert (body["events"], body["next"]) == ([], None)


def test_a_page_dynamodb_cut_short_is_filled_and_still_has_a_next_cursor(
    api: Stack, lambda_context: Any
) -> None:
    """DynamoDB may stop a query at 1 MB with exactly ``limit`` items: the one more that tells whether
    there is a next page is read with another query."""
    from shared import aws

    for i in range(4):
        store_event(api, 1_000 + i, f"m{i}")

    pages_cut_at(aws.client("dynamodb"), "dynamodb.Query", 2)
    first = call(lambda_context, query={"limit": "2"})[1]
    assert [e["messageId"] for e in first["events"]] == ["m3", "m2"]
    assert first["next"] is not None
    second = call(lambda_context, query={"limit": "2", "cursor": first["next"]})[1]
    assert ([e["messageId"] for e in second["events"]], second["next"]) == (["m1", "m0"], None)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "²"}, "limit"),  # a digit to str.isdigit, not to int()
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "eyJzayI6ICJ4In0"}, "cursor"),  # {"sk": "x"}: well-formed, not ours
        ({"cursor": encode_cursor("1000#m0")}, "cursor"),  # the time not in 13 digits
        ({"cursor": encode_cursor("0000000001000#" + "m" * 201)}, "cursor"),  # a messageId too long
    ],
)
def test_bad_paging_parameters_are_400(
    api: Stack, lambda_context: Any, query: dict[str, str], problem: str
) -> None:
    store_identity(api)
    status, body, _ = call(lambda_context, query=query)
    assert status == 400
    assert problem in body["error"]


@pytest.mark.parametrize("limit", [1, 100])
def test_a_limit_at_either_end_of_its_range_is_taken(api: Stack, lambda_context: Any, limit: int) -> None:
    for i in range(limit + 1):
        store_event(api, 1_000 + i, f"m{i:03d}")
    status, body, _ = call(lambda_context, query={"limit": str(limit)})
    assert status == 200, body
    assert len(body["events"]) == limit
    assert body["next"] is not None


def test_an_empty_limit_or_cursor_is_as_if_left_out(api: Stack, lambda_context: Any) -> None:
    for i in range(26):
        store_event(api, 1_000 + i, f"m{i:02d}")
    status, body, _ = call(lambda_context, query={"limit": "", "cursor": ""})
    assert status == 200, body
    assert [e["messageId"] for e in body["events"]] == [f"m{i:02d}" for i in range(25, 0, -1)]


def test_an_api_on_a_named_stage_serves_the_profile(api: Stack, lambda_context: Any) -> None:
    from functions.profiles import app

    store_identity(api)
    event = copy.deepcopy(load_event("profiles_get.json"))
    event["requestContext"]["stage"] = "prod"
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/prod/profiles/Production/user/user-123"
    event["headers"]["authorization"] = f"Bearer {SECRET}"
    response = app.lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200, response["body"]
    assert json.loads(response["body"])["key"] == "user-123"


def metric_names(capsys: pytest.CaptureFixture[str]) -> list[list[str]]:
    """The names of the metrics each invocation printed since the last look."""
    published = published_metrics(capsys.readouterr().out)
    return [
        [m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]] for document in published
    ]


def test_secrets_manager_failing_is_a_503_counted_as_unavailable(
    api: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared import config

    def unavailable(name: str, previous: bool = False) -> str:
        raise config.ConfigUnavailable(f"{name}: ThrottlingException")

    store_identity(api)
    monkeypatch.setattr(config, "get_secret", unavailable)
    status, body, headers = call(lambda_context)
    assert (status, body, headers["Retry-After"]) == (
        503,
        {"error": "temporarily unavailable, retry later"},
        "5",
    )
    assert metric_names(capsys) == [["ProfileUnavailable"]]


def test_a_failing_dependency_is_503_without_a_stack_trace(
    api: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTS_TABLE", "no-such-table")
    status, body, headers = call(lambda_context)
    assert status == 503
    assert headers["Retry-After"] == "5"
    assert body == {"error": "temporarily unavailable, retry later"}


def test_a_path_no_route_serves_is_a_json_404_counted_as_a_bad_request(
    api: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.profiles import app

    event = copy.deepcopy(load_event("profiles_get.json"))
    event["pathParameters"] = None
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/profiles/Production"
    response = app.lambda_handler(event, lambda_context)
    assert response["statusCode"] == 404
    assert json.loads(response["body"])["error"].startswith("not found")
    assert metric_names(capsys) == [["ProfileBadRequests"]]


def test_a_bug_is_a_json_500_without_a_stack_trace_counted_as_an_error(
    api: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.profiles import app

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("a bug")

    store_identity(api)
    monkeypatch.setattr(app, "load_profile", broken)
    status, body, _ = call(lambda_context)
    assert status == 500
    assert body == {"error": "internal error"}
    assert metric_names(capsys) == [["ProfileErrors"]]


def test_every_answer_is_counted_by_its_metric(
    api: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """One metric per invocation, named after the answer (docs/profiles.md), none left unpublished."""
    store_identity(api)
    answers = [
        call(lambda_context)[0],
        call(lambda_context, query={"limit": "0"})[0],
        call(lambda_context, authorization="Bearer wrong")[0],
        call(lambda_context, key="nobody")[0],
    ]
    names = metric_names(capsys)

    assert answers == [200, 400, 401, 404]
    assert names == [["ProfilesServed"], ["ProfileBadRequests"], ["ProfileUnauthorized"], ["ProfileNotFound"]]


def test_the_profile_api_makes_exactly_the_calls_its_policy_allows(
    api: Stack, lambda_context: Any, calls: list[RawCall]
) -> None:
    store_identity(api)
    write_last_treatment(
        LastTreatment("Production", "user", "user-123", "new_checkout", "on", 1_795_483_041_109)
    )
    store_event(api, 1_795_483_000_000, "m-old")
    calls.clear()
    assert call(lambda_context)[0] == 200
    assert call(lambda_context, key="nobody")[0] == 404
    assert call(lambda_context, authorization="Bearer wrong")[0] == 401
    used = authorised_as(calls)

    allowed = statements(api, "ProfilesFunction")
    assert unauthorised(used, allowed) == []
    # All of it is used; the secret's bare name only authorises asking for a secret that does not exist.
    bare_name = "arn:aws:secretsmanager:us-east-1:123456789012:secret:/fme-segment-bridge/dev/profiles"
    assert unused(used, allowed) == [("secretsmanager:GetSecretValue", bare_name)]
