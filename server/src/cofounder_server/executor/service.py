"""The executor: this process's share of jobs, held under one runner lease, with awake agents
as tasks and parked agents as entries of a parking lot.

* **The runner lease.** The process has one row in ``runners`` and renews it with one UPDATE
  every quarter of ``lease_seconds``, however many jobs it holds; every job it runs names it
  (``jobs.runner_id``). If the process dies (``kill -9``), its lease expires after at most
  ``lease_seconds`` and any other executor takes its jobs over (running, sleeping, waiting),
  at the latest one claim interval later. A renewal that finds the lease lapsed (the loop
  stalled past it) re-reads which jobs still name this runner and stops the others. A
  graceful :meth:`Executor.stop` releases every job and the lease in one transaction and
  tells the other replicas to claim at once.
* **Claiming.** Queued jobs, and running jobs that are unowned or whose runner's lease
  expired, are claimed oldest first with conditional UPDATEs, so each runs on exactly one
  replica. A submission in this process, or a run ending while the queue may hold more,
  claims the oldest queued jobs that fit the free awake room, in one transaction; everything
  else (jobs of expired runners, other replicas' submissions) is looked for every claim
  interval and when a replica hands its jobs over. Parked ones (sleeping, waiting for input)
  are claimed in bulk, any number of them, straight into the parking lot; awake ones only
  while there is awake room. After a restart, a process with the same runner id (kept in the
  data directory) takes back the jobs that still name it at once.
* **Awake and parked.** Awake agents run as :class:`AgentRun` tasks, at most
  ``max_running_jobs`` at once (:mod:`.slots`). A run that has nothing to do until a time or
  a notification parks (:mod:`.parking`): its task ends, and its job waits in the lot at the
  cost of a small entry. When it is due or notified, it waits for a slot in a fair line
  (midnight: every budget window resets at once), is woken in SQL, and resumes in a new run
  from its checkpoint.
* **Notifications.** CancelJob and WakeAgent record their change in SQL first; the change
  pipeline then tells this process's executor in process and every replica through one Redis
  pub/sub channel (``cofounder:executor:control``), which this process subscribes to once.
* **The sweep.** Once every ``sweep_interval_seconds`` the process reads the jobs whose row
  changed since its last sweep (an indexed range on ``update_time``, overlapping the last
  minute; rows it examined before are skipped by their unchanged ``version``) and the
  ``wake_signal`` keys of its sleeping agents (one MGET per thousand), and acts on what a
  lost notification would have said: a cancel, a wake, a job taken over. Nothing polls per
  agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import uuid
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from pathlib import Path

from cofounder_server import observability
from cofounder_server.clock import Clock
from cofounder_server.domain import budget
from cofounder_server.domain.changes import Spend
from cofounder_server.domain.errors import DomainError, Unavailable
from cofounder_server.domain.events import WakeReason
from cofounder_server.domain.model import AgentState, Job, JobStatus
from cofounder_server.executor.loop import AgentRun
from cofounder_server.executor.parking import Park, Parked, ParkingLot, WakeCause
from cofounder_server.executor.slots import AwakeSlots, Waiting
from cofounder_server.executor.writer import RecordWriter
from cofounder_server.live.client import LiveClient
from cofounder_server.live.control import ControlSubscription, ControlVerb
from cofounder_server.observability import logs
from cofounder_server.services.changes import ChangePipeline
from cofounder_server.store.checkpoints import RunStart
from cofounder_server.store.runners import HeldJob, RunnerLeases
from cofounder_server.store.runs import Resumed, RunRepository, StillParked

log = logging.getLogger(__name__)

RETRY_AFTER_CRASH_SECONDS = 5.0
CANCEL_WAIT_SECONDS = 5.0
"""How long stop() waits for a cancelled task before leaving it behind."""
RELEASE_ATTEMPTS = 3
"""Tries to hand the jobs over at a graceful stop."""
PARKED_CLAIM_BATCH = 1000
"""Parked jobs claimed per statement (a claim round takes as many batches as there are)."""
RESUME_BATCH = 500
"""Parked agents resumed per transaction (woken in SQL, their checkpoints and spend read)."""
WAKE_SIGNAL_BATCH = 1000
"""``wake_signal`` keys read per MGET by the sweep."""
SWEEP_OVERLAP = timedelta(seconds=60)
"""How far each sweep looks back past the previous one: commits stamped a little before they
became visible, and replicas whose clocks differ by less than this, are not missed."""
PARKED_STATES = frozenset({AgentState.SLEEPING, AgentState.WAITING_FOR_INPUT})
"""Agent states whose agents wait in the parking lot rather than in a task."""


def runner_id_for(configured: str, data_dir: Path) -> str:
    """The configured runner id, or one kept in ``data_dir/runner-id`` (created once), so a
    restarted process re-claims its own jobs at once instead of waiting for its lease."""
    if configured:
        return configured
    path = data_dir / "runner-id"
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    new = f"runner-{uuid.uuid4()}"
    path.write_text(new + "\n", encoding="utf-8")
    return new


class Executor:
    """Runs this process's share of jobs."""

    def __init__(
        self,
        *,
        runs: RunRepository,
        leases: RunnerLeases,
        writer: RecordWriter,
        changes: ChangePipeline,
        live: LiveClient,
        clock: Clock,
        runner_id: str,
        new_run: Callable[[Job, RunStart | None, Callable[[int], None]], AgentRun],
        awake_memory_bytes: int,
        max_running_jobs: int,
        lease_seconds: float,
        claim_interval_seconds: float,
        sweep_interval_seconds: float,
        wake_jitter_seconds: float = 0.0,
    ) -> None:
        """``new_run`` builds the run of a claimed or resumed job (with what it starts from,
        when that was read already, and what to tell when its conversation grows);
        ``awake_memory_bytes`` and ``max_running_jobs`` bound the awake agents (:mod:`.slots`);
        ``live`` carries the control channel and the ``wake_signal`` keys the sweep reads."""
        self._runs = runs
        self._leases = leases
        self._writer = writer
        self._changes = changes
        self._live = live
        self._clock = clock
        self.runner_id = runner_id
        self._new_run = new_run
        self._lease = timedelta(seconds=lease_seconds)
        self._interval = claim_interval_seconds
        self._sweep_interval = sweep_interval_seconds
        self.runs: dict[str, AgentRun] = {}
        """Awake runs, by job id."""
        self.lot = ParkingLot(clock, self._left_lot, jitter_seconds=wake_jitter_seconds)
        """Parked agents."""
        self.slots = AwakeSlots(awake_memory_bytes, self._resume, max_count=max_running_jobs)
        """Awake agents' memory and the line of parked agents waiting to be admitted."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._to_resume: dict[str, Waiting] = {}
        """Parked agents that got a slot, waiting for the next batch of resumes."""
        self._resuming: set[str] = set()
        """Parked agents of the batch being resumed now."""
        self._resume_now = asyncio.Event()
        self._retrying: dict[str, asyncio.TimerHandle] = {}
        self._answered_awake: set[str] = set()
        """Awake jobs an answer was announced for: if the run parks waiting for input, it
        may have looked for its answers just before this one was committed."""
        self._claim_now = asyncio.Event()
        self._look_beyond_the_queue = True
        """Whether the next claim round also looks for jobs other than this process's queue
        (expired runners' jobs, parked ones, orphans): at start, every interval, on a
        hand-over, after a resync."""
        self._queue_may_wait = True
        """Whether queued jobs may be waiting for awake room: a run that ends then claims."""
        self._resume_mine = True
        self._retry_at: float | None = None
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._last_sweep: datetime | None = None
        self._swept: dict[str, int] = {}
        """The version of each job the last sweep examined (those changed in its window)."""

    @property
    def writer(self) -> RecordWriter:
        """The process's group-commit writer (its counters serve benchmarks)."""
        return self._writer

    @property
    def awake(self) -> int:
        """Awake agents of this process (what ``max_running_jobs`` caps)."""
        return self.slots.awake

    @property
    def parked(self) -> int:
        """Parked agents of this process, those in line for a slot included."""
        return len(self.lot) + self.slots.waiting

    @property
    def held(self) -> int:
        """Jobs this process holds: awake, parked, or waiting for a slot."""
        return (
            len(self.runs)
            + len(self.lot)
            + self.slots.waiting
            + len(self._to_resume)
            + len(self._resuming)
            + len(self._retrying)
        )

    def holds(self, job_id: str) -> bool:
        """Whether this process runs, parks or is resuming ``job_id``."""
        return (
            job_id in self.runs
            or job_id in self.lot
            or job_id in self._to_resume
            or job_id in self._resuming
            or job_id in self._retrying
            or self.slots.is_waiting(job_id)
        )

    async def start(self) -> None:
        """Take the runner lease, start the writer, the control subscription, the claim loop
        (which takes back this runner's jobs at once), the lease renewal, the parking lot's
        timer and the sweep."""
        # Every task started from here on (loops, runs) logs with this runner's id.
        logs.runner_id.set(self.runner_id)
        now = self._clock.now()
        await self._leases.renew(self.runner_id, now=now, lease_until=now + self._lease)
        self._last_sweep = now
        self._writer.start()
        control = await self._live.subscribe_control()
        self.lot.start()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="executor-claims"),
            asyncio.create_task(self._lease_loop(), name="executor-lease"),
            asyncio.create_task(self._control_loop(control), name="executor-control"),
            asyncio.create_task(self._sweep_loop(), name="executor-sweep"),
            asyncio.create_task(self._resume_loop(), name="executor-resumes"),
        ]
        self._claim_now.set()

    async def stop(self, grace_seconds: float) -> None:
        """Stop every run (at an iteration boundary, within ``grace_seconds``), then hand
        every job over (one transaction), tell the other replicas, and stop the writer."""
        self._stopping = True
        self._claim_now.set()
        await _cancel_and_wait(self._loops, "executor loop")
        await self.lot.stop()
        for retry in self._retrying.values():
            retry.cancel()
        for run in self.runs.values():
            run.stop()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            await _cancel_and_wait(pending, "agent run")
        if await self._release():
            await self._changes.runner_released(self.runner_id)
        await self._writer.stop()

    async def _release(self) -> bool:
        """Hand every job over; a few tries, since the loops just cancelled may still hold
        SQLite's write lock for a moment."""
        for attempt in range(RELEASE_ATTEMPTS):
            try:
                await self._leases.release(self.runner_id)
                return True
            except DomainError as error:
                if attempt + 1 == RELEASE_ATTEMPTS:
                    log.warning("could not hand the jobs over (taken over when the lease expires): %s", error)
                else:
                    await asyncio.sleep(0.2 * (attempt + 1))
        return False

    # --- changes committed in this process (the change pipeline tells other replicas) ----

    def job_submitted(self, job: Job) -> None:
        """A job was queued: claim the queue's oldest now."""
        self._queue_may_wait = True
        self._claim_now.set()

    def job_cancelled(self, job: Job) -> None:
        """The job was cancelled (already recorded): stop it if it is here."""
        self._cancel(job.job_id)

    def job_woken(self, job: Job) -> None:
        """WakeAgent recorded the wake: resume the agent if it is parked here."""
        self._wake(job.job_id)

    def job_answered(self, job_id: str) -> None:
        """An escalation the job's agent waits on was decided: resume the agent if it is
        parked here (it takes its answers, or parks again while some are pending)."""
        if job_id in self.runs:
            self._answered_awake.add(job_id)
        self._wake(job_id)

    def _cancel(self, job_id: str) -> None:
        run = self.runs.get(job_id)
        if run is not None:
            run.stop()
        if self.lot.take(job_id) is not None or self.slots.withdraw(job_id):
            return
        if self._to_resume.pop(job_id, None) is not None:
            self.slots.give_back(job_id)
            return
        retry = self._retrying.pop(job_id, None)
        if retry is not None:
            retry.cancel()

    def _wake(self, job_id: str) -> None:
        if not self.lot.notify(job_id) and not self.holds(job_id):
            self._claim_all()  # an unowned sleeping job is claimed as an awake one

    async def _control_loop(self, control: ControlSubscription) -> None:
        try:
            async for message in control:
                subject = message.subject
                if message.verb is ControlVerb.CANCEL:
                    self._cancel(subject)
                elif message.verb is ControlVerb.ANSWER:
                    self.job_answered(subject)
                elif message.verb is ControlVerb.WAKE:
                    self._wake(subject)
                elif message.verb is ControlVerb.RELEASED and subject != self.runner_id:
                    self._claim_all()
        finally:
            await control.aclose()

    # --- the runner lease -----------------------------------------------------------------

    async def _lease_loop(self) -> None:
        period = self._lease.total_seconds() / 4
        while not self._stopping:
            await asyncio.sleep(period)
            try:
                now = self._clock.now()
                held = await self._leases.renew(self.runner_id, now=now, lease_until=now + self._lease)
                if not held:
                    log.warning(
                        "runner lease of %s had lapsed; checking which jobs are still ours", self.runner_id
                    )
                    await self._resync()
            except DomainError as error:
                log.warning("cannot renew the runner lease now: %s", error)
            except Exception:
                log.exception("runner lease renewal failed; trying again")

    async def _resync(self) -> None:
        """Stop what no longer names this runner; take back what does (in the claim loop)."""
        # Held before the read: a job claimed while it runs is not judged by a stale answer.
        held = [*self.runs, *(entry.job_id for entry in self.lot)]
        ours = {job.job_id for job in await self._leases.jobs_of(self.runner_id)}
        for job_id in held:
            if job_id not in ours:
                observability.metrics.leases_lost.inc()
                log.info("job %s was taken over while our lease had lapsed: stopping", job_id)
                self._cancel(job_id)
        self._resume_mine = True
        self._claim_all()

    # --- claiming -----------------------------------------------------------------------

    def _claim_all(self) -> None:
        self._look_beyond_the_queue = True
        self._claim_now.set()

    async def _claim_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_beyond = loop.time()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_now.wait(), self._interval)
            self._claim_now.clear()
            if self._stopping:
                return
            if self._retry_at is not None and loop.time() >= self._retry_at:
                self._retry_at = None
                self._resume_mine = True
            # Also while submissions keep the queue busy, the rest is looked at every interval.
            beyond = self._look_beyond_the_queue or loop.time() - last_beyond >= self._interval
            self._look_beyond_the_queue = False
            if beyond:
                last_beyond = loop.time()
            try:
                if beyond:
                    await self._claim_beyond_the_queue()
                await self._claim_queued()
            except Exception as error:
                self._look_beyond_the_queue = self._look_beyond_the_queue or beyond
                if isinstance(error, DomainError):
                    log.warning("executor cannot claim jobs now: %s", error)
                else:
                    log.exception("executor claim loop failed; trying again")

    async def _claim_queued(self) -> None:
        """Claim the oldest queued jobs that fit the free awake room, in one transaction."""
        limit = 0 if self._stopping else self.slots.free
        if limit < 1:
            # Full, or agents wait in line: the queue is looked at again when room is given back.
            return
        if not self._queue_may_wait and not await self._runs.any_queued():
            # A round of the interval (another replica may have queued jobs): a read, no write.
            return
        self._queue_may_wait = False
        now = self._clock.now()
        claimed = await self._runs.claim_next_queued(self.runner_id, limit=limit, now=now)
        # A job just out of the queue has no checkpoint and has spent nothing: its change says
        # so, and its run starts from that without reading it.
        changes = [
            dataclasses.replace(change, spend=Spend(0, change.job.daily_budget_microdollars))
            for change in claimed
            if change.job is not None
        ]
        # A full claim may have left more behind.
        self._queue_may_wait = self._queue_may_wait or len(claimed) == limit
        for change in changes:
            self.slots.admit(change.job_id)
        try:
            await self._changes.committed_many(changes)
        except BaseException:
            # Claimed in SQL but not started: taken back as this runner's own next round.
            for change in changes:
                self.slots.give_back(change.job_id)
            self._resume_mine = True
            self._look_beyond_the_queue = True
            raise
        window = budget.window_start(now)
        for change in changes:
            assert change.job is not None
            assert change.spend is not None
            observability.metrics.lease_claims_queued.inc()
            if self._stopping:
                self.slots.give_back(change.job_id)
                continue
            self._start_run(change.job, RunStart(None, window, change.spend))

    async def _claim_beyond_the_queue(self) -> None:
        """Take back this runner's own jobs, claim parked jobs in bulk and orphaned running
        ones while there is awake room."""
        now = self._clock.now()
        expired = await self._leases.expired(self.runner_id, now=now)
        mine: list[str] = []
        if self._resume_mine:
            self._resume_mine = False
            parked_again: list[str] = []
            for job in await self._leases.jobs_of(self.runner_id):
                if self.holds(job.job_id):
                    continue
                if job.agent_state in PARKED_STATES:
                    self._park(job)
                    parked_again.append(job.job_id)
                else:
                    mine.append(job.job_id)
            await self._changes.parked_claimed(parked_again)
        while not self._stopping:
            parked = await self._leases.claim_parked(
                self.runner_id, parked_states=PARKED_STATES, expired=expired, limit=PARKED_CLAIM_BATCH
            )
            for job in parked:
                observability.metrics.lease_claims_running.inc()
                self._park(job)
            if parked:
                await self._changes.parked_claimed([job.job_id for job in parked])
            if len(parked) < PARKED_CLAIM_BATCH:
                break
        awake = await self._runs.orphaned(
            self.runner_id, parked=PARKED_STATES, expired=expired, limit=self.slots.free
        )
        taken: list[str] = []
        for job_id in [*mine, *awake]:
            if self._stopping or not self.slots.try_take(job_id):
                # This runner's own jobs wait for a slot: look for them again next round.
                self._resume_mine = self._resume_mine or bool(mine)
                break
            taken.append(job_id)
        started: set[str] = set()
        try:
            await self._claim_taken(taken, started)
        finally:
            for job_id in taken:
                if job_id not in started:
                    self.slots.give_back(job_id)

    async def _claim_taken(self, taken: list[str], started: set[str]) -> None:
        """Claim the running jobs slots were taken for (this runner's own after a restart, or
        orphaned), one by one; ``started`` gets each one it runs."""
        for job_id in taken:
            claim = await self._runs.claim(job_id, self.runner_id, now=self._clock.now())
            if claim is None or claim.job is None:
                continue
            instruments = observability.metrics
            (instruments.lease_claims_queued if claim.events else instruments.lease_claims_running).inc()
            # Also a claim without a change of the job (resumed here) rewrites its live keys.
            await self._changes.committed(claim)
            self._start_run(claim.job, None)
            started.add(job_id)

    def _park(self, job: HeldJob) -> None:
        assert job.agent_state is not None
        due = job.wake_at if job.agent_state is AgentState.SLEEPING else None
        self.lot.park(job.job_id, job.agent_state.value, due, job.conversation_bytes)

    # --- runs ---------------------------------------------------------------------------

    def _start_run(self, job: Job, start: RunStart | None) -> None:
        """Run ``job`` in a new task; it holds an awake slot until it ends or parks."""
        run = self._new_run(job, start, functools.partial(self.slots.charge, job.job_id))
        self.runs[job.job_id] = run
        self._tasks[job.job_id] = asyncio.create_task(self._guarded(run), name=f"agent-{job.job_id}")

    async def _guarded(self, run: AgentRun) -> None:
        park: Park | None = None
        try:
            park = await run.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # SQL or Redis trouble beyond what the loop rides out, or a bug: the job stays
            # ours and running; it is resumed from its checkpoint after a pause.
            log.exception("the run of job %s failed; resuming it from its checkpoint later", run.job_id)
            self._retry_at = asyncio.get_running_loop().time() + RETRY_AFTER_CRASH_SECONDS
        finally:
            self.runs.pop(run.job_id, None)
            self._tasks.pop(run.job_id, None)
            self.slots.give_back(run.job_id)
            answered = run.job_id in self._answered_awake
            self._answered_awake.discard(run.job_id)
            if park is not None and not self._stopping:
                self.lot.park(run.job_id, park.reason.value, park.due, park.size)
                if answered and park.reason is AgentState.WAITING_FOR_INPUT:
                    # The answer may have come after the run looked for it: it looks again
                    # now rather than at the next sweep (an answer already taken costs one
                    # read, and the agent parks again).
                    self.lot.notify(run.job_id)
            if not self._stopping and (self._queue_may_wait or self._resume_mine):
                # Room was given back: queued jobs, or this runner's own waiting for room.
                self._look_beyond_the_queue = self._look_beyond_the_queue or self._resume_mine
                self._claim_now.set()

    # --- waking parked agents -------------------------------------------------------------

    def _left_lot(self, entry: Parked, cause: WakeCause) -> None:
        """A parked agent is due or was notified: in line for an awake slot."""
        self.slots.request(entry, cause)

    def _resume(self, waiting: Waiting) -> None:
        """A parked agent got a slot: resumed with the next batch."""
        self._to_resume[waiting.entry.job_id] = waiting
        self._resume_now.set()

    async def _resume_loop(self) -> None:
        while not self._stopping:
            await self._resume_now.wait()
            self._resume_now.clear()
            while self._to_resume and not self._stopping:
                batch = list(self._to_resume.values())[:RESUME_BATCH]
                for waiting in batch:
                    del self._to_resume[waiting.entry.job_id]
                self._resuming.update(waiting.entry.job_id for waiting in batch)
                try:
                    await self._resume_batch(batch)
                finally:
                    self._resuming.difference_update(waiting.entry.job_id for waiting in batch)

    async def _resume_batch(self, batch: list[Waiting]) -> None:
        """Wake a batch of parked agents in SQL (those still sleeping there), read what their
        runs start from, and run them; in one transaction and one fan-out."""
        parked = [
            (
                waiting.entry.job_id,
                AgentState(waiting.entry.reason),
                WakeReason.SCHEDULED if waiting.cause is WakeCause.DUE else WakeReason.REQUESTED,
            )
            for waiting in batch
        ]
        now = self._clock.now()
        try:
            outcome = await self._runs.resume_parked(
                parked, self.runner_id, window=budget.window_start(now), now=now
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # SQL or Redis trouble: in line again after a pause (of real time, whatever the clock).
            log.warning("%d parked agents not resumed yet: %s", len(batch), error)
            loop = asyncio.get_running_loop()
            for waiting in batch:
                self.slots.give_back(waiting.entry.job_id)
                self._retrying[waiting.entry.job_id] = loop.call_later(
                    RETRY_AFTER_CRASH_SECONDS, self._retry_resume, waiting
                )
            return
        await self._changes.committed_many(
            [
                dataclasses.replace(result.change, spend=result.start.spend)
                for result in outcome.values()
                if isinstance(result, Resumed) and result.change
            ]
        )
        for waiting in batch:
            job_id = waiting.entry.job_id
            result = outcome.get(job_id)
            if isinstance(result, Resumed) and not self._stopping:
                self._start_run(result.job, result.start)
                continue
            self.slots.give_back(job_id)
            if isinstance(result, StillParked) and not self._stopping:  # not this one's to wake
                self.lot.park(job_id, result.agent_state.value, result.wake_at, waiting.entry.size)

    def _retry_resume(self, waiting: Waiting) -> None:
        if self._retrying.pop(waiting.entry.job_id, None) is not None and not self._stopping:
            self.slots.request(waiting.entry, waiting.cause)

    # --- the sweep ------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep()
            except DomainError as error:
                log.warning("executor sweep skipped: %s", error)
            except Exception:
                log.exception("executor sweep failed; trying again")

    def _differs(self, job: HeldJob) -> bool:
        """Whether SQL says something about a job held here that this process does not know."""
        ours = job.status is JobStatus.RUNNING and job.runner_id == self.runner_id
        entry = self.lot.get(job.job_id)
        if entry is not None:
            return not ours or job.agent_state is None or job.agent_state.value != entry.reason
        return not ours and (job.job_id in self.runs or self.slots.is_waiting(job.job_id))

    def _act_on(self, job_id: str, job: HeldJob | None) -> None:
        """Do what a lost notification about ``job`` (as SQL has it now) would have done."""
        ours = job is not None and job.status is JobStatus.RUNNING and job.runner_id == self.runner_id
        if not ours:
            if job is not None and job.status is JobStatus.RUNNING:
                observability.metrics.leases_lost.inc()
            self._cancel(job_id)
        elif job_id in self.lot:
            self.lot.notify(job_id)

    async def sweep(self) -> None:
        """Act on what lost notifications would have said (see the module docstring)."""
        now = self._clock.now()
        since = (self._last_sweep or now) - SWEEP_OVERLAP
        versions = await self._leases.versions_since(since)
        self._last_sweep = now
        await self._leases.forget_expired(now=now)
        # A row an earlier sweep examined and that has not changed since (same version) has
        # nothing new to say: the overlap re-reads only versions, so a burst of changes
        # (thousands of agents parked at once) is examined once, not every sweep for a minute.
        unseen = [job_id for job_id, version in versions.items() if self._swept.get(job_id) != version]
        for job in await self._leases.jobs(unseen):
            if self._differs(job):
                # The read may predate a claim or a park of this process: decide on a fresh one.
                fresh = await self._leases.job(job.job_id)
                if fresh is None or self._differs(fresh):
                    self._act_on(job.job_id, fresh)
        self._swept = versions
        sleeping = [entry.job_id for entry in self.lot if entry.reason == AgentState.SLEEPING.value]
        for start in range(0, len(sleeping), WAKE_SIGNAL_BATCH):
            batch = sleeping[start : start + WAKE_SIGNAL_BATCH]
            try:
                signalled = await self._live.pending_wake_signals(batch)
            except Unavailable as error:
                log.info("wake signals not read this sweep: %s", error)
                return
            for job_id in signalled:
                if await self._changes.take_wake_signal(job_id):
                    self.lot.notify(job_id)


async def _cancel_and_wait(tasks: Collection[asyncio.Task[None]], what: str) -> None:
    """Cancel ``tasks`` and wait for them, but not forever: a task that swallows its
    cancellation is logged and left behind rather than hanging shutdown."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=CANCEL_WAIT_SECONDS)
    for task in stuck:
        log.error("%s %s ignored its cancellation; leaving it behind", what, task.get_name())
