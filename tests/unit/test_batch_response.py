from shared.batch_response import partial_batch_response


def _event(*ids: str) -> dict[str, object]:
    return {"Records": [{"messageId": message_id, "body": "{}"} for message_id in ids]}


def test_lists_the_failed_messages_in_batch_order() -> None:
    failed = {"m3": "segment: 503", "m1": "deadline"}

    response = partial_batch_response(_event("m1", "m2", "m3"), failed)

    assert response == {"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m3"}]}


def test_the_order_is_the_batchs_not_the_ids() -> None:
    failed = {"a": "deadline", "c": "segment: 503"}

    response = partial_batch_response(_event("c", "b", "a"), failed)

    assert response == {"batchItemFailures": [{"itemIdentifier": "c"}, {"itemIdentifier": "a"}]}


def test_an_id_that_is_not_in_the_batch_is_not_reported() -> None:
    response = partial_batch_response(_event("m1"), {"elsewhere": "deadline"})

    assert response == {"batchItemFailures": []}


def test_a_batch_without_failures_and_an_empty_event() -> None:
    assert partial_batch_response(_event("m1", "m2"), {}) == {"batchItemFailures": []}
    assert partial_batch_response({}, {"m1": "deadline"}) == {"batchItemFailures": []}
