"""The :class:`~.plugins.ToolContext` a run's tool calls get: the phases they open and close
become events of the run and its current phase."""

from __future__ import annotations

from cofounder_server.domain.events import EventPayload, PhaseCompleted, PhaseStarted
from cofounder_server.executor.plugins import ToolContext
from cofounder_server.executor.run_state import LoopState


def tool_context(job_id: str, state: LoopState, events: list[EventPayload]) -> ToolContext:
    """A context whose phase changes update ``state.phase`` and append to ``events``: opening a
    phase completes the current one first."""

    async def open_phase(name: str) -> None:
        if state.phase:
            events.append(PhaseCompleted(phase=state.phase))
        state.phase = name
        events.append(PhaseStarted(phase=name))

    async def close_phase() -> None:
        if state.phase:
            events.append(PhaseCompleted(phase=state.phase))
            state.phase = ""

    return ToolContext(
        job_id=job_id, iteration=state.iteration, open_phase=open_phase, close_phase=close_phase
    )
