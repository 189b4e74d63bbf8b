"""Any JSON value in any field: the handlers answer (2xx / 4xx with a JSON body, or a partial-batch
response) and never raise, never answer 5xx while their dependencies are healthy.

Messages start from the vendors' real payloads (Segment spec examples, Split impressions) with any
field replaced by, or added as, an arbitrary JSON value; bodies also come in every shape at random.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fme_bridge.segment_sink import SegmentSink
from fme_bridge.template import Stack
from shared.config import InboundConfig
from shared.inbound.mapping import map_messages
from shared.inbound.messages import BadRequest, PayloadTooLarge, decode_body
from shared.outbound.impressions import parse_body
from tests.conftest import load_event, put_config, put_secret
from tests.integration.ingest_support import Webhook
from tests.integration.sqs_events import event as sqs_event
from tests.reliability import scale
from tests.reliability.test_segment_faults import impression

SEGMENT_SAMPLES = ["track", "identify", "page", "screen", "group", "group_split", "alias", "delete"]
SEGMENT_FIELDS = [
    "type", "userId", "anonymousId", "messageId", "timestamp", "originalTimestamp", "receivedAt",
    "sentAt", "event", "name", "groupId", "properties", "traits", "context", "integrations",
]  # fmt: skip
NESTED_FIELDS = ["properties", "traits", "context"]
IMPRESSION_FIELDS = [
    "key", "split", "environmentId", "environmentName", "treatment", "time", "bucketingKey", "label",
    "machineName", "machineIp", "splitVersionNumber", "sdk", "sdkVersion", "properties", "trafficType",
]  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", " ", "view signup", "2026-11-25T10:00:00Z", "1795483041109", "user", "🙂" * 3])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

PURE_EXAMPLES = scale.count(100, 2000)
HANDLER_EXAMPLES = scale.count(15, 200)
CONFIG = InboundConfig.model_validate(
    {
        "environment": "Production",
        "identities": [
            {"segmentId": "userId", "trafficType": "user"},
            {"segmentId": "anonymousId", "trafficType": "anonymous"},
        ],
        "eventTypeIdField": "properties.eventName",
        "valueField": "properties.revenue",
    }
)


TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    TRIED.clear()
    yield
    scale.record(
        "property_tests", merge=True, figures={"examples": dict(TRIED), "raised": 0, "answered_5xx": 0}
    )


@st.composite
def segment_messages(draw: st.DrawFn) -> Any:
    message: dict[str, Any] = dict(load_event(f"segment/{draw(st.sampled_from(SEGMENT_SAMPLES))}.json"))
    for field in draw(st.lists(st.sampled_from(SEGMENT_FIELDS), max_size=4)):
        message[field] = draw(json_values)
    for field in draw(st.lists(st.sampled_from(NESTED_FIELDS), max_size=2)):
        if isinstance(message.get(field), dict):
            name = draw(st.sampled_from(["eventName", "revenue", "split", "name", draw(st.text(max_size=8))]))
            message[field] = {**message[field], name: draw(json_values)}
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not a message at all
    return message


@st.composite
def webhook_bodies(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["object", "array", "batch", "any"]))
    if shape == "object":
        document: Any = draw(segment_messages())
    elif shape == "array":
        document = draw(st.lists(segment_messages(), max_size=6))
    elif shape == "batch":
        document = {"batch": draw(st.lists(segment_messages(), max_size=6))}
    else:
        document = draw(json_values)
    return json.dumps(document).encode()


@settings(max_examples=PURE_EXAMPLES, deadline=None)
@given(body=webhook_bodies())
def test_mapping_never_raises(body: bytes) -> None:
    TRIED["webhook bodies, parsing and mapping"] += 1
    try:
        messages = decode_body(body)
    except (BadRequest, PayloadTooLarge):
        return
    mapped = map_messages(messages, CONFIG, now_ms=1795483041109)
    assert mapped.received == len(messages)


@pytest.fixture
def webhook(function_env: Callable[[str], dict[str, str]], lambda_context: Any) -> Webhook:
    return Webhook.create(
        function_env, lambda_context, eventTypeIdField="properties.eventName", valueField="properties.revenue"
    )


@settings(
    max_examples=HANDLER_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=webhook_bodies())
def test_webhook_answers_every_body(webhook: Webhook, body: bytes) -> None:
    TRIED["webhook bodies, through the ingest handler"] += 1
    answer = webhook.post(body)
    assert answer.status in (200, 400, 413), answer
    assert isinstance(answer.body, dict)
    if answer.status == 200:
        counted = ("stored", "duplicate", "dropped", "ignored", "deleted")
        assert sum(answer.body[name] for name in counted) == answer.body["received"]
    else:
        assert answer.body["error"]


@st.composite
def impression_bodies(draw: st.DrawFn) -> str:
    def one() -> Any:
        item: dict[str, Any] = impression(draw(st.integers(0, 10**6)), padding="")
        for field in draw(st.lists(st.sampled_from(IMPRESSION_FIELDS), max_size=3)):
            item[field] = draw(json_values)
        if draw(st.booleans()):  # the SDK impression-listener shape
            return {
                "impression": {
                    "feature": item["split"],
                    "keyName": item["key"],
                    "treatment": item["treatment"],
                    "time": item["time"],
                    "label": item["label"],
                    "changeNumber": item["splitVersionNumber"],
                },
                "attributes": draw(json_values),
                "environmentName": item["environmentName"],
            }
        return item

    shape = draw(st.sampled_from(["object", "array", "envelope", "any"]))
    if shape == "object":
        document: Any = one()
    elif shape == "array":
        document = [one() for _ in range(draw(st.integers(0, 4)))]
    elif shape == "envelope":
        document = {
            "environmentName": draw(st.sampled_from(["Production", None, 7, ""])),
            "impressions": [one() for _ in range(draw(st.integers(0, 4)))],
        }
    else:
        document = draw(json_values)
    return json.dumps(document) if draw(st.integers(0, 19)) else draw(st.text(max_size=30))


@settings(max_examples=PURE_EXAMPLES, deadline=None)
@given(body=impression_bodies())
def test_impression_parsing_never_raises_unexpectedly(body: str) -> None:
    TRIED["impression messages, parsing"] += 1
    from shared.outbound.impressions import BodyError

    try:
        parsed = parse_body(body)
    except BodyError:
        return
    indexes = [index for index, _ in parsed.impressions] + [error.index for error in parsed.errors]
    assert len(indexes) == len(set(indexes))  # each impression is either parsed or reported


@pytest.fixture
def impressions_handler(
    stack: Stack, function_env: Callable[[str], dict[str, str]], lambda_context: Any
) -> Any:
    from functions.impressions import app

    function_env("ImpressionsFunction")
    with SegmentSink(write_keys={"wk-properties"}) as sink:
        put_config(
            "outbound/production",
            {"environments": ["*"], "identities": {"user": "userId"}, "endpoint": sink.endpoint},
        )
        put_secret("outbound/production", "wk-properties")
        yield lambda event: app.lambda_handler(event, lambda_context)


@settings(
    max_examples=HANDLER_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(bodies=st.lists(impression_bodies(), min_size=1, max_size=4))
def test_impressions_handler_answers_every_batch(impressions_handler: Any, bodies: list[str]) -> None:
    TRIED["SQS batches, through the impressions handler"] += 1
    response = impressions_handler(sqs_event(*bodies))
    # Segment is healthy: every message is delivered or dead-lettered, none is retried (a bad
    # impression must never become a poison message that SQS re-delivers until it expires).
    assert response == {"batchItemFailures": []}
