"""Acting on a turn: its tool calls, in order, under the loop's guards.

The tool-call cap ends the job (ITERATION_LIMIT) once the job has made ``max_tool_calls``.
Repetition detection looks at the newest calls: the same call (name and input)
``REPETITION_LIMIT`` times within ``REPETITION_WINDOW`` is not run again; the agent is told
so once (steered), and a repetition after that ends the job (REPETITION). Results are cut in
the middle when long. A call that needs a person becomes an :class:`~.answers.Ask`: a question,
a failure retrying cannot fix, or a call of a tool the job's policy puts under approval
(not run until approved, see :mod:`.approvals`).
"""

from __future__ import annotations

from cofounder_server import jsontext
from cofounder_server.clock import Clock
from cofounder_server.domain.escalations import Escalation
from cofounder_server.domain.events import AgentToolCalled, EventPayload
from cofounder_server.domain.model import JobOutcome
from cofounder_server.executor.answers import Ask, approval_escalation
from cofounder_server.executor.phases import tool_context
from cofounder_server.executor.plugins import Message, Tool, ToolResult, Turn
from cofounder_server.executor.retries import attempt_tool
from cofounder_server.executor.run_state import LoopLimits, LoopState
from cofounder_server.executor.run_store import Pause, RunStore
from cofounder_server.executor.text import truncate_middle

REPETITION_WINDOW = 10
"""How many of the newest tool calls repetition detection looks at."""
REPETITION_LIMIT = 3
"""The same call (name and input) this many times within the window is a repetition."""

STEERING = (
    "You have called {name} with the same input {count} times within your last {window} tool "
    "calls, and it was not run again. Repeating it will not help: change your approach, or end "
    "your turn if the goal is done. Another repetition ends the job."
)


def tool_call_limit(limits: LoopLimits) -> tuple[JobOutcome, str]:
    """The outcome of a job that made as many tool calls as it may."""
    return (JobOutcome.ITERATION_LIMIT, f"reached the limit of {limits.max_tool_calls} tool calls")


async def act(
    turn: Turn,
    tools: dict[str, Tool],
    state: LoopState,
    *,
    new: list[Message],
    events: list[EventPayload],
    asks: list[Ask],
    store: RunStore,
    limits: LoopLimits,
    clock: Clock,
    pause: Pause,
) -> tuple[JobOutcome, str] | None:
    """Run the turn's tool calls: their results go to ``new`` and ``events``, calls that need
    a person to ``asks``; the outcome when a guard ends the job."""

    context = tool_context(store.job_id, state, events)
    for call in turn.tool_calls:
        if state.tool_calls >= limits.max_tool_calls:
            return tool_call_limit(limits)
        input_json = jsontext.dumps(call.input, sort_keys=True, default=str)
        signature = f"{call.name}\n{input_json}"
        state.recent = [*state.recent, signature][-REPETITION_WINDOW:]
        count = state.recent.count(signature)
        if count >= REPETITION_LIMIT:
            if state.steered:
                return (
                    JobOutcome.REPETITION,
                    f"the agent kept calling {call.name} with the same input after being steered",
                )
            state.steered = True
            result = ToolResult(
                STEERING.format(name=call.name, count=count, window=REPETITION_WINDOW), is_error=True
            )
        else:
            state.tool_calls += 1
            policy = store.job.agent.tool_approval
            tool = tools.get(call.name)
            if (
                tool is not None
                and policy is not None
                and policy.needs_approval(call.name, store.job.approved_tools)
            ):
                # Not run: the call waits for its own approval, its result once decided.
                asks.append(
                    Ask(
                        call,
                        approval_escalation(
                            store, call, tool.spec, policy, iteration=state.iteration, now=clock.now()
                        ),
                    )
                )
                continue
            attempted = await attempt_tool(
                tool,
                call,
                context,
                state,
                events,
                store=store,
                limits=limits,
                clock=clock,
                pause=pause,
            )
            if isinstance(attempted, Escalation):
                # The answer becomes this call's result once a person (or the deadline) gives it.
                asks.append(Ask(call, attempted))
                continue
            result = attempted
        content = truncate_middle(result.content, limits.result_limit)
        new.append(
            Message(
                role="tool", text=content, call_id=call.call_id, tool_name=call.name, is_error=result.is_error
            )
        )
        events.append(
            AgentToolCalled(
                iteration=state.iteration,
                tool_name=call.name,
                input_json=truncate_middle(input_json, limits.result_limit),
                result=content,
                is_error=result.is_error,
            )
        )
    return None
