"""Tracing with OpenTelemetry: spans exported over OTLP, or to any exporter (tests pass the
SDK's ``InMemorySpanExporter``). Needs the ``otel`` extra; imported only when tracing is on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cofounder_server.observability.tracing import Metadata, Span, Tracer

SERVICE_NAME = "cofounder-server"


class _MetadataGetter(Getter[Metadata]):
    """Reads W3C trace headers from gRPC invocation metadata."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [v.decode() if isinstance(v, bytes) else v for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


class _OtelSpan:
    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span, token: object | None = None) -> None:
        self._span = span
        self._token = token

    def set(self, key: str, value: str | int) -> None:
        self._span.set_attribute(key, value)

    def end(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            with contextlib.suppress(ValueError):  # detached in another context: already gone
                otel_context.detach(token)  # type: ignore[arg-type]
            self._span.end()


class OtelTracer(Tracer):
    """Spans through an OpenTelemetry SDK tracer provider of its own (the global provider is
    left alone, so embedding applications keep theirs)."""

    enabled = True

    def __init__(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self._provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("cofounder_server")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def otlp(cls, endpoint: str) -> OtelTracer:
        """Export over OTLP/gRPC to ``endpoint`` (e.g. ``http://collector:4317``)."""
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return cls(OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://")))

    @contextlib.contextmanager
    def rpc(self, method: str, metadata: Metadata) -> Iterator[Span]:
        parent = self._propagator.extract(metadata, getter=_GETTER)
        service, _, name = method.lstrip("/").partition("/")
        with self._tracer.start_as_current_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield _OtelSpan(span)

    def iteration(self, job_id: str, iteration: int) -> Span:
        span = self._tracer.start_span(
            "executor.iteration", attributes={"cofounder.job_id": job_id, "cofounder.iteration": iteration}
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return _OtelSpan(span, token)

    @contextlib.contextmanager
    def model_call(self, job_id: str) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
            "model.call", attributes={"cofounder.job_id": job_id}
        ) as span:
            yield _OtelSpan(span)

    async def shutdown(self) -> None:
        # Flushing exports over the network: not on the event loop.
        await asyncio.to_thread(self._provider.shutdown)
