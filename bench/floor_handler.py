"""The second reference for measurement 3: the bare handler on the bridge's own stack.

It imports what the functions import before any of the bridge's own code (boto3, Powertools' logger
and metrics, pydantic, and httpx, which the functions that send HTTP import), carries their logger
and metrics decorators, validates the body with a pydantic model, and then hands the event to
:mod:`bench.bare_handler`. The
difference between it and the bare handler is the price of the chosen dependencies; the difference
between a function and it is the price of the bridge's own code and its requests.
"""

from __future__ import annotations

from typing import Any

import httpx  # noqa: F401  (imported, as every function that calls Segment or FME imports it)
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict

from bench import bare_handler

logger = Logger(service="bench-floor")
metrics = Metrics(namespace="FmeSegmentBridgeBench", service="bench-floor")


class Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str | None = None


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    Body.model_validate_json(event.get("body") or "{}")
    metrics.add_metric(name="Received", unit=MetricUnit.Count, value=1)
    return bare_handler.lambda_handler(event, context)
