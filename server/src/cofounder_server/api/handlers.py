"""Registers servicers with grpc.aio so that no bad request can end as UNKNOWN or INTERNAL.

grpcio answers INTERNAL when a request fails to deserialize (for example a string field with
invalid UTF-8), so handlers here take raw bytes and parse them themselves, answering
INVALID_ARGUMENT. Domain errors become their gRPC status with rich details in one place,
which keeps the servicers down to validate, call, convert.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from cofounder_server.api.errors import to_status
from cofounder_server.domain.errors import DomainError

log = logging.getLogger(__name__)

UnaryImpl = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[message.Message]]
StreamImpl = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[message.Message]]


async def _parse(
    raw: bytes, method: MethodDescriptor, context: grpc.aio.ServicerContext[Any, Any]
) -> message.Message:
    request_class = message_factory.GetMessageClass(method.input_type)
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


def _unary(method: MethodDescriptor, impl: UnaryImpl) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> message.Message:
        request = await _parse(raw, method, context)
        try:
            return await impl(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # every other failure still gets a deliberate status
            await _fail(context, method.full_name, error)
            raise

    response_class = message_factory.GetMessageClass(method.output_type)
    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=response_class.SerializeToString)


def _stream(method: MethodDescriptor, impl: StreamImpl) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(
        raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[message.Message]:
        request = await _parse(raw, method, context)
        try:
            async for response in impl(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _fail(context, method.full_name, error)
            raise

    response_class = message_factory.GetMessageClass(method.output_type)
    return grpc.unary_stream_rpc_method_handler(handle, response_serializer=response_class.SerializeToString)


def service_handler(descriptor: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler[Any, Any]:
    """A handler serving every method of ``descriptor`` from the same-named servicer method."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in descriptor.methods:
        if method.client_streaming:
            raise ValueError(f"{method.full_name}: client streaming is not supported")
        impl = getattr(servicer, method.name)
        handlers[method.name] = _stream(method, impl) if method.server_streaming else _unary(method, impl)
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)
