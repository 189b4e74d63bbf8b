"""GET /profiles/{environment}/{trafficType}/{key}: one identity's profile, behind a bearer secret."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from shared import config
from shared.config import ConfigUnavailable
from shared.lambda_context import completed_context
from shared.metrics import lambda_metrics
from shared.profiles import sources
from shared.profiles.profile_view import DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT, ProfileNotFound, load_profile
from shared.secret_versions import token_accepted
from shared.tracing import lambda_tracer

logger = Logger()
metrics = lambda_metrics()
tracer = lambda_tracer()
app = APIGatewayHttpResolver()


class Unauthorized(Exception):
    pass


class BadRequest(Exception):
    pass


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers
    )


def secret_name() -> str:
    return f"{config.config_prefix()}/profiles"


def authenticate(authorization: str | None) -> None:
    """``Authorization: Bearer <secret>``, compared in constant time with the current or previous secret
    (cached and read again as the webhook's are: :func:`shared.secret_versions.token_accepted`)."""
    scheme, _, presented = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized
    if not token_accepted(secret_name(), presented.strip().encode()):
        raise Unauthorized  # a wrong secret, or none set up: nobody can be let in


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_EVENTS_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_EVENTS_LIMIT:  # "²" is a digit
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_EVENTS_LIMIT}")
    return int(raw)


@app.get("/profiles/<environment>/<trafficType>/<key>")
def get_profile(environment: str, trafficType: str, key: str) -> Response:
    authenticate(app.current_event.headers.get("authorization"))
    query = app.current_event.query_string_parameters or {}
    limit = _limit(query.get("limit"))
    environment, traffic_type, key = (unquote(p) for p in (environment, trafficType, key))
    try:
        profile = load_profile(environment, traffic_type, key, limit, query.get("cursor") or None)
    except sources.InvalidCursor as exc:
        raise BadRequest(str(exc)) from None
    except ProfileNotFound:
        metrics.add_metric(name="ProfileNotFound", unit=MetricUnit.Count, value=1)
        return _json(404, {"error": "profile not found"})
    metrics.add_metric(name="ProfilesServed", unit=MetricUnit.Count, value=1)
    return _json(200, profile)


@app.exception_handler(Unauthorized)
def _unauthorized(_: Unauthorized) -> Response:
    metrics.add_metric(name="ProfileUnauthorized", unit=MetricUnit.Count, value=1)
    return _json(401, {"error": "unauthorized"}, {"WWW-Authenticate": 'Bearer realm="profiles"'})


@app.exception_handler(BadRequest)
def _bad_request(exc: BadRequest) -> Response:
    metrics.add_metric(name="ProfileBadRequests", unit=MetricUnit.Count, value=1)
    return _json(400, {"error": str(exc)})


@app.exception_handler(ConfigUnavailable)
@app.exception_handler(ClientError)
@app.exception_handler(BotoCoreError)
def _unavailable(exc: Exception) -> Response:
    logger.warning("a dependency failed", extra={"error": type(exc).__name__})
    metrics.add_metric(name="ProfileUnavailable", unit=MetricUnit.Count, value=1)
    return _json(503, {"error": "temporarily unavailable, retry later"}, {"Retry-After": "5"})


@app.not_found
def _not_found(_: NotFoundError) -> Response:
    metrics.add_metric(name="ProfileBadRequests", unit=MetricUnit.Count, value=1)
    return _json(404, {"error": "not found: GET /profiles/{environment}/{trafficType}/{key}"})


@app.exception_handler(ServiceError)
def _service_error(exc: ServiceError) -> Response:
    # The resolver's own answers (a method the route does not take, ...): as they are, in JSON.
    name = "ProfileBadRequests" if exc.status_code < 500 else "ProfileErrors"
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    return _json(exc.status_code, {"error": exc.msg})


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response:
    # A JSON answer, never a stack trace; the log has the traceback.
    logger.exception("unexpected error")
    metrics.add_metric(name="ProfileErrors", unit=MetricUnit.Count, value=1)
    return _json(500, {"error": "internal error"})


_PATH_PARAMETERS = ("environment", "trafficType", "key")


def _routed_on_path_parameters(event: dict[str, Any]) -> dict[str, Any]:
    """The event, its path rebuilt from the path parameters API Gateway matched.

    Those are what the caller asked for: an HTTP API decodes the path once to match the route and
    each parameter once more (a key holding ``/`` is asked for as ``%252F``). The path it hands
    over is the once-decoded one, where a ``#`` or ``?`` of a key no longer matches the resolver's
    route, and an encoded ``%`` would be decoded again; so the route is matched on the parameters,
    each encoded, and :func:`get_profile` decodes them back to exactly API Gateway's values.
    """
    parameters = event.get("pathParameters") or {}
    values = [parameters.get(name) for name in _PATH_PARAMETERS]
    if not all(isinstance(value, str) and value for value in values):
        return event  # not as API Gateway routes GET /profiles/...: the resolver answers 404
    stage = (event.get("requestContext") or {}).get("stage") or "$default"
    prefix = "" if stage == "$default" else f"/{stage}"
    path = prefix + "/profiles/" + "/".join(quote(str(value), safe="") for value in values)
    return {**event, "rawPath": path}


@completed_context
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(_routed_on_path_parameters(event), context)
