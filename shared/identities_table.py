"""IdentitiesTable: one item per FME identity (docs/data-model.md).

Concurrent webhook requests can update the same identity, so writes are optimistic: each item
carries a ``version``; a write is conditional on the version that was read (or on the item not
existing), and a request whose condition fails re-reads and merges again (see
:func:`shared.inbound.ingest.store_identities`). Each identity is one conditional PutItem, side by
side on the request's threads: one write unit each, and a lost race refuses only its own identity.
(TransactWriteItems would take 100 per request, at two write units each, all or nothing.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from shared.dynamodb import (
    TRANSIENT_ERRORS,
    Table,
    attribute_value,
    batch_get,
    batch_write,
    deserialize_item,
    error_code,
    run_parallel,
)
from shared.inbound.mapping import MergedIdentity, StoredIdentity
from shared.profiles_table import profile_pk

# A put refused for these is written again in the next round (re-read and merged first); the
# condition fails when another request updated the identity in between.
WRITE_AGAIN = TRANSIENT_ERRORS | {"ConditionalCheckFailedException"}


class IdentitiesTable(Table):
    table_env = "IDENTITIES_TABLE"

    def get_many(self, pks: Sequence[str]) -> dict[str, StoredIdentity]:
        """The stored identities among ``pks`` (strongly consistent: the versions feed conditions)."""
        keys = [{"pk": {"S": pk}} for pk in pks]
        found = batch_get(
            self.client,
            self.name,
            keys,
            # ``attributes`` is a DynamoDB reserved word.
            projection="pk, #attributes, attributeTimestamps, untimedMessageIds, timedMessageIds, #version",
            names={"#attributes": "attributes", "#version": "version"},
            consistent=True,
            sleep=self.sleep,
            time_left=self.time_left,
        )
        identities = {}
        for item in found:
            values = deserialize_item(item)
            identities[values["pk"]] = StoredIdentity(
                attributes=values.get("attributes", {}),
                attributeTimestamps={k: int(v) for k, v in values.get("attributeTimestamps", {}).items()},
                untimedMessageIds={k: int(v) for k, v in values.get("untimedMessageIds", {}).items()},
                timedMessageIds={int(k): list(v) for k, v in values.get("timedMessageIds", {}).items()},
                version=int(values.get("version", 0)),
            )
        return identities

    def put_conditional(
        self, identities: Sequence[MergedIdentity], connection_id: str, updated_at: int
    ) -> set[str]:
        """Write merged identities; returns the pks whose write did not happen (re-read and retry them).

        One conditional PutItem per identity, :data:`~shared.dynamodb.MAX_WORKERS` at a time; an
        identity whose version moved on fails alone, and so does one DynamoDB still throttled or
        failed after botocore's retries (the next round reads and writes it again, rather than the
        whole request failing for one of its many writes). Once the request is out of time, the
        identities not yet written are returned unwritten.
        """

        def put(identity: MergedIdentity) -> str | None:
            pk = profile_pk(identity.environment, identity.trafficTypeName, identity.key)
            if self.out_of_time():
                return pk
            try:
                self.client.put_item(**self._conditional_put(identity, connection_id, updated_at))
            except ClientError as exc:
                if error_code(exc) not in WRITE_AGAIN:
                    raise
                return pk
            return None

        return {pk for pk in run_parallel(put, list(identities)) if pk is not None}

    def _conditional_put(
        self, identity: MergedIdentity, connection_id: str, updated_at: int
    ) -> dict[str, Any]:
        version = (identity.expected_version or 0) + 1
        put: dict[str, Any] = {
            "TableName": self.name,
            "Item": {
                "pk": {"S": profile_pk(identity.environment, identity.trafficTypeName, identity.key)},
                "environment": {"S": identity.environment},
                "trafficTypeName": {"S": identity.trafficTypeName},
                "key": {"S": identity.key},
                "attributes": attribute_value(identity.attributes),
                "attributeTimestamps": attribute_value(identity.attributeTimestamps),
                "updatedAt": {"N": str(updated_at)},
                "connectionId": {"S": connection_id},
                "version": {"N": str(version)},
            },
        }
        if identity.untimedMessageIds:
            put["Item"]["untimedMessageIds"] = attribute_value(identity.untimedMessageIds)
        if identity.timedMessageIds:
            timed = {str(stamp): ids for stamp, ids in identity.timedMessageIds.items()}
            put["Item"]["timedMessageIds"] = attribute_value(timed)
        if identity.expected_version is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "#version = :expected"
            put["ExpressionAttributeNames"] = {"#version": "version"}
            put["ExpressionAttributeValues"] = {":expected": {"N": str(identity.expected_version)}}
        return put

    def delete(self, pks: Sequence[str]) -> None:
        batch_write(
            self.client, self.name, [{"DeleteRequest": {"Key": {"pk": {"S": pk}}}} for pk in pks], self.sleep
        )

    def get(self, environment: str, traffic_type: str, key: str) -> dict[str, Any] | None:
        """One identity as Python values, or None."""
        response = self.client.get_item(
            TableName=self.name,
            Key={"pk": {"S": profile_pk(environment, traffic_type, key)}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return deserialize_item(item) if item else None
