"""Sending identify calls to an outbound config's Segment source (``POST {endpoint}/batch``)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import httpx

from shared import config as config_store
from shared.config import ConfigError, ConfigNotFound, OutboundConfig
from shared.http_retry import SEGMENT_POLICY, Deadline, Outcome, send_with_retry

# Identify calls are a few hundred bytes: this stays far below Segment's 500 KB per request.
MESSAGES_PER_REQUEST = 500


def _basic_auth(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


async def _send(
    config: OutboundConfig,
    write_key: str,
    messages: list[dict[str, Any]],
    deadline: Deadline,
    transport: httpx.AsyncBaseTransport | None,
) -> Outcome:
    headers = {"Authorization": _basic_auth(write_key), "Content-Type": "application/json"}
    url = f"{config.endpoint_base}/batch"
    async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
        for start in range(0, len(messages), MESSAGES_PER_REQUEST):
            body = {"batch": messages[start : start + MESSAGES_PER_REQUEST]}
            result = await send_with_retry(
                client,
                lambda body=body: client.build_request("POST", url, json=body, headers=headers),  # type: ignore[misc]
                SEGMENT_POLICY,
                deadline,
            )
            if result.outcome is not Outcome.DELIVERED:
                return result.outcome
    return Outcome.DELIVERED


class SegmentIdentifySender:
    """Sends with the Segment retry policy within a deadline; the write key comes from Secrets Manager."""

    def __init__(
        self,
        deadline: Callable[[], Deadline],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.deadline = deadline
        self.transport = transport

    def __call__(self, config_name: str, config: OutboundConfig, messages: list[dict[str, Any]]) -> Outcome:
        if not messages:
            return Outcome.DELIVERED
        try:
            write_key = config_store.get_secret(config_store.outbound_name(config_name))
        except ConfigNotFound:
            return Outcome.PERMANENT  # no write key: nothing to retry until an operator adds it
        except ConfigError:
            return Outcome.TRANSIENT
        return asyncio.run(_send(config, write_key, messages, self.deadline(), self.transport))
