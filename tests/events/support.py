"""Helpers for the event feed tests: reading watch streams with deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import event_pb2
from cofounder_server.app import Application
from cofounder_server.domain.changes import Change
from cofounder_server.domain.escalations import Escalation
from cofounder_server.domain.events import AgentThinking, EscalationEvent, EscalationEventKind, EventPayload
from tests.support import RPC_TIMEOUT

STREAM_TIMEOUT = 60.0
"""Deadline of every watch a test opens; reads have their own, shorter, deadlines."""


def thinking(index: int, text: str = "") -> AgentThinking:
    return AgentThinking(iteration=index, text=text or f"step {index}")


async def publish_many(app: Application, job_id: str, payloads: Sequence[EventPayload]) -> list[int]:
    """Append events to the job's log and send them down the server's change pipeline, as the
    executor does with events that change no job; their sequences."""
    stored = await app.event_log.append_job_events(job_id, payloads, now=app.clock.now())
    await app.changes.committed(Change.appended(stored))
    return [event.sequence for event in stored]


async def publish_escalation(
    app: Application, kind: EscalationEventKind, escalation: Escalation
) -> EscalationEvent:
    """Append an entry to the escalation feed and send it down the server's change pipeline,
    as every change of an escalation does; the stored entry."""
    event = await app.event_log.append_escalation_event(kind, escalation, now=app.clock.now())
    await app.changes.committed(Change(escalation.job_id, None, feed=(event,)))
    return event


async def publish(app: Application, job_id: str, payload: EventPayload) -> int:
    """:func:`publish_many` of one event; its sequence."""
    (sequence,) = await publish_many(app, job_id, (payload,))
    return sequence


def watch(stub: Any, job_id: str, after: int | None = None, *, reading: bool = True) -> Stream:
    request = pb.WatchJobEventsRequest(job_id=job_id)
    if after is not None:
        request.after_sequence = after
    return Stream(stub.WatchJobEvents(request, timeout=STREAM_TIMEOUT), reading=reading)


class Stream:
    """A watch call whose messages a background task reads, so waiting for one with a
    deadline never cancels the call."""

    def __init__(self, call: Any, *, reading: bool = True) -> None:
        self.call = call
        self.events: list[event_pb2.JobEvent] = []
        self.heartbeats: list[event_pb2.Heartbeat] = []
        self._messages: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        if reading:
            self.start_reading()

    def start_reading(self) -> None:
        """Start receiving (a stream made with ``reading=False`` leaves messages unread)."""
        self._reader = asyncio.create_task(self._read_all())

    async def _read_all(self) -> None:
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                self._messages.put_nowait(message)
            self._messages.put_nowait(grpc.aio.EOF)
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
            self._messages.put_nowait(error)

    async def next(self, within: float = RPC_TIMEOUT) -> Any:
        """The next message; ``grpc.aio.EOF`` once the stream ended OK; raises its error."""
        message = await asyncio.wait_for(self._messages.get(), within)
        if isinstance(message, BaseException):
            raise message
        return message

    async def snapshot(self) -> Any:
        message = await self.next()
        assert message.WhichOneof("kind") == "snapshot", message
        return message.snapshot

    async def until(self, sequence: int, within: float = RPC_TIMEOUT) -> list[event_pb2.JobEvent]:
        """Read until an event with ``sequence`` arrived; every event read is kept in ``events``."""
        async with asyncio.timeout(within):
            while not self.events or self.events[-1].sequence < sequence:
                message = await self.next(within)
                assert message is not grpc.aio.EOF, f"stream ended before sequence {sequence}"
                self.take(message)
        return self.events

    def take(self, message: Any) -> None:
        kind = message.WhichOneof("kind")
        if kind == "events":
            assert len(message.events.events) >= 1
            self.events.extend(message.events.events)
        elif kind == "heartbeat":
            self.heartbeats.append(message.heartbeat)
        else:
            raise AssertionError(f"unexpected {kind} message mid-stream")

    async def end(self, within: float = RPC_TIMEOUT) -> grpc.aio.AioRpcError | None:
        """Read to the end of the stream: None when it ended OK, else its error."""
        try:
            async with asyncio.timeout(within):
                while (message := await self.next(within)) is not grpc.aio.EOF:
                    self.take(message)
        except grpc.aio.AioRpcError as error:
            return error
        return None

    def cancel(self) -> None:
        """Cancel the call, as a client leaving the page does."""
        self.call.cancel()

    def sequences(self) -> list[int]:
        return [event.sequence for event in self.events]


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, "the error must carry rich details"
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details), status
    return info
