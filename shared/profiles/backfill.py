"""Evaluating one audience for every identity already stored, once, when it is created or changed.

The audiences functions evaluate an identity when something it refers to changes, or when a window
closes; a new audience would otherwise wait for each identity's next change. A back-fill finds every
identity of the audience's environment and traffic type in the three tables (events, identity
attributes, last treatments), and evaluates them in rounds through the same
:class:`~shared.profiles.audience_sync.AudienceEvaluator` as the functions: the same entries and
exits, the same identify calls and ``messageId`` s, the same stored memberships. Running it again
changes nothing that is already right.

Finding the identities scans each table (one ``Scan`` reads the whole table, whatever the filter
keeps): a one-off cost of the tables' size, see docs/profiles.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

from shared import aws
from shared.profiles.audience_sync import PROFILES_PER_ROUND, AudienceEvaluator, SyncReport
from shared.profiles_table import profile_pk_prefix

# Environment variables of the tables whose items are keyed by identity (``pk`` = env#type#key).
IDENTITY_TABLES = ("EVENTS_TABLE", "IDENTITIES_TABLE", "PROFILES_TABLE")


def stored_identities(
    environment: str, traffic_type: str, tables: Iterable[str] | None = None
) -> Iterator[str]:
    """Each identity key (``pk``) of the environment and traffic type found in the tables, once."""
    client = aws.client("dynamodb")
    paginator = client.get_paginator("scan")
    prefix = profile_pk_prefix(environment, traffic_type)
    seen: set[str] = set()
    for table in tables if tables is not None else [aws.env(name) for name in IDENTITY_TABLES]:
        pages = paginator.paginate(
            TableName=table,
            ProjectionExpression="pk",
            FilterExpression="begins_with(pk, :prefix)",
            ExpressionAttributeValues={":prefix": {"S": prefix}},
        )
        for page in pages:
            for item in page["Items"]:
                pk = item["pk"]["S"]
                if pk not in seen:
                    seen.add(pk)
                    yield pk


def backfill(
    evaluator: AudienceEvaluator,
    pks: Iterable[str],
    now_ms: Callable[[], int],
    dry_run: bool = False,
    on_round: Callable[[SyncReport], None] = lambda report: None,
    per_round: int = PROFILES_PER_ROUND,
) -> SyncReport:
    """Evaluate the identities in rounds; ``dry_run`` counts who would enter or exit, and neither
    sends nor stores anything."""
    total = SyncReport()
    iterator = iter(pks)
    while chunk := list(itertools.islice(iterator, per_round)):
        now = now_ms()
        total.add(evaluator.preview(chunk, now) if dry_run else evaluator.sync_profiles(chunk, now))
        on_round(total)
    return total
