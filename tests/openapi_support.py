"""Holding a handler's answer to the HTTP API's OpenAPI document (``fme_bridge/openapi.py``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def conforms(case: Any, status: int, headers: dict[str, str], body: str) -> None:
    """Fails unless the operation of ``case`` describes this answer: status, content type, body, headers."""
    answered = httpx.Response(
        status,
        headers=headers,
        content=body.encode(),
        request=httpx.Request(case.method, f"https://api.example{case.formatted_path}"),
    )
    answered.elapsed = timedelta(0)
    case.validate_response(answered, checks=CONFORMANCE)
