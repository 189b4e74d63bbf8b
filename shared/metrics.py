"""The functions' CloudWatch metrics: Powertools' ``Metrics`` (EMF) in the bridge's namespace."""

from __future__ import annotations

import os

from aws_lambda_powertools import Metrics

NAMESPACE = "FmeSegmentBridge"


def lambda_metrics() -> Metrics:
    """Metrics in ``POWERTOOLS_METRICS_NAMESPACE`` (the template sets it), else :data:`NAMESPACE`.

    Powertools reads the namespace once, when ``Metrics`` is created: without the default, a handler
    imported before its environment is set would fail every invocation ("Must contain a metric
    namespace") instead of answering it.
    """
    return Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or NAMESPACE)
