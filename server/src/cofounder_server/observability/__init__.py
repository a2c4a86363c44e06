"""Operability: Prometheus metrics, structured logs and OpenTelemetry traces.

Code reports through two process-wide facades, ``observability.metrics``
(:class:`~.instruments.Instruments`) and ``observability.tracing``
(:class:`~.tracing.Tracer`), one line per call site::

    from cofounder_server import observability
    observability.metrics.events_delivered.inc(len(batch.events))

Both do nothing until the composition root installs working ones (``--metrics-listen``,
``--otlp-endpoint``); like Prometheus's own default registry they are per process, which is
one server in production. RPCs are observed by the interceptor in :mod:`.rpc`, and log
events carry the context fields of :mod:`.logs`.
"""

from __future__ import annotations

from cofounder_server.observability.instruments import Instruments
from cofounder_server.observability.tracing import Tracer

metrics: Instruments = Instruments()
"""The instruments in force (recording nothing unless metrics are on)."""

tracing: Tracer = Tracer()
"""The tracer in force (making no spans unless tracing is on)."""


def install(instruments: Instruments | None = None, tracer: Tracer | None = None) -> None:
    """Make ``instruments`` and ``tracer`` the ones in force; ``None`` turns each off."""
    global metrics, tracing  # noqa: PLW0603  # the facades are process-wide by design
    metrics = instruments or Instruments()
    tracing = tracer or Tracer()
