"""The partial batch response of the SQS consumers: exactly the messages they could not finish.

The impressions and last-treatments functions work on a whole batch at once and know, at the end,
which SQS messages to give back (message id → reason, logged by the caller). The response lists
them in the batch's order; Lambda deletes every other message of the batch.

Powertools' batch processor is made for a handler per record; here it would only turn the ids into
this list, and importing it (with every event data class) cost these functions' cold starts about
10 ms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict


class PartialItemFailure(TypedDict):
    itemIdentifier: str


class PartialItemFailureResponse(TypedDict):
    batchItemFailures: list[PartialItemFailure]


def partial_batch_response(event: Mapping[str, Any], failed: Mapping[str, str]) -> PartialItemFailureResponse:
    """``batchItemFailures`` listing the records whose message id is in ``failed``, in batch order."""
    return {
        "batchItemFailures": [
            {"itemIdentifier": record["messageId"]}
            for record in event.get("Records", [])
            if record["messageId"] in failed
        ]
    }
