"""Approved tool calls: each runs at most once, and the agent hears the truth about it.

A decided tool approval becomes its call's result when the agent takes its answers. A
rejected call never runs: the agent is told who rejected it and why (or that nobody answered
by the deadline). An approved call runs with the approved arguments (the reviewer's edit,
if any, which the agent is told of), after its execution is committed ``running``; its
result is kept ``done`` with its ``agent.tool.called`` event. A run that finds the call
``running`` without having started it comes after a process that stopped mid-call: the call
is not run again, and the agent is told it was interrupted and may not have completed. A
run that finds it ``done`` takes the kept result. An approved call is not retried: a
failure is its result.
"""

from __future__ import annotations

import json

from cofounder_server.domain.escalations import Escalation, ToolExecutionState, approval_text
from cofounder_server.domain.events import AgentToolCalled, EventPayload
from cofounder_server.executor.phases import tool_context
from cofounder_server.executor.plugins import Message, Tool
from cofounder_server.executor.retries import run_tool
from cofounder_server.executor.run_state import LoopLimits, LoopState
from cofounder_server.executor.run_store import Pause, RunStore
from cofounder_server.executor.text import truncate_middle

INTERRUPTED = (
    "This call of {tool} was approved and started, but the server running it stopped before it "
    "finished: it was interrupted and may or may not have completed. It will not be run again "
    "automatically; check its effect before calling it again."
)


class ApprovalRunner:
    """Settles one run's decided tool approvals (``answers.ApprovedCalls``)."""

    def __init__(self, store: RunStore, tools: dict[str, Tool], limits: LoopLimits) -> None:
        self._store = store
        self._tools = tools
        self._limits = limits

    async def settle(self, escalation: Escalation, state: LoopState, pause: Pause) -> Message:
        """The result of the call ``escalation`` decided (see the module docstring)."""
        told = truncate_middle(approval_text(escalation), self._limits.result_limit)
        if not escalation.approved:
            return self._message(escalation, told, is_error=True)
        execution = await self._store.start_tool_call(escalation, pause)
        if not execution.started:
            if execution.state is ToolExecutionState.DONE:
                return self._message(escalation, execution.result, is_error=execution.is_error)
            result = INTERRUPTED.format(tool=escalation.tool_name)
            await self._finish(escalation, state=state, content=result, is_error=True, events=[], pause=pause)
            return self._message(escalation, result, is_error=True)
        events: list[EventPayload] = []
        outcome = await run_tool(
            self._tools.get(escalation.tool_name),
            escalation.tool_name,
            json.loads(escalation.final_arguments_json),
            tool_context(self._store.job_id, state, events),
            self._store.job_id,
        )
        content = f"{told}\nResult:\n{truncate_middle(outcome.content, self._limits.result_limit)}"
        await self._finish(
            escalation, state=state, content=content, is_error=outcome.is_error, events=events, pause=pause
        )
        return self._message(escalation, content, is_error=outcome.is_error)

    async def _finish(
        self,
        escalation: Escalation,
        *,
        state: LoopState,
        content: str,
        is_error: bool,
        events: list[EventPayload],
        pause: Pause,
    ) -> None:
        called = AgentToolCalled(
            iteration=state.iteration,
            tool_name=escalation.tool_name,
            input_json=truncate_middle(escalation.final_arguments_json, self._limits.result_limit),
            result=content,
            is_error=is_error,
        )
        await self._store.finish_tool_call(escalation, content, is_error, [*events, called], pause)

    @staticmethod
    def _message(escalation: Escalation, text: str, *, is_error: bool) -> Message:
        return Message(
            role="tool",
            text=text,
            call_id=escalation.tool_call_id,
            tool_name=escalation.tool_name,
            is_error=is_error,
        )
