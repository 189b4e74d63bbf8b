"""POST /impressions/{token}: FME's impressions webhook onto the impressions queue (docs/outbound.md).

Answers 200 once every impression is on the queue, or counted in the answer as left out for good (an
impression over SQS's 256 KiB, one SQS refuses permanently); 503 while any stays unsent (FME counts
anything else as a failure and sends the batch again: the impressions function derives each Segment
``messageId`` from the impression, so what was already queued is dropped by Segment as a duplicate).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared import aws, config
from shared.config import ConfigUnavailable
from shared.inbound.messages import GZIP_MAGIC, BadRequest, PayloadTooLarge, gunzip
from shared.lambda_context import completed_context, remaining_time_ms
from shared.metrics import lambda_metrics
from shared.outbound import webhook_relay
from shared.secret_versions import token_accepted
from shared.tracing import lambda_tracer

logger = Logger()
metrics = lambda_metrics()
tracer = lambda_tracer()


def secret_name() -> str:
    return f"{config.config_prefix()}/impressions-webhook"


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": json.dumps(body),
    }


def _body(event: dict[str, Any]) -> bytes:
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("invalid_body", "the request body is not valid base64") from None
    else:
        body = raw.encode("utf-8", "surrogatepass")
    # FME gzips its posts; a relay in between may have inflated them, with the header or without.
    # JSON never starts with the gzip magic bytes, so they alone decide.
    if body.startswith(GZIP_MAGIC):
        body = gunzip(body, webhook_relay.MAX_INFLATED_BYTES)
    elif len(body) > webhook_relay.MAX_INFLATED_BYTES:
        limit = webhook_relay.MAX_INFLATED_BYTES
        raise PayloadTooLarge(f"the request body is over {limit} bytes; the limit is {limit}", limit)
    return body


def relay(event: dict[str, Any], seconds_left: Callable[[], float]) -> dict[str, Any]:
    token = (event.get("pathParameters") or {}).get("token")
    if not token_accepted(secret_name(), (token or "").encode()):  # no secret set up: nobody gets in
        metrics.add_metric("ImpressionsWebhookUnauthorized", MetricUnit.Count, 1)
        return _answer(401, {"error": "unauthorized"})
    try:
        relayed = webhook_relay.queue_messages(_body(event))
    except BadRequest as exc:
        return _bad_request(exc.message)
    except webhook_relay.NotImpressions as exc:
        return _bad_request(str(exc))
    except PayloadTooLarge as exc:
        return _too_large(exc.message)
    except webhook_relay.TooManyItems as exc:
        return _too_large(str(exc))
    if relayed.too_large:
        # Over SQS's 256 KiB, such an impression is far over Segment's 32 KB too: it could never be sent.
        logger.warning(
            "impressions too large for a queue message, left out",
            extra={"positions": relayed.too_large[:100], "count": len(relayed.too_large)},
        )
    sent = webhook_relay.send(aws.env("IMPRESSIONS_QUEUE_URL"), relayed.bodies, seconds_left)
    metrics.add_metric("ImpressionsWebhookReceived", MetricUnit.Count, relayed.impressions)
    metrics.add_metric("ImpressionsWebhookTooLarge", MetricUnit.Count, len(relayed.too_large))
    refused = sum(relayed.counts[index] for index in sent.refused)
    if sent.refused:
        # The sender's fault by SQS's word: sending the post again would not change it.
        logger.error(
            "the impressions queue refused messages for good",
            extra={"impressions": refused, "reasons": sorted(set(sent.refused.values()))},
        )
        metrics.add_metric("ImpressionsWebhookRefused", MetricUnit.Count, refused)
    if sent.unsent:
        logger.error("the impressions queue did not take every message", extra={"unsent": sent.unsent})
        metrics.add_metric("ImpressionsWebhookUnavailable", MetricUnit.Count, 1)
        return _unavailable()
    queued = relayed.impressions - len(relayed.too_large) - refused
    metrics.add_metric("ImpressionsWebhookQueued", MetricUnit.Count, queued)
    return _answer(
        200,
        {
            "received": relayed.impressions,
            "queued": queued,
            "messages": len(relayed.bodies) - len(sent.refused),
            "tooLarge": len(relayed.too_large),
            "refused": refused,
        },
    )


def _bad_request(message: str) -> dict[str, Any]:
    metrics.add_metric("ImpressionsWebhookBadRequests", MetricUnit.Count, 1)
    return _answer(400, {"error": message})


def _too_large(message: str) -> dict[str, Any]:
    metrics.add_metric("ImpressionsWebhookBadRequests", MetricUnit.Count, 1)
    return _answer(413, {"error": message})


def _unavailable() -> dict[str, Any]:
    return _answer(503, {"error": "temporarily unavailable, retry later"}, {"Retry-After": "5"})


@completed_context
@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    clock = remaining_time_ms(context)
    try:
        return relay(event, lambda: clock() / 1000)
    except ConfigUnavailable:
        logger.warning("the webhook's secret could not be read")
        metrics.add_metric("ImpressionsWebhookUnavailable", MetricUnit.Count, 1)
        return _unavailable()
    except Exception:
        # A JSON answer, never a stack trace; the log has the traceback. FME sends the post again.
        logger.exception("unexpected error")
        metrics.add_metric("ImpressionsWebhookErrors", MetricUnit.Count, 1)
        return _answer(500, {"error": "internal error"})
