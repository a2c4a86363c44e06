"""One job's agent: the Think-Act-Observe-Repeat loop.

Each iteration asks the brain for a turn (:mod:`.retries`), prices it into today's spend
(:mod:`.budget_sleep`), runs its tool calls under the loop's guards (:mod:`.acting`), and
commits ledger row, new conversation messages, checkpoint and events together through the
group commit before the next iteration starts. A transition that follows from the
iteration (the job ends, the agent parks until its budget window resets) commits in the same
record. A run resumed after a restart starts from the last committed iteration, so nothing
committed is done twice. Escalations of a turn are raised after it is committed, and their
answers taken when the agent resumes (:mod:`.answers`).

Outcomes: COMPLETED (the brain ends its turn without tool calls; job READY), and FAILED with
ITERATION_LIMIT, REPETITION, MODEL_ERROR, ESCALATION_LIMIT or BUDGET_EXCEEDED. CANCELLED is
recorded by CancelJob itself; the loop only stops.

A run that has nothing to do until a time or a notification *parks*: it records the state,
ends, and returns a :class:`~cofounder_server.executor.parking.Park`; the executor keeps the
job in its parking lot until it is due or notified, then resumes it in a new run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cofounder_server import observability
from cofounder_server.clock import Clock
from cofounder_server.domain import budget
from cofounder_server.domain.changes import Spend
from cofounder_server.domain.events import (
    AgentBudgetExceeded,
    AgentBudgetUpdated,
    AgentThinking,
    EventPayload,
    PhaseCompleted,
)
from cofounder_server.domain.model import AgentState, JobOutcome, JobStatus
from cofounder_server.executor.acting import act, tool_call_limit
from cofounder_server.executor.answers import Ask, await_later, take_answers
from cofounder_server.executor.approvals import ApprovalRunner
from cofounder_server.executor.budget_sleep import BudgetWindow, park_until_midnight, sleep_until_midnight
from cofounder_server.executor.parking import Park
from cofounder_server.executor.plugins import Brain, Message, StopReason, Tool, ToolSpec, Turn
from cofounder_server.executor.prices import PriceTable
from cofounder_server.executor.registry import PluginRegistry
from cofounder_server.executor.retries import ThinkFailed, think
from cofounder_server.executor.run_state import LoopLimits, LoopState
from cofounder_server.executor.run_store import Gone, RunStore
from cofounder_server.executor.text import truncate_middle
from cofounder_server.executor.writer import Recorded
from cofounder_server.observability import logs
from cofounder_server.store.checkpoints import RunStart
from cofounder_server.store.iterations import Ending, Iteration, ModelCall, RunRecord, Transition

log = logging.getLogger(__name__)


class Stopped(Exception):
    """The run must end without recording an outcome (cancelled, taken over, shutting down)."""


def ending_of(outcome: JobOutcome, detail: str) -> Ending:
    """The job's ending for ``outcome``: READY when completed, else FAILED."""
    status = JobStatus.READY if outcome is JobOutcome.COMPLETED else JobStatus.FAILED
    agent_state = {
        JobOutcome.COMPLETED: AgentState.COMPLETED,
        JobOutcome.BUDGET_EXCEEDED: AgentState.BUDGET_EXCEEDED,
    }.get(outcome, AgentState.ERROR)
    return Ending(status, outcome, detail, agent_state)


class AgentRun:
    """Runs one job's agent until it ends, parks, is cancelled, or the process stops."""

    def __init__(
        self,
        store: RunStore,
        *,
        start: RunStart | None,
        plugins: PluginRegistry,
        prices: PriceTable,
        clock: Clock,
        limits: LoopLimits,
        on_size: Callable[[int], None] = lambda _: None,
    ) -> None:
        """``start``: what the run starts from, when the executor read it already (a batch of
        resumes reads theirs together; a job just claimed from the queue has no checkpoint).
        ``on_size`` is told what the conversation weighs (``Message.size`` summed) whenever it
        grows: the executor charges the run's memory by it."""
        self.store = store
        self.job_id = store.job_id
        self._start = start
        self._plugins = plugins
        self._prices = prices
        self._clock = clock
        self._limits = limits
        self._on_size = on_size
        self._stop = asyncio.Event()
        self.iteration = 0
        self.size = 0
        """What the conversation weighs (``Message.size`` summed)."""

    def stop(self) -> None:
        """End the run at the next iteration boundary."""
        self._stop.set()

    async def run(self) -> Park | None:
        """Run until the job ends (``None``) or the agent parks (the :class:`Park` it asks
        for, already recorded in SQL, with the conversation's size); ``None`` too when
        stopped."""
        park = await self._run()
        return None if park is None else dataclasses.replace(park, size=self.size)

    async def _run(self) -> Park | None:
        job = self.store.job
        if job.agent_state is AgentState.SLEEPING:
            return Park(AgentState.SLEEPING, job.wake_at)
        logs.job_id.set(self.job_id)
        try:
            start, self._start = self._start, None
            if start is None:
                start = await self.store.start(budget.window_start(self._clock.now()))
            checkpoint = start.checkpoint
            state = LoopState() if checkpoint is None else LoopState.from_json(checkpoint.state)
            self.iteration = self.store.progress = state.iteration
            self.size = 0 if checkpoint is None else checkpoint.conversation_bytes
            window = BudgetWindow(self.store, self._clock, start.window, start.spend)
            # The answers come first: taking them needs neither the conversation nor the
            # brain, and the person who answered sees the agent take them that much sooner.
            answers: list[Message] = []
            tools = {tool.spec.name: tool for tool in self._plugins.tools()}
            if state.awaiting:  # the answers of the last turn, or a wait that goes on
                park = await take_answers(self.store, state, answers, self._pause, self._approvals(tools))
                if park is not None:
                    return park
            if checkpoint is None:
                messages = [Message(role="user", text=self.store.job.goal)]
                saved = 0
            else:
                messages = [Message.from_json(m) for m in checkpoint.messages]
                saved = len(messages)
            messages += answers
            self.size = 0
            self._grew(messages)
            try:
                brain = self._plugins.brain_for(self.store.job.agent)
            except Exception as error:  # unknown brain, bad config: the job cannot run
                await self._end_alone(JobOutcome.MODEL_ERROR, f"cannot build the brain: {error}")
                return None
            specs = [tool.spec for tool in tools.values()]
            return await self._loop(
                brain=brain,
                tools=tools,
                specs=specs,
                messages=messages,
                saved=saved,
                state=state,
                window=window,
            )
        except (Stopped, Gone):
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
        window: BudgetWindow,
    ) -> Park | None:
        store, limits, clock = self.store, self._limits, self._clock
        await window.current(clock.now())
        if window.should_sleep:  # woken without a top-up before the window reset
            return await park_until_midnight(store, clock, self._pause)
        while True:
            if self._stop.is_set():
                raise Stopped
            if state.tool_calls >= limits.max_tool_calls:
                await self._end_alone(*tool_call_limit(limits))
                return None
            span = observability.tracing.iteration(self.job_id, state.iteration + 1)
            try:
                turn = await think(
                    brain, messages, specs, store=store, limits=limits, clock=clock, pause=self._pause
                )
                step = await self._step(turn, tools, state, window)
                messages.extend(step.new)
                self._grew(step.new)
                ended, park = await self._commit(step, messages[saved:], saved, state, window)
            except ThinkFailed as failed:
                await self._end_alone(JobOutcome.MODEL_ERROR, str(failed))
                return None
            finally:
                span.end()
            saved = len(messages)
            if ended or park is not None:
                return park
            if step.asks:
                await store.raise_escalations([ask.escalation for ask in step.asks])
            # Asleep on its budget, the agent waits for its answers too: a person may decide
            # meanwhile, and it takes the decision when it wakes.
            if window.should_sleep:
                return await park_until_midnight(store, clock, self._pause)
            if state.awaiting:
                park = await take_answers(store, state, messages, self._pause, self._approvals(tools))
                if park is not None:
                    return park

    async def _step(
        self, turn: Turn, tools: dict[str, Tool], state: LoopState, window: BudgetWindow
    ) -> _Step:
        """Price the turn into today's spend, act on it, and decide whether the job ends."""
        limits = self._limits
        now = self._clock.now()
        await window.current(now)  # midnight may have passed while thinking
        cost = self._prices.cost(turn.usage)
        observability.metrics.model_call(
            turn.usage.model, turn.usage.input_tokens, turn.usage.output_tokens, cost
        )
        spend = window.charge(cost)
        state.iteration += 1
        self.iteration = self.store.progress = state.iteration
        pct = window.percent
        step = _Step(
            turn=turn,
            now=now,
            cost=cost,
            spend=spend,
            percent=pct,
            events=[
                AgentThinking(
                    iteration=state.iteration, text=truncate_middle(turn.text, limits.result_limit)
                ),
                AgentBudgetUpdated(
                    budget_percent=min(100, pct),
                    spent_today_microdollars=spend.spent,
                    daily_budget_microdollars=spend.budget,
                    call_cost_microdollars=cost,
                ),
            ],
            new=[Message(role="assistant", text=turn.text, tool_calls=turn.tool_calls)],
        )
        if window.exceeded:
            step.outcome = (
                JobOutcome.BUDGET_EXCEEDED,
                f"a model call took today's spend to {pct}% of the budget "
                f"({spend.spent} of {spend.budget} microdollars)",
            )
        elif turn.stop_reason is StopReason.REFUSAL:
            step.outcome = (JobOutcome.MODEL_ERROR, "the model refused to continue")
        else:
            step.outcome = await act(
                turn,
                tools,
                state,
                new=step.new,
                events=step.events,
                asks=step.asks,
                store=self.store,
                limits=limits,
                clock=self._clock,
                pause=self._pause,
            )
            step.outcome = step.outcome or await_later(step.asks, state, limits.max_escalations)
            if step.outcome is None and not turn.tool_calls and turn.stop_reason is StopReason.END_TURN:
                step.outcome = (JobOutcome.COMPLETED, "")
        return step

    async def _commit(
        self, step: _Step, unsaved: list[Message], saved: int, state: LoopState, window: BudgetWindow
    ) -> tuple[bool, Park | None]:
        """Commit the iteration with what follows from it: the job's ending (unless it must
        withdraw pending escalations, which its own transaction does), or the agent's sleep
        until the budget window resets. Whether the job ended, and the park the run returns."""
        store, turn = self.store, step.turn
        iteration = Iteration(
            number=state.iteration,
            call=ModelCall(
                window_start=window.window,
                model=turn.usage.model,
                input_tokens=turn.usage.input_tokens,
                output_tokens=turn.usage.output_tokens,
                cost_microdollars=step.cost,
            ),
            new_messages=[message.to_json() for message in unsaved],
            first_position=saved,
            loop_state=state.to_json(),
            conversation_bytes=self.size,
        )
        events = step.events
        transition: Transition | None = None
        final: list[EventPayload] = []
        park: Park | None = None
        if step.outcome is not None:
            final = _final_events(step.outcome[0], state, step.percent, step.spend)
            if not store.job.pending_escalation_ids:
                transition = ending_of(*step.outcome)
                events += final
        elif not step.asks and window.should_sleep:
            transition, sleeping, park = sleep_until_midnight(step.now)
            events.append(sleeping)
        record = RunRecord(self.job_id, step.now, events, iteration=iteration, transition=transition)
        recorded = await store.record(record, self._pause)
        if step.outcome is None:
            return False, park
        if transition is None:
            await store.finish(ending_of(*step.outcome), final, self._pause)
        elif recorded is Recorded.DEFERRED:
            await store.finish(ending_of(*step.outcome), [], self._pause)
        log.info("job %s ended: %s %s", self.job_id, *step.outcome)
        return True, None

    def _approvals(self, tools: dict[str, Tool]) -> ApprovalRunner:
        return ApprovalRunner(self.store, tools, self._limits)

    def _grew(self, added: Sequence[Message]) -> None:
        self.size += sum(message.size() for message in added)
        self._on_size(self.size)

    async def _end_alone(self, outcome: JobOutcome, detail: str) -> None:
        """End the job without an iteration to ride with (its brain failed, its tool calls
        ran out)."""
        store = self.store
        ending = ending_of(outcome, detail)
        if store.job.pending_escalation_ids:
            await store.finish(ending, [], self._pause)
        else:
            record = RunRecord(self.job_id, self._clock.now(), [], transition=ending)
            if await store.record(record, self._pause) is Recorded.DEFERRED:
                await store.finish(ending, [], self._pause)
        log.info("job %s ended: %s %s", self.job_id, outcome, detail)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` of real time (retry backoff), unless the run is stopped."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        if self._stop.is_set():
            raise Stopped


@dataclass
class _Step:
    """One iteration between the brain's turn and its commit."""

    turn: Turn
    now: datetime
    cost: int
    spend: Spend
    percent: int
    events: list[EventPayload]
    new: list[Message]
    """The conversation's new messages: the assistant's turn and its tool results."""
    asks: list[Ask] = field(default_factory=list)
    outcome: tuple[JobOutcome, str] | None = None


def _final_events(outcome: JobOutcome, state: LoopState, pct: int, spend: Spend) -> list[EventPayload]:
    """What the job says as it ends, before its ``job.status_changed``."""
    if outcome is JobOutcome.BUDGET_EXCEEDED:
        return [
            AgentBudgetExceeded(
                budget_percent=pct,
                spent_today_microdollars=spend.spent,
                daily_budget_microdollars=spend.budget,
            )
        ]
    if outcome is JobOutcome.COMPLETED and state.phase:
        return [PhaseCompleted(phase=state.phase)]
    return []
