"""Group commit of job creations: one writer task per process stores every submitted job.

``SubmitJob`` hands its request to :meth:`SubmissionWriter.submit` and waits for its own
outcome. The writer takes whatever requests have queued meanwhile (up to ``max_batch``)
and creates their jobs in one transaction with a constant number of statements
(``JobRepository.create_many``), then hands the created jobs to the change pipeline, which
writes their live keys and announces their first events in one Redis round trip, and
tells this process's executor. Each caller is answered once its job is committed and gone
down the pipeline, as a call of its own would be; only the transaction and the round trip
are shared. The fan-out of a batch runs in a second task, in commit order, while the next
batch commits.

A request that is refused (a reused ``request_id``) fails alone. A batch that fails for
any other reason than an unreachable database is committed again one request at a time,
so one request the database refuses cannot fail the others. ``Unavailable`` fails the
whole batch: no request of it was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


@dataclass
class _Submission:
    creation: JobCreation
    done: asyncio.Future[Job] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SubmissionWriter:
    """The process's one writer of new jobs."""

    def __init__(
        self, jobs: JobRepository, changes: ChangePipeline, clock: Clock, *, max_batch: int = MAX_BATCH
    ) -> None:
        self._jobs = jobs
        self._changes = changes
        self._clock = clock
        self._max_batch = max_batch
        self._queue: list[_Submission] = []
        self._ready = asyncio.Event()
        self._fan_out: asyncio.Queue[tuple[list[Change], list[tuple[_Submission, Job]]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the writer and its fan-out task."""
        self._stopping = False
        self._writer = asyncio.create_task(self._write(), name="submission-writer")
        self._announcer = asyncio.create_task(self._announce(), name="submission-fan-out")

    async def stop(self) -> None:
        """Commit and announce what was submitted (the server takes no calls by now), then stop."""
        if self._writer is None or self._announcer is None:
            return
        self._stopping = True
        self._ready.set()
        await self._writer
        await self._fan_out.join()
        self._announcer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._announcer
        self._writer = self._announcer = None

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
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                self._fan_out.put_nowait(await self._commit(batch))
            if self._stopping:
                return

    async def _commit(self, batch: list[_Submission]) -> tuple[list[Change], list[tuple[_Submission, Job]]]:
        """Commit ``batch``; fail the refused requests now, and return the changes to
        announce and the requests to answer after the announcement."""
        try:
            outcomes = await self._jobs.create_many(
                [submission.creation for submission in batch], now=self._clock.now()
            )
        except Exception as error:
            if len(batch) == 1 or isinstance(error, Unavailable):
                for submission in batch:
                    _fail(submission, error)
                return [], []
            log.warning("a batch of %d new jobs failed (%s): committing them one by one", len(batch), error)
            changes: list[Change] = []
            answers: list[tuple[_Submission, Job]] = []
            for submission in batch:
                one_changes, one_answers = await self._commit([submission])
                changes += one_changes
                answers += one_answers
            return changes, answers
        changes = []
        answers = []
        for submission, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, DomainError):
                _fail(submission, outcome)
                continue
            job, events = outcome
            if events:
                changes.append(Change.of(job, events))
            answers.append((submission, job))
        return changes, answers

    async def _announce(self) -> None:
        while True:
            changes, answers = await self._fan_out.get()
            try:
                await self._changes.committed_many(changes, RunnerNotice.SUBMITTED)
            except Exception:
                # Committed is committed: the jobs are stored, and their callers hear so.
                log.exception("fan-out of %d new jobs failed", len(changes))
            finally:
                for submission, job in answers:
                    if not submission.done.done():
                        submission.done.set_result(job)
                self._fan_out.task_done()


def _fail(submission: _Submission, error: BaseException) -> None:
    if not submission.done.done():
        submission.done.set_exception(error)
