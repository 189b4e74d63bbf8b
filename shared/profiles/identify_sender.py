"""Sending identify calls (computed traits, audience membership) through the outbound Segment client.

The same client, retry policy and batch limits as the track calls (:mod:`shared.outbound.segment_client`):
one request per outbound config per invocation in the usual case, configs in parallel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from shared import http_session
from shared.config import ConfigError, ConfigNotFound
from shared.http_retry import Deadline, Outcome
from shared.outbound.destinations import Destination, WriteKeys

# Per outbound config name: the destination and the identify messages for it.
IdentifyBatches = Mapping[str, tuple[Destination, list[dict[str, Any]]]]


async def send_identifies(
    batches: IdentifyBatches, deadline: Deadline, missing_write_key: Outcome = Outcome.TRANSIENT
) -> dict[str, Outcome]:
    """Send each config's messages; the outcome per config name. Never raises for HTTP failures.

    A config without its write key has the outcome ``missing_write_key``: by default retried, as a
    track call is (the operator may be adding it); the audiences' stream, which a retry holds up,
    takes it as a config error instead.
    """
    # Imported when there is something to send: most stream batches change no audience membership,
    # and the audiences functions' cold starts need not load the HTTP client.
    from shared.outbound.segment_client import BatchPacker, SegmentClient, http_client
    from shared.outbound.segment_messages import encode

    keys = WriteKeys()
    # Kept for the next invocation, with its connections to Segment (shared.http_session).
    async with http_session.client(("segment", "identifies"), http_client) as http:
        client = SegmentClient(http, deadline)

        async def send(destination: Destination, messages: list[dict[str, Any]]) -> Outcome:
            try:
                write_key = keys.get(destination)
            except ConfigNotFound:
                return missing_write_key
            except ConfigError:
                return Outcome.TRANSIENT
            packer = BatchPacker()
            pending = [b for m in messages if (b := packer.add(encode(m), 0, 0)) is not None]
            if (last := packer.flush()) is not None:
                pending.append(last)
            # Every request is made, whatever another one's outcome: one refused request must not
            # take the messages of the others with it. The config's outcome is the worst of them.
            results = await asyncio.gather(
                *(
                    client.send(destination.endpoint, write_key, batch, destination.config.gzip)
                    for batch in pending
                )
            )
            outcomes = {result.outcome for result in results}
            for worst in (Outcome.TRANSIENT, Outcome.PERMANENT):
                if worst in outcomes:
                    return worst
            return Outcome.DELIVERED

        names = list(batches)
        outcomes = await asyncio.gather(*(send(*batches[name]) for name in names))
    return dict(zip(names, outcomes, strict=True))


class IdentifySender:
    """Blocking front of :func:`send_identifies`, within the Lambda's remaining time less a margin."""

    def __init__(
        self,
        remaining_ms: Callable[[], int],
        margin_ms: int = 1500,
        missing_write_key: Outcome = Outcome.TRANSIENT,
    ) -> None:
        self.remaining_ms = remaining_ms
        self.margin_ms = margin_ms
        self.missing_write_key = missing_write_key

    def __call__(self, batches: IdentifyBatches) -> dict[str, Outcome]:
        if not batches:
            return {}
        deadline = Deadline(self.remaining_ms, margin_ms=self.margin_ms)
        return http_session.run(send_identifies(batches, deadline, self.missing_write_key))
