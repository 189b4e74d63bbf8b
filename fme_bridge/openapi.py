"""The OpenAPI document of the bridge's HTTP API: the public routes of template.yaml.

``POST /segment/{connectionId}`` (Segment's Webhooks destination), ``POST /impressions/{token}``
(FME's impressions webhook) and ``GET /profiles/{environment}/{trafficType}/{key}``, with their
authentication and every answer
they give. The reliability suite fuzzes the real handlers from this document, and a test keeps
its routes equal to the template's.
"""

from __future__ import annotations

from typing import Any

from shared import __version__

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or _ERROR}}}


def _retry_later(description: str) -> dict[str, Any]:
    """A 503 that says when to retry (``Retry-After``, in seconds)."""
    return {
        **_json(description),
        "headers": {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 0}}},
    }


def _challenge(description: str) -> dict[str, Any]:
    """A 401 that names the scheme to authenticate with (``WWW-Authenticate: Bearer realm=…``)."""
    return {
        **_json(description),
        "headers": {
            "WWW-Authenticate": {"required": True, "schema": {"type": "string", "pattern": "^Bearer "}}
        },
    }


_SEGMENT_MESSAGE = {
    "type": "object",
    "description": "A Segment spec message (track, identify, page, screen, group, alias, delete).",
    "properties": {
        "type": {"type": "string"},
        "messageId": {"type": "string"},
        "userId": {"type": "string"},
        "anonymousId": {"type": "string"},
        "event": {"type": "string"},
        "name": {"type": "string"},
        "timestamp": {"type": "string"},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "context": {"type": "object"},
    },
}

_REPORT = {
    "type": "object",
    "required": ["received", "stored", "duplicate", "dropped", "ignored", "deleted"],
    "properties": {
        name: {"type": "integer"}
        for name in (
            "received",
            "stored",
            "duplicate",
            "dropped",
            "ignored",
            "deleted",
            "events",
            "identities",
        )
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "fme-segment-bridge", "version": __version__},
        "paths": {
            "/segment/{connectionId}": {
                "post": {
                    "operationId": "segmentWebhook",
                    "summary": "Segment Webhooks destination: messages become FME events and identities.",
                    "security": [{"secret": []}, {"basic": []}, {"signature": []}],
                    "parameters": [
                        {"name": "connectionId", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        _SEGMENT_MESSAGE,
                                        {"type": "array", "items": _SEGMENT_MESSAGE, "maxItems": 4000},
                                        {
                                            "type": "object",
                                            "properties": {
                                                "batch": {"type": "array", "items": _SEGMENT_MESSAGE}
                                            },
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            "Processed: counts of stored, duplicate, dropped, ignored messages.", _REPORT
                        ),
                        "400": _json("The body is not JSON, not an object or array, or empty."),
                        "401": _challenge(
                            "Missing or invalid credentials, or an unknown connection (one answer)."
                        ),
                        "413": _json("The body is over the size limit, or holds over 4,000 messages."),
                        "503": _retry_later(
                            "DynamoDB, SSM or Secrets Manager failing, or the connection's config does not"
                            " validate (`config_invalid`, naming the fields): retry later."
                        ),
                    },
                }
            },
            "/impressions/{token}": {
                "post": {
                    "operationId": "impressionsWebhook",
                    "summary": "FME's impressions webhook: impressions onto the impressions queue.",
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "The secret {ConfigPrefix}/impressions-webhook: FME sends no "
                            "headers of the receiver's choosing.",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"type": "array", "items": {"type": "object"}},
                                        {"type": "object"},
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            "Every impression is on the queue but those too large for any message"
                            " or refused by SQS.",
                            {
                                "type": "object",
                                "required": ["received", "queued", "messages", "tooLarge", "refused"],
                                "properties": {
                                    name: {"type": "integer"}
                                    for name in ("received", "queued", "messages", "tooLarge", "refused")
                                },
                            },
                        ),
                        "400": _json("The body is not JSON, not an array or object, or not valid gzip."),
                        "401": _json("A wrong token, or no secret set up."),
                        "413": _json(
                            "The body inflates to more than 32 MiB, or holds over 2,000,000 values."
                        ),
                        "503": _retry_later("Secrets Manager or SQS failing: FME sends the post again."),
                    },
                }
            },
            "/profiles/{environment}/{trafficType}/{key}": {
                "get": {
                    "operationId": "getProfile",
                    "summary": "One identity's attributes, last treatments, audiences and events.",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": name,
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "Percent-encoded twice: API Gateway decodes the path once "
                            "to match the route and each segment once more.",
                        }
                        for name in ("environment", "trafficType", "key")
                    ]
                    + [
                        {
                            "name": "limit",
                            "in": "query",
                            "description": "How many of the newest events to list.",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 25},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json("The profile.", {"type": "object"}),
                        "400": _json("An invalid limit or cursor."),
                        "401": _challenge("Missing or invalid credentials."),
                        "404": _json("No such profile."),
                        "503": _retry_later("A dependency is failing: retry later."),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "secret": {"type": "apiKey", "in": "header", "name": "Authorization"},
                "basic": {"type": "http", "scheme": "basic"},
                "signature": {"type": "apiKey", "in": "header", "name": "X-Signature"},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
        },
    }
