"""The job summary key: the durable facts of a job that the status view needs, cached in Redis.

The value is versioned (:mod:`.versioned`) by :func:`summary_version`, so an older
change's summary never overwrites a newer one's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from cofounder_server import jsontext
from cofounder_server.domain.changes import Spend
from cofounder_server.domain.model import AgentState, Job, JobOutcome, JobStatus
from cofounder_server.live.versioned import decode


@dataclass(frozen=True)
class JobSummary:
    """The durable facts of a job that the status view needs, as cached in Redis."""

    owner_id: str
    status: JobStatus
    outcome: JobOutcome | None
    agent_state: AgentState | None
    wake_at: datetime | None
    daily_budget_microdollars: int
    spent_today_microdollars: int
    pending_escalation_ids: tuple[str, ...]

    @classmethod
    def of(cls, job: Job, spend: Spend) -> JobSummary:
        """The summary of a committed job with today's spend."""
        return cls(
            owner_id=job.owner_id,
            status=job.status,
            outcome=job.outcome,
            agent_state=job.agent_state,
            wake_at=job.wake_at,
            daily_budget_microdollars=spend.budget,
            spent_today_microdollars=spend.spent,
            pending_escalation_ids=job.pending_escalation_ids,
        )

    def encode(self) -> str:
        """Compact JSON for the summary key."""
        return jsontext.dumps(
            {
                "o": self.owner_id,
                "s": self.status.value,
                "x": self.outcome.value if self.outcome else None,
                "a": self.agent_state.value if self.agent_state else None,
                "w": self.wake_at.isoformat() if self.wake_at else None,
                "b": self.daily_budget_microdollars,
                "p": self.spent_today_microdollars,
                "e": list(self.pending_escalation_ids),
            }
        )


@lru_cache(maxsize=8192)
def decode_summary(raw: bytes) -> JobSummary | None:
    """Parse a summary key's value; anything malformed counts as missing (rebuilt from SQL)."""
    versioned = decode(raw)
    if versioned is None:
        return None
    try:
        body = json.loads(versioned[1])
        return JobSummary(
            owner_id=str(body["o"]),
            status=JobStatus(body["s"]),
            outcome=JobOutcome(body["x"]) if body["x"] else None,
            agent_state=AgentState(body["a"]) if body["a"] else None,
            wake_at=datetime.fromisoformat(body["w"]) if body["w"] else None,
            daily_budget_microdollars=int(body["b"]),
            spent_today_microdollars=int(body["p"]),
            pending_escalation_ids=tuple(str(e) for e in body["e"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def summary_version(job: Job, progress: int) -> int:
    """The version of a summary key: the job's version, then the executor's progress (its
    iteration count) within it, so spend written after every model call orders correctly
    against status changes."""
    return (job.version << 32) | min(progress, 0xFFFF_FFFF)
