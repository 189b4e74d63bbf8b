"""The delivery log (DeliveryLogTable): what FME acknowledged, and each connection's delivery status.

FME's Events API does not deduplicate, and a DynamoDB stream batch is retried from its first failed
record — so records after it that were already delivered come round again. Before sending, delivery
looks each event up here and skips those FME already acknowledged (or refused for good); after FME
answers, it records the answer. Items:

- ``pk = ack#{digest of the event's pk and sk}``, ``sk = event``: ``state`` (``delivered`` or
  ``refused``), ``at``, ``reason``, ``expiresAt``;
- ``pk = connection``, ``sk = {connectionId}``: counters, ``lastDeliveredAt``, ``lastLatencyMs``,
  ``retryingSince`` and ``retryingNewest`` (the oldest and the newest record being retried),
  ``lastError`` — what ``fme-bridge delivery status`` shows — and
  ``lastErrorAbout``, what the last error is about: the failure ids of the failure-queue messages
  of a refusal, or the stream records the function is retrying. The function and
  ``fme-bridge delivery redrive`` both keep them: what a redrive delivers moves from refused to
  delivered, and clears the last error only when the error is about what it delivered.

Acknowledgements expire after :data:`ACK_RETENTION_SECONDS`, longer than a record can stay in the
stream (24 h) or a message in the failure queue (14 days), so every path that can resend an event
still finds its acknowledgement. The digest keeps user keys out of this table (user deletion).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.conditions import Key

from shared import dynamodb

ACK_RETENTION_SECONDS = 15 * 24 * 3600
DELIVERED = "delivered"
REFUSED = "refused"
_ACK_SK = "event"
_STATUS_PK = "connection"
_RECORD = "record "


def record_key(sequence_number: str) -> str:
    """What an error of a stream record the function retries is about (its sequence number)."""
    return f"{_RECORD}{sequence_number}"


def _ack_pk(ack_id: str) -> str:
    return f"ack#{ack_id}"


@dataclass(frozen=True)
class ConnectionStatus:
    connection_id: str
    events_delivered: int = 0
    events_refused: int = 0
    identities_delivered: int = 0
    identities_refused: int = 0
    skipped: int = 0
    last_delivered_at: int | None = None
    last_latency_ms: int | None = None
    retrying_since: int | None = None
    retrying_newest: int | None = None
    last_error: str | None = None
    last_error_at: int | None = None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


class DeliveryLog:
    """Data access over DeliveryLogTable (a boto3 ``Table`` resource)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def settled(self, ack_ids: Iterable[str]) -> dict[str, str]:
        """``{ack id: state}`` of the events FME already acknowledged or refused."""
        keys = [{"pk": _ack_pk(a), "sk": _ACK_SK} for a in dict.fromkeys(ack_ids)]
        # The resource's client takes and gives plain values, as the Table resource does. Strongly
        # consistent: Lambda retries a failed stream batch at once, and an acknowledgement written
        # moments before must be seen, or FME (which does not deduplicate) gets the event again.
        items = dynamodb.batch_get(
            self._table.meta.client,
            self._table.name,
            keys,
            projection="pk, #s",
            names={"#s": "state"},
            consistent=True,
        )
        return {str(item["pk"]).removeprefix("ack#"): str(item.get("state")) for item in items}

    def record(self, ack_ids: Iterable[str], state: str, at_ms: int, reason: str | None = None) -> None:
        expires = at_ms // 1000 + ACK_RETENTION_SECONDS
        with self._table.batch_writer(overwrite_by_pkeys=["pk", "sk"]) as batch:
            for ack in ack_ids:
                item: dict[str, Any] = {"pk": _ack_pk(ack), "sk": _ACK_SK, "state": state, "at": at_ms}
                item["expiresAt"] = expires
                if reason:
                    item["reason"] = reason[:500]
                batch.put_item(Item=item)

    def update_status(
        self,
        connection_id: str,
        now_ms: int,
        *,
        events_delivered: int = 0,
        events_refused: int = 0,
        identities_delivered: int = 0,
        identities_refused: int = 0,
        skipped: int = 0,
        latency_ms: int | None = None,
        retrying_since: int | None = None,
        retrying_newest: int | None = None,
        error: str | None = None,
        error_about: Collection[str] = (),
        ends_retrying: bool = True,
    ) -> None:
        """Add this batch's counts; ``retrying_since`` set means some records are still being retried.

        ``retrying_since`` is kept from the first retry until the retries end; ``retrying_newest``
        (the newest record retried, ``retrying_since`` by default) is the latest batch's: it tells
        whether records newer than those of a batch Lambda gave up on are still being retried.

        ``error_about``: what ``error`` is about (see :meth:`clear_error`); none, nothing a redrive can
        resolve.

        A negative count takes back: refused items a redrive delivers move from refused to delivered.
        ``ends_retrying`` False: what was delivered does not come from the stream (a redrive of refused
        items), so it says nothing about records the stream is retrying. Otherwise, delivering with
        nothing left to retry ends the retries, and with them a last error about stream records only
        (a rate limit, an outage): the stream delivered what it retried.
        """
        sets = ["updatedAt = :now"]
        values: dict[str, Any] = {":now": now_ms}
        adds = []
        removes = []
        for attr, amount in (
            ("eventsDelivered", events_delivered),
            ("eventsRefused", events_refused),
            ("identitiesDelivered", identities_delivered),
            ("identitiesRefused", identities_refused),
            ("skipped", skipped),
        ):
            if amount:
                adds.append(f"{attr} :{attr}")
                values[f":{attr}"] = amount
        if events_delivered or identities_delivered:
            sets.append("lastDeliveredAt = :now")
        if latency_ms is not None:
            sets.append("lastLatencyMs = :latency")
            values[":latency"] = latency_ms
        if retrying_since is not None:
            sets.append("retryingSince = if_not_exists(retryingSince, :since), retryingNewest = :newest")
            values[":since"] = retrying_since
            values[":newest"] = retrying_newest if retrying_newest is not None else retrying_since
        ends = retrying_since is None and ends_retrying and bool(events_delivered or identities_delivered)
        if ends:
            removes.extend(["retryingSince", "retryingNewest"])
        if error:
            sets.append("lastError = :error, lastErrorAt = :now")
            values[":error"] = error[:500]
            if error_about:
                sets.append("lastErrorAbout = :about")
                values[":about"] = set(error_about)
            else:
                removes.append("lastErrorAbout")
        expression = "SET " + ", ".join(sets)
        if adds:
            expression += " ADD " + ", ".join(adds)
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        item = self._table.update_item(
            Key={"pk": _STATUS_PK, "sk": connection_id},
            UpdateExpression=expression,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW" if ends and not error else "NONE",
        ).get("Attributes")
        if item:
            # The retries ended: a last error about stream records only went with them (unless a
            # newer one came since: _forget's condition).
            about = _about(item)
            if about and all(a.startswith(_RECORD) for a in about):
                self._forget(connection_id, item, about, older_than_ms=0)

    def clear_error(self, connection_id: str, resolved: Collection[str], older_than_ms: int) -> None:
        """Forget what of the connection's last error a redrive resolved: ``resolved`` names what it
        delivered entirely (failure ids of messages, stream records).

        The error goes once everything it is about is delivered (a refusal split into several
        messages waits for each), and never while the function is retrying records of the
        connection (a rate limit, an outage: it is still live). An error about something else (a
        message still in the queue, or kept by the same redrive) stays. An error recorded without
        what it is about (by an earlier version) goes if it is older than ``older_than_ms``.
        """
        item = self._table.get_item(Key={"pk": _STATUS_PK, "sk": connection_id}, ConsistentRead=True).get(
            "Item"
        )
        if item:
            self._forget(connection_id, item, resolved, older_than_ms)

    def _forget(
        self, connection_id: str, item: dict[str, Any], resolved: Collection[str], older_than_ms: int
    ) -> None:
        """:meth:`clear_error` on the status ``item`` just read."""
        if "lastError" not in item or "retryingSince" in item:
            return
        about = _about(item)
        values: dict[str, Any] = {":error": item["lastError"], ":at": item["lastErrorAt"]}
        # Each condition fails when a newer error was recorded meanwhile, or retries started.
        condition = "lastError = :error AND lastErrorAt = :at AND attribute_not_exists(retryingSince)"
        if not about:
            if int(item["lastErrorAt"]) >= older_than_ms:
                return
            update = "REMOVE lastError, lastErrorAt"
            condition += " AND attribute_not_exists(lastErrorAbout)"
        else:
            done = about & set(resolved)
            if not done:
                return
            if done == about:
                update = "REMOVE lastError, lastErrorAt, lastErrorAbout"
            else:  # the error stays for the refusal's other messages, still in the queue
                update = "DELETE lastErrorAbout :done"
                values[":done"] = done
        with contextlib.suppress(self._table.meta.client.exceptions.ConditionalCheckFailedException):
            self._table.update_item(
                Key={"pk": _STATUS_PK, "sk": connection_id},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )

    def statuses(self) -> list[ConnectionStatus]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"KeyConditionExpression": Key("pk").eq(_STATUS_PK)}
        while True:
            page = self._table.query(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return [
            ConnectionStatus(
                connection_id=str(item["sk"]),
                events_delivered=int(item.get("eventsDelivered", 0)),
                events_refused=int(item.get("eventsRefused", 0)),
                identities_delivered=int(item.get("identitiesDelivered", 0)),
                identities_refused=int(item.get("identitiesRefused", 0)),
                skipped=int(item.get("skipped", 0)),
                last_delivered_at=_int(item.get("lastDeliveredAt")),
                last_latency_ms=_int(item.get("lastLatencyMs")),
                retrying_since=_int(item.get("retryingSince")),
                retrying_newest=_int(item.get("retryingNewest")),
                last_error=item.get("lastError"),
                last_error_at=_int(item.get("lastErrorAt")),
            )
            for item in items
        ]


def _about(item: dict[str, Any]) -> set[str]:
    """What the status item's last error is about (``lastErrorAbout``)."""
    return {str(a) for a in item.get("lastErrorAbout") or ()}
