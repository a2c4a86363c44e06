"""The server interceptor every call passes first: request id and method for the logs, a
span when tracing is on, and the RPC metrics when metrics are on.

Streaming calls are served through the handler's reader-writer form (the interceptor writes
each message itself), so a stream pays nothing per message for being observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeAlias, cast

import grpc
from prometheus_client import CollectorRegistry, Gauge

from cofounder_server.observability import logs
from cofounder_server.observability.loop_metrics import CounterFamily, HistogramFamily, LoopCounter
from cofounder_server.observability.prometheus import LATENCY_BUCKETS
from cofounder_server.observability.tracing import NO_SPAN, Span, Tracer

log = logging.getLogger(__name__)
"""At DEBUG, one access-log event per call: method, status code and duration."""

OTHER_METHOD = "other"
"""The ``method`` label of calls to methods outside the served set."""

REQUEST_ID_HEADER = "x-request-id"
"""A caller may name its request (1 to 64 of ``[A-Za-z0-9._-]``); otherwise the server does."""

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

_NO_TRACE = contextlib.nullcontext(NO_SPAN)

_OK = grpc.StatusCode.OK


class RpcMetrics:
    """``cofounder_rpc_*``: calls by method and status code, latency by method, open streams."""

    def __init__(self, registry: CollectorRegistry, methods: Iterable[str]) -> None:
        self._handled = CounterFamily(
            registry, "cofounder_rpc_handled", "RPCs completed, by method and status code", ["method", "code"]
        )
        self._seconds = HistogramFamily(
            registry,
            "cofounder_rpc_duration_seconds",
            "RPC duration by method (streams: from open to end)",
            LATENCY_BUCKETS,
            ["method"],
        )
        self._open = Gauge(
            "cofounder_rpc_streams_open", "Open server streams by method", ["method"], registry=registry
        )
        self._methods = {name: _MethodMetrics(self, name) for name in (*methods, OTHER_METHOD)}

    def of(self, method: str) -> _MethodMetrics:
        """The pre-bound instruments of ``method`` (``other`` outside the served set)."""
        return self._methods.get(method) or self._methods[OTHER_METHOD]


class _MethodMetrics:
    __slots__ = ("_codes", "_handled", "_ok", "_open", "method", "seconds")

    def __init__(self, metrics: RpcMetrics, method: str) -> None:
        self.method = method
        self._handled = metrics._handled
        self._open = metrics._open
        self.seconds = metrics._seconds.labels(method)
        self._ok = self._handled.labels(method, grpc.StatusCode.OK.name)
        self._codes: dict[grpc.StatusCode, LoopCounter] = {}

    def open_streams(self) -> Gauge:
        """The open-streams gauge (bound only for streaming methods)."""
        return self._open.labels(self.method)

    def done(self, code: grpc.StatusCode, seconds: float) -> None:
        # OK by identity: hashing an Enum member runs Python code.
        if code is _OK:
            self._ok.value += 1
        else:
            child = self._codes.get(code)
            if child is None:
                child = self._codes[code] = self._handled.labels(self.method, code.name)
            child.value += 1
        self.seconds.observe(seconds)


class Observer(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic in the stubs only
    """Observes every call; ``metrics`` None and a disabled ``tracer`` leave only the log ids."""

    def __init__(self, tracer: Tracer, metrics: RpcMetrics | None = None) -> None:
        self._tracer = tracer
        self._metrics = metrics
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        # Unique per process and cheap: a random prefix and a counter.
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count(1)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler | None = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            if self._metrics is not None:
                self._metrics.of(OTHER_METHOD).done(grpc.StatusCode.UNIMPLEMENTED, 0.0)
            return handler  # type: ignore[return-value]  # None: grpc answers UNIMPLEMENTED
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        # Bounded: only served methods have handlers.
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def begin(self, method: str, context: Context) -> None:
        """Bind the call's request id and method for the logs."""
        request_id = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
                request_id = value
        logs.request_id.set(request_id or f"{self._prefix}-{next(self._counter)}")
        logs.method.set(method)

    def span(self, method: str, context: Context) -> contextlib.AbstractContextManager[Span]:
        """The call's server span (a shared no-op when tracing is off)."""
        if not self._tracer.enabled:
            return _NO_TRACE
        return self._tracer.rpc(method, tuple(context.invocation_metadata() or ()))

    def _wrap(self, method: str, handler: Handler) -> Handler:
        stats = self._metrics.of(method) if self._metrics is not None else None
        if handler.unary_unary is not None and not handler.request_streaming:
            return _unary(self, method, stats, handler)
        stream = handler.unary_stream
        if stream is not None and (inspect.isasyncgenfunction(stream) or inspect.iscoroutinefunction(stream)):
            return _stream(self, method, stats, handler)
        # Client-streaming methods (reflection): passed through, counted by nothing here.
        return handler


def _unary(observer: Observer, method: str, stats: _MethodMetrics | None, handler: Handler) -> Handler:
    behavior = cast(Callable[[Any, Context], Awaitable[Any]], handler.unary_unary)

    async def unary(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        observer.begin(method, context)
        code = grpc.StatusCode.OK
        try:
            with observer.span(method, context) as span:
                try:
                    return await behavior(request, context)
                except BaseException as error:
                    code = _failure_code(error)
                    raise
                finally:
                    code = _code(context, code)
                    span.set("rpc.grpc.status_code", code.value[0])
        finally:
            _done(stats, code, started)

    return grpc.unary_unary_rpc_method_handler(
        unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _stream(observer: Observer, method: str, stats: _MethodMetrics | None, handler: Handler) -> Handler:
    behavior = cast(Callable[..., Any], handler.unary_stream)

    open_streams = stats.open_streams() if stats is not None else None

    async def stream(request: Any, context: Context) -> None:
        started = time.perf_counter()
        observer.begin(method, context)
        code = grpc.StatusCode.OK
        if open_streams is not None:
            open_streams.inc()
        try:
            with observer.span(method, context) as span:
                try:
                    await _serve_stream(behavior, request, context)
                except BaseException as error:
                    code = _failure_code(error)
                    raise
                finally:
                    code = _code(context, code)
                    span.set("rpc.grpc.status_code", code.value[0])
        finally:
            if open_streams is not None:
                open_streams.dec()
            _done(stats, code, started)

    return grpc.unary_stream_rpc_method_handler(
        stream,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _done(stats: _MethodMetrics | None, code: grpc.StatusCode, started: float) -> None:
    seconds = time.perf_counter() - started
    if stats is not None:
        stats.done(code, seconds)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s in %.1f ms", logs.method.get(), code.name, seconds * 1000)


async def _serve_stream(behavior: Callable[..., Any], request: Any, context: Context) -> None:
    if inspect.iscoroutinefunction(behavior):
        await behavior(request, context)
        return
    responses: AsyncIterator[Any] = behavior(request, context)
    try:
        async for response in responses:
            await context.write(response)
    finally:
        # Closed here, in the call's own task, even when the client went away mid-write.
        await responses.aclose()  # type: ignore[attr-defined]


def _code(context: Context, default: grpc.StatusCode) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else default


def _failure_code(error: BaseException) -> grpc.StatusCode:
    """The code of a call that raised, unless the call set one (an abort does)."""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
