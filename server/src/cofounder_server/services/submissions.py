"""Group commit of job creations: one writer task per process stores every submitted job.

``SubmitJob`` hands its request to :meth:`SubmissionWriter.submit` and waits for its own
outcome. The writer takes whatever requests have queued meanwhile (up to ``max_batch``)
and creates their jobs in one transaction with a constant number of statements
(``JobRepository.create_many``), then hands the created jobs to the change pipeline, which
writes their live keys and announces their first events in one Redis round trip, and
tells this process's executor. Each caller is answered once its job is committed and gone
down the pipeline, as a call of its own would be; only the transaction and the round trip
are shared. Then the writer takes the next batch, which gathered meanwhile; while callers
submit concurrently it lets a batch gather a little longer (:data:`HOLD_SECONDS`), so that
a transaction's fixed cost is shared by more jobs.

A request that is refused (a reused ``request_id``) fails alone. A batch that fails for
any other reason than an unreachable database is committed again one request at a time,
so one request the database refuses cannot fail the others. ``Unavailable`` fails the
whole batch: no request of it was stored.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field

from cofounder_server.clock import Clock
from cofounder_server.domain.changes import Change, RunnerNotice
from cofounder_server.domain.errors import DomainError, Unavailable
from cofounder_server.domain.model import Job
from cofounder_server.services.changes import ChangePipeline
from cofounder_server.store.job_creation import JobCreation
from cofounder_server.store.jobs import JobRepository

log = logging.getLogger(__name__)

MAX_BATCH = 500
"""Requests committed together at most."""
HOLD_SECONDS = 0.01
"""Under load, how long after the previous batch the next one gathers before it commits."""


@dataclass
class _Submission:
    creation: JobCreation
    done: asyncio.Future[Job] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class _Committed:
    """A committed batch: the changes to announce, the requests to answer once announced."""

    changes: list[Change] = field(default_factory=list)
    answers: list[tuple[_Submission, Job]] = field(default_factory=list)

    def add(self, other: _Committed) -> None:
        self.changes += other.changes
        self.answers += other.answers


class SubmissionWriter:
    """The process's one writer of new jobs."""

    def __init__(
        self,
        jobs: JobRepository,
        changes: ChangePipeline,
        clock: Clock,
        *,
        max_batch: int = MAX_BATCH,
        hold_seconds: float = HOLD_SECONDS,
    ) -> None:
        self._jobs = jobs
        self._changes = changes
        self._clock = clock
        self._max_batch = max_batch
        self._hold = hold_seconds
        self._queue: list[_Submission] = []
        self._ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the writer task."""
        self._stopping = False
        self._writer = asyncio.create_task(self._write(), name="submission-writer")

    async def stop(self) -> None:
        """Commit and announce what was submitted (the server takes no calls by now), then stop."""
        if self._writer is None:
            return
        self._stopping = True
        self._ready.set()
        await self._writer
        self._writer = None

    async def submit(self, creation: JobCreation) -> Job:
        """Create the job of ``creation`` (or replay the job its ``request_id`` created) and
        return it once committed and announced. Raises ``AlreadyExists``, ``NotFound`` and
        ``Unavailable`` as ``JobRepository.create`` does."""
        if self._writer is None or self._stopping:
            raise RuntimeError("the submission writer is not running")
        submission = _Submission(creation)
        self._queue.append(submission)
        self._ready.set()
        return await submission.done

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        concurrent_until = -math.inf
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self._gather(concurrent_until - loop.time())
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._announce(await self._commit(batch))
                if len(batch) > 1:
                    concurrent_until = loop.time() + self._hold
            if self._stopping:
                return

    async def _gather(self, hold: float) -> None:
        """While callers submit concurrently (the last batch held several requests and ended
        less than a hold ago), let the next batch gather for the rest of that hold: fewer,
        larger transactions, each one's fixed cost (on SQLite the COMMIT is most of the
        database's work) shared by more jobs. Under load a request waits in the server's
        queue either way; a caller that submits one request at a time is never held."""
        if hold > 0 and len(self._queue) < self._max_batch and not self._stopping:
            await asyncio.sleep(hold)

    async def _commit(self, batch: list[_Submission]) -> _Committed:
        """Commit ``batch``; fail the refused requests now, and return what to announce and
        whom to answer after the announcement."""
        committed = _Committed()
        try:
            outcomes = await self._jobs.create_many(
                [submission.creation for submission in batch], now=self._clock.now()
            )
        except Exception as error:
            if len(batch) == 1 or isinstance(error, Unavailable):
                for submission in batch:
                    _fail(submission, error)
                return committed
            log.warning("a batch of %d new jobs failed (%s): committing them one by one", len(batch), error)
            for submission in batch:
                committed.add(await self._commit([submission]))
            return committed
        for submission, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, DomainError):
                _fail(submission, outcome)
                continue
            job, events = outcome
            if events:
                committed.changes.append(Change.of(job, events))
            committed.answers.append((submission, job))
        return committed

    async def _announce(self, committed: _Committed) -> None:
        try:
            await self._changes.committed_many(committed.changes, RunnerNotice.SUBMITTED)
        except Exception:
            # Committed is committed: the jobs are stored, and their callers hear so.
            log.exception("fan-out of %d new jobs failed", len(committed.changes))
        finally:
            for submission, job in committed.answers:
                if not submission.done.done():
                    submission.done.set_result(job)


def _fail(submission: _Submission, error: BaseException) -> None:
    if not submission.done.done():
        submission.done.set_exception(error)
