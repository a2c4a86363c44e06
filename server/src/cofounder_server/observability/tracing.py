"""Tracing as a small typed facade: spans for RPCs, agent iterations and model calls.

This base class records nothing and imports nothing: with tracing off a span costs one call
of an empty method. :mod:`.otel` implements it with OpenTelemetry (the ``otel`` extra), and
is imported only when the composition root turns tracing on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol

Metadata = Sequence[tuple[str, str | bytes]]


class Span(Protocol):
    """A span in progress."""

    def set(self, key: str, value: str | int) -> None:
        """Set an attribute."""

    def end(self) -> None:
        """End the span (for spans from :meth:`Tracer.iteration`; idempotent)."""


class _NoSpan:
    __slots__ = ()

    def set(self, key: str, value: str | int) -> None:
        """Nothing: tracing is off."""

    def end(self) -> None:
        """Nothing: tracing is off."""


NO_SPAN = _NoSpan()


class Tracer:
    """Makes spans; this base class makes none (tracing off)."""

    enabled = False
    """Whether spans are recorded (callers skip even the bookkeeping when not)."""

    @contextlib.contextmanager
    def rpc(self, method: str, metadata: Metadata) -> Iterator[Span]:
        """A server span for one call of ``method`` (``/package.Service/Method``), child of the
        trace context the client sent in its metadata (W3C ``traceparent``), if any."""
        yield NO_SPAN

    def iteration(self, job_id: str, iteration: int) -> Span:
        """Start the span of one agent iteration, current in this task until its ``end()``."""
        return NO_SPAN

    @contextlib.contextmanager
    def model_call(self, job_id: str) -> Iterator[Span]:
        """A span around one model call (a brain's ``think``)."""
        yield NO_SPAN

    async def shutdown(self) -> None:
        """Export what is pending and stop."""
