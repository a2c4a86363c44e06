"""What a run keeps between iterations (saved in every checkpoint) and the guards it applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cofounder_server.domain.escalations import RetryCounts


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
    provider_wait_limit: float = 900.0
    """Seconds one model call may wait, in all, for a provider that asked to slow down (a
    rate limit, an overload) before the job fails; such waits are not counted as failures."""


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
