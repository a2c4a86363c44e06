"""Trying again: model calls and tool calls that failed in a way that may pass.

* **Model calls.** A retryable brain error is tried again after a linear backoff, each retry
  announced with ``agent.retrying``, until ``brain_retries`` attempts have failed; then the
  job fails (MODEL_ERROR). A provider that asked to slow down (a rate limit or an overload
  with a ``retry-after``: :attr:`BrainError.retry_after`) is waited for as long as it says,
  and that is not counted as a failure, up to ``provider_wait_limit`` seconds in all for
  one call: 1,000 agents behind one rate-limited key wait, they do not fail.
* **Tool calls.** A tool call that fails with a typed error is run again (announced with
  ``agent.retrying``) until its error signature has used its attempts, then escalated to a
  person; an error retrying cannot fix escalates at once, and a tool's question asks
  directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from cofounder_server import observability
from cofounder_server.clock import Clock
from cofounder_server.domain.escalations import (
    ErrorClass,
    Escalation,
    EscalationTrigger,
    classify_error,
    error_signature,
)
from cofounder_server.domain.events import AgentRetrying, EventPayload
from cofounder_server.executor.answers import error_escalation, question_escalation
from cofounder_server.executor.plugins import (
    Brain,
    BrainError,
    Message,
    Tool,
    ToolCall,
    ToolContext,
    ToolResult,
    ToolSpec,
    Turn,
)
from cofounder_server.executor.run_state import LoopLimits, LoopState
from cofounder_server.executor.run_store import Pause, RunStore
from cofounder_server.executor.text import truncate_middle

log = logging.getLogger(__name__)

PROVIDER_WAIT_FLOOR_SECONDS = 1.0
"""What each provider-requested wait counts as, at least, against ``provider_wait_limit``: a
provider answering "retry after 0 s" forever still ends the call's waiting."""


class ThinkFailed(Exception):
    """The brain could not produce a turn and trying again will not help (or the attempts
    are used up); the message says why, for the job's outcome."""


async def think(
    brain: Brain,
    messages: Sequence[Message],
    specs: Sequence[ToolSpec],
    *,
    store: RunStore,
    limits: LoopLimits,
    clock: Clock,
    pause: Pause,
) -> Turn:
    """The brain's next turn, trying again while its failure may pass (see the module
    docstring). Raises :class:`ThinkFailed`."""
    attempt = 0
    slowed = 0
    waited = 0.0
    while True:
        try:
            with observability.tracing.model_call(store.job_id):
                return await brain.think(messages, specs)
        except BrainError as error:
            message = truncate_middle(str(error), 1000)
            if error.retryable and error.retry_after is not None:
                delay = max(0.0, error.retry_after)
                waited += max(delay, PROVIDER_WAIT_FLOOR_SECONDS)
                if waited > limits.provider_wait_limit:
                    raise ThinkFailed(
                        f"the model provider kept asking to slow down for over "
                        f"{limits.provider_wait_limit:.0f} s ({error.signature}): {error}"
                    ) from error
                slowed += 1
                await _announce(
                    store,
                    clock,
                    error.signature,
                    attempt=slowed,
                    max_attempts=0,
                    message=message,
                    delay=delay,
                )
                await pause(delay)
                continue
            attempt += 1
            if not error.retryable or attempt >= limits.brain_retries:
                if error.retryable:
                    raise ThinkFailed(
                        f"the brain failed {attempt} times ({error.signature}): {error}"
                    ) from error
                raise ThinkFailed(f"the brain failed ({error.signature}): {error}") from error
            delay = limits.brain_retry_delay * attempt
            await _announce(
                store,
                clock,
                error.signature,
                attempt=attempt,
                max_attempts=limits.brain_retries,
                message=message,
                delay=delay,
            )
            await pause(delay)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a brain bug: not retried
            log.exception("brain of job %s failed", store.job_id)
            raise ThinkFailed(f"the brain failed: {error!r}") from error


async def _announce(
    store: RunStore,
    clock: Clock,
    signature: str,
    *,
    attempt: int,
    max_attempts: int,
    message: str,
    delay: float,
) -> None:
    event = AgentRetrying(
        error_signature=signature,
        attempt=attempt,
        max_attempts=max_attempts,
        error_message=message,
        next_attempt_time=clock.now() + timedelta(seconds=delay),
    )
    await store.publish([event])


async def attempt_tool(
    tool: Tool | None,
    call: ToolCall,
    context: ToolContext,
    state: LoopState,
    events: list[EventPayload],
    *,
    store: RunStore,
    limits: LoopLimits,
    clock: Clock,
    pause: Pause,
) -> ToolResult | Escalation:
    """Run the call, again while its failure may pass (announcing each retry in ``events``);
    the result, or the escalation the call needs."""
    failures: list[str] = []
    while True:
        result = await run_tool(tool, call.name, call.input, context, store.job_id)
        if result.question is not None:
            return question_escalation(store, call, result.question, state.iteration, clock.now())
        if not (result.is_error and result.error_type):
            return result
        signature = error_signature(call.name, result.error_type, result.content)
        message = truncate_middle(result.content, 1000)
        failures.append(f"{result.error_type}: {message}")
        if (
            classify_error(result.error_type, result.content, retryable=result.retryable)
            is ErrorClass.NEVER_RETRY
        ):
            trigger = EscalationTrigger.UNRETRYABLE_ERROR
        elif (attempt := state.retries.failed(signature)) >= limits.tool_attempts:
            trigger = EscalationTrigger.REPEATED_ERROR
        else:
            events.append(
                AgentRetrying(
                    error_signature=signature,
                    attempt=attempt,
                    max_attempts=limits.tool_attempts,
                    error_message=message,
                    next_attempt_time=clock.now() + timedelta(seconds=limits.tool_retry_delay * attempt),
                )
            )
            await pause(limits.tool_retry_delay * attempt)
            continue
        return error_escalation(
            store,
            call,
            trigger,
            signature,
            failures,
            attempts=limits.tool_attempts,
            iteration=state.iteration,
            now=clock.now(),
        )


async def run_tool(
    tool: Tool | None, name: str, tool_input: Mapping[str, Any], context: ToolContext, job_id: str
) -> ToolResult:
    """Run one tool call; an unknown tool or a tool that raises is an error result."""
    if tool is None:
        return ToolResult(f"there is no tool called {name!r}", is_error=True)
    try:
        return await tool.run(tool_input, context)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # tools report failures as results; a raise is a bug
        log.exception("tool %s of job %s raised", name, job_id)
        return ToolResult(f"the tool failed: {error!r}", is_error=True)
