"""Domain errors as gRPC statuses with rich details (google.rpc error model)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cofounder_server.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

ERROR_DOMAIN = "cofounder.dev"


def _packed(*messages: object) -> list[any_pb2.Any]:
    packed = []
    for message in messages:
        detail = any_pb2.Any()
        detail.Pack(message)  # type: ignore[arg-type]
        packed.append(detail)
    return packed


def _info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


def to_status(error: DomainError) -> grpc.Status:
    """The gRPC status (code, message, details) a caller receives for a domain error."""
    code: int
    details: list[any_pb2.Any]
    if isinstance(error, InvalidArgument):
        code = code_pb2.INVALID_ARGUMENT
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        ]
        details = _packed(
            error_details_pb2.BadRequest(field_violations=violations), _info("INVALID_ARGUMENT")
        )
    elif isinstance(error, NotFound):
        code = code_pb2.NOT_FOUND
        details = _packed(
            error_details_pb2.ResourceInfo(
                resource_type=error.resource_type, resource_name=error.resource_id
            ),
            _info(f"{error.resource_type.upper()}_NOT_FOUND"),
        )
    elif isinstance(error, FailedPrecondition):
        code = code_pb2.FAILED_PRECONDITION
        details = _packed(_info(error.reason, **error.metadata))
    elif isinstance(error, AlreadyExists):
        code = code_pb2.ALREADY_EXISTS
        details = _packed(_info(error.reason))
    elif isinstance(error, Unavailable):
        code = code_pb2.UNAVAILABLE
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=error.retry_after_seconds))
        details = _packed(
            error_details_pb2.RetryInfo(retry_delay=delay), _info(error.reason, **error.metadata)
        )
    elif isinstance(error, OutOfRange):
        code = code_pb2.OUT_OF_RANGE
        details = _packed(_info(error.reason, **error.metadata))
    elif isinstance(error, Unauthenticated):
        code = code_pb2.UNAUTHENTICATED
        details = _packed(_info(error.reason))
    elif isinstance(error, PermissionDenied):
        code = code_pb2.PERMISSION_DENIED
        details = _packed(_info(error.reason))
    elif isinstance(error, ResourceExhausted):
        code = code_pb2.RESOURCE_EXHAUSTED
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=error.retry_after_seconds))
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(subject=error.subject, description=error.message)
            ]
        )
        details = _packed(error_details_pb2.RetryInfo(retry_delay=delay), quota, _info(error.reason))
    else:
        code = code_pb2.INTERNAL
        details = []
    return rpc_status.to_status(status_pb2.Status(code=code, message=error.message, details=details))


async def abort_unimplemented(
    context: grpc.aio.ServicerContext[Any, Any], method: str, arrives_with: str
) -> NoReturn:
    """End a call to an RPC that is designed but not built yet with UNIMPLEMENTED."""
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet: it arrives with {arrives_with}"
    )
    raise AssertionError("unreachable: abort raises")
