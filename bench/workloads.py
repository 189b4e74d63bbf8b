"""Deterministic inputs: FME impressions in every body shape the queue accepts (docs/outbound.md), and Segment webhook messages.

Values follow the vendors' payloads (Split's impressions webhook, the SDK impression listener, the
Segment spec's track / page / screen examples); sizes are what production traffic carries.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ENVIRONMENTS = (
    ("Production", "194da2f0-3e22-11ea-ba75-12f2f63694e5"),
    ("Staging", "8ee4b1a0-3e22-11ea-ba75-12f2f63694e5"),
)
FLAGS = [
    f"{area}_{name}"
    for area in ("checkout", "search", "pricing", "onboarding", "feed")
    for name in (
        "redesign",
        "ranking_v2",
        "annual_toggle",
        "free_trial",
        "dark_mode",
        "recs",
        "banner",
        "cta",
        "copy",
        "limits",
    )
]
TREATMENTS = ("on", "off", "v1", "v2", "control")
LABELS = ("default rule", "in segment beta_testers", "targeting rule", "whitelisted", "killed")
SDKS = (
    ("java", "4.13.0"),
    ("nodejs", "10.28.0"),
    ("python", "10.7.0"),
    ("go", "6.6.0"),
    ("javascript", "11.4.0"),
)
BASE_TIME_MS = 1_795_483_041_109
OUTBOUND_WRITE_KEY = "bench-write-key"
# The first invocation of a container loads configs and builds clients; the handler is warmed up on
# impressions of their own environment, sent with their own write key, so they are not counted.
WARMUP_ENVIRONMENT = "Warmup"
WARMUP_WRITE_KEY = "bench-warmup-write-key"
OUTBOUND_CONFIG: dict[str, Any] = {
    "environments": ["Production", "Staging"],
    "identities": {"user": "userId", "anonymous": "anonymousId"},
    "defaultTrafficType": "user",
    "eventName": "get_treatment",
}


@dataclass(frozen=True)
class ImpressionMix:
    """The SQS messages of every batch of ten: mostly envelopes, and every other shape beside them."""

    envelope_size: int = 500  # impressions per envelope (about 200 KB: under SQS's 256 KB classic limit)
    envelopes: int = 7  # per batch of 10 messages; half their items webhook-shaped, half listener-shaped
    webhook_list_size: int = 100  # Split's impressions webhook posts arrays
    webhook_lists: int = 2
    singles: int = 1  # single webhook or listener objects

    @property
    def per_batch(self) -> int:
        return (
            self.envelopes * self.envelope_size + self.webhook_lists * self.webhook_list_size + self.singles
        )


def _impression_values(rng: random.Random, n: int) -> dict[str, Any]:
    environment, environment_id = ENVIRONMENTS[0] if rng.random() < 0.8 else ENVIRONMENTS[1]
    sdk, sdk_version = rng.choice(SDKS)
    user = uuid.UUID(int=rng.getrandbits(128)).hex
    host = rng.randrange(1, 250)
    return {
        "key": f"{user[:8]}-{user[8:12]}-{user[12:16]}-{user[16:20]}-{user[20:]}",
        "split": rng.choice(FLAGS),
        "environmentId": environment_id,
        "environmentName": environment,
        "treatment": rng.choice(TREATMENTS),
        "time": BASE_TIME_MS + n * 7,
        "bucketingKey": None if rng.random() < 0.7 else user,
        "label": rng.choice(LABELS),
        "machineName": f"ip-10-0-1-{host}",
        "machineIp": f"10.0.1.{host}",
        "splitVersionNumber": 1_795_482_000_000 + rng.randrange(1000),
        "sdk": sdk,
        "sdkVersion": sdk_version,
        "properties": None
        if rng.random() < 0.8
        else json.dumps({"page": rng.choice(("cart", "home", "search"))}),
        "trafficType": "user" if rng.random() < 0.85 else "anonymous",
    }


def _webhook(v: dict[str, Any], with_environment: bool = True) -> dict[str, Any]:
    item = dict(v)
    if not with_environment:
        item.pop("environmentId")
        item.pop("environmentName")
    return item


def _listener(v: dict[str, Any], with_environment: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {
        "impression": {
            "feature": v["split"],
            "keyName": v["key"],
            "treatment": v["treatment"],
            "time": v["time"],
            "bucketingKey": v["bucketingKey"],
            "label": v["label"],
            "changeNumber": v["splitVersionNumber"],
            "properties": v["properties"],
        },
        "attributes": {"plan": "pro"} if v["properties"] else None,
        "ip": v["machineIp"],
        "hostname": v["machineName"],
        "sdkLanguageVersion": f"{v['sdk']}-{v['sdkVersion']}",
        "trafficType": v["trafficType"],
    }
    if with_environment:
        item["environmentName"] = v["environmentName"]
    return item


def impression_bodies(total: int, mix: ImpressionMix = ImpressionMix(), seed: int = 7) -> list[str]:
    """SQS message bodies holding ``total`` impressions, every batch of 10 mixing the shapes (seeded).

    Bodies are in delivery order: consecutive groups of ten are the SQS batches.
    """
    rng = random.Random(seed)
    bodies: list[str] = []
    n = 0

    def take(size: int) -> list[dict[str, Any]]:
        nonlocal n
        size = min(size, total - n)
        values = [_impression_values(rng, n + i) for i in range(size)]
        n += size
        return values

    while n < total:
        batch: list[str] = []
        for _ in range(mix.envelopes):
            values = take(mix.envelope_size)
            if not values:
                break
            # One envelope per environment, as a producer batching per SDK instance sends them.
            environment = values[0]["environmentName"]
            items = []
            for v in values:
                v["environmentName"], v["environmentId"] = environment, dict(ENVIRONMENTS)[environment]
                items.append(_listener(v, False) if rng.random() < 0.5 else _webhook(v, False))
            batch.append(
                json.dumps({"environmentName": environment, "impressions": items}, separators=(",", ":"))
            )
        for _ in range(mix.webhook_lists):
            values = take(mix.webhook_list_size)
            if values:
                batch.append(json.dumps([_webhook(v) for v in values], separators=(",", ":")))
        for _ in range(mix.singles):
            values = take(1)
            if values:
                batch.append(
                    json.dumps(_listener(values[0]) if n % 2 else _webhook(values[0]), separators=(",", ":"))
                )
        rng.shuffle(batch)
        bodies.extend(batch)
    return bodies


def warmup_bodies(total: int = 500) -> list[str]:
    bodies = impression_bodies(total, seed=99)
    return [
        b.replace('"Production"', f'"{WARMUP_ENVIRONMENT}"').replace('"Staging"', f'"{WARMUP_ENVIRONMENT}"')
        for b in bodies
    ]


def sqs_batches(bodies: list[str], batch_size: int = 10) -> Iterator[list[str]]:
    for start in range(0, len(bodies), batch_size):
        yield bodies[start : start + batch_size]


# ---------------------------------------------------------------------------------------------
# Segment webhook traffic

CONNECTION = "bench"
WEBHOOK_SECRET = "whsec-bench-3f9a1c0b7d2e4a6b"
INBOUND_CONFIG: dict[str, Any] = {
    "environment": "Production",
    "identities": [
        {"segmentId": "userId", "trafficType": "user"},
        {"segmentId": "anonymousId", "trafficType": "anonymous"},
    ],
}
_CONTEXT = {
    "library": {"name": "analytics.js", "version": "2.11.1"},
    "page": {
        "path": "/academy/",
        "referrer": "",
        "title": "Analytics Academy",
        "url": "https://segment.com/academy/",
    },
    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko)",
    "ip": "108.0.78.21",
}


def segment_messages(count: int, run: str, seed: int = 11) -> list[dict[str, Any]]:
    """Track / named page / named screen calls (Segment spec examples), each with userId and anonymousId.

    Each yields two FME events (one per mapped traffic type); ``run`` makes every messageId unique.
    """
    rng = random.Random(seed)
    messages = []
    for i in range(count):
        kind = rng.random()
        user = uuid.UUID(int=rng.getrandbits(128))
        ts = f"2026-11-25T10:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"
        message: dict[str, Any] = {
            "anonymousId": str(user),
            "userId": f"user-{rng.randrange(1_000_000)}",
            "messageId": f"ajs-{run}-{i:08d}-{user.hex[:12]}",
            "timestamp": ts,
            "originalTimestamp": ts,
            "receivedAt": ts,
            "sentAt": ts,
            "context": _CONTEXT,
            "integrations": {},
            "version": 2,
            "channel": "client",
        }
        if kind < 0.7:
            message.update(
                type="track",
                event=rng.choice(("Course Clicked", "Checkout Started", "Order Completed", "Signed Up")),
                properties={
                    "title": "Intro to Analytics",
                    "revenue": round(rng.random() * 100, 2),
                    "currency": "USD",
                    "plan": "pro",
                },
            )
        elif kind < 0.9:
            message.update(
                type="page",
                name=rng.choice(("Home", "Pricing", "Signup")),
                properties={"path": "/academy/", "title": "Analytics Academy"},
            )
        else:
            message.update(
                type="screen",
                name=rng.choice(("Home", "Settings")),
                properties={"variation": "blue signup button"},
            )
        messages.append(message)
    return messages
