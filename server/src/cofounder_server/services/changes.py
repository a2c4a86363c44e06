"""The one road from a SQL commit to everything downstream of it.

Every change to a job commits in SQL first (the record), together with its events. Then
:class:`ChangePipeline` turns the committed :class:`~cofounder_server.domain.changes.Change`
into, in this order:

1. one Redis round trip: a pipeline holding one script that writes every live key the
   change implies (the job's versioned summary and ``last_seq``, the agent's ``state``,
   ``wake_at`` and ``budget_pct`` with the key contract's TTLs, derived from the committed
   values and written only if no newer change got there first), then one PUBLISH per job
   on its events channel, one for the escalation feed entries and one for the fleet feed
   entries (each job's status as the change committed it), then the cancel, wake or
   answer request on the executor control channel for the replica that runs the job.
   Keys are written before the announcement, so a watcher that has an event never reads
   an older summary from Redis;
2. the runner's notification, in process (the executor here claims a submitted job, stops
   a cancelled one, wakes a woken one and hands an answered one its decision at once),
   also when the round trip failed.

A failure after the commit never turns the committed change into an error: the job
service, the agent loop, the group-commit writer and the executor all call this and return
success. What Redis missed is repaired: the job is remembered and its keys rebuilt from
SQL once Redis answers again (the status view also rebuilds a missing summary on read), and
watchers read the unannounced events from SQL, gap-free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol

from cofounder_server import observability
from cofounder_server.clock import Clock
from cofounder_server.domain.budget import window_start
from cofounder_server.domain.changes import (
    Change,
    RunnerNotice,
    Spend,
    opening_spend,
    status_of,
    visible_agent_state,
)
from cofounder_server.domain.errors import NotFound, Unavailable
from cofounder_server.domain.model import Job
from cofounder_server.events.escalation_events import EscalationEventEncoder, wire_escalation_event
from cofounder_server.events.fleet_entries import StatusEncoder, wire_status
from cofounder_server.events.hub import WireEvent, pack
from cofounder_server.events.job_events import JobEventEncoder, wire_event
from cofounder_server.live import keys
from cofounder_server.live.client import LiveClient, RoundTrip
from cofounder_server.live.control import ControlMessage, ControlVerb
from cofounder_server.live.summary import JobSummary, summary_version
from cofounder_server.live.tracked_cache import TrackedCache
from cofounder_server.live.versioned import LiveWrites
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.ledger import LedgerRepository

log = logging.getLogger(__name__)

REPAIR_INTERVAL_SECONDS = 1.0
"""First retry of the live keys of changes Redis missed (doubling up to 5 s while it is down)."""
REPAIR_PAGE = 500
"""Jobs whose live keys are rebuilt together: one batch of reads and one Redis round trip
(a restart on an embedded Redis engine rebuilds every parked agent's keys)."""

_CONTROL_VERBS = {
    RunnerNotice.CANCELLED: ControlVerb.CANCEL,
    RunnerNotice.WOKEN: ControlVerb.WAKE,
    RunnerNotice.ANSWERED: ControlVerb.ANSWER,
}


class JobRunner(Protocol):
    """The executor of this process, told about changes it must act on."""

    def job_submitted(self, job: Job) -> None:
        """A queued job may be claimed now."""
        ...

    def job_cancelled(self, job: Job) -> None:
        """Stop the job's agent if it runs here."""
        ...

    def job_woken(self, job: Job) -> None:
        """Resume the job's agent if it sleeps here (the wake is recorded already)."""
        ...

    def job_answered(self, job_id: str) -> None:
        """Hand the job's agent the decision it waits for, if it runs here."""
        ...


class ChangePipeline:
    """Turns committed changes into live keys, event fan-out and runner notifications."""

    def __init__(
        self,
        live: LiveClient,
        cache: TrackedCache,
        clock: Clock,
        encode: JobEventEncoder,
        *,
        encode_escalation: EscalationEventEncoder,
        encode_status: StatusEncoder,
        jobs: JobRepository,
        ledger: LedgerRepository,
        event_log: EventLogRepository,
    ) -> None:
        self._live = live
        self._cache = cache
        self._clock = clock
        self._encode = encode
        self._encode_escalation = encode_escalation
        self._encode_status = encode_status
        self._jobs = jobs
        self._ledger = ledger
        self._event_log = event_log
        self._runner: JobRunner | None = None
        self._stale: set[str] = set()
        self._repair_task: asyncio.Task[None] | None = None
        self.before_live: Callable[[Sequence[Change]], Awaitable[None]] | None = None
        """Awaited after the commit, before the Redis round trip: lets tests hold that
        window open (a Redis outage or a slow fan-out at exactly that moment)."""

    def attach_runner(self, runner: JobRunner) -> None:
        """Notify ``runner`` (this process's executor) of submitted, cancelled and woken jobs."""
        self._runner = runner

    async def committed(self, change: Change, notice: RunnerNotice | None = None) -> None:
        """Everything downstream of one committed change; never raises for Redis trouble."""
        controls = [ControlMessage(_CONTROL_VERBS[notice], change.job_id)] if notice in _CONTROL_VERBS else []
        try:
            await self._fan_out([change], controls)
        finally:
            # Whatever Redis did: the executor of this process acts on the change.
            self._notify(change, notice)

    async def committed_many(self, changes: Sequence[Change], notice: RunnerNotice | None = None) -> None:
        """:meth:`committed` for a group commit's changes, each with ``notice``, in one round trip."""
        if not changes:
            return
        verb = None if notice is None else _CONTROL_VERBS.get(notice)
        try:
            await self._fan_out(
                changes, [ControlMessage(verb, change.job_id) for change in changes] if verb else []
            )
        finally:
            for change in changes:
                self._notify(change, notice)

    async def rebuild(self, job_id: str, job: Job | None = None) -> tuple[Job, JobSummary, int]:
        """Rewrite the job's live keys from SQL (versioned: a newer change's keys stay);
        return the job, its summary and its newest event sequence. ``job``: the job as just
        read from SQL, if the caller has it. Raises ``NotFound`` and ``Unavailable`` (SQL or
        Redis)."""
        if job is None:
            job = await self._jobs.get(job_id, owner_scope=None)
        if job is None:
            raise NotFound("job", job_id)
        now = self._clock.now()
        spend, progress = await self._ledger.spend_and_progress(job, window_start(now))
        latest = (await self._event_log.job_bounds(job_id)).last_sequence
        summary = JobSummary.of(job, spend)
        trip = RoundTrip()
        touched = self._queue_job(
            trip.writes,
            job,
            summary,
            progress=progress,
            spend=spend if spend.spent > 0 else None,
            sequence=latest,
            now=now,
        )
        await self._write_rebuilt(trip, touched)
        return job, summary, latest

    async def rebuild_many(self, job_ids: Sequence[str]) -> None:
        """:meth:`rebuild` for many jobs: their rows, spend and event counters read in one
        batch, their keys written in one round trip. Jobs that no longer exist are skipped.
        Raises ``Unavailable`` (SQL or Redis)."""
        jobs = await self._jobs.get_many(job_ids)
        if not jobs:
            return
        now = self._clock.now()
        facts = await self._ledger.spend_and_progress_many(jobs, window_start(now))
        latest = await self._event_log.job_last_sequences([job.job_id for job in jobs])
        trip = RoundTrip()
        touched: list[str] = []
        for job in jobs:
            spend, progress = facts[job.job_id]
            touched += self._queue_job(
                trip.writes,
                job,
                JobSummary.of(job, spend),
                progress=progress,
                spend=spend if spend.spent > 0 else None,
                sequence=latest[job.job_id],
                now=now,
            )
        await self._write_rebuilt(trip, touched)

    async def _write_rebuilt(self, trip: RoundTrip, touched: Sequence[str]) -> None:
        """Write rebuilt keys in one round trip; the local cache forgets them even on failure."""
        try:
            await self._live.send(trip, "rebuild live keys")
        finally:
            self._cache.invalidate(touched)

    async def take_wake_signal(self, job_id: str) -> bool:
        """Consume the job's ``wake_signal`` key (set by writers outside this server); False
        also when Redis cannot be reached (the agent wakes on time or by WakeAgent)."""
        try:
            return await self._live.take_wake_signal(job_id)
        except Unavailable:
            return False

    async def parked_claimed(self, job_ids: Sequence[str]) -> None:
        """Parked jobs were claimed without a change (after a restart or a takeover): their
        agent keys are rebuilt from SQL where Redis lost them (an embedded engine restarts
        empty), in the background; one MGET per call tells which."""
        if not job_ids:
            return
        try:
            missing = await self._live.missing_agent_states(job_ids)
        except Unavailable:
            self._defer(set(job_ids))
            return
        if missing:
            self._defer(missing)

    async def runner_released(self, runner_id: str) -> None:
        """A stopping executor handed its jobs over: tell the other replicas to claim now (a
        lost message only delays the claim to their next round)."""
        try:
            await self._live.publish_control(
                ControlMessage(ControlVerb.RELEASED, runner_id), "announce released jobs"
            )
        except Unavailable as error:
            log.warning("could not announce the jobs released by %s: %s", runner_id, error)

    async def stop(self) -> None:
        """Stop repairing (what is still stale is rebuilt from SQL on its next read)."""
        if self._repair_task is not None:
            self._repair_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._repair_task

    # --- the downstream steps -------------------------------------------------------------

    def _notify(self, change: Change, notice: RunnerNotice | None) -> None:
        runner, job = self._runner, change.job
        if notice is RunnerNotice.ANSWERED and runner is not None:
            runner.job_answered(change.job_id)
            return
        if notice is None or runner is None or job is None:
            return
        if notice is RunnerNotice.SUBMITTED:
            runner.job_submitted(job)
        elif notice is RunnerNotice.CANCELLED:
            runner.job_cancelled(job)
        else:
            runner.job_woken(job)

    async def _fan_out(self, changes: Sequence[Change], controls: list[ControlMessage]) -> None:
        observability.metrics.events_appended.inc(sum(len(change.events) for change in changes))
        if self.before_live is not None:
            await self.before_live(changes)
        job_ids = {change.job_id for change in changes}
        touched: list[str] = []
        try:
            now = self._clock.now()
            trip = RoundTrip()
            announcements: dict[str, list[WireEvent]] = {}
            feed = [
                wire_escalation_event(entry, self._encode_escalation)
                for change in changes
                for entry in change.feed
            ]
            fleet: list[WireEvent] = []
            for change in changes:
                for event in change.events:
                    announcements.setdefault(change.job_id, []).append(wire_event(event, self._encode))
                job = change.job
                if job is None:
                    touched += self._queue_sequence(trip.writes, change.job_id, change.last_sequence)
                    continue
                spend = (
                    change.spend or opening_spend(job) or await self._ledger.spend_of(job, window_start(now))
                )
                if change.fleet_sequence:
                    fleet.append(await self._fleet_entry(change, job, spend, now))
                touched += self._queue_job(
                    trip.writes,
                    job,
                    JobSummary.of(job, spend),
                    progress=change.progress,
                    spend=change.spend,
                    sequence=change.last_sequence,
                    now=now,
                    agent_keys=not change.iteration,
                )
            for job_id, events in announcements.items():
                trip.announce(keys.job_events_channel(job_id), pack(events))
            if feed:
                trip.announce(keys.ESCALATION_EVENTS_CHANNEL, pack(feed))
            if fleet:
                trip.announce(keys.FLEET_CHANNEL, pack(sorted(fleet, key=lambda entry: entry.sequence)))
            for control in controls:
                trip.control(control)
            await self._live.send(trip, "fan out committed changes")
        except Unavailable as error:
            # Committed is committed: the events are in SQL for every watcher, and the keys
            # are rebuilt from SQL once Redis is back.
            log.warning("live keys and fan-out of %d committed changes deferred: %s", len(changes), error)
            self._defer(job_ids)
        except Exception:
            # Not even a bug here may turn a committed change into an error for its caller.
            log.exception("live keys and fan-out of %d committed changes failed", len(changes))
            self._defer(job_ids)
        finally:
            self._cache.invalidate(touched)

    async def _fleet_entry(self, change: Change, job: Job, spend: Spend, now: datetime) -> WireEvent:
        """The change's fleet feed entry: the job's status as committed, routed by owner,
        project and status."""
        latest = change.last_sequence
        if not latest:
            # A change without events (an escalation decided) left the log where it was.
            latest = (await self._event_log.job_last_sequences([job.job_id]))[job.job_id]
        status = status_of(job, spend, latest, now)
        return wire_status(change.fleet_sequence, job, status, self._encode_status)

    def _queue_sequence(self, writes: LiveWrites, job_id: str, sequence: int) -> list[str]:
        if sequence <= 0:
            return []
        key = keys.last_sequence_key(job_id)
        writes.put_if_newer(key, sequence, "", keys.SUMMARY_TTL_SECONDS)
        return [key]

    def _queue_job(
        self,
        writes: LiveWrites,
        job: Job,
        summary: JobSummary,
        *,
        progress: int,
        spend: Spend | None,
        sequence: int,
        now: datetime,
        agent_keys: bool = True,
    ) -> list[str]:
        """Queue a job's keys: ``last_seq``, then the summary, then what is derived from the
        same facts (written only if the summary is current)."""
        job_id = job.job_id
        touched = self._queue_sequence(writes, job_id, sequence)
        summary_key = keys.summary_key(job_id)
        writes.put_if_newer(
            summary_key, summary_version(job, progress), summary.encode(), keys.SUMMARY_TTL_SECONDS
        )
        touched.append(summary_key)
        if agent_keys and job.agent_state is not None:
            keys.queue_agent_state(writes, job_id, visible_agent_state(job), job.wake_at, now)
            touched += (keys.state_key(job_id), keys.wake_at_key(job_id))
        if spend is not None:
            keys.queue_budget_pct(writes, job_id, spend.percent)
            touched.append(keys.budget_pct_key(job_id))
        return touched

    # --- repair ---------------------------------------------------------------------------

    def _defer(self, job_ids: set[str]) -> None:
        self._stale |= job_ids
        if self._repair_task is None or self._repair_task.done():
            self._repair_task = asyncio.create_task(self._repair(), name="live-key-repair")

    async def _repair(self) -> None:
        delay = REPAIR_INTERVAL_SECONDS
        while self._stale:
            await asyncio.sleep(delay)
            stale = sorted(self._stale)
            for first in range(0, len(stale), REPAIR_PAGE):
                page = stale[first : first + REPAIR_PAGE]
                try:
                    await self.rebuild_many(page)
                except Exception as error:  # Redis or SQL still down: try again later
                    log.info("live keys of %d jobs not repaired yet: %s", len(self._stale), error)
                    delay = min(5.0, delay * 2)
                    break
                self._stale.difference_update(page)
                delay = REPAIR_INTERVAL_SECONDS
