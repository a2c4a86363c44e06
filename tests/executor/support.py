"""Helpers for executor tests: jobs with scripted brains, a gate that paces a brain, SQL reads."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2
from sqlalchemy import func, select

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2
from cofounder_server.app import Application
from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains.scripted import ScriptedBrainFactory
from cofounder_server.executor.plugins import Message, ToolContext, ToolResult, ToolSpec, Turn
from cofounder_server.store.database import open_database
from cofounder_server.store.models import CheckpointMessageRow, UsageLedgerRow
from tests.support import RPC_TIMEOUT, eventually

TERMINAL = (job_pb2.JOB_STATUS_READY, job_pb2.JOB_STATUS_FAILED, job_pb2.JOB_STATUS_CANCELLED)


def narrate(text: str, **extra: Any) -> dict[str, Any]:
    """A scripted tool call of the built-in ``narrate`` tool."""
    return {"name": "narrate", "input": {"text": text, **extra}}


def turn(
    text: str = "",
    calls: Sequence[dict[str, Any]] = (),
    *,
    tokens: tuple[int, int] = (1000, 100),
    **extra: Any,
) -> dict[str, Any]:
    """A scripted turn (stop reason: tool_use with calls, else end_turn)."""
    return {
        "text": text,
        "tool_calls": list(calls),
        "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]},
        **extra,
    }


def varied_loop(count: int = 12) -> dict[str, Any]:
    """Config of an endless agent whose calls never repeat within ten."""
    return {"turns": [turn(f"step {n}", [narrate(f"working on {n}")]) for n in range(count)], "loop": True}


async def submit(
    stub,
    project_id: str,
    config: Mapping[str, Any],
    *,
    budget: int = 10**9,
    brain: str = "scripted",
    model: str = "m",
    tool_approval: job_pb2.ToolApprovalPolicy | None = None,
) -> job_pb2.Job:
    struct = struct_pb2.Struct()
    struct.update(dict(config))
    request = pb.SubmitJobRequest(
        project_id=project_id,
        goal="Ship the landing page",
        daily_budget_microdollars=budget,
        agent=job_pb2.AgentSpec(brain=brain, model=model, config=struct, tool_approval=tool_approval),
    )
    return (await stub.SubmitJob(request, timeout=RPC_TIMEOUT)).job


async def get_job(stub, job_id: str) -> job_pb2.Job:
    return (await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)).job


async def status_of(stub, job_id: str) -> job_pb2.JobStatusSnapshot:
    return (await stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=RPC_TIMEOUT)).status


async def finished(stub, job_id: str, within: float = 20.0) -> job_pb2.Job:
    return await eventually(lambda: get_job(stub, job_id), lambda j: j.status in TERMINAL, within=within)


async def agent_state(stub, job_id: str, state: int, within: float = 20.0) -> job_pb2.JobStatusSnapshot:
    return await eventually(lambda: status_of(stub, job_id), lambda s: s.agent_state == state, within=within)


async def events_of(stub, job_id: str) -> list[Any]:
    """Every event of the job so far (replayed from sequence 0 up to the snapshot's newest)."""
    call = stub.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job_id, after_sequence=0), timeout=RPC_TIMEOUT)
    events: list[Any] = []
    latest = None
    async for message in call:
        kind = message.WhichOneof("kind")
        if kind == "snapshot":
            latest = message.snapshot.latest_event_sequence
            if latest == 0:
                break
        elif kind == "events":
            events.extend(message.events.events)
            if events and events[-1].sequence >= (latest or 0):
                break
        else:
            break
    call.cancel()
    return events


def types_of(events: Sequence[Any]) -> list[str]:
    return [event.type for event in events]


async def ledger(app: Application, job_id: str) -> list[tuple[int, int]]:
    """``(iteration, cost)`` of every recorded model call of the job."""
    database = await open_database(app.database_url)
    try:
        async with database.read() as session:
            rows = await session.execute(
                select(UsageLedgerRow.iteration, UsageLedgerRow.cost_microdollars)
                .where(UsageLedgerRow.job_id == job_id)
                .order_by(UsageLedgerRow.iteration)
            )
            return [(int(i), int(c)) for i, c in rows.all()]
    finally:
        await database.close()


async def checkpoint_messages(app: Application, job_id: str) -> int:
    database = await open_database(app.database_url)
    try:
        async with database.read() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(CheckpointMessageRow)
                .where(CheckpointMessageRow.job_id == job_id)
            )
            return int(count or 0)
    finally:
        await database.close()


class Gate:
    """Paces the ``gated`` brain: each think waits for a permit (counted in ``thinks``)."""

    def __init__(self) -> None:
        self.permits = asyncio.Semaphore(0)
        self.thinks = 0
        self.waiting = 0

    def allow(self, count: int = 1) -> None:
        for _ in range(count):
            self.permits.release()


class GatedBrain:
    """The scripted brain, one turn per permit of its :class:`Gate`."""

    def __init__(self, spec: AgentSpec, gate: Gate, scripted: ScriptedBrainFactory) -> None:
        self._inner = scripted(spec)
        self._gate = gate

    async def think(self, conversation: Sequence[Message], tools: Sequence[ToolSpec]) -> Turn:
        self._gate.waiting += 1
        try:
            await self._gate.permits.acquire()
        finally:
            self._gate.waiting -= 1
        self._gate.thinks += 1
        return await self._inner.think(conversation, tools)


class EchoTool:
    """Returns ``repeat`` copies of ``text``: long results on demand."""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name="echo", description="echo text", input_schema={"type": "object"})

    async def run(self, tool_input: Mapping[str, Any], context: ToolContext) -> ToolResult:
        return ToolResult(str(tool_input.get("text", "")) * int(tool_input.get("repeat", 1)))


class BrokenTool:
    """Raises (a bug in a tool must not end the job)."""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name="broken", description="always raises")

    async def run(self, tool_input: Mapping[str, Any], context: ToolContext) -> ToolResult:
        raise RuntimeError("tool bug")


class FlakyTool:
    """Fails with a ``ConnectionError`` result the first ``fail_times`` calls with one ``key``
    (counted per tool instance, so per server), then succeeds."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name="flaky", description="fails, then works")

    async def run(self, tool_input: Mapping[str, Any], context: ToolContext) -> ToolResult:
        key = str(tool_input.get("key", ""))
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] <= int(tool_input.get("fail_times", 0)):
            return ToolResult(
                f"connection reset by 10.0.0.{self.calls[key]} after {self.calls[key] * 7} ms",
                is_error=True,
                error_type="ConnectionError",
            )
        return ToolResult(f"worked on call {self.calls[key]}")


class DeployTool:
    """Always refused: a permission failure no retry can fix."""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name="deploy", description="deploys, if allowed")

    async def run(self, tool_input: Mapping[str, Any], context: ToolContext) -> ToolResult:
        return ToolResult("permission denied for /srv/app", is_error=True, error_type="PermissionError")
