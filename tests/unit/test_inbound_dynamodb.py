"""Batched DynamoDB access: attribute values, bounded retries of unprocessed items."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from shared import dynamodb


def test_batch_retries_stop_when_time_runs_out() -> None:
    class AlwaysThrottled:
        calls = 0

        def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
            self.calls += 1
            return {"UnprocessedItems": RequestItems}

    client = AlwaysThrottled()
    sleeps: list[float] = []
    with pytest.raises(dynamodb.StoreUnavailable, match="out of time"):
        dynamodb.batch_write(
            client, "t", [{"PutRequest": {"Item": {}}}], sleep=sleeps.append, time_left=lambda: 0.0
        )
    assert (client.calls, sleeps) == (1, [])


def test_writes_still_unprocessed_give_up_with_store_unavailable() -> None:
    class AlwaysThrottled:
        def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
            return {"UnprocessedItems": RequestItems}

    sleeps: list[float] = []
    with pytest.raises(dynamodb.StoreUnavailable):
        dynamodb.batch_write(AlwaysThrottled(), "t", [{"PutRequest": {"Item": {}}}], sleep=sleeps.append)
    assert len(sleeps) == dynamodb.MAX_ATTEMPTS


def test_attribute_values_round_trip() -> None:
    value = {
        "s": "x",
        "b": True,
        "i": 3,
        "f": 1.5,
        "d": Decimal("2.25"),
        "n": None,
        "l": [1, "a"],
        "m": {"k": False},
    }
    encoded = dynamodb.attribute_value(value)
    assert encoded["M"]["b"] == {"BOOL": True}
    assert encoded["M"]["i"] == {"N": "3"}
    assert dynamodb.plain({"v": encoded}) == {
        "v": {**value, "i": Decimal(3), "f": Decimal("1.5"), "l": [Decimal(1), "a"]}
    }
    with pytest.raises(TypeError):
        dynamodb.attribute_value(object())
