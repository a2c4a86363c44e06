"""What the composition root builds for operability, from the settings, and tears down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CollectorRegistry

from cofounder_server import observability
from cofounder_server.observability.prometheus import (
    ExecutorGauges,
    JobCounts,
    MetricsServer,
    PrometheusInstruments,
    StateCollector,
    new_registry,
)
from cofounder_server.observability.rpc import Observer, RpcMetrics
from cofounder_server.observability.tracing import Tracer

log = logging.getLogger(__name__)


class Observability:
    """The RPC interceptor, the installed instruments and tracer, and the metrics endpoint."""

    def __init__(
        self, observer: Observer, registry: CollectorRegistry | None, tracer: Tracer, *, installed: bool
    ) -> None:
        self.observer = observer
        self.registry = registry
        self.tracer = tracer
        self.metrics_port: int | None = None
        self._installed = installed

    @classmethod
    def build(
        cls,
        stack: contextlib.AsyncExitStack,
        *,
        metrics: bool,
        otlp_endpoint: str,
        methods: Iterable[str],
        tracer: Tracer | None = None,
    ) -> Observability:
        """Install the process's instruments (Prometheus when ``metrics``) and tracer (``tracer``
        if given, else OTLP to ``otlp_endpoint`` if set) until ``stack`` unwinds.
        ``methods`` are the full method names served (``/package.Service/Method``), the only
        ``method`` label values."""
        if tracer is None and otlp_endpoint:
            try:
                from cofounder_server.observability.otel import OtelTracer
            except ImportError as error:
                raise SystemExit(
                    f"--otlp-endpoint needs the otel extra (pip install 'cofounder-server[otel]'): {error}"
                ) from error
            tracer = OtelTracer.otlp(otlp_endpoint)
        tracer = tracer or Tracer()
        registry = new_registry() if metrics else None
        instruments = PrometheusInstruments(registry) if registry is not None else None
        rpc_metrics = RpcMetrics(registry, methods) if registry is not None else None
        # A server with both off leaves the process's facades alone (another server in the
        # same process, as in tests, may have turned them on).
        installed = instruments is not None or tracer.enabled
        if installed:
            observability.install(instruments, tracer)
        built = cls(Observer(tracer, rpc_metrics), registry, tracer, installed=installed)
        stack.push_async_callback(built.close)
        return built

    async def serve_metrics(
        self,
        listen: str,
        stack: contextlib.AsyncExitStack,
        *,
        count_jobs: Callable[[], Awaitable[JobCounts]],
        executor: Callable[[], ExecutorGauges | None],
    ) -> None:
        """Serve ``/metrics`` on ``listen`` until ``stack`` unwinds (no-op with metrics off);
        ``count_jobs`` reads the job counts from SQL at scrape time."""
        if self.registry is None:
            return
        self.registry.register(StateCollector(asyncio.get_running_loop(), count_jobs, executor))
        try:
            server = MetricsServer.start(listen, self.registry)
        except (OSError, ValueError) as error:
            raise SystemExit(f"cannot serve metrics on {listen}: {error}") from error
        stack.push_async_callback(server.stop)
        self.metrics_port = server.port
        log.info("metrics served on http://%s/metrics", server.address)

    async def close(self) -> None:
        """Flush the tracer and uninstall (so a later server in this process starts clean)."""
        await self.tracer.shutdown()
        if self._installed:
            observability.install(None, None)
