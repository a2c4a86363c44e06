"""Group commit: one writer task per process makes every run's records durable.

A run hands its record (an iteration: ledger row, new conversation messages, checkpoint
head, events; and/or a transition of its job: its ending, its agent parking) to
:meth:`RecordWriter.write` and waits until it is committed. The writer takes whatever has
queued meanwhile (up to ``max_batch``) and commits it in one transaction with a constant
number of statements, then hands the committed changes to the change pipeline, which
writes their live keys and announces their events in one Redis round trip. Every record is
still durable before its run continues; only the commit is shared (measured on SQLite:
~680 iterations/s with a transaction each, ~25,000/s grouped; see bench/README.md).

In the same transaction the writer re-reads the jobs' status and runner: a record of a job
that was cancelled (or taken over by another replica) meanwhile is refused, so nothing
follows a job's terminal event and no two replicas both record an iteration. The model call
of a cancelled job is still recorded in the ledger (it was paid for). The fan-out of a
batch (Redis) runs in a second task, in commit order, while the next batch commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from enum import Enum

from cofounder_server import observability
from cofounder_server.clock import Clock
from cofounder_server.domain.changes import Change, Spend
from cofounder_server.domain.events import JobEvent
from cofounder_server.domain.model import Job
from cofounder_server.services.changes import ChangePipeline
from cofounder_server.store.checkpoints import CheckpointStore
from cofounder_server.store.iterations import CommittedBatch, IterationConflict, RunRecord

log = logging.getLogger(__name__)


class Recorded(Enum):
    """What became of a record."""

    STORED = "stored"
    """Committed whole."""
    REFUSED = "refused"
    """Not stored: the job is no longer this runner's running job (cancelled, finished,
    taken over), or the iteration was recorded before."""
    DEFERRED = "deferred"
    """Committed, but for its ending: the job has pending escalations, which its run must
    withdraw as it ends the job."""


@dataclass
class RecordWrite:
    """One record to make durable, what its change is once it is, and the outcome."""

    record: RunRecord
    job: Job
    """The job as its run knows it."""
    spend: Spend | None
    """Today's spend as of the record, when the run knows it."""
    progress: int
    """The run's iteration count after the record."""
    done: asyncio.Future[Recorded] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    committed: Job | None = None
    """The job as the record's transition committed it."""

    def change(self, events: list[JobEvent], job: Job | None, pending: tuple[str, ...]) -> Change:
        """The committed record as a change (with the events it appended): a change of the
        job when a transition committed ``job``, else an iteration that left the row as it
        was, with the ``pending`` escalations the row holds (the run's copy may predate a
        decision made elsewhere)."""
        if job is not None:
            return Change.of(job, events, spend=self.spend, progress=self.progress)
        stored = self.job
        if pending != stored.pending_escalation_ids:
            stored = dataclasses.replace(stored, pending_escalation_ids=pending)
        return Change.of(stored, events, spend=self.spend, progress=self.progress, iteration=True)

    @property
    def job_id(self) -> str:
        """The job the record belongs to."""
        return self.record.job_id


class RecordWriter:
    """The process's one writer task."""

    def __init__(
        self,
        checkpoints: CheckpointStore,
        changes: ChangePipeline,
        clock: Clock,
        runner_id: str,
        *,
        max_batch: int = 500,
    ) -> None:
        self._checkpoints = checkpoints
        self._changes = changes
        self._clock = clock
        self._runner_id = runner_id
        self.max_batch = max_batch
        """Records committed together at most (1 makes a transaction per record)."""
        self._queue: list[RecordWrite] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Fan-out runs in its own task, in commit order, while the next batch commits.
        self._fan_out: asyncio.Queue[list[Change]] = asyncio.Queue()
        self._fan_out_task: asyncio.Task[None] | None = None
        self.batches = 0
        self.iterations = 0
        """Iterations committed (records with a model call)."""
        self.sql_seconds = 0.0
        """Wall time spent committing batches (for benchmarks)."""
        self.fan_out_seconds = 0.0
        """Wall time spent fanning out events and live keys (for benchmarks)."""

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="record-writer")
        self._fan_out_task = asyncio.create_task(self._run_fan_out(), name="record-fan-out")

    async def stop(self) -> None:
        """Stop after failing what is still queued (its jobs retry from their checkpoint)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._fan_out_task is not None:
            with contextlib.suppress(TimeoutError):  # let committed events reach Redis
                await asyncio.wait_for(self._fan_out.join(), 2.0)
            self._fan_out_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fan_out_task
        for write in self._queue:
            if not write.done.done():
                write.done.set_exception(asyncio.CancelledError())
        self._queue.clear()

    async def write(self, write: RecordWrite) -> Recorded:
        """Commit ``write`` (see :class:`Recorded`); ``write.committed`` is then the job as its
        transition committed it. Raises ``Unavailable`` if SQL is down."""
        if self._task is None or self._task.done():
            raise RuntimeError("the record writer is not running")
        self._queue.append(write)
        self._ready.set()
        return await write.done

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                # One record per job in a batch: a job's next record waits for the next batch.
                batch: list[RecordWrite] = []
                later: list[RecordWrite] = []
                jobs: set[str] = set()
                for write in self._queue:
                    if len(batch) < self.max_batch and write.job_id not in jobs:
                        batch.append(write)
                        jobs.add(write.job_id)
                    else:
                        later.append(write)
                self._queue = later
                await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[RecordWrite]) -> None:
        started = time.perf_counter()
        try:
            committed = await self._checkpoints.commit(
                [write.record for write in batch], runner_id=self._runner_id, now=self._clock.now()
            )
        except IterationConflict:
            if len(batch) == 1:
                # The iteration was recorded before (another runner): this one is stale.
                log.warning("iteration of job %s conflicts with a recorded one: refused", batch[0].job_id)
                _resolve(batch[0], Recorded.REFUSED)
                return
            for write in batch:  # find the one that conflicts; the others commit
                await self._commit_batch([write])
            return
        except Exception as error:
            for write in batch:
                if not write.done.done():
                    write.done.set_exception(error)
            return
        self._committed(batch, committed, time.perf_counter() - started)

    def _committed(self, batch: list[RecordWrite], committed: CommittedBatch, seconds: float) -> None:
        iterations = sum(1 for write in batch if write.record.iteration is not None)
        self.sql_seconds += seconds
        self.batches += 1
        self.iterations += iterations
        observability.metrics.iterations.inc(iterations)
        observability.metrics.group_commit_size.observe(len(batch))
        observability.metrics.group_commit_seconds.observe(seconds)
        by_job: dict[str, list[JobEvent]] = {}
        for event in committed.events:
            by_job.setdefault(event.job_id, []).append(event)
        changes: list[Change] = []
        for write in batch:
            if write.job_id not in committed.accepted:
                _resolve(write, Recorded.REFUSED)
                continue
            write.committed = committed.jobs.get(write.job_id)
            changes.append(
                write.change(by_job.get(write.job_id, []), write.committed, committed.pending[write.job_id])
            )
            _resolve(write, Recorded.DEFERRED if write.job_id in committed.deferred else Recorded.STORED)
        self._fan_out.put_nowait(changes)

    async def _run_fan_out(self) -> None:
        while True:
            changes = await self._fan_out.get()
            started = time.perf_counter()
            try:
                await self._changes.committed_many(changes)
            except Exception:
                log.exception("fan-out of %d committed records failed", len(changes))
            finally:
                self.fan_out_seconds += time.perf_counter() - started
                self._fan_out.task_done()


def _resolve(write: RecordWrite, outcome: Recorded) -> None:
    if not write.done.done():
        write.done.set_result(outcome)
