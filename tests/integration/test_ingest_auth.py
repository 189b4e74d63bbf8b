"""Authentication through the real handler: forms, rotation, unknown connections, no oracle."""

from __future__ import annotations

import base64
import json

import boto3
import pytest

from shared import aws, config, secret_versions
from shared.inbound import auth
from tests.conftest import REGION, put_config, put_secret
from tests.integration.ingest_support import CONFIG, CONNECTION, SECRET, Webhook, segment_message, signature


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Secrets cached for minutes, as deployed; the clock of their re-reads (and of unknown ids)."""
    monkeypatch.setenv("CONFIG_CACHE_SECONDS", "120")
    now = [1000.0]
    monkeypatch.setattr(secret_versions.refresh_budget, "clock", lambda: now[0])
    monkeypatch.setattr(secret_versions.unknown_secrets, "clock", lambda: now[0])
    return now


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


def test_authorization_forms_are_accepted(webhook: Webhook) -> None:
    forms = [
        {"authorization": SECRET},
        {"authorization": f"Bearer {SECRET}"},
        {"authorization": basic(SECRET)},
    ]
    for number, headers in enumerate(forms):
        answer = webhook.post(segment_message("track", messageId=f"form-{number}"), headers=headers)
        assert answer.status == 200, headers
        assert answer.body["stored"] == 1


def test_a_secret_saved_with_a_trailing_newline_is_the_secret_without_it(webhook: Webhook) -> None:
    """`aws secretsmanager create-secret --secret-string file://secret.txt` keeps the editor's newline."""
    put_config("inbound/from-file", CONFIG)
    put_secret("inbound/from-file", f"{SECRET}\n")  # its only version: no previous one to fall back on
    body = segment_message("track", messageId="newline")
    for headers in (
        {"authorization": f"Bearer {SECRET}"},
        {"x-signature": signature(SECRET, json.dumps(body).encode())},
    ):
        assert webhook.post(body, headers=headers, connection="from-file").status == 200, headers


def test_classic_webhook_signature_over_the_raw_body(webhook: Webhook) -> None:
    body = json.dumps(segment_message("identify")).encode()
    assert webhook.post(body, headers={"x-signature": signature(SECRET, body)}).status == 200


def test_classic_webhook_signature_as_segments_documentation_checks_it(webhook: Webhook) -> None:
    # HMAC-SHA1 over JSON.stringify(req.body): the compact form, whatever spacing the body has.
    message = segment_message("identify", traits={"name": "Zoë", "plan": "pro"})
    compact = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    spaced = json.dumps(message, indent=2).encode()
    assert webhook.post(spaced, headers={"x-signature": signature(SECRET, compact)}).status == 200
    # The signature still covers the content: another message under it is refused.
    other = json.dumps({**message, "traits": {"plan": "enterprise"}}, indent=2).encode()
    assert webhook.post(other, headers={"x-signature": signature(SECRET, compact)}).status == 401


def test_actions_batch_signature_over_the_first_element(webhook: Webhook) -> None:
    messages = [segment_message("track"), segment_message("page")]
    body = json.dumps(messages, separators=(",", ":")).encode()
    first = json.dumps(messages[0], separators=(",", ":")).encode()
    answer = webhook.post(body, headers={"X-Signature": signature(SECRET, first)})
    assert answer.status == 200
    assert answer.body["stored"] == 2


def test_actions_x_segment_signature_over_the_whole_body(webhook: Webhook) -> None:
    """Webhooks (Actions) with "Use X-Segment-Signature Header" signs the whole body it sends."""
    messages = [segment_message("track"), segment_message("page")]
    body = json.dumps(messages, separators=(",", ":")).encode()
    first = json.dumps(messages[0], separators=(",", ":")).encode()
    batch = webhook.post(body, headers={"X-Segment-Signature": signature(SECRET, body)})
    assert (batch.status, batch.body["stored"]) == (200, 2)
    single = json.dumps(messages[0], separators=(",", ":")).encode()
    assert webhook.post(single, headers={"X-Segment-Signature": signature(SECRET, single)}).status == 200
    # Only the whole body: the first element alone is X-Signature's rule, not this header's.
    assert webhook.post(body, headers={"X-Segment-Signature": signature(SECRET, first)}).status == 401
    assert webhook.post(body, headers={"X-Segment-Signature": signature("wrong", body)}).status == 401


def test_wrong_secret_and_unknown_connection_get_the_same_401(webhook: Webhook) -> None:
    wrong = webhook.post(segment_message("track"), headers={"authorization": "Bearer nope"})
    unknown = webhook.post(segment_message("track"), connection="no-such-connection")
    missing = webhook.post(segment_message("track"), headers={})
    bad_signature = webhook.post(segment_message("track"), headers={"x-signature": "00" * 20})
    assert wrong.status == unknown.status == missing.status == bad_signature.status == 401
    assert wrong.body == unknown.body == missing.body == bad_signature.body
    assert wrong.headers == unknown.headers
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")  # a 401 names its scheme (RFC 9110)
    assert webhook.count_events() == 0


def test_unauthenticated_body_is_not_parsed(webhook: Webhook) -> None:
    # 401 before 400: an unauthenticated caller learns nothing about body handling.
    assert webhook.post(b"not json", headers={"authorization": "Bearer nope"}).status == 401


def test_rotation_accepts_current_and_previous_secret(webhook: Webhook) -> None:
    put_secret(f"inbound/{CONNECTION}", "whsec-rotated-9c8b7a")
    config.clear_caches()
    old = webhook.post(segment_message("track"), headers={"authorization": f"Bearer {SECRET}"})
    new = webhook.post(segment_message("page"), headers={"authorization": "Bearer whsec-rotated-9c8b7a"})
    assert (old.status, new.status) == (200, 200)
    put_secret(f"inbound/{CONNECTION}", "whsec-third-1a2b3c")  # the first secret is now two versions old
    config.clear_caches()
    assert webhook.post(segment_message("track"), headers={"authorization": f"Bearer {SECRET}"}).status == 401


def test_the_previous_secret_keeps_working_for_every_request_during_a_rotation(
    webhook: Webhook, clock: list[float]
) -> None:
    """Segment keeps sending the old secret until it is updated: each of its requests is accepted."""
    put_secret(f"inbound/{CONNECTION}", "whsec-rotated-2b3c4d")
    old = {"authorization": f"Bearer {SECRET}"}
    for number in range(3):
        answer = webhook.post(segment_message("track", messageId=f"old-{number}"), headers=old)
        assert answer.status == 200, number
    rotated = {"authorization": "Bearer whsec-rotated-2b3c4d"}
    assert webhook.post(segment_message("track", messageId="new"), headers=rotated).status == 200
    assert webhook.post(segment_message("track", messageId="old-3"), headers=old).status == 200


def test_a_rotation_is_accepted_at_once_by_a_warm_container(webhook: Webhook, clock: list[float]) -> None:
    """Both versions are cached for minutes; the new secret must not be refused meanwhile, however
    soon after a refusal or another rotation (the clock does not move here)."""
    bearer = {"authorization": f"Bearer {SECRET}"}
    assert webhook.post(segment_message("track", messageId="before"), headers=bearer).status == 200
    assert webhook.post(segment_message("track"), headers={"authorization": "Bearer nope"}).status == 401

    put_secret(f"inbound/{CONNECTION}", "whsec-rotated-4d5e6f")  # the first rotation: no previous cached
    rotated = {"authorization": "Bearer whsec-rotated-4d5e6f"}
    assert webhook.post(segment_message("track", messageId="new"), headers=rotated).status == 200
    assert webhook.post(segment_message("track", messageId="old"), headers=bearer).status == 200

    put_secret(f"inbound/{CONNECTION}", "whsec-third-7a8b9c")  # SECRET is now two versions old
    third = {"authorization": "Bearer whsec-third-7a8b9c"}
    assert webhook.post(segment_message("track", messageId="third"), headers=third).status == 200
    assert webhook.post(segment_message("track", messageId="second"), headers=rotated).status == 200
    assert webhook.post(segment_message("track", messageId="first"), headers=bearer).status == 401


def test_the_old_secret_works_right_after_a_rotation_that_followed_a_bad_request(
    webhook: Webhook, clock: list[float]
) -> None:
    # A stray bad request before any rotation: AWSPREVIOUS is found missing, and remembered so.
    assert webhook.post(segment_message("track"), headers={"authorization": "Bearer nope"}).status == 401
    put_secret(f"inbound/{CONNECTION}", "whsec-rotated-4d5e6f")
    rotated = {"authorization": "Bearer whsec-rotated-4d5e6f"}
    assert webhook.post(segment_message("track", messageId="new"), headers=rotated).status == 200
    # Segment, not yet updated, still sends the old secret: AWSPREVIOUS now.
    old = {"authorization": f"Bearer {SECRET}"}
    assert webhook.post(segment_message("track", messageId="old"), headers=old).status == 200


@pytest.mark.parametrize(
    "wrong_before", [1, secret_versions.SECRET_REFRESH_BURST + 1], ids=["one-refusal", "budget-spent"]
)
def test_a_rotation_seen_through_an_expired_current_version_reads_the_previous_one_again(
    webhook: Webhook, clock: list[float], wrong_before: int
) -> None:
    """The two versions are cached apart: the current one can be new while the previous is stale. A
    changed current version is read again at once, even when wrong credentials spent the budget."""
    put_secret(f"inbound/{CONNECTION}", "whsec-second-1b2c")  # SECRET is the previous version now
    for _ in range(wrong_before):
        assert webhook.post(segment_message("track"), headers={"authorization": "Bearer nope"}).status == 401
    put_secret(f"inbound/{CONNECTION}", "whsec-third-3d4e")  # the second is the previous version now
    config._providers["secret"].clear_cache()  # the current version's cache ran out; the previous's did not
    second = {"authorization": "Bearer whsec-second-1b2c"}  # Segment, not yet updated
    assert webhook.post(segment_message("track", messageId="second"), headers=second).status == 200


def test_wrong_credentials_cost_the_reads_an_unknown_connection_costs(
    webhook: Webhook, clock: list[float]
) -> None:
    """Both versions read again for wrong credentials while the secret's budget lasts (a burst, then
    once every few seconds), for a connection that exists as for an unknown one: the Secrets Manager
    reads do not tell the two apart, and a flood of wrong credentials is not a flood of reads."""
    reads: list[str] = []
    aws.client("secretsmanager").meta.events.register(
        "before-parameter-build.secrets-manager.GetSecretValue",
        lambda params, **_: reads.append(params["SecretId"]),
    )
    prefix = webhook.env["CONFIG_PREFIX"]
    wrong = {"authorization": "Bearer nope"}

    def reads_of(posts: int) -> dict[str, int]:
        reads.clear()
        for _ in range(posts):
            for connection in (CONNECTION, "made-up"):
                answer = webhook.post(segment_message("track"), headers=wrong, connection=connection)
                assert answer.status == 401
        return {
            connection: reads.count(f"{prefix}/inbound/{connection}")
            for connection in (CONNECTION, "made-up")
        }

    reads_of(1)  # first contact: cold caches
    burst = secret_versions.SECRET_REFRESH_BURST
    assert reads_of(burst + 5) == {CONNECTION: 2 * (burst - 1), "made-up": 2 * (burst - 1)}
    for _ in range(3):
        clock[0] += secret_versions.SECRET_REFRESH_SECONDS
        assert reads_of(4) == {CONNECTION: 2, "made-up": 2}


def test_a_connection_whose_secret_is_created_after_a_refusal_is_accepted_at_once(
    webhook: Webhook, clock: list[float]
) -> None:
    late = {"authorization": "Bearer whsec-late-9f8e"}
    assert webhook.post(segment_message("track"), headers=late, connection="late").status == 401
    put_secret("inbound/late", "whsec-late-9f8e")
    put_config(
        "inbound/late",
        {"environment": "Production", "identities": [{"segmentId": "userId", "trafficType": "user"}]},
    )
    assert webhook.post(segment_message("track"), headers=late, connection="late").status == 200


def test_unknown_connections_are_remembered_so_secrets_manager_is_not_hammered(
    webhook: Webhook, clock: list[float]
) -> None:
    lookups: list[str] = []
    aws.client("secretsmanager").meta.events.register(
        "before-parameter-build.secrets-manager.GetSecretValue",
        lambda params, **_: lookups.append(params["SecretId"]),
    )
    burst = secret_versions.SECRET_REFRESH_BURST
    for _ in range(burst + 10):
        assert webhook.post(segment_message("track"), connection="made-up").status == 401
    # The current and the previous version on first contact, then again while the budget lasts.
    assert len(lookups) == 2 * burst


def test_connection_ids_that_could_reach_other_secrets_are_refused(webhook: Webhook) -> None:
    # Another secret under the connection's name (its FME keys live at inbound/<id>/fme), holding
    # exactly what the request presents.
    client = boto3.client("secretsmanager", region_name=REGION)
    client.create_secret(Name=f"{webhook.env['CONFIG_PREFIX']}/inbound/{CONNECTION}/fme", SecretString=SECRET)
    reads: list[str] = []
    aws.client("secretsmanager").meta.events.register(
        "before-call.secrets-manager.GetSecretValue", lambda params, **_: reads.append(params["SecretId"])
    )
    # The id is refused before any secret is read, whoever hands it over.
    for connection_id in (f"{CONNECTION}/fme", f"{CONNECTION}/../{CONNECTION}", "", "x" * 129):
        with pytest.raises(auth.Unauthorized):
            auth.authenticate(connection_id, {"authorization": f"Bearer {SECRET}"}, b"{}")
    assert reads == []
    # Through API Gateway: a %2F-encoded slash stays in the path the route matches (401), a plain
    # one makes a path no route serves (404).
    event = webhook.event(segment_message("track"), connection=f"{CONNECTION}%2Ffme")
    event["pathParameters"]["connectionId"] = f"{CONNECTION}/fme"
    assert webhook.invoke(event).status == 401
    assert webhook.post(segment_message("track"), connection=f"{CONNECTION}/fme").status == 404


def test_secret_without_config_is_an_unknown_connection(webhook: Webhook) -> None:
    put_secret("inbound/half-configured", SECRET)
    answer = webhook.post(segment_message("track"), connection="half-configured")
    assert answer.status == 401
    assert answer.body == webhook.post(segment_message("track"), connection="nothing-at-all").body


def test_a_connection_whose_secret_is_scheduled_for_deletion_is_an_unknown_connection(
    webhook: Webhook,
) -> None:
    """Secrets Manager keeps a deleted secret for its recovery window and refuses to read it
    (InvalidRequestException): the connection is gone, not unavailable (a 503 Segment would retry)."""
    boto3.client("secretsmanager", region_name=REGION).delete_secret(
        SecretId=config.inbound_name(CONNECTION), RecoveryWindowInDays=7
    )
    secret_versions.clear_caches()
    right = webhook.post(segment_message("track"))
    unknown = webhook.post(segment_message("track"), connection="nothing-at-all")
    assert right.status == unknown.status == 401
    assert (right.body, right.headers) == (unknown.body, unknown.headers)
