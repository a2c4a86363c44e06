"""One job's agent: the Think-Act-Observe-Repeat loop, with its guards, budget and sleep.

Each iteration asks the brain for a turn, prices it into the usage ledger, runs its tool
calls (guarded by the tool-call cap and repetition detection, results cut in the middle when
long), and commits ledger row, new conversation messages, checkpoint and events together
through the group-commit writer before the next iteration starts. A run resumed after a
restart starts from the last committed iteration, so nothing committed is done twice.

A tool call that fails with a typed error is run again (each retry announced with
``agent.retrying``) until its error signature has used its attempts, then escalated to a
person; an error retrying cannot fix escalates at once, and ``ask_human`` asks directly.
The escalations of a turn are raised after its iteration is committed; while any is pending
the agent parks waiting for input (its run ends, like a sleeping agent's), and the decision
of its last one sets it working, so its runner resumes it. It then takes every answer in one
transaction that marks them delivered, each as the result of its own tool call: a restart
never delivers one twice, and the conversation gets them from the escalations in SQL.

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
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cofounder_server import jsontext, observability
from cofounder_server.clock import Clock, next_utc_midnight
from cofounder_server.domain import budget
from cofounder_server.domain.changes import Change, Spend
from cofounder_server.domain.errors import Unavailable
from cofounder_server.domain.escalations import (
    ErrorClass,
    Escalation,
    EscalationOption,
    EscalationStatus,
    EscalationTrigger,
    Question,
    RetryCounts,
    attempts_text,
    classify_error,
    delivered_text,
    error_signature,
)
from cofounder_server.domain.events import (
    AgentBudgetExceeded,
    AgentBudgetUpdated,
    AgentRetrying,
    AgentSleeping,
    AgentThinking,
    AgentToolCalled,
    AgentWaitingForInput,
    EventPayload,
    PhaseCompleted,
    PhaseStarted,
    SleepReason,
    escalation_from_json,
    to_json,
)
from cofounder_server.domain.model import AgentState, Job, JobOutcome, JobStatus
from cofounder_server.executor.parking import Park
from cofounder_server.executor.plugins import (
    Brain,
    BrainError,
    Message,
    StopReason,
    Tool,
    ToolCall,
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
from cofounder_server.store.escalations import EscalationRepository
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.iterations import IterationRecord, ModelCall
from cofounder_server.store.ledger import LedgerRepository
from cofounder_server.store.runs import RunRepository

log = logging.getLogger(__name__)

ERROR_OPTIONS = (
    EscalationOption("retry", "Retry", "The cause is fixed: run the call again."),
    EscalationOption("skip", "Skip", "Go on without this call's result."),
    EscalationOption("stop", "Stop", "End the turn; the agent reports what it has."),
)
"""What a person may decide about a failing tool call."""

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
    tool_attempts: int = 3
    """Attempts of a retryable tool error signature before it escalates."""
    tool_retry_delay: float = 0.0
    """Seconds before the first retry of a failed tool call (then linear backoff)."""
    max_escalations: int = 5
    """Escalations a job may raise; the next one ends the job (ESCALATION_LIMIT)."""


@dataclass
class LoopState:
    """The loop's counters and guards, saved in every checkpoint."""

    iteration: int = 0
    tool_calls: int = 0
    recent: list[str] = field(default_factory=list)
    steered: bool = False
    phase: str = ""
    retries: RetryCounts = field(default_factory=RetryCounts)
    escalations: int = 0
    """Escalations raised so far."""
    awaiting: list[dict[str, Any]] = field(default_factory=list)
    """The escalated tool calls of the last committed turn, whose answers the agent waits
    for: ``call_id``, ``tool_name`` and the ``escalation`` (JSON) each raised."""

    def to_json(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "tool_calls": self.tool_calls,
            "recent": list(self.recent),
            "steered": self.steered,
            "phase": self.phase,
            "retries": self.retries.to_json(),
            "escalations": self.escalations,
            "awaiting": [dict(entry) for entry in self.awaiting],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> LoopState:
        return cls(
            iteration=int(value.get("iteration", 0)),
            tool_calls=int(value.get("tool_calls", 0)),
            recent=[str(v) for v in value.get("recent", [])],
            steered=bool(value.get("steered", False)),
            phase=str(value.get("phase", "")),
            retries=RetryCounts.from_json(value.get("retries")),
            escalations=int(value.get("escalations", 0)),
            awaiting=[dict(entry) for entry in value.get("awaiting", [])],
        )


@dataclass(frozen=True)
class Ask:
    """A tool call of the current turn that needs a person: the escalation it raises."""

    call: ToolCall
    escalation: Escalation


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
        escalations: EscalationRepository,
        writer: IterationWriter,
        changes: ChangePipeline,
        plugins: PluginRegistry,
        prices: PriceTable,
        clock: Clock,
        runner_id: str,
        limits: LoopLimits,
        deadline_raised: Callable[[datetime | None], None] = lambda _: None,
    ) -> None:
        """``deadline_raised`` tells the process's deadline timer of a new escalation's
        deadline."""
        self._runs = runs
        self._escalations = escalations
        self._deadline_raised = deadline_raised
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
        state = LoopState() if checkpoint is None else LoopState.from_json(checkpoint.state)
        self.iteration = state.iteration
        try:
            # The answers come first: taking them needs neither the conversation nor the
            # brain, and the person who answered sees the agent take them that much sooner.
            answers: list[Message] = []
            if state.awaiting:  # the answers of the last turn, or a wait that goes on
                park = await self._take_answers(state, answers)
                if park is not None:
                    return park
            if checkpoint is None:
                messages = [Message(role="user", text=self.job.goal)]
                saved = 0
            else:
                messages = [Message.from_json(m) for m in checkpoint.messages]
                saved = len(messages)
            messages += answers
            try:
                brain = self._plugins.brain_for(self.job.agent)
            except Exception as error:  # unknown brain, bad config: the job cannot run
                await self._finish(JobOutcome.MODEL_ERROR, f"cannot build the brain: {error}", [])
                return None
            tools = {tool.spec.name: tool for tool in self._plugins.tools()}
            specs = [tool.spec for tool in tools.values()]
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
            asks: list[Ask] = []
            if budget.exceeded(spent, limit):
                outcome = (
                    JobOutcome.BUDGET_EXCEEDED,
                    f"a model call took today's spend to {pct}% of the budget "
                    f"({spent} of {limit} microdollars)",
                )
            elif turn.stop_reason is StopReason.REFUSAL:
                outcome = (JobOutcome.MODEL_ERROR, "the model refused to continue")
            else:
                outcome = await self._act(turn, tools, state, new=new, events=events, asks=asks)
                outcome = outcome or self._await_later(asks, state)
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
                await self._end(outcome, state, pct=pct, spent=spent, limit=limit)
                return None
            if asks:
                await self._raise([ask.escalation for ask in asks])
            # Asleep on its budget, the agent waits for its answers too: a person may decide
            # meanwhile, and it takes the decision when it wakes.
            if budget.should_sleep(spent, limit):
                return await self._park_until_midnight()
            if state.awaiting:
                park = await self._take_answers(state, messages)
                if park is not None:
                    return park

    async def _end(
        self, outcome: tuple[JobOutcome, str], state: LoopState, *, pct: int, spent: int, limit: int
    ) -> None:
        final: list[EventPayload] = []
        if outcome[0] is JobOutcome.BUDGET_EXCEEDED:
            final.append(
                AgentBudgetExceeded(
                    budget_percent=pct, spent_today_microdollars=spent, daily_budget_microdollars=limit
                )
            )
        elif outcome[0] is JobOutcome.COMPLETED and state.phase:
            final.append(PhaseCompleted(phase=state.phase))
        await self._finish(outcome[0], outcome[1], final)

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
        *,
        new: list[Message],
        events: list[EventPayload],
        asks: list[Ask],
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
                attempted = await self._attempt(tools.get(call.name), call, context, state, events)
                if isinstance(attempted, Escalation):
                    # The answer becomes this call's result once a person (or the deadline) gives it.
                    asks.append(Ask(call, attempted))
                    continue
                result = attempted
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

    async def _attempt(
        self,
        tool: Tool | None,
        call: ToolCall,
        context: ToolContext,
        state: LoopState,
        events: list[EventPayload],
    ) -> ToolResult | Escalation:
        """Run the call, again while its failure may pass (announcing each retry); the
        result, or the escalation the call needs."""
        failures: list[str] = []
        while True:
            result = await self._run_tool(tool, call.name, call.input, context)
            if result.question is not None:
                return self._question(call, result.question, state.iteration)
            if not (result.is_error and result.error_type):
                return result
            signature = error_signature(call.name, result.error_type, result.content)
            message = truncate_middle(result.content, 1000)
            failures.append(f"{result.error_type}: {message}")
            if classify_error(result.error_type, result.content, retryable=result.retryable) is (
                ErrorClass.NEVER_RETRY
            ):
                return self._error_escalation(
                    call, EscalationTrigger.UNRETRYABLE_ERROR, signature, failures, state.iteration
                )
            attempt = state.retries.failed(signature)
            if attempt >= self._limits.tool_attempts:
                return self._error_escalation(
                    call, EscalationTrigger.REPEATED_ERROR, signature, failures, state.iteration
                )
            events.append(
                AgentRetrying(
                    error_signature=signature,
                    attempt=attempt,
                    max_attempts=self._limits.tool_attempts,
                    error_message=message,
                )
            )
            await self._pause(self._limits.tool_retry_delay * attempt)

    def _escalation_id(self, call: ToolCall, iteration: int) -> str:
        # Derived from the job, the turn and the call: raising it again after a restart
        # finds the stored one instead of asking twice.
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cofounder:{self.job_id}:{iteration}:{call.call_id}"))

    def _question(self, call: ToolCall, question: Question, iteration: int) -> Escalation:
        now = self._clock.now()
        return Escalation(
            escalation_id=self._escalation_id(call, iteration),
            job_id=self.job_id,
            owner_id=self.job.owner_id,
            status=EscalationStatus.PENDING,
            trigger=EscalationTrigger.AGENT_QUESTION,
            problem=question.question,
            create_time=now,
            recommended_action=question.recommended,
            options=question.options,
            tool_call_id=call.call_id,
            tool_name=call.name,
            deadline=question.deadline(now),
            default_option=question.default,
        )

    def _error_escalation(
        self, call: ToolCall, trigger: EscalationTrigger, signature: str, failures: list[str], iteration: int
    ) -> Escalation:
        if trigger is EscalationTrigger.UNRETRYABLE_ERROR:
            problem = f"The tool {call.name} failed in a way retrying cannot fix: {failures[-1]}"
        else:
            problem = (
                f"The tool {call.name} kept failing ({self._limits.tool_attempts} attempts): {failures[-1]}"
            )
        return Escalation(
            escalation_id=self._escalation_id(call, iteration),
            job_id=self.job_id,
            owner_id=self.job.owner_id,
            status=EscalationStatus.PENDING,
            trigger=trigger,
            problem=problem,
            create_time=self._clock.now(),
            attempts=attempts_text(failures),
            recommended_action="retry" if trigger is EscalationTrigger.REPEATED_ERROR else "skip",
            options=ERROR_OPTIONS,
            error_signature=signature,
            tool_call_id=call.call_id,
            tool_name=call.name,
        )

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

    # --- escalations --------------------------------------------------------------------

    def _await_later(self, asks: list[Ask], state: LoopState) -> tuple[JobOutcome, str] | None:
        """Note the turn's escalated calls in the state committed with the turn (so a restart
        waits for them too), or end the job if they pass the cap on escalations."""
        if not asks:
            return None
        if state.escalations + len(asks) > self._limits.max_escalations:
            return (
                JobOutcome.ESCALATION_LIMIT,
                f"the agent needed a person more than {self._limits.max_escalations} times "
                f"({asks[-1].escalation.problem[:200]})",
            )
        state.escalations += len(asks)
        state.awaiting = [
            {"call_id": ask.call.call_id, "tool_name": ask.call.name, "escalation": to_json(ask.escalation)}
            for ask in asks
        ]
        return None

    async def _raise(self, escalations: list[Escalation]) -> None:
        """Record the turn's escalations (those not stored yet) and set the agent waiting."""
        change = await self._escalations.raise_for(
            self.job_id, self._runner_id, escalations, now=self._clock.now()
        )
        if change is None:
            raise Stopped
        for stored in change.escalations:  # only those stored now: a retry raises none again
            observability.metrics.escalations_raised(stored.trigger.value).inc()
        await self._applied(change)
        for escalation in escalations:
            self._deadline_raised(escalation.deadline)

    async def _take_answers(self, state: LoopState, messages: list[Message]) -> Park | None:
        """Take the decisions of the last turn's escalations, once all are made: each becomes
        the result of its tool call (delivered once, in one transaction). While some are
        pending, the agent parks waiting for input (the decision's notification or the
        process's sweep resumes it)."""
        escalations = [escalation_from_json(entry["escalation"]) for entry in state.awaiting]
        ids = [escalation.escalation_id for escalation in escalations]
        decided, change = await self._escalations.deliver(
            self.job_id, self._runner_id, ids, now=self._clock.now()
        )
        if change is not None:
            await self._applied(change)
        elif len(decided) < len(ids):  # the process stopped before raising them all
            stored = {escalation.escalation_id for escalation in decided}
            await self._raise([e for e in escalations if e.escalation_id not in stored])
            return Park(AgentState.WAITING_FOR_INPUT, None)
        elif any(escalation.is_pending for escalation in decided):
            if self.job.agent_state is not AgentState.WAITING_FOR_INPUT:  # woke from a budget sleep
                await self._waiting_again([e.escalation_id for e in decided if e.is_pending])
            return Park(AgentState.WAITING_FOR_INPUT, None)
        else:
            await self._still_ours()  # delivered before a restart
        by_id = {escalation.escalation_id: escalation for escalation in decided}
        for entry, asked in zip(state.awaiting, escalations, strict=True):
            escalation = by_id[asked.escalation_id]
            messages.append(
                Message(
                    role="tool",
                    text=delivered_text(escalation),
                    call_id=entry["call_id"],
                    tool_name=entry["tool_name"],
                    is_error=escalation.status is EscalationStatus.EXPIRED,
                )
            )
            if escalation.error_signature:
                state.retries.reset(escalation.error_signature)
        state.awaiting = []
        return None

    async def _waiting_again(self, pending: list[str]) -> None:
        change = await self._runs.set_agent_state(
            self.job_id,
            state=AgentState.WAITING_FOR_INPUT,
            wake_at=None,
            events=[AgentWaitingForInput(escalation_id) for escalation_id in pending],
            now=self._clock.now(),
        )
        await self._applied(change)

    async def _still_ours(self) -> None:
        job = await self._runs.get(self.job_id)
        if job is None or job.status is not JobStatus.RUNNING:
            raise Stopped
        self.job = job

    # --- parking -----------------------------------------------------------------------

    async def _park_until_midnight(self) -> Park:
        """Record the sleep until the budget window resets; the run then ends."""
        wake_at = next_utc_midnight(self._clock.now())
        change = await self._until_committed(
            "its sleep",
            lambda: self._runs.set_agent_state(
                self.job_id,
                state=AgentState.SLEEPING,
                wake_at=wake_at,
                events=[AgentSleeping(wake_time=wake_at, reason=SleepReason.BUDGET_THRESHOLD)],
                now=self._clock.now(),
            ),
        )
        await self._applied(change)
        return Park(AgentState.SLEEPING, wake_at)

    async def _until_committed(
        self, what: str, transition: Callable[[], Awaitable[Change | None]]
    ) -> Change | None:
        """Commit a transition that follows a committed iteration, riding out SQL trouble (a
        busy SQLite, a PostgreSQL failover): giving up would redo the run from its checkpoint
        and repeat a model call that was paid for."""
        delay = 0.1
        while True:
            try:
                return await transition()
            except Unavailable as error:
                log.warning("job %s: %s not committed yet: %s", self.job_id, what, error)
                await self._pause(delay)
                delay = min(5.0, delay * 2)

    # --- endings and helpers ------------------------------------------------------------

    async def _finish(self, outcome: JobOutcome, detail: str, events: list[EventPayload]) -> None:
        status = JobStatus.READY if outcome is JobOutcome.COMPLETED else JobStatus.FAILED
        agent_state = {
            JobOutcome.COMPLETED: AgentState.COMPLETED,
            JobOutcome.BUDGET_EXCEEDED: AgentState.BUDGET_EXCEEDED,
        }.get(outcome, AgentState.ERROR)
        change = await self._until_committed(
            "its ending",
            lambda: self._runs.finish(
                self.job_id,
                self._runner_id,
                status=status,
                outcome=outcome,
                detail=detail,
                agent_state=agent_state,
                events=events,
                now=self._clock.now(),
            ),
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
