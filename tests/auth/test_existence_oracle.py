"""Timing does not tell whether another tenant's job id exists.

A denied GetJobStatus or WatchJobEvents costs the same for another tenant's existing job as
for an id that was never issued, whether or not that id was asked about before. Each test
interleaves the kinds of call so that load from the rest of a shared machine hits all of
them alike, and compares medians as a ratio.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from tests.auth.support import ALICE, BOB, submit_request
from tests.support import RPC_TIMEOUT

ROUNDS = 300
MAX_RATIO = 1.5
"""Two kinds of denial whose medians differ by more than this are told apart by timing."""


async def elapsed(call: Callable[[], Awaitable[object]]) -> float:
    """Seconds until ``call`` was answered NOT_FOUND."""
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call()
    took = time.perf_counter() - started
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    return took


async def medians(kinds: dict[str, Callable[[], Awaitable[float]]]) -> dict[str, float]:
    """The median time of each kind of call, taken in rotating order, one round at a time."""
    samples: dict[str, list[float]] = {name: [] for name in kinds}
    names = list(kinds)
    for round_index in range(ROUNDS):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await kinds[name]())
    return {name: statistics.median(values) for name, values in samples.items()}


def assert_alike(timings: dict[str, float], first: str, second: str) -> None:
    slower, faster = max(timings[first], timings[second]), min(timings[first], timings[second])
    assert slower <= faster * MAX_RATIO, f"{first} vs {second} medians differ: {timings}"


async def test_get_job_status_costs_the_same_for_a_foreign_and_an_unknown_job(jobs, project_id) -> None:
    job = (await jobs.SubmitJob(submit_request(project_id), metadata=ALICE.metadata())).job

    async def status(job_id: str) -> object:
        return await jobs.GetJobStatus(
            pb.GetJobStatusRequest(job_id=job_id), metadata=BOB.metadata(), timeout=RPC_TIMEOUT
        )

    async def own() -> float:
        started = time.perf_counter()
        await jobs.GetJobStatus(
            pb.GetJobStatusRequest(job_id=job.job_id), metadata=ALICE.metadata(), timeout=RPC_TIMEOUT
        )
        return time.perf_counter() - started

    async def foreign() -> float:
        return await elapsed(lambda: status(job.job_id))

    async def unknown() -> float:
        return await elapsed(lambda: status(str(uuid.uuid4())))

    probed = str(uuid.uuid4())

    async def unknown_probed_before() -> float:
        return await elapsed(lambda: status(probed))

    # Warm-up: the owner's read puts the job's keys in the server's cache, as a busy job has.
    await own()
    timings = await medians(
        {"own": own, "foreign": foreign, "unknown": unknown, "unknown probed before": unknown_probed_before}
    )
    assert_alike(timings, "foreign", "unknown")
    assert_alike(timings, "foreign", "unknown probed before")


async def test_opening_a_watch_costs_the_same_for_a_foreign_and_an_unknown_job(jobs, project_id) -> None:
    job = (await jobs.SubmitJob(submit_request(project_id), metadata=ALICE.metadata())).job
    await jobs.GetJobStatus(pb.GetJobStatusRequest(job_id=job.job_id), metadata=ALICE.metadata())

    async def watch(job_id: str) -> object:
        call = jobs.WatchJobEvents(
            pb.WatchJobEventsRequest(job_id=job_id), metadata=BOB.metadata(), timeout=RPC_TIMEOUT
        )
        return await call.read()

    async def foreign() -> float:
        return await elapsed(lambda: watch(job.job_id))

    async def unknown() -> float:
        return await elapsed(lambda: watch(str(uuid.uuid4())))

    timings = await medians({"foreign": foreign, "unknown": unknown})
    assert_alike(timings, "foreign", "unknown")
