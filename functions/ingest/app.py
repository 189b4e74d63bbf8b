"""Segment Webhooks destination → FME events and identities (``POST /segment/{connectionId}``)."""

from __future__ import annotations

import base64
import binascii
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from shared.config import ConfigInvalid, ConfigUnavailable
from shared.dynamodb import OutOfTime, StoreUnavailable
from shared.http_retry import Deadline
from shared.inbound.auth import Unauthorized
from shared.inbound.ingest import IngestReport, WebhookRequest, receive_webhook, refuse_unreadable_body
from shared.inbound.messages import BadRequest, PayloadTooLarge
from shared.lambda_context import completed_context, context_clock
from shared.metrics import lambda_metrics
from shared.tracing import lambda_tracer

logger = Logger()
metrics = lambda_metrics()
tracer = lambda_tracer()
app = APIGatewayHttpResolver()


# The handler waits for a request only until shortly before the Lambda times out. A call that hangs
# (a connection that never answers waits botocore's read timeout on every attempt) would otherwise
# outlast the function, and a Lambda timeout reaches Segment as a 500. So each request runs on a
# worker thread; one still running at the deadline is answered 503 and left to end on its own, and
# whatever it still writes, Segment's retry finds stored. Idle workers are reused (a new thread per
# request cost 0.4 ms of CPU); a request never waits behind hung ones while fewer than this many
# hang, since the pool starts a new worker whenever none is idle.
_requests = ThreadPoolExecutor(max_workers=16, thread_name_prefix="webhook")


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[str]:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, separators=(",", ":")),
        headers=headers,
    )


def _raw_body() -> bytes | None:
    """The body as Segment sent it; None when API Gateway's base64 of it does not decode."""
    event = app.current_event
    body = event.body or ""
    if event.is_base64_encoded:
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return None
    return body.encode()


@app.post("/segment/<connectionId>")
@tracer.capture_method(capture_response=False)
def segment_webhook(connectionId: str) -> Response[str]:
    headers = {name.lower(): value for name, value in (app.current_event.headers or {}).items()}
    body = _raw_body()
    request = WebhookRequest(connection_id=connectionId, headers=headers, body=body or b"")
    if body is None:
        refuse_unreadable_body(request)
        raise BadRequest("invalid_base64", "the request body is not valid base64")
    logger.append_keys(connection_id=connectionId)
    # Stop retrying in time to answer 503 ourselves: a Lambda timeout would reach Segment as a 500.
    remaining_ms = context_clock(app.lambda_context)
    time_left = Deadline(remaining_ms=remaining_ms, margin_ms=1500).seconds_left if remaining_ms else None
    now_ms = time.time_ns() // 1_000_000
    running = _requests.submit(receive_webhook, request, now_ms, time_left=time_left)
    try:
        report = running.result(timeout=max(0.0, time_left()) if time_left else None)
    except FutureTimeout:
        logger.warning("webhook still running at the deadline; answering 503")
        if not running.cancel():  # a request that never started is dropped; one that did ends alone
            running.add_done_callback(_late)
        raise OutOfTime("the request did not finish before the function's deadline") from None
    _record(report)
    logger.info(
        "webhook processed",
        extra=report.model_dump(exclude={"drops"}),
    )
    return _json(200, report.model_dump(exclude_none=True))


def _late(running: Future[IngestReport]) -> None:
    """How a request answered 503 at the deadline ended, for the log (logged when it ends, which may
    be during a later invocation: Lambda runs the container's threads only while it is invoked)."""
    failure = running.exception()
    if failure is None:
        logger.info(
            "webhook answered 503 at the deadline has finished",
            extra=running.result().model_dump(exclude={"drops"}),
        )
    else:
        logger.warning(
            "webhook answered 503 at the deadline has failed", extra={"error": type(failure).__name__}
        )


def _record(report: IngestReport) -> None:
    metrics.add_metric(name="MessagesReceived", unit=MetricUnit.Count, value=report.received)
    metrics.add_metric(name="MessagesStored", unit=MetricUnit.Count, value=report.stored)
    metrics.add_metric(name="MessagesDuplicate", unit=MetricUnit.Count, value=report.duplicate)
    metrics.add_metric(name="MessagesIgnored", unit=MetricUnit.Count, value=report.ignored)
    metrics.add_metric(name="MessagesDeleted", unit=MetricUnit.Count, value=report.deleted)
    metrics.add_metric(name="EventsStored", unit=MetricUnit.Count, value=report.events)
    metrics.add_metric(name="IdentitiesChanged", unit=MetricUnit.Count, value=report.identities)
    for kind, count in report.truncated.items():
        if count:
            metrics.add_metric(name=f"Truncated_{kind}", unit=MetricUnit.Count, value=count)
    if is_metrics_disabled():  # single_metric prints regardless of POWERTOOLS_METRICS_DISABLED
        return
    for reason, count in report.drop_reasons().items():
        # One metric per reason, with the reason as its dimension.
        with single_metric(
            name="MessagesDropped",
            unit=MetricUnit.Count,
            value=count,
            namespace=metrics.namespace,
            default_dimensions=metrics.default_dimensions,
        ) as metric:
            metric.add_dimension(name="reason", value=reason)


@app.exception_handler(Unauthorized)
def _unauthorized(_: Unauthorized) -> Response[str]:
    metrics.add_metric(name="Unauthorized", unit=MetricUnit.Count, value=1)
    # The same answer for a wrong secret and an unknown connection.
    return _json(
        401,
        {"error": "unauthorized", "message": "missing or invalid credentials"},
        headers={"WWW-Authenticate": 'Bearer realm="segment-webhook"'},
    )


@app.exception_handler(BadRequest)
def _bad_request(exc: BadRequest) -> Response[str]:
    metrics.add_metric(name="BadRequests", unit=MetricUnit.Count, value=1)
    return _json(400, {"error": exc.error, "message": exc.message})


@app.exception_handler(PayloadTooLarge)
def _too_large(exc: PayloadTooLarge) -> Response[str]:
    metrics.add_metric(name="PayloadTooLarge", unit=MetricUnit.Count, value=1)
    return _json(413, {"error": "payload_too_large", "message": exc.message, "limit": exc.limit})


@app.exception_handler([ConfigUnavailable, StoreUnavailable, BotoCoreError, ClientError])
def _unavailable(exc: Exception) -> Response[str]:
    logger.warning("dependency unavailable", extra={"error": type(exc).__name__, "detail": str(exc)})
    return _service_unavailable("storage or configuration is temporarily unavailable; retry later")


@app.exception_handler(OutOfTime)  # a StoreUnavailable: the resolver picks the closest class
def _out_of_time(exc: OutOfTime) -> Response[str]:
    logger.warning("out of time", extra={"detail": str(exc)})
    return _service_unavailable(
        "out of time before every message was stored; what was stored stays stored, and a retry "
        "stores the rest"
    )


@app.exception_handler(ConfigInvalid)
def _config_invalid(exc: ConfigInvalid) -> Response[str]:
    # Reached only after authentication: the caller holds the secret and is told which fields are
    # wrong (not the parameter's name); Segment retries the 503 until the operator fixes them.
    logger.error("connection config is invalid", extra={"detail": str(exc)})
    metrics.add_metric(name="ConfigInvalid", unit=MetricUnit.Count, value=1)
    return _service_unavailable(
        f"this connection's configuration is invalid ({exc.problem}); the operator has to fix it",
        error="config_invalid",
    )


@app.not_found
def _not_found(_: NotFoundError) -> Response[str]:
    metrics.add_metric(name="NotFound", unit=MetricUnit.Count, value=1)
    return _json(404, {"error": "not_found", "message": "POST /segment/{connectionId}"})


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[str]:
    # Never a 500 with a stack trace: a 503 makes Segment retry, and storing is idempotent.
    logger.exception("unexpected error")
    return _service_unavailable("internal error; retry later")


def _service_unavailable(message: str, error: str = "unavailable") -> Response[str]:
    metrics.add_metric(name="Unavailable", unit=MetricUnit.Count, value=1)
    return _json(503, {"error": error, "message": message}, headers={"Retry-After": "5"})


def _with_stage_prefix(event: dict[str, Any]) -> dict[str, Any]:
    """The event, its path led by its stage's name when a named stage's event lacks it.

    Powertools' resolver cuts a named stage's length off the front of every path, as API Gateway
    sends them (``/prod/segment/web``); an event built with the stage but without the prefix would
    otherwise lose ``/segm`` and answer 404. (A stage named ``segment`` cannot be told apart: its
    paths are taken as prefixed.) The deployed API has only the ``$default`` stage.
    """
    context = event.get("requestContext")
    stage = (context.get("stage") if isinstance(context, dict) else None) or "$default"
    path = event.get("rawPath") or ""
    if stage == "$default" or path == f"/{stage}" or path.startswith(f"/{stage}/"):
        return event
    return {**event, "rawPath": f"/{stage}{path}"}


@completed_context
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(_with_stage_prefix(event), context)
