"""One job's agent: the Think-Act-Observe-Repeat loop, with its guards, budget and sleep.

Each iteration asks the brain for a turn, prices it into the usage ledger, runs its tool
calls (guarded by the tool-call cap and repetition detection, results cut in the middle when
long), and commits ledger row, new conversation messages, checkpoint and events together
through the group-commit writer before the next iteration starts. A run resumed after a
restart starts from the last committed iteration, so nothing committed is done twice.

Outcomes: COMPLETED (the brain ends its turn without tool calls; job READY), and FAILED with
ITERATION_LIMIT, REPETITION, MODEL_ERROR or BUDGET_EXCEEDED. CANCELLED is recorded by
CancelJob itself; the loop only stops.

At 90 % of the daily budget the agent finishes its turn and *parks*: the run records
``sleeping`` (with the wake time and the ``agent.sleeping`` event) and ends, returning a
:class:`~cofounder_server.executor.parking.Park`; the executor keeps the job in its parking
lot until the window resets or a wake, then resumes it in a new run from its checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cofounder_server import jsontext, observability
from cofounder_server.clock import Clock, next_utc_midnight
from cofounder_server.domain import budget
from cofounder_server.domain.changes import Change, Spend
from cofounder_server.domain.errors import Unavailable
from cofounder_server.domain.events import (
    AgentBudgetExceeded,
    AgentBudgetUpdated,
    AgentRetrying,
    AgentSleeping,
    AgentThinking,
    AgentToolCalled,
    EventPayload,
    PhaseCompleted,
    PhaseStarted,
    SleepReason,
)
from cofounder_server.domain.model import AgentState, Job, JobOutcome, JobStatus
from cofounder_server.executor.parking import Park
from cofounder_server.executor.plugins import (
    Brain,
    BrainError,
    Message,
    StopReason,
    Tool,
    ToolContext,
    ToolResult,
    ToolSpec,
    Turn,
)
from cofounder_server.executor.prices import PriceTable
from cofounder_server.executor.registry import PluginRegistry
from cofounder_server.executor.text import truncate_middle
from cofounder_server.executor.writer import IterationWrite, IterationWriter
from cofounder_server.observability import logs
from cofounder_server.services.changes import ChangePipeline
from cofounder_server.store.checkpoints import CheckpointStore
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.iterations import IterationRecord, ModelCall
from cofounder_server.store.ledger import LedgerRepository
from cofounder_server.store.runs import RunRepository

log = logging.getLogger(__name__)

REPETITION_WINDOW = 10
"""How many of the newest tool calls repetition detection looks at."""
REPETITION_LIMIT = 3
"""The same call (name and input) this many times within the window is a repetition."""

STEERING = (
    "You have called {name} with the same input {count} times within your last {window} tool "
    "calls, and it was not run again. Repeating it will not help: change your approach, or end "
    "your turn if the goal is done. Another repetition ends the job."
)


@dataclass(frozen=True)
class LoopLimits:
    """The guards every run of this process applies."""

    max_tool_calls: int
    result_limit: int
    """Longest tool result or event text kept, in characters (cut in the middle)."""
    brain_retries: int
    brain_retry_delay: float
    """Seconds before the first retry of a retryable brain error (then linear backoff)."""


@dataclass
class LoopState:
    """The loop's counters and guards, saved in every checkpoint."""

    iteration: int = 0
    tool_calls: int = 0
    recent: list[str] = field(default_factory=list)
    steered: bool = False
    phase: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "tool_calls": self.tool_calls,
            "recent": list(self.recent),
            "steered": self.steered,
            "phase": self.phase,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> LoopState:
        return cls(
            iteration=int(value.get("iteration", 0)),
            tool_calls=int(value.get("tool_calls", 0)),
            recent=[str(v) for v in value.get("recent", [])],
            steered=bool(value.get("steered", False)),
            phase=str(value.get("phase", "")),
        )


class Stopped(Exception):
    """The run must end without recording an outcome (cancelled, taken over, shutting down)."""


class AgentRun:
    """Runs one job's agent until it ends, is cancelled, or the process stops."""

    def __init__(
        self,
        job: Job,
        *,
        runs: RunRepository,
        checkpoints: CheckpointStore,
        ledger: LedgerRepository,
        event_log: EventLogRepository,
        writer: IterationWriter,
        changes: ChangePipeline,
        plugins: PluginRegistry,
        prices: PriceTable,
        clock: Clock,
        runner_id: str,
        limits: LoopLimits,
    ) -> None:
        self._runs = runs
        self._checkpoints = checkpoints
        self._ledger = ledger
        self._event_log = event_log
        self._writer = writer
        self._changes = changes
        self._plugins = plugins
        self._prices = prices
        self._clock = clock
        self._runner_id = runner_id
        self._limits = limits
        self.job = job
        self.job_id = job.job_id
        self._stop = asyncio.Event()
        self.iteration = 0
        self._spend: tuple[datetime, Spend] | None = None
        """Today's spend as this run last knew it, with its budget window."""

    # --- control (from the executor) ----------------------------------------------------

    def stop(self) -> None:
        """End the run at the next iteration boundary."""
        self._stop.set()

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> Park | None:
        """Run until the job ends (``None``) or the agent parks (the :class:`Park` it asks
        for, already recorded in SQL); ``None`` too when stopped."""
        if self.job.agent_state is AgentState.SLEEPING:
            return Park(AgentState.SLEEPING, self.job.wake_at)
        logs.job_id.set(self.job_id)
        checkpoint = await self._checkpoints.checkpoint(self.job_id)
        if checkpoint is None:
            messages = [Message(role="user", text=self.job.goal)]
            saved = 0
            state = LoopState()
        else:
            messages = [Message.from_json(m) for m in checkpoint.messages]
            saved = len(messages)
            state = LoopState.from_json(checkpoint.state)
        self.iteration = state.iteration
        try:
            brain = self._plugins.brain_for(self.job.agent)
        except Exception as error:  # unknown brain, bad config: the job cannot run
            await self._finish(JobOutcome.MODEL_ERROR, f"cannot build the brain: {error}", [])
            return None
        tools = {tool.spec.name: tool for tool in self._plugins.tools()}
        specs = [tool.spec for tool in tools.values()]
        try:
            return await self._loop(
                brain=brain, tools=tools, specs=specs, messages=messages, saved=saved, state=state
            )
        except Stopped:
            return None

    async def _loop(
        self,
        *,
        brain: Brain,
        tools: dict[str, Tool],
        specs: Sequence[ToolSpec],
        messages: list[Message],
        saved: int,
        state: LoopState,
    ) -> Park | None:
        window = budget.window_start(self._clock.now())
        spent, limit = await self._budget(window)
        if budget.should_sleep(spent, limit):  # woken without a top-up before the window reset
            return await self._park_until_midnight()
        while True:
            if self._stop.is_set():
                raise Stopped
            if state.tool_calls >= self._limits.max_tool_calls:
                await self._finish(
                    JobOutcome.ITERATION_LIMIT,
                    f"reached the limit of {self._limits.max_tool_calls} tool calls",
                    [],
                )
                return None
            span = observability.tracing.iteration(self.job_id, state.iteration + 1)
            turn = await self._think(brain, messages, specs, state)
            if turn is None:
                span.end()
                return None
            now = self._clock.now()
            if budget.window_start(now) != window:  # midnight passed while thinking
                window = budget.window_start(now)
                spent, limit = await self._budget(window)
            cost = self._prices.cost(turn.usage)
            observability.metrics.model_call(
                turn.usage.model, turn.usage.input_tokens, turn.usage.output_tokens, cost
            )
            spent += cost
            state.iteration += 1
            pct = budget.percent(spent, limit)
            events: list[EventPayload] = [
                AgentThinking(
                    iteration=state.iteration, text=truncate_middle(turn.text, self._limits.result_limit)
                ),
                AgentBudgetUpdated(
                    budget_percent=min(100, pct),
                    spent_today_microdollars=spent,
                    daily_budget_microdollars=limit,
                    call_cost_microdollars=cost,
                ),
            ]
            new = [Message(role="assistant", text=turn.text, tool_calls=turn.tool_calls)]
            outcome: tuple[JobOutcome, str] | None = None
            if budget.exceeded(spent, limit):
                outcome = (
                    JobOutcome.BUDGET_EXCEEDED,
                    f"a model call took today's spend to {pct}% of the budget "
                    f"({spent} of {limit} microdollars)",
                )
            elif turn.stop_reason is StopReason.REFUSAL:
                outcome = (JobOutcome.MODEL_ERROR, "the model refused to continue")
            else:
                outcome = await self._act(turn, tools, state, new, events)
                if outcome is None and not turn.tool_calls and turn.stop_reason is StopReason.END_TURN:
                    outcome = (JobOutcome.COMPLETED, "")
            messages.extend(new)
            call = ModelCall(
                window_start=window,
                model=turn.usage.model,
                input_tokens=turn.usage.input_tokens,
                output_tokens=turn.usage.output_tokens,
                cost_microdollars=cost,
            )
            await self._commit(
                call=call,
                messages=messages,
                saved=saved,
                state=state,
                events=events,
                spend=Spend(spent, limit),
                now=now,
            )
            span.end()
            saved = len(messages)
            self.iteration = state.iteration
            if outcome is not None:
                final: list[EventPayload] = []
                if outcome[0] is JobOutcome.BUDGET_EXCEEDED:
                    final.append(
                        AgentBudgetExceeded(
                            budget_percent=pct,
                            spent_today_microdollars=spent,
                            daily_budget_microdollars=limit,
                        )
                    )
                elif outcome[0] is JobOutcome.COMPLETED and state.phase:
                    final.append(PhaseCompleted(phase=state.phase))
                await self._finish(outcome[0], outcome[1], final)
                return None
            if budget.should_sleep(spent, limit):
                return await self._park_until_midnight()

    def _tool_call_limit_detail(self) -> str:
        return f"reached the limit of {self._limits.max_tool_calls} tool calls"

    async def _budget(self, window: datetime) -> tuple[int, int]:
        spent, top_ups = await self._ledger.budget_of(self.job_id, window)
        limit = self.job.daily_budget_microdollars + top_ups
        self._spend = (window, Spend(spent, limit))
        return spent, limit

    # --- think --------------------------------------------------------------------------

    async def _think(
        self, brain: Brain, messages: list[Message], specs: Sequence[ToolSpec], state: LoopState
    ) -> Turn | None:
        attempt = 0
        while True:
            attempt += 1
            try:
                with observability.tracing.model_call(self.job_id):
                    return await brain.think(messages, specs)
            except BrainError as error:
                if not error.retryable or attempt >= self._limits.brain_retries:
                    detail = f"the brain failed ({error.signature}): {error}"
                    if error.retryable:
                        detail = f"the brain failed {attempt} times ({error.signature}): {error}"
                    await self._finish(JobOutcome.MODEL_ERROR, detail, [])
                    return None
                event = AgentRetrying(
                    error_signature=error.signature,
                    attempt=attempt,
                    max_attempts=self._limits.brain_retries,
                    error_message=truncate_middle(str(error), 1000),
                )
                await self._publish([event])
                await self._pause(self._limits.brain_retry_delay * attempt)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a brain bug: not retried
                log.exception("brain of job %s failed", self.job_id)
                await self._finish(JobOutcome.MODEL_ERROR, f"the brain failed: {error!r}", [])
                return None

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        if self._stop.is_set():
            raise Stopped

    # --- act ----------------------------------------------------------------------------

    async def _act(
        self,
        turn: Turn,
        tools: dict[str, Tool],
        state: LoopState,
        new: list[Message],
        events: list[EventPayload],
    ) -> tuple[JobOutcome, str] | None:

        async def open_phase(name: str) -> None:
            if state.phase:
                events.append(PhaseCompleted(phase=state.phase))
            state.phase = name
            events.append(PhaseStarted(phase=name))

        async def close_phase() -> None:
            if state.phase:
                events.append(PhaseCompleted(phase=state.phase))
                state.phase = ""

        context = ToolContext(
            job_id=self.job_id, iteration=state.iteration, open_phase=open_phase, close_phase=close_phase
        )
        for call in turn.tool_calls:
            if state.tool_calls >= self._limits.max_tool_calls:
                return (
                    JobOutcome.ITERATION_LIMIT,
                    f"reached the limit of {self._limits.max_tool_calls} tool calls",
                )
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
                result = await self._run_tool(tools.get(call.name), call.name, call.input, context)
            content = truncate_middle(result.content, self._limits.result_limit)
            new.append(
                Message(
                    role="tool",
                    text=content,
                    call_id=call.call_id,
                    tool_name=call.name,
                    is_error=result.is_error,
                )
            )
            events.append(
                AgentToolCalled(
                    iteration=state.iteration,
                    tool_name=call.name,
                    input_json=truncate_middle(input_json, self._limits.result_limit),
                    result=content,
                    is_error=result.is_error,
                )
            )
        return None

    async def _run_tool(
        self, tool: Tool | None, name: str, tool_input: Any, context: ToolContext
    ) -> ToolResult:
        if tool is None:
            return ToolResult(f"there is no tool called {name!r}", is_error=True)
        try:
            return await tool.run(tool_input, context)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # tools report failures as results; a raise is a bug
            log.exception("tool %s of job %s raised", name, self.job_id)
            return ToolResult(f"the tool failed: {error!r}", is_error=True)

    # --- observe: commit ----------------------------------------------------------------

    async def _commit(
        self,
        *,
        call: ModelCall,
        messages: list[Message],
        saved: int,
        state: LoopState,
        events: list[EventPayload],
        spend: Spend,
        now: datetime,
    ) -> None:
        self._spend = (call.window_start, spend)
        record = IterationRecord(
            job_id=self.job_id,
            iteration=state.iteration,
            call=call,
            new_messages=[message.to_json() for message in messages[saved:]],
            first_position=saved,
            loop_state=state.to_json(),
            time=now,
            events=events,
        )
        write = IterationWrite(record, self.job, spend)
        delay = 0.1
        while True:
            try:
                accepted = await self._writer.write(write)
                break
            except Unavailable as error:
                # SQL is down: the iteration is not durable yet; keep it and try again.
                log.warning("job %s: iteration %d not committed yet: %s", self.job_id, state.iteration, error)
                await self._pause(delay)
                delay = min(5.0, delay * 2)
                write.done = asyncio.get_running_loop().create_future()
        if not accepted:
            raise Stopped

    # --- parking -----------------------------------------------------------------------

    async def _park_until_midnight(self) -> Park:
        """Record the sleep until the budget window resets; the run then ends."""
        wake_at = next_utc_midnight(self._clock.now())
        change = await self._runs.set_agent_state(
            self.job_id,
            state=AgentState.SLEEPING,
            wake_at=wake_at,
            events=[AgentSleeping(wake_time=wake_at, reason=SleepReason.BUDGET_THRESHOLD)],
            now=self._clock.now(),
        )
        await self._applied(change)
        return Park(AgentState.SLEEPING, wake_at)

    # --- endings and helpers ------------------------------------------------------------

    async def _finish(self, outcome: JobOutcome, detail: str, events: list[EventPayload]) -> None:
        status = JobStatus.READY if outcome is JobOutcome.COMPLETED else JobStatus.FAILED
        agent_state = {
            JobOutcome.COMPLETED: AgentState.COMPLETED,
            JobOutcome.BUDGET_EXCEEDED: AgentState.BUDGET_EXCEEDED,
        }.get(outcome, AgentState.ERROR)
        change = await self._runs.finish(
            self.job_id,
            self._runner_id,
            status=status,
            outcome=outcome,
            detail=detail,
            agent_state=agent_state,
            events=events,
            now=self._clock.now(),
        )
        if change is None:
            raise Stopped
        await self._applied(change)
        log.info("job %s ended: %s %s", self.job_id, outcome, detail)

    async def _applied(self, change: Change | None) -> None:
        """Adopt a committed change and send it down the change pipeline."""
        if change is None:
            raise Stopped
        self.job = change.job or self.job
        # The spend this run knows rides along: the change's keys are newer than those of the
        # iteration before it, whose fan-out may still be on its way.
        known = self._spend
        spend = known[1] if known and known[0] == budget.window_start(self._clock.now()) else None
        await self._changes.committed(dataclasses.replace(change, progress=self.iteration, spend=spend))

    async def _publish(self, events: list[EventPayload]) -> None:
        stored = await self._event_log.append_job_events(self.job_id, events, now=self._clock.now())
        await self._changes.committed(Change.appended(stored))
