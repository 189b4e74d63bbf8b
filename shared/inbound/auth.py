"""Webhook authentication (docs/inbound.md): the connection's secret, presented by Segment.

Accepted, against the current secret and — only when that does not match — the ``AWSPREVIOUS``
version (rotation):
- ``Authorization: <secret>``, ``Authorization: Bearer <secret>``, Basic auth with the secret as user name;
- ``X-Signature``: hex HMAC-SHA1 keyed with the secret, over the raw body (classic Webhooks) or, for
  an array body, over its first element as ``JSON.stringify`` writes it (Webhooks (Actions) batches).
  An object body of up to :data:`RESERIALIZED_BODY_BYTES` may also be signed as ``JSON.stringify``
  writes it, which is how Segment's documentation checks the signature of a classic webhook;
- ``X-Segment-Signature``: the same HMAC over the whole body, which Webhooks (Actions) sends instead
  of ``X-Signature`` with its "Use X-Segment-Signature Header" setting.

How the two versions are cached and read again (a rotation is accepted at once) is
:mod:`shared.secret_versions`, which the profile API shares.

Every comparison is ``hmac.compare_digest`` and all candidates are compared, so timing says nothing
about which part matched. An unknown connection fails exactly like bad credentials, and is
remembered for a short while so that made-up connection ids cannot turn into a flood of
Secrets Manager calls.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Mapping

from shared import config
from shared.inbound.messages import compact_json, first_element_text
from shared.secret_versions import secret_accepts, secret_bytes

# SSM parameter names allow these; "/" is excluded so an id cannot reach another config's secret.
CONNECTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# A classic webhook carries one message (a few KB): an object body up to this size is also parsed
# before authentication, to check a signature over its compact form. Larger ones are signed raw.
RESERIALIZED_BODY_BYTES = 64 * 1024


class Unauthorized(Exception):
    """Missing or wrong credentials, or an unknown connection — deliberately indistinguishable."""


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
            payloads.extend(compact_forms(json.loads(first)))
    return payloads


def compact_forms(value: object) -> list[bytes]:
    """``value`` serialised compactly: as ``JSON.stringify`` writes it and, when that holds non-ASCII
    characters, with them escaped as well (``\\u00e9``: what ``json.dumps`` writes by default)."""
    compact = compact_json(value)
    if compact.isascii():
        return [compact]
    return [compact, json.dumps(value, separators=(",", ":")).encode()]


def compact_body(body: bytes) -> list[bytes]:
    """A small object body's compact forms (:func:`compact_forms`); none for any other body."""
    if len(body) > RESERIALIZED_BODY_BYTES or not body.lstrip().startswith(b"{"):
        return []
    with contextlib.suppress(ValueError, RecursionError):
        return compact_forms(json.loads(body))
    return []


class Credentials:
    """What a request presents, prepared once and checked against one or more secrets."""

    def __init__(self, headers: Mapping[str, str], body: bytes) -> None:
        self.tokens = presented_tokens(headers)
        self.signature = _hex_header(headers, "x-signature")
        self.payloads = signed_payloads(body) if self.signature else []
        self.body_signature = _hex_header(headers, "x-segment-signature")
        self._body = body

    @property
    def present(self) -> bool:
        return bool(self.tokens or self.signature or self.body_signature)

    def match(self, secret: str) -> bool:
        key = secret_bytes(secret)
        if not key:
            return False
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(token, key)
        for payload in self.payloads:
            matched |= _signs(key, payload, self.signature)
        if self.body_signature:
            matched |= _signs(key, self._body, self.body_signature)
        if (self.signature or self.body_signature) and not matched:
            # Only then is the body parsed again: a signature over the body as sent is the rule.
            for compact in self._compact_body:
                for signature in (self.signature, self.body_signature):
                    matched |= bool(signature) and _signs(key, compact, signature)
        return matched

    @functools.cached_property
    def _compact_body(self) -> list[bytes]:
        return compact_body(self._body)


def _hex_header(headers: Mapping[str, str], name: str) -> bytes:
    return (headers.get(name) or "").strip().lower().encode()


def _signs(key: bytes, payload: bytes, signature: bytes) -> bool:
    digest = hmac.new(key, payload, hashlib.sha1).hexdigest().encode()
    return hmac.compare_digest(digest, signature)


def authenticate(connection_id: str, headers: Mapping[str, str], body: bytes) -> None:
    """Raise :class:`Unauthorized` unless the request carries the connection's current or previous secret.

    :class:`shared.config.ConfigUnavailable` (Secrets Manager failing) propagates: that is a 503.
    """
    credentials = Credentials(headers, body)
    if not credentials.present or not CONNECTION_ID.fullmatch(connection_id):
        raise Unauthorized
    if not secret_accepts(config.inbound_name(connection_id), credentials.match):
        raise Unauthorized
