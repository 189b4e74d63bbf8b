"""Batched DynamoDB access on the low-level client, for hot paths that write thousands of items.

Items are built directly as attribute-value maps (``{"S": …}``), skipping boto3's resource layer and
its per-value type dispatch. BatchGetItem (100 keys) and BatchWriteItem (25 items) requests run on a
small thread pool, and what DynamoDB leaves unprocessed (throttling) is retried with backoff; what
is still unprocessed after that raises :class:`StoreUnavailable`, so the caller answers "retry".
For a handful of items, :func:`put_if_absent` writes each with a conditional PutItem, all at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from decimal import Decimal
from typing import Any, Self

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from shared import aws

BATCH_GET_LIMIT = 100
BATCH_WRITE_LIMIT = 25
MAX_ATTEMPTS = 8
MAX_WORKERS = 8  # requests of one call in flight at once, the calling thread's included

Item = dict[str, Any]
Key = dict[str, Any]
Sleep = Callable[[float], None]
# Seconds the caller can still spend (the Lambda's remaining time less a margin); None: unbounded.
TimeLeft = Callable[[], float] | None


def client() -> Any:
    """The low-level DynamoDB client (shared, see :mod:`shared.aws`)."""
    return aws.client("dynamodb")


class Table:
    """One table of the bridge: its name (from the environment variable ``table_env``) and a client."""

    table_env = ""

    def __init__(
        self, name: str, client: Any | None = None, sleep: Sleep = time.sleep, time_left: TimeLeft = None
    ) -> None:
        self.name = name
        self.time_left = time_left
        self.client = client if client is not None else aws.client("dynamodb")
        self.sleep = sleep

    @classmethod
    def from_env(cls, time_left: TimeLeft = None) -> Self:
        return cls(aws.env(cls.table_env), time_left=time_left)

    def out_of_time(self) -> bool:
        """Whether the caller's time is up (never, without a ``time_left``)."""
        return self.time_left is not None and self.time_left() <= 0


# Errors DynamoDB may not repeat: throttling and its own failures (botocore retried them already).
TRANSIENT_ERRORS = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class StoreUnavailable(Exception):
    """DynamoDB kept refusing part of a request (throttling); the whole request can be retried."""


class OutOfTime(StoreUnavailable):
    """The function's time ran out before every write was done; what was written stays written."""


def attribute_value(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value (str, bool, int, float, Decimal, None, dict, list)."""
    kind = type(value)
    if kind is str:
        return {"S": value}
    if kind is bool:
        return {"BOOL": value}
    if kind is int or kind is Decimal:
        return {"N": str(value)}
    if kind is float:
        return {"N": repr(value)}
    if value is None:
        return {"NULL": True}
    if isinstance(value, Mapping):
        return {"M": {str(k): attribute_value(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [attribute_value(v) for v in value]}
    raise TypeError(f"cannot store a {kind.__name__} in DynamoDB")


_deserializer = TypeDeserializer()


def deserialize_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """An attribute-value item as boto3's Python values (numbers as Decimal, see :func:`python_item`)."""
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


def python_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """An attribute-value item as JSON values (:func:`to_python`)."""
    return {name: to_python(_deserializer.deserialize(value)) for name, value in item.items()}


def table_of(event_source_arn: str | None) -> str | None:
    """``arn:aws:dynamodb:…:table/NAME/stream/…`` → ``NAME``."""
    if not event_source_arn or ":table/" not in event_source_arn:
        return None
    return event_source_arn.split(":table/", 1)[1].split("/", 1)[0]


def to_python(value: Any) -> Any:
    """boto3's Python values of DynamoDB as JSON values: ``Decimal`` → int or float, sets → sorted
    lists, binary → text."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(to_python(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def query_items(client: Any, request: Mapping[str, Any]) -> Iterator[Item]:
    """Every item a Query returns, page after page (following ``LastEvaluatedKey``)."""
    request = dict(request)
    while True:
        page = client.query(**request)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _backoff(attempt: int, sleep: Sleep, time_left: TimeLeft, table: str) -> None:
    # Full jitter, 25 ms doubling, capped at 1 s: eight attempts fit in a few seconds.
    delay = random.uniform(0, min(1.0, 0.025 * 2**attempt))  # noqa: S311 - jitter, not security
    if time_left is not None and time_left() <= delay:
        # A 503 in time beats being cut off by the Lambda timeout (API Gateway answers that with 500).
        raise OutOfTime(f"{table}: out of time while DynamoDB throttles")
    sleep(delay)


def _transient_as_unprocessed(call: Callable[..., Any], pending: dict[str, Any], attempt: int) -> Any:
    """``call(RequestItems=pending)``; None when DynamoDB throttled or failed it with attempts left
    (nothing was processed, as far as the caller can tell: every item is sent again)."""
    try:
        return call(RequestItems=pending)
    except ClientError as exc:
        if error_code(exc) in TRANSIENT_ERRORS and attempt < MAX_ATTEMPTS - 1:
            return None
        raise


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _shared_executor() -> ThreadPoolExecutor:
    """Threads kept for the life of the process: starting them per request costs more than a put."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=MAX_WORKERS - 1, thread_name_prefix="dynamodb")
        return _executor


def run_parallel(function: Callable[[Any], Any], batches: Sequence[Any]) -> list[Any]:
    """``function`` of each batch, in order: the first in the calling thread, the others alongside it
    on the process's threads. An error is raised once every call has ended, so that what succeeded
    is done before the caller answers "retry"."""
    if len(batches) <= 1:
        return [function(batch) for batch in batches]
    others = [_shared_executor().submit(function, batch) for batch in batches[1:]]
    try:
        first = function(batches[0])
    finally:
        wait(others)
    return [first, *(future.result() for future in others)]


def batch_get(
    client: Any,
    table: str,
    keys: Sequence[Key],
    projection: str | None = None,
    names: dict[str, str] | None = None,
    consistent: bool = False,
    sleep: Sleep = time.sleep,
    time_left: TimeLeft = None,
) -> list[Item]:
    """The items found for ``keys`` (any order), 100 keys per request; unprocessed keys, and requests
    still throttled or failed after botocore's retries, are retried with backoff."""

    def fetch(batch: Sequence[Key]) -> list[Item]:
        request: dict[str, Any] = {"Keys": list(batch), "ConsistentRead": consistent}
        if projection:
            request["ProjectionExpression"] = projection
        if names:
            request["ExpressionAttributeNames"] = names
        found: list[Item] = []
        pending: dict[str, Any] = {table: request}
        for attempt in range(MAX_ATTEMPTS):
            response = _transient_as_unprocessed(client.batch_get_item, pending, attempt)
            if response is None:
                _backoff(attempt, sleep, time_left, table)
                continue
            found.extend(response.get("Responses", {}).get(table, []))
            pending = response.get("UnprocessedKeys") or {}
            if not pending:
                return found
            _backoff(attempt, sleep, time_left, table)
        raise StoreUnavailable(f"{table}: reads still unprocessed after {MAX_ATTEMPTS} attempts")

    results = run_parallel(fetch, list(chunks(keys, BATCH_GET_LIMIT)))
    return [item for result in results for item in result]


def batch_write(
    client: Any,
    table: str,
    requests: Sequence[dict[str, Any]],
    sleep: Sleep = time.sleep,
    time_left: TimeLeft = None,
) -> None:
    """Put / delete requests (``{"PutRequest": …}``), 25 per request; unprocessed items, and requests
    still throttled or failed after botocore's retries, are retried with backoff."""

    def write(batch: Sequence[dict[str, Any]]) -> None:
        pending: dict[str, Any] = {table: list(batch)}
        for attempt in range(MAX_ATTEMPTS):
            response = _transient_as_unprocessed(client.batch_write_item, pending, attempt)
            if response is None:
                _backoff(attempt, sleep, time_left, table)
                continue
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
            _backoff(attempt, sleep, time_left, table)
        raise StoreUnavailable(f"{table}: writes still unprocessed after {MAX_ATTEMPTS} attempts")

    run_parallel(write, list(chunks(requests, BATCH_WRITE_LIMIT)))


def put_if_absent(client: Any, table: str, items: Sequence[Item], hash_key: str = "pk") -> list[bool]:
    """Put each item unless an item with its key exists; True where it was written, False where not.

    One conditional PutItem per item (``attribute_not_exists``), the first in the calling thread and
    the others alongside it: one round trip for a few items, and DynamoDB itself decides which of
    two concurrent writers of a key is first. Errors other than the failed condition (throttling
    that botocore's retries did not outlast, 5xx) are raised once every put has ended; the puts that
    succeeded stay, so the whole request can be retried.
    """

    def put(item: Item) -> bool:
        try:
            client.put_item(
                TableName=table, Item=item, ConditionExpression=f"attribute_not_exists({hash_key})"
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    return run_parallel(put, items)
