"""Lazily created AWS clients.

Clients are built on first use, never at import time: moto (tests, the local stack) must be in place
before a client exists, and cold starts stay short. ``AWS_ENDPOINT_URL`` is honoured by boto3 itself.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import boto3
from botocore.config import Config

# Retries inside botocore stay short (configs and secrets too, see shared.config): the HTTP layer
# above decides what is transient for the caller (a 503 to Segment, a batch item failure to SQS),
# and a Lambda's time is bounded.
CLIENT_CONFIG = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=2, read_timeout=5)


# DynamoDB requests on hot paths carry thousands of attribute values that the code builds itself;
# botocore re-validating them against the API model costs more CPU than sending them (about
# 0.25 ms per item), and DynamoDB validates every request anyway.
_SKIP_PARAMETER_VALIDATION = {"dynamodb"}


# One session for every client of the process: a session loads botocore's endpoint and service
# data once and every client created from it reuses them (a session per client loaded them again
# for each, tenths of a second of every cold start). Sessions are not thread-safe, so clients are
# created under a lock; the clients themselves are.
_SESSION_LOCK = threading.Lock()


@functools.cache
def session() -> boto3.session.Session:
    return boto3.session.Session()


@functools.cache
def client(service: str) -> Any:
    config = CLIENT_CONFIG
    if service in _SKIP_PARAMETER_VALIDATION:
        config = config.merge(Config(parameter_validation=False))
    with _SESSION_LOCK:
        return session().client(service, config=config)


@functools.cache
def dynamodb_table(name: str) -> Any:
    with _SESSION_LOCK:
        return session().resource("dynamodb", config=CLIENT_CONFIG).Table(name)


def env(name: str) -> str:
    """A required environment variable (set by template.yaml), with a clear error when missing."""
    try:
        return os.environ[name]
    except KeyError:
        raise RuntimeError(f"environment variable {name} is not set (template.yaml sets it)") from None


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints and credentials between cases)."""
    client.cache_clear()
    dynamodb_table.cache_clear()
    session.cache_clear()
