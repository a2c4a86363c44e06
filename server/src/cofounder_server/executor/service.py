"""The executor: claims jobs with SQL leases and runs one :class:`AgentRun` task per job.

* **Claiming.** Queued jobs, and running jobs that are unowned, this process's own (after a
  restart: the runner id is kept in the data directory) or whose lease expired (a crashed
  replica's), are claimed oldest first with a conditional UPDATE, so each runs on exactly
  one replica. Parked agents (asleep, or waiting for a person) are always claimed (they
  only wait); awake ones only while fewer than ``max_running_jobs`` are awake here. Leases
  are renewed every claim interval.
* **Control.** CancelJob, WakeAgent and the decision of an escalation (ResolveEscalation or
  its deadline) record their change in SQL first; the change pipeline
  then tells this process's executor in process and every replica through one Redis pub/sub
  channel (``cofounder:executor:control``).
  A lost message only delays: the writer re-reads the job in every iteration's transaction,
  the lease renewal re-reads held jobs, and a parked agent re-reads SQL every few seconds.
  A sleeping agent also takes its ``wake_signal`` key, for writers outside this server.
* **Shutdown.** :meth:`stop` ends every run at its next iteration boundary (a parked one
  at once), waits for them, and releases the leases so another replica can continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Collection
from datetime import timedelta
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from cofounder_server import observability
from cofounder_server.clock import Clock
from cofounder_server.domain.errors import DomainError
from cofounder_server.domain.model import Job
from cofounder_server.executor.loop import AgentRun
from cofounder_server.executor.writer import IterationWriter
from cofounder_server.live import keys
from cofounder_server.observability import logs
from cofounder_server.services.changes import ChangePipeline
from cofounder_server.store.checkpoints import CheckpointStore
from cofounder_server.store.runs import RunRepository

log = logging.getLogger(__name__)

RETRY_AFTER_CRASH_SECONDS = 5.0
CANCEL_WAIT_SECONDS = 5.0
"""How long stop() waits for a cancelled task before leaving it behind."""


def runner_id_for(configured: str, data_dir: Path) -> str:
    """The configured runner id, or one kept in ``data_dir/runner-id`` (created once), so a
    restarted process re-claims its own jobs at once instead of waiting for their leases."""
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
        checkpoints: CheckpointStore,
        writer: IterationWriter,
        changes: ChangePipeline,
        redis: Redis,
        clock: Clock,
        runner_id: str,
        new_run: Callable[[Job], AgentRun],
        max_running_jobs: int,
        lease_seconds: float,
        claim_interval_seconds: float,
    ) -> None:
        """``new_run`` builds the run of a claimed job; ``redis`` carries the control channel."""
        self._runs = runs
        self._checkpoints = checkpoints
        self.writer = writer
        """The group-commit writer (its counters serve benchmarks)."""
        self._changes = changes
        self._redis = redis
        self._clock = clock
        self.runner_id = runner_id
        self._new_run = new_run
        self._max_running = max_running_jobs
        self._lease = timedelta(seconds=lease_seconds)
        self._interval = claim_interval_seconds
        self.runs: dict[str, AgentRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._backoff: dict[str, float] = {}
        self._claim_now = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the writer, the control subscription and the claim loop (which resumes this
        process's running and sleeping jobs at once)."""
        logs.runner_id.set(self.runner_id)
        self.writer.start()
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keys.EXECUTOR_CONTROL_CHANNEL)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="executor-claims"),
            asyncio.create_task(self._control_loop(pubsub), name="executor-control"),
        ]
        self._claim_now.set()

    async def stop(self, grace_seconds: float) -> None:
        """Stop every run (at an iteration boundary, within ``grace_seconds``), then release
        the leases and stop the writer."""
        self._stopping = True
        self._claim_now.set()
        await _cancel_and_wait(self._loops, "executor loop")
        for run in self.runs.values():
            run.stop()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            await _cancel_and_wait(pending, "agent run")
        held = list(self.runs)
        with contextlib.suppress(DomainError):
            await self._runs.release(self.runner_id, held)
        await self.writer.stop()
        await self._checkpoints.close()

    # --- changes committed in this process (the change pipeline tells other replicas) ----

    def job_submitted(self, job: Job) -> None:
        """A job was queued: look for work now."""
        self._claim_now.set()

    def job_cancelled(self, job: Job) -> None:
        """The job was cancelled (already recorded): stop its run if it is here."""
        self._control("cancel", job.job_id)

    def job_woken(self, job: Job) -> None:
        """WakeAgent recorded the wake: resume the agent if it sleeps here."""
        self._control("wake", job.job_id)
        self._claim_now.set()  # an unowned sleeping job is claimed as an awake one

    def job_answered(self, job_id: str) -> None:
        """An escalation the job's agent waits on was decided: hand it over if it waits here."""
        self._control("answer", job_id)

    def _control(self, verb: str, job_id: str) -> None:
        run = self.runs.get(job_id)
        if run is None:
            return
        if verb == "cancel":
            run.stop()
        elif verb in ("wake", "answer"):
            run.wake()

    async def _control_loop(self, pubsub: PubSub) -> None:
        try:
            while not self._stopping:
                try:
                    message = await pubsub.get_message(timeout=1.0)
                except (RedisError, OSError) as error:
                    log.warning("executor control channel: %s; resubscribing", error)
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.subscribe(keys.EXECUTOR_CONTROL_CHANNEL)
                    continue
                if message is None:
                    continue
                data = message.get("data")
                text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
                verb, _, job_id = text.partition(" ")
                self._control(verb, job_id)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # --- claiming -----------------------------------------------------------------------

    @property
    def awake(self) -> int:
        """Runs that are not parked (what ``max_running_jobs`` caps)."""
        return sum(1 for run in self.runs.values() if not run.sleeping)

    @property
    def parked(self) -> int:
        """Runs that are parked (asleep, or waiting for a person): they wait for a wake or an
        answer and cost nothing meanwhile."""
        return len(self.runs) - self.awake

    async def _claim_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_renewal = 0.0
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_now.wait(), self._interval)
            self._claim_now.clear()
            if self._stopping:
                return
            try:
                if loop.time() >= next_renewal:
                    next_renewal = loop.time() + self._interval
                    await self._renew()
                await self._claim()
            except DomainError as error:
                log.warning("executor cannot claim jobs now: %s", error)
            except Exception:
                log.exception("executor claim loop failed; trying again")

    async def _renew(self) -> None:
        now = self._clock.now()
        lost = await self._runs.renew(self.runner_id, list(self.runs), now=now, lease_until=now + self._lease)
        for job_id in lost:
            run = self.runs.get(job_id)
            if run is not None:
                observability.metrics.leases_lost.inc()
                log.info("job %s is no longer ours (cancelled, finished or taken over): stopping", job_id)
                run.stop()

    async def _claim(self) -> None:
        loop = asyncio.get_running_loop()
        self._backoff = {k: t for k, t in self._backoff.items() if t > loop.time()}
        exclude = [*self.runs, *self._backoff]
        now = self._clock.now()
        sleeping = await self._runs.claimable(
            self.runner_id, now=now, sleeping=True, exclude=exclude, limit=1000
        )
        free = self._max_running - self.awake
        awake = await self._runs.claimable(
            self.runner_id, now=now, sleeping=False, exclude=exclude, limit=free
        )
        for job_id in [*sleeping, *awake]:
            if self._stopping:
                return
            if job_id not in sleeping and self.awake >= self._max_running:
                break
            now = self._clock.now()
            change = await self._runs.claim(job_id, self.runner_id, now=now, lease_until=now + self._lease)
            if change is None or change.job is None:
                continue
            instruments = observability.metrics
            (instruments.lease_claims_queued if change.events else instruments.lease_claims_running).inc()
            # Also a claim without a change of the job (resumed here) rewrites its live keys.
            await self._changes.committed(change)
            self._start_run(change.job)

    def _start_run(self, job: Job) -> None:
        run = self._new_run(job)
        self.runs[job.job_id] = run
        task = asyncio.create_task(self._guarded(run), name=f"agent-{job.job_id}")
        self._tasks[job.job_id] = task

    async def _guarded(self, run: AgentRun) -> None:
        try:
            await run.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # SQL or Redis trouble beyond what the loop rides out, or a bug: the job stays
            # ours and running; it is resumed from its checkpoint after a pause.
            log.exception("the run of job %s failed; resuming it from its checkpoint later", run.job_id)
            self._backoff[run.job_id] = asyncio.get_running_loop().time() + RETRY_AFTER_CRASH_SECONDS
        finally:
            self.runs.pop(run.job_id, None)
            self._tasks.pop(run.job_id, None)
            if not self._stopping:
                self._claim_now.set()


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
