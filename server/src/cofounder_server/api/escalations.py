"""EscalationService: designed in the API, implemented with the escalation issue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from cofounder.agent.v1 import escalation_service_pb2 as pb
from cofounder.agent.v1 import escalation_service_pb2_grpc as pb_grpc
from cofounder_server.api.errors import abort_unimplemented

Context = grpc.aio.ServicerContext[Any, Any]
_ARRIVES_WITH = "escalation handling"


class EscalationApi(pb_grpc.EscalationServiceServicer):
    """The EscalationService RPCs; every one answers UNIMPLEMENTED for now."""

    async def GetEscalation(
        self, request: pb.GetEscalationRequest, context: Context
    ) -> pb.GetEscalationResponse:
        await abort_unimplemented(context, "GetEscalation", _ARRIVES_WITH)

    async def ListEscalations(
        self, request: pb.ListEscalationsRequest, context: Context
    ) -> pb.ListEscalationsResponse:
        await abort_unimplemented(context, "ListEscalations", _ARRIVES_WITH)

    async def ResolveEscalation(
        self, request: pb.ResolveEscalationRequest, context: Context
    ) -> pb.ResolveEscalationResponse:
        await abort_unimplemented(context, "ResolveEscalation", _ARRIVES_WITH)

    async def WatchEscalations(
        self, request: pb.WatchEscalationsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEscalationsResponse]:
        await abort_unimplemented(context, "WatchEscalations", _ARRIVES_WITH)
        yield pb.WatchEscalationsResponse()
