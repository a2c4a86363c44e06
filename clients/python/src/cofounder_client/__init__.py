"""Python client of the cofounder control plane.

:class:`Client` wraps the generated gRPC stubs of ``cofounder.agent.v1`` with one typed,
keyword-argument method per RPC on ``grpc.aio``; :class:`SyncClient` offers the same calls on
a blocking channel. Every failure is a :class:`CofounderError`. The message
types it returns live in ``cofounder.agent.v1`` (``job_pb2``, ``event_pb2``, ...).
"""

from cofounder_client.client import (
    AUTHORIZATION_HEADER,
    DEFAULT_CHANNEL_OPTIONS,
    DEFAULT_TARGET,
    ON_BEHALF_OF_HEADER,
    USE_CLIENT_DEFAULT,
    Client,
    EscalationResolution,
    FleetSnapshot,
    ReconnectHook,
    Timeout,
)
from cofounder_client.credentials import TLSConfig
from cofounder_client.errors import (
    AbortedError,
    AlreadyExistsError,
    CofounderError,
    DeadlineExceededError,
    ErrorDetails,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from cofounder_client.sync import SyncClient, SyncInterceptor

__all__ = [
    "AUTHORIZATION_HEADER",
    "DEFAULT_CHANNEL_OPTIONS",
    "DEFAULT_TARGET",
    "ON_BEHALF_OF_HEADER",
    "USE_CLIENT_DEFAULT",
    "AbortedError",
    "AlreadyExistsError",
    "Client",
    "CofounderError",
    "DeadlineExceededError",
    "ErrorDetails",
    "EscalationResolution",
    "FailedPreconditionError",
    "FleetSnapshot",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ReconnectHook",
    "ResourceExhaustedError",
    "SyncClient",
    "SyncInterceptor",
    "TLSConfig",
    "Timeout",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
]
