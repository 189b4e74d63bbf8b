"""The functions' X-Ray tracer: Powertools' ``Tracer``, which costs nothing at cold start when tracing is off.

Powertools imports the X-Ray SDK (and patches botocore and httpx with it) whenever a ``Tracer`` is
created, even a disabled one: tens of milliseconds of every cold start. Tracing is opt-in
(template parameter ``Tracing``, default ``Disabled``, which sets ``POWERTOOLS_TRACE_DISABLED``).
When it is off, the tracer gets a provider that records nothing, so the SDK is never imported; the
``capture_*`` decorators and ``put_annotation`` / ``put_metadata`` work the same in both modes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.shared import constants
from aws_lambda_powertools.shared.functions import strtobool
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment


class _UnrecordedSegment(BaseSegment):
    def close(self, end_time: int | None = None) -> None:
        pass

    def add_subsegment(self, subsegment: Any) -> None:
        pass

    def remove_subsegment(self, subsegment: Any) -> None:
        pass

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        pass

    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None:
        pass


class UnrecordedProvider(BaseProvider):
    """A tracing provider that records nothing (and imports nothing)."""

    _segment = _UnrecordedSegment()

    @contextmanager
    def in_subsegment(self, name: Any = None, **kwargs: Any) -> Iterator[BaseSegment]:
        yield self._segment

    @asynccontextmanager
    async def in_subsegment_async(self, name: Any = None, **kwargs: Any) -> AsyncIterator[BaseSegment]:
        yield self._segment

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        pass

    def patch(self, modules: Sequence[str]) -> None:
        pass

    def patch_all(self) -> None:
        pass


def tracing_enabled() -> bool:
    """Powertools' own rule: on in Lambda (not SAM local) unless ``POWERTOOLS_TRACE_DISABLED`` is true."""
    if strtobool(os.environ.get(constants.TRACER_DISABLED_ENV, "false")):
        return False
    in_lambda = bool(os.environ.get(constants.LAMBDA_TASK_ROOT_ENV))
    emulated = os.environ.get(constants.SAM_LOCAL_ENV) or os.environ.get(constants.CHALICE_LOCAL_ENV)
    return in_lambda and not emulated


def lambda_tracer() -> Tracer:
    """The function's ``Tracer``: X-Ray when tracing is on, an unrecorded provider when it is off."""
    if tracing_enabled():
        return Tracer()
    return Tracer(disabled=True, provider=UnrecordedProvider())
