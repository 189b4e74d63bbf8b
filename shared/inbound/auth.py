"""Webhook authentication (SPEC section 2): the connection's secret, presented by Segment.

Accepted, against the current secret and — only when that does not match — the ``AWSPREVIOUS``
version (rotation):
- ``Authorization: <secret>``, ``Authorization: Bearer <secret>``, Basic auth with the secret as user name;
- ``X-Signature``: hex HMAC-SHA1 keyed with the secret, over the raw body (classic Webhooks) or, for
  an array body, over its first element as ``JSON.stringify`` writes it (Webhooks (Actions) batches).

Both versions are cached (``CONFIG_CACHE_SECONDS``). Credentials that do not match the cached current
version have both versions read again, at most every ``SECRET_REFRESH_SECONDS`` per connection (in
between, the cached previous version is tried), so a secret rotated a moment ago is accepted at once,
not when the cache expires.

Every comparison is ``hmac.compare_digest`` and all candidates are compared, so timing says nothing
about which part matched. An unknown connection fails exactly like bad credentials, and is
remembered for a short while so that made-up connection ids cannot turn into a flood of
Secrets Manager calls.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Mapping

from shared import config
from shared.inbound.messages import compact_json, first_element_text

# SSM parameter names allow these; "/" is excluded so an id cannot reach another config's secret.
CONNECTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# As long as a secret that exists goes unread after wrong credentials (no oracle in the timing).
NEGATIVE_CACHE_SECONDS = config.SECRET_REFRESH_SECONDS
NEGATIVE_CACHE_ENTRIES = 10_000


class Unauthorized(Exception):
    """Missing or wrong credentials, or an unknown connection — deliberately indistinguishable."""


class _NegativeCache:
    """Names known not to exist, each for a short while (bounded, so it cannot grow without limit)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def ttl(self) -> float:
        return float(min(NEGATIVE_CACHE_SECONDS, config.cache_seconds()))

    def __contains__(self, name: str) -> bool:
        expiry = self._expiry.get(name)
        if expiry is None:
            return False
        if expiry <= self.clock():
            self._expiry.pop(name, None)
            return False
        return True

    def add(self, name: str) -> None:
        ttl = self.ttl()
        if ttl <= 0:
            return
        with self._lock:
            if len(self._expiry) >= NEGATIVE_CACHE_ENTRIES:
                now = self.clock()
                self._expiry = {k: v for k, v in self._expiry.items() if v > now}
                if len(self._expiry) >= NEGATIVE_CACHE_ENTRIES:
                    self._expiry.clear()
            self._expiry[name] = self.clock() + ttl

    def discard(self, name: str) -> None:
        with self._lock:
            self._expiry.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self._expiry.clear()


unknown_secrets = _NegativeCache()


def clear_caches() -> None:
    unknown_secrets.clear()
    _refused_against.clear()


def presented_tokens(headers: Mapping[str, str]) -> list[bytes]:
    """Every form in which the Authorization header may carry the secret."""
    value = (headers.get("authorization") or "").strip()
    if not value:
        return []
    tokens = [value.encode()]
    scheme, _, rest = value.partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        tokens.append(rest.encode())
    elif scheme.lower() == "basic" and rest:
        try:
            user = base64.b64decode(rest, validate=True).split(b":", 1)[0]
        except (binascii.Error, ValueError):
            user = b""
        if user:
            tokens.append(user)
    return tokens


def signed_payloads(body: bytes) -> list[bytes]:
    """What an X-Signature may have been computed over: the body, or an array body's first element."""
    payloads = [body]
    first = first_element_text(body)
    if first is not None:
        payloads.append(first)
        with contextlib.suppress(ValueError, RecursionError):
            payloads.append(compact_json(json.loads(first)))
    return payloads


class Credentials:
    """What a request presents, prepared once and checked against one or more secrets."""

    def __init__(self, headers: Mapping[str, str], body: bytes) -> None:
        self.tokens = presented_tokens(headers)
        signature = (headers.get("x-signature") or "").strip().lower()
        self.signature = signature.encode() if signature else b""
        self.payloads = signed_payloads(body) if self.signature else []

    @property
    def present(self) -> bool:
        return bool(self.tokens or self.signature)

    def match(self, secret: str) -> bool:
        key = secret.strip().encode()
        if not key:
            return False
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(token, key)
        for payload in self.payloads:
            digest = hmac.new(key, payload, hashlib.sha1).hexdigest().encode()
            matched |= hmac.compare_digest(digest, self.signature)
        return matched


def authenticate(connection_id: str, headers: Mapping[str, str], body: bytes) -> None:
    """Raise :class:`Unauthorized` unless the request carries the connection's current or previous secret.

    :class:`shared.config.ConfigUnavailable` (Secrets Manager failing) propagates: that is a 503.
    """
    credentials = Credentials(headers, body)
    if not credentials.present or not CONNECTION_ID.fullmatch(connection_id):
        raise Unauthorized
    name = config.inbound_name(connection_id)
    if name in unknown_secrets:
        raise Unauthorized
    try:
        current = config.get_secret(name)
    except config.ConfigNotFound:
        _remember_unknown(name)
        raise Unauthorized from None
    if credentials.match(current):
        return
    # After a rotation, the cached previous version may be older than it: read again at once.
    if _rotated_since_seen(name, current) and _matches_previous(name, credentials, fresh=True):
        return
    if config.secret_refreshes.due(name):
        # The secret may have been rotated since either version was cached (they expire apart).
        if _matches_fresh(name, credentials):
            return
    elif _matches_previous(name, credentials):
        return
    raise Unauthorized


# A digest of the current version each connection's credentials were last refused against.
_refused_against: dict[str, bytes] = {}


def _rotated_since_seen(name: str, current: str) -> bool:
    digest = hashlib.sha256(current.encode()).digest()
    seen = _refused_against.get(name)
    _refused_against[name] = digest
    return seen is not None and not hmac.compare_digest(seen, digest)


def _remember_unknown(name: str) -> None:
    """An unknown connection costs the two reads that wrong credentials for a known one cost every
    ``SECRET_REFRESH_SECONDS``, once per ``NEGATIVE_CACHE_SECONDS`` (the same): the number of Secrets
    Manager reads does not tell connections that exist from those that do not."""
    unknown_secrets.add(name)
    with contextlib.suppress(config.ConfigNotFound):
        config.get_secret(name, previous=True, fresh=True)


def _matches_previous(name: str, credentials: Credentials, fresh: bool = False) -> bool:
    previous_name = f"{name}@AWSPREVIOUS"
    if previous_name in unknown_secrets and not fresh:
        return False
    try:
        previous = config.get_secret(name, previous=True, fresh=fresh)
    except config.ConfigNotFound:
        unknown_secrets.add(previous_name)
        return False
    unknown_secrets.discard(previous_name)  # a rotation since it was found missing
    return credentials.match(previous)


def _matches_fresh(name: str, credentials: Credentials) -> bool:
    """Both versions read again past the cache, which then holds them."""
    try:
        current = config.get_secret(name, fresh=True)
    except config.ConfigNotFound:
        _remember_unknown(name)
        return False
    previous = _matches_previous(name, credentials, fresh=True)  # read whatever matches: both are stale
    return credentials.match(current) or previous
