"""Per-call facts the servicers need from the transport: who is calling.

``api.handlers`` authenticates every call before its servicer method runs and binds the
principal here. grpc.aio runs each call in an asyncio task of its own, and a context
variable set in a task is invisible to every other task, so one call can never see
another's principal.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import grpc

from cofounder_server.domain.principal import Principal

_principal: ContextVar[Principal] = ContextVar("cofounder_principal")


def bind_principal(principal: Principal) -> None:
    """Make ``principal`` the caller of the call running in this task."""
    _principal.set(principal)


def principal_of(context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
    """The principal the call acts as (the local principal when authentication is off).

    Raises ``RuntimeError`` (never a default principal) when the method was registered
    without a call gate: failing closed is the only safe answer to a wiring mistake.
    """
    try:
        return _principal.get()
    except LookupError:
        raise RuntimeError(
            "no principal bound to this call: register the service with service_handler(..., gate=...)"
        ) from None
