"""EscalationService: read, resolve and watch escalations, scoped to the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from cofounder.agent.v1 import escalation_service_pb2 as pb
from cofounder.agent.v1 import escalation_service_pb2_grpc as pb_grpc
from cofounder_server.api import convert
from cofounder_server.api.context import principal_of
from cofounder_server.api.validation import Validator
from cofounder_server.domain.approvals import MAX_ARGUMENTS_CHARS, is_digest
from cofounder_server.domain.escalations import Resolution
from cofounder_server.services.escalation_feed import EscalationFeed
from cofounder_server.services.escalations import EscalationService

Context = grpc.aio.ServicerContext[Any, Any]
MAX_GUIDANCE_CHARS = 10_000
MAX_DECISION_CHARS = 128
MAX_ANSWER_CHARS = 256 * 1024
"""The longest answer text a resolve may carry (a question's own limit is checked after)."""


class EscalationApi(pb_grpc.EscalationServiceServicer):
    """The EscalationService RPCs: validate, call the escalation service, map to protobuf."""

    def __init__(self, escalations: EscalationService, feed: EscalationFeed) -> None:
        self._escalations = escalations
        self._feed = feed

    async def GetEscalation(
        self, request: pb.GetEscalationRequest, context: Context
    ) -> pb.GetEscalationResponse:
        with Validator() as check:
            check.uuid("escalation_id", request.escalation_id)
        escalation = await self._escalations.get(principal_of(context), request.escalation_id)
        return pb.GetEscalationResponse(escalation=convert.escalation_to_proto(escalation))

    async def ListEscalations(
        self, request: pb.ListEscalationsRequest, context: Context
    ) -> pb.ListEscalationsResponse:
        with Validator() as check:
            if request.job_id:
                check.uuid("job_id", request.job_id)
            check.enum_values("statuses", request.statuses, convert.ESCALATION_STATUS_FROM_PROTO)
            if request.page_size < 0:
                check.fail("page_size", "must not be negative")
        statuses = frozenset(convert.ESCALATION_STATUS_FROM_PROTO[s] for s in request.statuses)
        found, token = await self._escalations.list(
            principal_of(context), request.job_id, statuses, request.page_size, request.page_token
        )
        return pb.ListEscalationsResponse(
            escalations=[convert.escalation_to_proto(e) for e in found], next_page_token=token
        )

    async def ResolveEscalation(
        self, request: pb.ResolveEscalationRequest, context: Context
    ) -> pb.ResolveEscalationResponse:
        with Validator() as check:
            check.uuid("escalation_id", request.escalation_id)
            check.request_id("request_id", request.request_id)
            check.text("decision", request.decision, MAX_DECISION_CHARS, required=False)
            check.text("guidance", request.guidance, MAX_GUIDANCE_CHARS, required=False)
            if not request.decision and not request.answer:
                check.fail("decision", "is required (or `answer`, for a question that takes one)")
            if request.arguments_digest and not is_digest(request.arguments_digest):
                check.fail("arguments_digest", "must be 64 lower-case hex digits (SHA-256)")
            if len(request.edited_arguments_json) > MAX_ARGUMENTS_CHARS:
                check.fail("edited_arguments_json", f"must be at most {MAX_ARGUMENTS_CHARS} characters")
            if len(request.answer) > MAX_ANSWER_CHARS:
                check.fail("answer", f"must be at most {MAX_ANSWER_CHARS} characters")
        outcome = await self._escalations.resolve(
            principal_of(context),
            request.escalation_id,
            Resolution(
                decision=request.decision,
                answer=request.answer,
                arguments_digest=request.arguments_digest,
                edited_arguments_json=request.edited_arguments_json,
            ),
            request.guidance,
            request.request_id,
        )
        response = pb.ResolveEscalationResponse(
            escalation=convert.escalation_to_proto(outcome.escalation), agent_waiting=outcome.agent_waiting
        )
        if outcome.agent_wake_time is not None:
            response.agent_wake_time.CopyFrom(convert.timestamp(outcome.agent_wake_time))
        return response

    # Batches of events go out pre-serialised (bytes), which the generated servicer's
    # signature does not know of; the handlers in .handlers send them as they are.
    async def WatchEscalations(  # type: ignore[override]
        self, request: pb.WatchEscalationsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEscalationsResponse | bytes]:
        with Validator() as check:
            if request.job_id:
                check.uuid("job_id", request.job_id)
            after = check.after_sequence(request)
        items = self._feed.watch(principal_of(context), request.job_id or None, after)
        async for item in items:
            yield convert.watch_escalation_item_to_proto(item)
