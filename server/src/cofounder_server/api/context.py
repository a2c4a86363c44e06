"""Per-call facts the servicers need from the transport: who is calling."""

from __future__ import annotations

from typing import Any

import grpc

from cofounder_server.domain.principal import LOCAL_PRINCIPAL, Principal


def principal_of(context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
    """The principal the call acts as. Without authentication configured, the local principal."""
    return LOCAL_PRINCIPAL
