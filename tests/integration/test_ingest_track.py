"""A Segment track call through the real handler ends up as FME events in DynamoDB."""

from __future__ import annotations

from decimal import Decimal

from tests.integration.ingest_support import CONNECTION, Webhook, segment_message


def test_track_is_stored_once_per_mapped_identity(webhook: Webhook) -> None:
    answer = webhook.post(segment_message("track"))

    assert answer.status == 200
    assert answer.body["received"] == 1
    assert answer.body["stored"] == 1
    assert answer.body["events"] == 2
    user_events = webhook.stored_events("user", "AiUGstSDIg")
    anonymous_events = webhook.stored_events("anonymous", "23adfd82-aa0f-45a7-a756-24f2a7a4c895")
    assert len(user_events) == len(anonymous_events) == 1
    event = user_events[0]
    assert event["environment"] == "Production"
    assert event["trafficTypeName"] == "user"
    assert event["key"] == "AiUGstSDIg"
    assert event["eventTypeId"] == "Course_Clicked"
    assert "value" not in event
    assert event["timestamp"] == Decimal(1449947461249)  # 2015-12-12T19:11:01.249Z
    assert event["properties"] == {"title": "Intro to Analytics"}
    assert event["messageId"] == "ajs-f8ca1e4de5024d9430b3928bd8ac6b96"
    assert event["segmentType"] == "track"
    assert event["connectionId"] == CONNECTION
    assert event["receivedAt"] > Decimal(1_700_000_000_000)
    retention = int(webhook.env["EVENT_RETENTION_DAYS"])
    assert event["expiresAt"] == event["receivedAt"] // 1000 + retention * 86_400
    assert anonymous_events[0]["trafficTypeName"] == "anonymous"


def test_named_page_and_screen_are_stored_with_their_segment_type(webhook: Webhook) -> None:
    page = segment_message("page", anonymousId=None, name="signup", messageId="page-1")
    screen = segment_message("screen", anonymousId=None, name="signup", messageId="screen-1")
    answer = webhook.post([page, screen])

    assert (answer.status, answer.body["stored"]) == (200, 2)
    by_id = {e["messageId"]: e for e in webhook.stored_events("user", "97980cfea0067")}
    assert (by_id["page-1"]["eventTypeId"], by_id["page-1"]["segmentType"]) == ("view_signup_page", "page")
    assert (by_id["screen-1"]["eventTypeId"], by_id["screen-1"]["segmentType"]) == (
        "view_signup_screen",
        "screen",
    )
