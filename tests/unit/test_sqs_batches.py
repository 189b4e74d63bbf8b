"""SendMessageBatch packing, shared by the dead letters, the last-treatments forward and the listener."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.sqs_batches import MAX_ENTRIES, batch_calls, max_receives, receive_count


@given(st.lists(st.integers(0, 120), max_size=60), st.integers(1, 300))
def test_calls_keep_the_order_and_the_limits(sizes: list[int], max_bytes: int) -> None:
    calls = list(batch_calls(sizes, lambda n: n, max_bytes))
    assert [n for call in calls for n in call] == sizes
    for call in calls:
        assert 1 <= len(call) <= MAX_ENTRIES
        # Over the limit only when one item alone is.
        assert sum(call) <= max_bytes or len(call) == 1


def test_a_call_closes_at_ten_entries_or_when_the_next_item_does_not_fit() -> None:
    assert list(batch_calls([1] * 12, lambda n: n, 100)) == [[1] * 10, [1, 1]]
    assert list(batch_calls([60, 30, 20, 500, 5], lambda n: n, 100)) == [[60, 30], [20], [500], [5]]
    assert list(batch_calls([], lambda n: n)) == []


def test_each_call_starts_with_the_whole_limit_free() -> None:
    assert list(batch_calls([60, 50, 50, 50], lambda n: n, 100)) == [[60], [50, 50], [50]]


@pytest.mark.parametrize(
    ("record", "count"),
    [
        ({"attributes": {"ApproximateReceiveCount": "3"}}, 3),
        ({"attributes": {}}, 1),
        ({}, 1),
        ({"attributes": {"ApproximateReceiveCount": "many"}}, 1),
        ({"attributes": {"ApproximateReceiveCount": None}}, 1),
    ],
)
def test_receive_count_of_a_record(record: dict, count: int) -> None:
    assert receive_count(record) == count


def test_max_receives_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_RECEIVE_COUNT", "5")
    assert max_receives() == 5
    monkeypatch.setenv("MAX_RECEIVE_COUNT", "")
    assert max_receives() is None
    monkeypatch.delenv("MAX_RECEIVE_COUNT")
    assert max_receives() is None
