"""The live view of a job (GetJobStatus), read from Redis with SQL as the fallback.

Redis stays the authority for the agent's TTL keys; a tracked in-process cache answers
repeated reads without a round trip and is invalidated by Redis itself when a key changes or
expires. The job's durable facts ride along as a versioned summary key, rebuilt from SQL when
it is missing, and so does the newest event sequence (``last_seq``, written after every
publish), so the hot path touches neither SQL nor the network.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from redis.asyncio import Redis

from cofounder_server import jsontext
from cofounder_server.clock import Clock
from cofounder_server.domain.errors import NotFound
from cofounder_server.domain.model import AgentState, Job, JobOutcome, JobStatus, JobStatusSnapshot
from cofounder_server.domain.principal import Principal
from cofounder_server.live import keys
from cofounder_server.live.tracked_cache import TrackedCache
from cofounder_server.live.versioned import LiveWrites, decode, put_if_newer
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository

_LIVE_AGENT_STATES = frozenset({AgentState.WORKING, AgentState.SLEEPING, AgentState.WAITING_FOR_INPUT})


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
    def of(cls, job: Job, spent_today: int = 0, top_ups_today: int = 0) -> JobSummary:
        """The summary of a stored job, with today's spend and top-ups from the ledger."""
        return cls(
            owner_id=job.owner_id,
            status=job.status,
            outcome=job.outcome,
            agent_state=job.agent_state,
            wake_at=job.wake_at,
            daily_budget_microdollars=job.daily_budget_microdollars + top_ups_today,
            spent_today_microdollars=spent_today,
            pending_escalation_ids=(),
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
def _decode_summary(raw: bytes) -> JobSummary | None:
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


SpendReader = Callable[[str], Awaitable[tuple[int, int]]]
"""Today's spend and budget top-ups of a job, in microdollars (``job_id -> (spent, top_ups)``)."""


def summary_version(job: Job, progress: int) -> int:
    """The version of a summary key: the job's version, then the executor's progress (its
    iteration count) within it, so spend written after every model call orders correctly
    against status changes."""
    return (job.version << 32) | min(progress, 0xFFFF_FFFF)


class LiveStatus:
    """Keeps the cached job summaries current and assembles status snapshots."""

    def __init__(
        self,
        redis: Redis,
        cache: TrackedCache,
        jobs: JobRepository,
        clock: Clock,
        events: EventLogRepository,
        *,
        spend: SpendReader | None = None,
    ) -> None:
        self._redis = redis
        self._cache = cache
        self._jobs = jobs
        self._clock = clock
        self._events = events
        self._spend = spend

    async def job_changed(self, job: Job, *, progress: int = 0) -> None:
        """Publish a committed job's summary (today's spend and top-ups read from the ledger);
        an older version never overwrites a newer one."""
        await self._publish(job, await self._today(job.job_id), progress)

    async def _today(self, job_id: str) -> tuple[int, int]:
        return await self._spend(job_id) if self._spend is not None else (0, 0)

    async def _publish(self, job: Job, today: tuple[int, int], progress: int) -> JobSummary:
        summary = JobSummary.of(job, *today)
        key = keys.summary_key(job.job_id)
        await put_if_newer(
            self._redis, key, summary_version(job, progress), summary.encode(), keys.SUMMARY_TTL_SECONDS
        )
        self._cache.invalidate((key,))
        return summary

    def queue_summary(
        self, writes: LiveWrites, job: Job, *, spent_today: int, budget_today: int, progress: int
    ) -> str:
        """Add the summary write to ``writes`` (the executor's per-iteration fan-out); the key,
        for the caller to invalidate in this process's cache once the writes ran."""
        key = keys.summary_key(job.job_id)
        writes.put_if_newer(
            key,
            summary_version(job, progress),
            JobSummary.of(job, spent_today, budget_today - job.daily_budget_microdollars).encode(),
            keys.SUMMARY_TTL_SECONDS,
        )
        return key

    async def snapshot(self, principal: Principal, job_id: str) -> JobStatusSnapshot:
        """The job's live view, or NotFound when it is missing or not the caller's."""
        state_raw, pct_raw, wake_raw, summary_raw, sequence_raw = await self._cache.get_many(
            (
                keys.state_key(job_id),
                keys.budget_pct_key(job_id),
                keys.wake_at_key(job_id),
                keys.summary_key(job_id),
                keys.last_sequence_key(job_id),
            )
        )
        summary = _decode_summary(summary_raw) if summary_raw is not None else None
        if summary is None:
            summary = await self._summary_from_sql(job_id)
        scope = principal.owner_scope
        if scope is not None and summary.owner_id != scope:
            raise NotFound("job", job_id)
        sequence = decode(sequence_raw)
        latest = sequence[0] if sequence is not None else await self._latest_sequence_from_sql(job_id)
        return self._assemble(job_id, summary, state_raw, pct_raw, wake_raw, latest_event_sequence=latest)

    async def _latest_sequence_from_sql(self, job_id: str) -> int:
        latest = (await self._events.job_bounds(job_id)).last_sequence
        key = keys.last_sequence_key(job_id)
        # Versioned: a publish that raced this read keeps its newer value.
        await put_if_newer(self._redis, key, latest, "", keys.SUMMARY_TTL_SECONDS)
        self._cache.invalidate((key,))
        return latest

    async def _summary_from_sql(self, job_id: str) -> JobSummary:
        job = await self._jobs.get(job_id, owner_scope=None)
        if job is None:
            raise NotFound("job", job_id)
        return await self._publish(job, await self._today(job_id), 0)

    def _assemble(
        self,
        job_id: str,
        summary: JobSummary,
        state_raw: bytes | None,
        pct_raw: bytes | None,
        wake_raw: bytes | None,
        *,
        latest_event_sequence: int,
    ) -> JobStatusSnapshot:
        live_state = keys.parse_state(state_raw)
        # A finished job's live keys may outlive it (they expire on their own); the durable
        # record decides, so a cancelled job never shows as working or sleeping.
        if summary.status.is_terminal and live_state in _LIVE_AGENT_STATES:
            live_state = None
        agent_state = live_state or summary.agent_state
        wake_at = None
        if agent_state is AgentState.SLEEPING:
            wake_at = keys.parse_wake_at(wake_raw) or summary.wake_at
            if wake_at is not None and wake_at <= self._clock.now():
                wake_at = None
        budget_percent = keys.parse_budget_pct(pct_raw)
        if budget_percent is None and summary.spent_today_microdollars > 0:
            budget_percent = min(
                100, summary.spent_today_microdollars * 100 // max(1, summary.daily_budget_microdollars)
            )
        return JobStatusSnapshot(
            job_id=job_id,
            job_status=summary.status,
            agent_state=agent_state,
            wake_at=wake_at,
            budget_percent=budget_percent,
            daily_budget_microdollars=summary.daily_budget_microdollars,
            spent_today_microdollars=summary.spent_today_microdollars,
            pending_escalation_ids=summary.pending_escalation_ids,
            latest_event_sequence=latest_event_sequence,
            outcome=summary.outcome,
        )
