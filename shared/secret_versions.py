"""Secrets that authenticate callers (the webhook's, the profile API's) and their rotation.

Accepted: the current version and, only when that does not match, the ``AWSPREVIOUS`` one. Both are
cached (``CONFIG_CACHE_SECONDS``), each on its own clock. Credentials that do not match the cached
current version have both versions read again, so a secret rotated (or created) a moment ago is
accepted at once, not when the cache expires. Those reads draw on a budget per secret: a burst of
:data:`SECRET_REFRESH_BURST`, then one every :data:`SECRET_REFRESH_SECONDS`, so that wrong
credentials cannot turn into a flood of Secrets Manager calls. With the budget spent, the cached
previous version is tried, and read again at once when the current version has changed since the
last refusal (a rotation seen through an expired cache). A secret that does not exist is remembered
as such, and costs the same reads from the same budget, so the reads do not tell a name that exists
from one that does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import threading
import time
from collections.abc import Callable

from shared import config

# Credentials that match neither cached version may be those of a rotation made since: both versions
# are then read again, up to this many times in a row per secret, then once per
# SECRET_REFRESH_SECONDS, so that bad credentials cannot turn into a flood of Secrets Manager calls.
SECRET_REFRESH_BURST = 20
SECRET_REFRESH_SECONDS = 10.0
# A secret found missing is remembered as long as one that exists goes unread after wrong
# credentials (no oracle in the reads).
NEGATIVE_CACHE_SECONDS = SECRET_REFRESH_SECONDS
MAX_REMEMBERED_NAMES = 10_000


def negative_cache_seconds() -> float:
    return float(min(NEGATIVE_CACHE_SECONDS, config.cache_seconds()))


class _RecentNames:
    """Names remembered for a while (bounded, so it cannot grow without limit)."""

    def __init__(self, seconds: Callable[[], float], clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def __contains__(self, name: str) -> bool:
        expiry = self._expiry.get(name)
        if expiry is None:
            return False
        if expiry <= self.clock():
            self._expiry.pop(name, None)
            return False
        return True

    def add(self, name: str) -> None:
        with self._lock:
            self._remember(name)

    def _remember(self, name: str) -> None:  # with the lock held
        seconds = self.seconds()
        if seconds <= 0:
            return
        if len(self._expiry) >= MAX_REMEMBERED_NAMES:
            now = self.clock()
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
            if len(self._expiry) >= MAX_REMEMBERED_NAMES:
                self._expiry.clear()
        self._expiry[name] = self.clock() + seconds

    def discard(self, name: str) -> None:
        with self._lock:
            self._expiry.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self._expiry.clear()


class _RefreshBudget:
    """Reads past the cache each secret may still make: a token bucket per name (bounded)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name: (tokens, when counted)
        self._lock = threading.Lock()

    def take(self, name: str) -> bool:
        """Spend one read of ``name``'s budget: False when there is none left."""
        with self._lock:
            now = self.clock()
            tokens, counted = self._buckets.get(name, (SECRET_REFRESH_BURST, now))
            tokens = min(SECRET_REFRESH_BURST, tokens + (now - counted) / SECRET_REFRESH_SECONDS)
            if tokens < 1:
                self._buckets[name] = (tokens, now)
                return False
            if len(self._buckets) >= MAX_REMEMBERED_NAMES and name not in self._buckets:
                self._buckets.clear()  # every secret starts again with a full budget
            self._buckets[name] = (tokens - 1, now)
            return True

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()


unknown_secrets = _RecentNames(negative_cache_seconds)
refresh_budget = _RefreshBudget()


def clear_caches() -> None:
    unknown_secrets.clear()
    refresh_budget.clear()
    _refused_against.clear()


def secret_bytes(secret: str) -> bytes:
    """A stored secret as credentials are compared with it: without the whitespace around it (a
    secret written from a file an editor saved ends in a newline). Empty means no secret."""
    return secret.strip().encode()


def secret_accepts(name: str, matches: Callable[[str], bool]) -> bool:
    """Whether ``matches`` accepts the current or the previous (``AWSPREVIOUS``) version of the secret.

    Both versions are cached, each on its own clock; see the module's docstring for when they are
    read again. A secret that does not exist is remembered as such for a while.
    :class:`shared.config.ConfigUnavailable` propagates.
    """
    if name in unknown_secrets:
        # Created since it was found missing? Read again as often as an existing secret would be.
        return refresh_budget.take(name) and _matches_fresh(name, matches)
    try:
        current = config.get_secret(name)
    except config.ConfigNotFound:
        refresh_budget.take(name)  # as the wrong credentials of a secret that exists would
        _remember_unknown(name)
        return False
    if matches(current):
        return True
    # After a rotation, the cached previous version may be older than it: read again at once.
    if _rotated_since_seen(name, current) and _matches_previous(name, matches, fresh=True):
        return True
    if refresh_budget.take(name):
        # The secret may have been rotated since either version was cached (they expire apart).
        return _matches_fresh(name, matches)
    return _matches_previous(name, matches)


def token_accepted(name: str, token: bytes) -> bool:
    """Whether ``token`` is the current or the previous version of the secret ``name``, compared in
    constant time. An empty token, or no secret set up, lets nobody in."""

    def matches(secret: str) -> bool:
        key = secret_bytes(secret)
        return bool(key) and hmac.compare_digest(token, key)

    return bool(token) and secret_accepts(name, matches)


# A digest of the current version each connection's credentials were last refused against.
_refused_against: dict[str, bytes] = {}


def _rotated_since_seen(name: str, current: str) -> bool:
    digest = hashlib.sha256(current.encode()).digest()
    seen = _refused_against.get(name)
    _refused_against[name] = digest
    return seen is not None and not hmac.compare_digest(seen, digest)


def _remember_unknown(name: str) -> None:
    """An unknown secret costs the two reads that wrong credentials for a known one cost: the number
    of Secrets Manager reads does not tell connections that exist from those that do not."""
    unknown_secrets.add(name)
    with contextlib.suppress(config.ConfigNotFound):
        config.get_secret(name, previous=True, fresh=True)


def _matches_previous(name: str, matches: Callable[[str], bool], fresh: bool = False) -> bool:
    previous_name = f"{name}@AWSPREVIOUS"
    if previous_name in unknown_secrets and not fresh:
        return False
    try:
        previous = config.get_secret(name, previous=True, fresh=fresh)
    except config.ConfigNotFound:
        unknown_secrets.add(previous_name)
        return False
    unknown_secrets.discard(previous_name)  # a rotation since it was found missing
    return matches(previous)


def _matches_fresh(name: str, matches: Callable[[str], bool]) -> bool:
    """Both versions read again past the cache, which then holds them."""
    try:
        current = config.get_secret(name, fresh=True)
    except config.ConfigNotFound:
        _remember_unknown(name)
        return False
    unknown_secrets.discard(name)  # created since it was found missing
    previous = _matches_previous(name, matches, fresh=True)  # read whatever matches: both are stale
    return matches(current) or previous
