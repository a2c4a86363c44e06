"""The live view of a job (GetJobStatus), read from Redis with SQL as the fallback.

Redis stays the authority for the agent's TTL keys; a tracked in-process cache answers
repeated reads without a round trip and is invalidated by Redis itself when a key changes or
expires. The job's durable facts ride along as a versioned summary key and so does the newest
event sequence (``last_seq``), both written by the change pipeline before it announces a
change and rebuilt from SQL when missing, so the hot path touches neither SQL nor the network.
"""

from __future__ import annotations

import dataclasses

from cofounder_server.clock import Clock
from cofounder_server.domain.budget import shown_percent, window_start
from cofounder_server.domain.changes import LIVE_AGENT_STATES
from cofounder_server.domain.errors import NotFound, Unavailable
from cofounder_server.domain.model import AgentState, JobStatusSnapshot
from cofounder_server.domain.principal import Principal
from cofounder_server.live import keys
from cofounder_server.live.summary import JobSummary, decode_summary
from cofounder_server.live.tracked_cache import TrackedCache
from cofounder_server.live.versioned import decode
from cofounder_server.services.changes import ChangePipeline
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.ledger import LedgerRepository


class LiveStatus:
    """Assembles status snapshots from the live keys, with SQL as the fallback."""

    def __init__(
        self,
        *,
        cache: TrackedCache,
        changes: ChangePipeline,
        jobs: JobRepository,
        ledger: LedgerRepository,
        event_log: EventLogRepository,
        clock: Clock,
    ) -> None:
        self._cache = cache
        self._changes = changes
        self._jobs = jobs
        self._ledger = ledger
        self._event_log = event_log
        self._clock = clock

    async def snapshot(self, principal: Principal, job_id: str) -> JobStatusSnapshot:
        """The job's live view, or NotFound when it is missing or not the caller's.

        While Redis cannot be reached the view comes from SQL alone, marked
        ``live_state_unavailable`` (so a change committed during an outage still answers).
        """
        try:
            return await self._snapshot(principal.owner_scope, job_id)
        except Unavailable:
            return await self._snapshot_from_sql(job_id, principal.owner_scope)

    async def _snapshot(self, scope: str | None, job_id: str) -> JobStatusSnapshot:
        names = (
            keys.state_key(job_id),
            keys.budget_pct_key(job_id),
            keys.wake_at_key(job_id),
            keys.summary_key(job_id),
            keys.last_sequence_key(job_id),
        )
        from_memory = all(self._cache.holds(name) for name in names)
        state_raw, pct_raw, wake_raw, summary_raw, sequence_raw = await self._cache.get_many(names)
        summary = decode_summary(summary_raw) if summary_raw is not None else None
        sequence = decode(sequence_raw)
        if summary is None or (scope is not None and summary.owner_id != scope):
            await self._deny_at_constant_cost(from_memory, names)
            job = await self._jobs.get(job_id, owner_scope=scope)
            if job is None:
                raise NotFound("job", job_id)
            _, summary, latest = await self._changes.rebuild(job_id, job)
        elif sequence is None:
            _, summary, latest = await self._changes.rebuild(job_id)
        else:
            latest = sequence[0]
        return self._assemble(job_id, summary, state_raw, pct_raw, wake_raw, latest_event_sequence=latest)

    async def _deny_at_constant_cost(self, from_memory: bool, names: tuple[str, ...]) -> None:
        """Make a likely denial cost what an unknown id's first read costs.

        The cache holds the keys of ids in use, and only SQL can tell that an id is unknown;
        so every denial pays one Redis round trip (the keys are read from Redis unless the
        cache answered) and one SQL lookup. Another tenant's job then costs what an unknown
        id costs, and the time taken does not tell whether an id exists.
        """
        if from_memory:
            await self._cache.read_uncached(names)

    async def cover(self, job_id: str, sequence: int) -> None:
        """Make sure the live view is at least as new as event ``sequence``, which is about to
        reach a watcher from SQL: its change's own fan-out may not have run yet, and a client
        that saw the event must not then read an older status."""
        try:
            (raw,) = await self._cache.get_many((keys.last_sequence_key(job_id),))
            known = decode(raw)
            if known is None or known[0] < sequence:
                await self._changes.rebuild(job_id)
        except Unavailable:
            pass  # while Redis is down, snapshots come from SQL

    async def _snapshot_from_sql(self, job_id: str, scope: str | None) -> JobStatusSnapshot:
        """The durable record's view, for when the live keys cannot be read."""
        job = await self._jobs.get(job_id, owner_scope=scope)
        if job is None:
            raise NotFound("job", job_id)
        spend = await self._ledger.spend_of(job, window_start(self._clock.now()))
        latest = (await self._event_log.job_bounds(job_id)).last_sequence
        snapshot = self._assemble(
            job_id, JobSummary.of(job, spend), None, None, None, latest_event_sequence=latest
        )
        return dataclasses.replace(snapshot, live_state_unavailable=True)

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
        if summary.status.is_terminal and live_state in LIVE_AGENT_STATES:
            live_state = None
        agent_state = live_state or summary.agent_state
        wake_at = None
        if agent_state is AgentState.SLEEPING:
            wake_at = keys.parse_wake_at(wake_raw) or summary.wake_at
            if wake_at is not None and wake_at <= self._clock.now():
                wake_at = None
        budget_percent = keys.parse_budget_pct(pct_raw)
        if budget_percent is None and summary.spent_today_microdollars > 0:
            budget_percent = shown_percent(
                summary.spent_today_microdollars, summary.daily_budget_microdollars
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
