"""SendMessageBatch packing, shared by the dead letters, the last-treatments forward and the listener."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.sqs_batches import MAX_ENTRIES, batch_calls


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
