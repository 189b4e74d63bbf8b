"""Nobody let in: every way of presenting wrong credentials, the same 401 for all, constant-time checks.

Through the real ingest handler with real-shaped HTTP API events. The 401 must not tell an unknown
connection from a known one with a wrong secret (no oracle for which connections exist), and every
comparison of a presented credential with a secret must be ``hmac.compare_digest``.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest

from tests.conftest import put_config, put_secret
from tests.integration.ingest_support import CONFIG, CONNECTION, SECRET, Webhook, segment_message

ROOT = Path(__file__).resolve().parents[2]
OTHER_CONNECTION = "globex-production"
OTHER_SECRET = "whsec-globex-77d0aa51"
ROTATED_SECRET = "whsec-rotated-5be1c2f9"
BODY = segment_message("track")
RAW = json.dumps(BODY).encode()


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def sign(secret: str, payload: bytes = RAW) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha1).hexdigest()


@pytest.fixture
def webhook(webhook: Webhook) -> Webhook:
    """The shared webhook, and a second connection with a secret of its own."""
    put_config(f"inbound/{OTHER_CONNECTION}", CONFIG)
    put_secret(f"inbound/{OTHER_CONNECTION}", OTHER_SECRET)
    return webhook


REFUSED: dict[str, tuple[dict[str, str], str]] = {
    "missing": ({}, CONNECTION),
    "wrong secret": ({"authorization": "Bearer not-the-secret"}, CONNECTION),
    "wrong secret, raw": ({"authorization": "not-the-secret"}, CONNECTION),
    "empty bearer": ({"authorization": "Bearer "}, CONNECTION),
    "secret with extra text": ({"authorization": f"Bearer {SECRET}x"}, CONNECTION),
    "secret prefix": ({"authorization": f"Bearer {SECRET[:-1]}"}, CONNECTION),
    "other connection's secret": ({"authorization": f"Bearer {OTHER_SECRET}"}, CONNECTION),
    "unknown connection": ({"authorization": f"Bearer {SECRET}"}, "no-such-connection"),
    "unknown connection, no credentials": ({}, "no-such-connection"),
    "connection id reaching another secret": ({"authorization": f"Bearer {SECRET}"}, "acme-production%2Ffme"),
    "malformed basic, not base64": ({"authorization": "Basic %%%not-base64%%%"}, CONNECTION),
    "malformed basic, empty": ({"authorization": "Basic "}, CONNECTION),
    "malformed basic, no colon": (
        {"authorization": "Basic " + base64.b64encode(b"nocolon").decode()},
        CONNECTION,
    ),
    "basic, secret as password": ({"authorization": basic("", SECRET)}, CONNECTION),
    "basic, wrong user": ({"authorization": basic("someone")}, CONNECTION),
    "wrong signature": ({"x-signature": sign("not-the-secret")}, CONNECTION),
    "signature of another body": ({"x-signature": sign(SECRET, b"{}")}, CONNECTION),
    "signature, not hex": ({"x-signature": "zz" * 20}, CONNECTION),
    "signature, truncated": ({"x-signature": sign(SECRET)[:20]}, CONNECTION),
    "other connection's signature": ({"x-signature": sign(OTHER_SECRET)}, CONNECTION),
}

ACCEPTED: dict[str, dict[str, str]] = {
    "bearer": {"authorization": f"Bearer {SECRET}"},
    "raw": {"authorization": SECRET},
    "basic, secret as user": {"authorization": basic(SECRET)},
    "signature": {"x-signature": sign(SECRET)},
    "wrong bearer but right signature": {"authorization": "Bearer nope", "x-signature": sign(SECRET)},
}


def test_refused_with_the_same_401(webhook: Webhook) -> None:
    reference = webhook.post(BODY, headers={"authorization": "Bearer wrong"}, connection=CONNECTION)
    assert reference.status == 401
    assert reference.body == {"error": "unauthorized", "message": "missing or invalid credentials"}
    for case, (headers, connection) in REFUSED.items():
        answer = webhook.post(BODY, headers=dict(headers), connection=connection)
        # Byte for byte the same answer, whether or not the connection exists.
        assert (answer.status, answer.body, answer.headers) == (401, reference.body, reference.headers), case
    assert webhook.count_events() == 0


def test_accepted(webhook: Webhook) -> None:
    for number, (case, headers) in enumerate(ACCEPTED.items()):
        body = {**BODY, "messageId": f"accepted-{number}"}
        if "x-signature" in headers:
            headers = {**headers, "x-signature": sign(SECRET, json.dumps(body).encode())}
        answer = webhook.post(body, headers=dict(headers))
        assert (answer.status, answer.body.get("stored")) == (200, 1), case


def test_rotation_accepts_current_and_previous_but_not_older(webhook: Webhook) -> None:
    put_secret(f"inbound/{CONNECTION}", ROTATED_SECRET)  # SECRET is now AWSPREVIOUS
    from shared import config

    config.clear_caches()
    assert webhook.post(BODY, headers={"authorization": f"Bearer {ROTATED_SECRET}"}).status == 200
    assert webhook.post(BODY, headers={"x-signature": sign(SECRET)}).status == 200  # previous
    put_secret(f"inbound/{CONNECTION}", "whsec-third-0c4e")  # SECRET is now two rotations old
    config.clear_caches()
    answer = webhook.post(BODY, headers={"authorization": f"Bearer {SECRET}"})
    assert answer.status == 401


def test_credentials_are_compared_with_compare_digest(
    webhook: Webhook, compared_digests: list[tuple[bytes, bytes]]
) -> None:
    """The comparison that lets a request in goes through hmac.compare_digest, with the secret."""
    assert webhook.post(BODY).status == 200
    assert (SECRET.encode(), SECRET.encode()) in compared_digests
    compared_digests.clear()
    assert webhook.post(BODY, headers={"x-signature": sign(SECRET)}).status == 200
    assert (sign(SECRET).encode(), sign(SECRET).encode()) in compared_digests


SENSITIVE = re.compile(
    r"secret|token|signature|digest|password|write_?key|api_?key|sdk_?key|admin_?key|presented", re.I
)
AUTH_MODULES = [
    "shared/inbound/auth.py",
    "shared/secret_versions.py",
    "functions/profiles/app.py",
    "functions/impressions_webhook/app.py",
]


@pytest.mark.parametrize("module", AUTH_MODULES)
def test_no_plain_equality_on_credentials(module: str) -> None:
    """No ``==`` / ``!=`` between values that hold credentials in the authentication code."""
    path = ROOT / module
    assert path.exists(), f"{module} moved: name its new place in AUTH_MODULES"
    tree = ast.parse(path.read_text())
    offending = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        names = [ast.unparse(o) for o in operands]
        # Comparing with a literal (an empty value, a scheme name) reveals nothing about a secret.
        if any(isinstance(o, ast.Constant) for o in operands):
            continue
        if any(SENSITIVE.search(name) for name in names):
            offending.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert not offending, offending
    # Each compares with hmac.compare_digest, or through shared.secret_versions.token_accepted, which
    # does (the spy tests of the profile API and of the impressions webhook).
    assert re.search(r"\bcompare_digest\b|\btoken_accepted\(", path.read_text())
