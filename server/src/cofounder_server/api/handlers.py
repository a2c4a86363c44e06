"""Registers servicers with grpc.aio so that no bad request can end as UNKNOWN or INTERNAL.

grpcio answers INTERNAL when a request fails to deserialize (for example a string field with
invalid UTF-8), so handlers here take raw bytes and parse them themselves, answering
INVALID_ARGUMENT. Domain errors become their gRPC status with rich details in one place,
which keeps the servicers down to validate, call, convert.

Every call also passes a :class:`CallGate` before its request is even parsed: the caller is
authenticated, held to its request rate and (for server streams) its cap on open streams,
and bound as the call's principal for ``api.context.principal_of``. Services registered
elsewhere (health, reflection) do not pass the gate and stay open.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from cofounder_server.api.context import bind_principal
from cofounder_server.api.errors import to_status
from cofounder_server.auth.gate import CallGate
from cofounder_server.domain.errors import DomainError
from cofounder_server.domain.principal import Principal
from cofounder_server.observability import logs

log = logging.getLogger(__name__)

UnaryImpl = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[message.Message]]
StreamImpl = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[message.Message | bytes]]
"""A server-streaming method: it may yield messages already serialised (a batch of events
shared by thousands of watchers is serialised once, not once per watcher)."""


async def _parse(
    raw: bytes,
    request_class: type[message.Message],
    method: MethodDescriptor,
    context: grpc.aio.ServicerContext[Any, Any],
) -> message.Message:
    try:
        return request_class.FromString(raw)
    except message.DecodeError:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request is not a valid {method.input_type.full_name} message",
        )
        raise  # unreachable: abort raises


async def _fail(context: grpc.aio.ServicerContext[Any, Any], method: str, error: Exception) -> None:
    if isinstance(error, DomainError):
        # Present on grpc.aio contexts since 1.38; missing from the type stubs.
        await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]
    log.exception("unexpected error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server logged the details")


async def _admit(
    gate: CallGate | None, method: MethodDescriptor, context: grpc.aio.ServicerContext[Any, Any]
) -> Principal | None:
    if gate is None:
        return None
    try:
        principal = gate.admit(method.full_name, context.invocation_metadata() or (), context.auth_context())
    except DomainError as error:
        log.debug("%s refused: %s", method.full_name, error.message)
        await _fail(context, method.full_name, error)
        raise  # unreachable: _fail aborts
    bind_principal(principal)
    logs.principal.set(principal.principal_id)
    return principal


async def _open_stream(
    gate: CallGate | None, principal: Principal | None, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    if gate is None or principal is None:
        return
    try:
        slots = gate.open_stream(principal)
    except DomainError as error:
        await _fail(context, "stream limit", error)
        raise  # unreachable: _fail aborts
    for slot in slots:
        # Freed when the call ends however it ends (finished, failed, cancelled by the client,
        # past its deadline), even if the handler's generator is never resumed to clean up.
        # The stubs type the callback as a class of their own; any one-argument callable works.
        context.add_done_callback(lambda _, slot=slot: slot.release())  # type: ignore[arg-type]


def _unary(
    method: MethodDescriptor, impl: UnaryImpl, gate: CallGate | None
) -> grpc.RpcMethodHandler[Any, Any]:
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    ids = logs.id_fields(method.input_type)

    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> message.Message:
        await _admit(gate, method, context)
        request = await _parse(raw, request_class, method, context)
        logs.bind_ids(request, ids)
        try:
            return await impl(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # every other failure still gets a deliberate status
            await _fail(context, method.full_name, error)
            raise

    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=response_class.SerializeToString)


def _stream(
    method: MethodDescriptor, impl: StreamImpl, gate: CallGate | None
) -> grpc.RpcMethodHandler[Any, Any]:
    request_class = message_factory.GetMessageClass(method.input_type)
    ids = logs.id_fields(method.input_type)

    async def handle(
        raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[message.Message | bytes]:
        principal = await _admit(gate, method, context)
        request = await _parse(raw, request_class, method, context)
        logs.bind_ids(request, ids)
        await _open_stream(gate, principal, context)
        try:
            async for response in impl(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _fail(context, method.full_name, error)
            raise

    def serialize(response: message.Message | bytes) -> bytes:
        if isinstance(response, bytes):
            return response
        data: bytes = response.SerializeToString()
        return data

    return grpc.unary_stream_rpc_method_handler(handle, response_serializer=serialize)


def service_handler(
    descriptor: ServiceDescriptor, servicer: object, gate: CallGate | None = None
) -> grpc.GenericRpcHandler[Any, Any]:
    """A handler serving every method of ``descriptor`` from the same-named servicer method.

    With ``gate``, every call is authenticated and limited first (see the module docs).
    Without one no principal is bound, and ``principal_of`` fails closed.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in descriptor.methods:
        if method.client_streaming:
            raise ValueError(f"{method.full_name}: client streaming is not supported")
        impl = getattr(servicer, method.name)
        build = _stream if method.server_streaming else _unary
        handlers[method.name] = build(method, impl, gate)
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)
