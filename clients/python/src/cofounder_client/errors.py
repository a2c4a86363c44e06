"""One exception type for every failed call, with the server's rich error details decoded.

The control plane reports errors as gRPC status codes carrying ``google.rpc`` details:
``BadRequest`` (which fields are wrong), ``ErrorInfo`` (a machine-readable ``reason`` in the
``cofounder.dev`` domain, plus metadata such as ``oldest_sequence``), ``RetryInfo`` (how long to
wait before retrying) and ``ResourceInfo`` (which object was missing). :class:`CofounderError`
exposes them as typed attributes so callers never parse trailers themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

# googleapis-common-protos ships .pyi files but no py.typed marker, so mypy reads them only where
# `follow_untyped_imports` is enabled for google.rpc.*; elsewhere these modules are untyped.
from google.rpc import (  # type: ignore[import-untyped, unused-ignore]
    code_pb2,
    error_details_pb2,
    status_pb2,
)

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CofounderError",
    "DeadlineExceededError",
    "ErrorDetails",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "error_from_rpc_error",
]

# The trailer in which gRPC servers put a serialized google.rpc.Status (see grpc_status).
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

_MessageT = TypeVar("_MessageT", bound=Message)


@dataclass(frozen=True)
class ErrorDetails:
    """The ``google.rpc`` error details attached to a failed call, decoded.

    Each attribute is ``None`` when the server did not attach that kind of detail.
    Details of kinds this client does not decode are kept, still packed, in ``other``.
    """

    bad_request: error_details_pb2.BadRequest | None = None
    """Field violations of an ``INVALID_ARGUMENT`` request."""
    error_info: error_details_pb2.ErrorInfo | None = None
    """Machine-readable ``reason``, ``domain`` and ``metadata`` of the error."""
    retry_info: error_details_pb2.RetryInfo | None = None
    """How long to wait before retrying."""
    resource_info: error_details_pb2.ResourceInfo | None = None
    """The resource the error is about (e.g. the job that was not found)."""
    precondition_failure: error_details_pb2.PreconditionFailure | None = None
    """Which preconditions a ``FAILED_PRECONDITION`` call violated."""
    quota_failure: error_details_pb2.QuotaFailure | None = None
    """Which quota a ``RESOURCE_EXHAUSTED`` call exceeded."""
    other: tuple[any_pb2.Any, ...] = ()
    """Details of any other type, as received."""

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> ErrorDetails:
        """Unpack the details of a ``google.rpc.Status``; the first detail of each kind wins."""
        details = list(status.details)
        return cls(
            bad_request=_unpack(details, error_details_pb2.BadRequest),
            error_info=_unpack(details, error_details_pb2.ErrorInfo),
            retry_info=_unpack(details, error_details_pb2.RetryInfo),
            resource_info=_unpack(details, error_details_pb2.ResourceInfo),
            precondition_failure=_unpack(details, error_details_pb2.PreconditionFailure),
            quota_failure=_unpack(details, error_details_pb2.QuotaFailure),
            other=tuple(d for d in details if not any(d.Unpack(kind()) for kind in _DECODED_KINDS)),
        )

    @classmethod
    def from_trailing_metadata(
        cls, metadata: Iterable[tuple[str, str | bytes]] | None, code: grpc.StatusCode
    ) -> ErrorDetails:
        """Decode the ``grpc-status-details-bin`` trailer of a call that ended with ``code``.

        A trailer that does not parse, or whose status code disagrees with the call's (a proxy
        rewrote the status), is ignored rather than trusted: the call's own code and message
        always stand.
        """
        for key, value in metadata or ():
            if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
                continue
            try:
                status = status_pb2.Status.FromString(value)
                if status.code != code_pb2.Code.Value(code.name):
                    return cls()
                return cls.from_status(status)
            except DecodeError:
                return cls()
        return cls()


_DECODED_KINDS: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.ResourceInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
)


def _unpack(details: Iterable[any_pb2.Any], kind: type[_MessageT]) -> _MessageT | None:
    for detail in details:
        message = kind()
        if detail.Unpack(message):
            return message
    return None


class CofounderError(Exception):
    """A call to the control plane failed.

    Every RPC error surfaces as this type (or one of its per-code subclasses, such as
    :class:`NotFoundError`), for unary calls and for streams failing mid-iteration alike.
    The original :class:`grpc.aio.AioRpcError` is kept as ``__cause__``.
    """

    def __init__(self, code: grpc.StatusCode, message: str, details: ErrorDetails | None = None) -> None:
        super().__init__(code, message)
        self.code: grpc.StatusCode = code
        """The gRPC status code."""
        self.message: str = message
        """The server's human-readable error message."""
        self.details: ErrorDetails = details if details is not None else ErrorDetails()
        """The decoded ``google.rpc`` error details."""

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        """``(field, description)`` pairs from the ``BadRequest`` detail; empty when there is none."""
        if self.details.bad_request is None:
            return []
        return [(v.field, v.description) for v in self.details.bad_request.field_violations]

    @property
    def reason(self) -> str | None:
        """The machine-readable ``ErrorInfo.reason`` (e.g. ``JOB_NOT_FOUND``), if the server sent one."""
        if self.details.error_info is None:
            return None
        reason: str = self.details.error_info.reason
        return reason

    @property
    def retry_delay(self) -> float | None:
        """Seconds the server asks the caller to wait before retrying (``RetryInfo``), if given."""
        if self.details.retry_info is None:
            return None
        delay: float = self.details.retry_info.retry_delay.ToTimedelta().total_seconds()
        return delay

    @property
    def retryable(self) -> bool:
        """Whether repeating the same call may succeed.

        True for ``UNAVAILABLE`` (the server or its stores are briefly unreachable),
        ``ABORTED`` and ``DEADLINE_EXCEEDED``, and for any error carrying ``RetryInfo``.
        Every RPC of this API is a read or a mutation keyed by ``request_id``, so a retry is safe
        as long as it repeats the same ``request_id``. ``RESOURCE_EXHAUSTED`` counts only with
        ``RetryInfo``: without it the limit (e.g. a message size) will not go away by waiting.
        """
        return self.code in _RETRYABLE_CODES or self.details.retry_info is not None


_RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)


class InvalidArgumentError(CofounderError):
    """``INVALID_ARGUMENT``: the request is malformed; see :attr:`field_violations`."""


class NotFoundError(CofounderError):
    """``NOT_FOUND``: no such object, or it belongs to another tenant."""


class AlreadyExistsError(CofounderError):
    """``ALREADY_EXISTS``: the ``request_id`` was already used for a different request."""


class FailedPreconditionError(CofounderError):
    """``FAILED_PRECONDITION``: the object's state forbids the call (e.g. waking a working agent)."""


class OutOfRangeError(CofounderError):
    """``OUT_OF_RANGE``: e.g. a watch cursor older than the retained history."""


class UnauthenticatedError(CofounderError):
    """``UNAUTHENTICATED``: the token is missing or invalid."""


class PermissionDeniedError(CofounderError):
    """``PERMISSION_DENIED``: the caller may not do this (e.g. act on behalf of another user)."""


class ResourceExhaustedError(CofounderError):
    """``RESOURCE_EXHAUSTED``: a limit was reached."""


class AbortedError(CofounderError):
    """``ABORTED``: the call conflicted with a concurrent one; retrying may succeed."""


class DeadlineExceededError(CofounderError):
    """``DEADLINE_EXCEEDED``: the call did not finish within its timeout."""


class UnavailableError(CofounderError):
    """``UNAVAILABLE``: the server, or a store behind it, cannot be reached right now. Retryable."""


class UnimplementedError(CofounderError):
    """``UNIMPLEMENTED``: the server does not offer this RPC."""


class InternalError(CofounderError):
    """``INTERNAL``: a server bug."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[CofounderError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def error_from_rpc_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> CofounderError:
    """Translate a gRPC error into the matching :class:`CofounderError` subclass.

    Reads the code, the message and the ``grpc-status-details-bin`` trailer, which is how
    ``grpc_status`` transports a ``google.rpc.Status`` (the same data
    ``rpc_status.aio.from_call`` would return, without needing the call object). Takes the
    errors of ``grpc.aio`` calls and of synchronous calls alike (the latter are also
    ``grpc.Call`` objects).
    """
    call = cast("grpc.Call", error)
    code = call.code()
    # grpc-stubs types trailing_metadata() as a tuple of objects; both APIs give (key, value)
    # pairs (grpc.aio a grpc.aio.Metadata, the synchronous API a tuple of named pairs).
    trailers = cast("Iterable[tuple[str, str | bytes]] | None", call.trailing_metadata())
    details = ErrorDetails.from_trailing_metadata(trailers, code)
    cls = _ERROR_CLASSES.get(code, CofounderError)
    return cls(code, call.details() or "", details)
