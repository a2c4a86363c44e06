"""EscalationService: WatchEscalations streams the escalation feed; the other RPCs arrive with
the escalation issue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from cofounder.agent.v1 import escalation_service_pb2 as pb
from cofounder.agent.v1 import escalation_service_pb2_grpc as pb_grpc
from cofounder_server.api import convert
from cofounder_server.api.context import principal_of
from cofounder_server.api.errors import abort_unimplemented
from cofounder_server.api.validation import Validator
from cofounder_server.events.escalation_feed import EscalationFeed

Context = grpc.aio.ServicerContext[Any, Any]
_ARRIVES_WITH = "escalation handling"


class EscalationApi(pb_grpc.EscalationServiceServicer):
    """The EscalationService RPCs; all but WatchEscalations answer UNIMPLEMENTED for now.

    Their identifiers are still checked first: a malformed request is INVALID_ARGUMENT
    whatever the RPC does with it.
    """

    def __init__(self, feed: EscalationFeed) -> None:
        self._feed = feed

    async def GetEscalation(
        self, request: pb.GetEscalationRequest, context: Context
    ) -> pb.GetEscalationResponse:
        with Validator() as check:
            check.uuid("escalation_id", request.escalation_id)
        await abort_unimplemented(context, "GetEscalation", _ARRIVES_WITH)

    async def ListEscalations(
        self, request: pb.ListEscalationsRequest, context: Context
    ) -> pb.ListEscalationsResponse:
        with Validator() as check:
            if request.job_id:
                check.uuid("job_id", request.job_id)
        await abort_unimplemented(context, "ListEscalations", _ARRIVES_WITH)

    async def ResolveEscalation(
        self, request: pb.ResolveEscalationRequest, context: Context
    ) -> pb.ResolveEscalationResponse:
        with Validator() as check:
            check.uuid("escalation_id", request.escalation_id)
            check.request_id("request_id", request.request_id)
        await abort_unimplemented(context, "ResolveEscalation", _ARRIVES_WITH)

    # Batches of events go out pre-serialised (bytes), which the generated servicer's
    # signature does not know of; the handlers in .handlers send them as they are.
    async def WatchEscalations(  # type: ignore[override]
        self, request: pb.WatchEscalationsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEscalationsResponse | bytes]:
        with Validator() as check:
            if request.job_id:
                check.uuid("job_id", request.job_id)
            if request.HasField("after_sequence") and request.after_sequence < 0:
                check.fail("after_sequence", "must not be negative")
        after = request.after_sequence if request.HasField("after_sequence") else None
        items = self._feed.watch(principal_of(context), request.job_id or None, after)
        async for item in items:
            yield convert.watch_escalation_item_to_proto(item)
