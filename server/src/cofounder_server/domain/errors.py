"""Domain errors. The API layer maps each to one gRPC status code with rich details."""

from __future__ import annotations

from dataclasses import dataclass


class DomainError(Exception):
    """Base class of every error the domain reports to callers."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path (e.g. ``agent.brain``) and what is wrong."""

    field: str
    description: str


class InvalidArgument(DomainError):
    """The request is malformed; ``violations`` names each bad field."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


class NotFound(DomainError):
    """The resource does not exist or is not visible to the caller (never say which)."""

    def __init__(self, resource_type: str, resource_id: str) -> None:
        super().__init__(f"{resource_type} {resource_id!r} not found")
        self.resource_type = resource_type
        self.resource_id = resource_id


class FailedPrecondition(DomainError):
    """The resource's current state forbids the operation. ``reason`` is machine-readable;
    ``metadata`` says what the state is (e.g. the decision that won)."""

    def __init__(self, reason: str, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata or {}


class AlreadyExists(DomainError):
    """A create conflicts with what exists (e.g. a request_id reused for another request)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Unavailable(DomainError):
    """A dependency (Redis, SQL) cannot be reached; the caller may retry after ``retry_after``.

    ``reason`` and ``metadata`` say more when the cause is not a dependency: a watch ended by
    a server shutdown, with the sequence to resume after.
    """

    def __init__(
        self,
        message: str,
        retry_after_seconds: float = 1.0,
        *,
        reason: str = "DEPENDENCY_UNAVAILABLE",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.reason = reason
        self.metadata = metadata or {}


class OutOfRange(DomainError):
    """A position is outside what exists, e.g. a watch cursor older than the retained history."""

    def __init__(self, reason: str, message: str, *, metadata: dict[str, str]) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata


class Unauthenticated(DomainError):
    """The call carries no credential, or one the server does not know. ``reason`` says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDenied(DomainError):
    """The caller is known but may not do this (e.g. a user asking for an operator-only action)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ResourceExhausted(DomainError):
    """A per-principal limit is reached; the caller may retry after ``retry_after_seconds``.

    ``subject`` names what is limited (e.g. ``principal:alice``) for ``QuotaFailure``.
    """

    def __init__(self, reason: str, message: str, *, subject: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.subject = subject
        self.retry_after_seconds = retry_after_seconds
