"""Real agents at scale: jobs on a real model adapter against a model API that answers in
seconds, against the same SDK alone, in one run.

    .venv/bin/python -m bench.agents                          # 1,000 jobs x 3 calls of 2 s, SQLite
    .venv/bin/python -m bench.agents --jobs 200 --runs 3      # shorter, three runs (the spread)
    .venv/bin/python -m bench.agents --database postgresql://postgres@127.0.0.1:5432/postgres

The model API is the stand-in ``standins.model_api`` (Messages API shape for ``--brain
anthropic``, Chat Completions for ``openai``), a child process alone on core 1, answering each
call after ``--latency`` seconds; its first ``--calls-per-job - 1`` answers to a conversation
call a tool (``narrate``), the last ends the turn, so every job makes ``--calls-per-job`` calls.

**The server.** The real ``cofounder-server``, a child process alone on core 0, with its
default flags except those that point the brain at the stand-in (base URL and API key), the
request rate limits (off: the loader is one principal), and ``--database-url`` with
``--database``. After one warm-up job (the SDK imported, its client built) and 2 idle seconds
(the idle RSS), the clock starts at the first ``SubmitJob``: this process submits ``--jobs``
jobs (brain ``--brain``, a daily budget far above what they spend) with ``--in-flight``
concurrent calls spread over ``--channels`` channels *while the clock runs*, so submission is
part of the workload; its duration and this process's CPU share while submitting are
reported, to show the loader was not the limit. The run ends when no job of the run is
QUEUED or RUNNING; then every job must be READY (failures are listed).

With ``--queued-first`` the jobs wait in the queue when the clock starts, as after an outage or
a deploy: a server with ``--executor-enabled false`` takes the submissions and stops, then the
clock starts as the server starts again on the same data (its start-up, the SDK's import
included, is inside the measured time). The memory per awake agent is not given in that mode
(there is no idle reading of the same process to subtract).

**The reference.** The same SDK alone (``bench.sdk_loops``), a child process alone on core 0
with the server stopped: ``--jobs`` concurrent loops, each making ``--calls-per-job`` calls the
way an agent does (its conversation and the server's tool specs in every request), on the
SDK's aiohttp transport (``DefaultAioHttpClient``) and on its default one.

**Measured.** From the stand-in's ``/stats``, sampled every 0.2 s: calls answered over time,
calls in flight over time, and the exact peak in flight. Calls/s *overall* is the calls
answered divided by the time from the clock's start to the last answer; *steady* is the rate
between the moments 10 % and 90 % of the calls had been answered. The peak in flight is also
given as a share of the agents. Server (or SDK process) CPU from ``/proc/PID/stat`` as a share
of one core, and core 0's busy share from ``/proc/stat``. RSS from ``/proc/PID/status``,
sampled with the stand-in's counters; memory per awake agent = (RSS at the sample with the
most calls in flight - the idle RSS) / the calls in flight at that sample (each call in flight
is an awake agent; agents awake between calls are not counted, so this errs high). The
ratios divide the server's calls/s by the SDK's, run by run. This process (loader and
sampler) shares core 1 with the stand-in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import harness
from bench.harness import spread
from bench.sdk_loops import API_KEY, MODEL
from bench.standin import StandIn, standin
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2

SAMPLE_SECONDS = 0.2
BUDGET = 10**9
"""Microdollars per job and day: far above what a few calls cost."""
UNFINISHED: list[job_pb2.JobStatus.ValueType] = [job_pb2.JOB_STATUS_QUEUED, job_pb2.JOB_STATUS_RUNNING]


def brain_flags(brain: str, base_url: str) -> list[str]:
    """The server flags that point ``brain`` at the stand-in."""
    if brain == "openai":
        return ["--openai-base-url", f"{base_url}/v1", "--openai-api-key", API_KEY]
    return ["--anthropic-base-url", base_url, "--anthropic-api-key", API_KEY]


# --------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class Sample:
    """The stand-in's counters and the measured process at one moment."""

    t: float
    """Seconds since the clock started."""
    answered: int
    in_flight: int
    rss_mib: float


class Sampler:
    """Reads the stand-in and the measured process every :data:`SAMPLE_SECONDS` in a task."""

    def __init__(self, model_api: StandIn, pid: int) -> None:
        self._model_api = model_api
        self._pid = pid
        self.samples: list[Sample] = []
        self.started = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        stats = await self._model_api.stats()
        try:
            rss = harness.rss_mib(self._pid)
        except OSError:  # the measured process has just exited (the SDK loops, at their end)
            rss = 0.0
        self.samples.append(Sample(round(stats.at - self.started, 3), stats.answered, stats.in_flight, rss))

    async def _loop(self) -> None:
        while True:
            await self._read()
            await asyncio.sleep(SAMPLE_SECONDS)

    def start(self) -> None:
        """Start the clock and sampling."""
        self.started = time.monotonic()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop sampling after one last reading."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._read()


@dataclass(frozen=True)
class Usage:
    """CPU counters at one moment: both cores, the stand-in and this process (the loader)."""

    at: float
    cores: dict[int, harness.CoreTicks]
    standin: float
    loader: float


async def usage(model_api: StandIn) -> Usage:
    """The counters now."""
    standin_cpu = (await model_api.stats()).cpu_seconds
    return Usage(time.monotonic(), harness.core_ticks(), standin_cpu, time.process_time())


def shares(before: Usage, after: Usage, measured_cpu: float) -> dict[str, float]:
    """Where the two cores' time went: the measured process (server or SDK, ``measured_cpu``
    seconds) on core 0, the stand-in and the loader on core 1, and other work on each (a
    shared machine's noise)."""
    seconds = after.at - before.at
    core0 = harness.core_share(before.cores, after.cores, harness.SERVER_CORE)
    core1 = harness.core_share(before.cores, after.cores, harness.LOAD_CORE)
    measured = 100 * measured_cpu / seconds
    standin_cpu = 100 * (after.standin - before.standin) / seconds
    loader = 100 * (after.loader - before.loader) / seconds
    return {
        "cpu_share_of_core": round(measured / 100, 3),
        "core0_busy_percent": round(core0.busy, 1),
        "core0_other_percent": round(max(0.0, core0.tasks - measured), 1),
        "standin_cpu_percent": round(standin_cpu, 1),
        "loader_cpu_percent": round(loader, 1),
        "core1_busy_percent": round(core1.busy, 1),
        "core1_other_percent": round(max(0.0, core1.tasks - standin_cpu - loader), 1),
    }


def call_rates(samples: Sequence[Sample]) -> dict[str, Any]:
    """Overall and steady calls/s, and the in-flight timeline, from the samples of one phase."""
    total = samples[-1].answered
    if total == 0:
        return {"calls": 0}
    last = next(s for s in samples if s.answered == total)
    p10 = next(s for s in samples if s.answered >= 0.1 * total)
    p90 = next(s for s in samples if s.answered >= 0.9 * total)
    steady = (p90.answered - p10.answered) / (p90.t - p10.t) if p90.t > p10.t else 0.0
    # One point a second for the JSON: enough to see the ramp, the plateau and the tail.
    timeline: dict[int, Sample] = {}
    for sample in samples:
        timeline.setdefault(int(sample.t), sample)
    return {
        "calls": total,
        "last_answer_seconds": last.t,
        "calls_per_second_overall": round(total / last.t, 1),
        "calls_per_second_steady": round(steady, 1),
        "steady_window_seconds": [p10.t, p90.t],
        "in_flight_by_second": [[second, s.in_flight, s.answered] for second, s in sorted(timeline.items())],
    }


def memory_per_agent(samples: Sequence[Sample], idle_rss: float) -> dict[str, Any]:
    """RSS at the sample with the most calls in flight, against the idle RSS."""
    busiest = max(samples, key=lambda s: s.in_flight)
    return {
        "rss_idle_mib": round(idle_rss, 1),
        "rss_peak_mib": round(max(s.rss_mib for s in samples), 1),
        "rss_at_most_in_flight_mib": round(busiest.rss_mib, 1),
        "in_flight_at_that_sample": busiest.in_flight,
        "kib_per_awake_agent": round((busiest.rss_mib - idle_rss) * 1024 / max(1, busiest.in_flight), 1),
    }


# --------------------------------------------------------------------------------------------
# The reference: the SDK alone


async def sdk_phase(args: argparse.Namespace, model_api: StandIn, transport: str) -> dict[str, Any]:
    """``--jobs`` loops of the SDK alone on core 0."""
    argv = [
        *harness.pinned(harness.SERVER_CORE, args.nice),
        *(harness.PYTHON, "-m", "bench.sdk_loops", "--base-url", model_api.base_url),
        *("--brain", args.brain, "--transport", transport),
        *("--loops", str(args.jobs), "--calls", str(args.calls_per_job)),
    ]
    background = await asyncio.to_thread(harness.wait_for_quiet, args.quiet_wait, 10.0)
    async with harness.child_process(
        argv, cwd=harness.REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        ready = (await asyncio.wait_for(child.stdout.readline(), 120)).decode().strip()
        if ready != "ready":
            raise RuntimeError(f"bench.sdk_loops did not start: {ready!r}")
        await asyncio.sleep(1.0)
        idle_rss = harness.rss_mib(child.pid)
        await model_api.control(reset_stats=True)
        sampler = Sampler(model_api, child.pid)
        before = await usage(model_api)
        sampler.start()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        line = await asyncio.wait_for(child.stdout.readline(), args.limit)
        after = await usage(model_api)
        await sampler.stop()
    report = json.loads(line)
    final = await model_api.stats()
    rates = call_rates(sampler.samples)
    return {
        "phase": f"sdk-{transport}",
        "background_load_percent": round(background, 1),
        **rates,
        "errors": report["errors"],
        "first_error": report["first_error"],
        "error_answers_at_the_stand_in": final.errors,
        "peak_in_flight": final.peak_in_flight,
        "peak_in_flight_share": round(final.peak_in_flight / args.jobs, 3),
        **shares(before, after, report["cpu_seconds"]),
        **memory_per_agent(sampler.samples, idle_rss),
    }


# --------------------------------------------------------------------------------------------
# The server


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[str]:
    """A throwaway PostgreSQL database when ``url`` is given, else "" (the server's SQLite)."""
    if not url:
        yield ""
        return
    async with harness.throwaway_postgres(url) as database_url:
        yield database_url


def job_request(brain: str, project: str, n: int) -> pb.SubmitJobRequest:
    return pb.SubmitJobRequest(
        project_id=project,
        goal=f"Build the landing page for the spring launch (agent {n}).",
        daily_budget_microdollars=BUDGET,
        agent=job_pb2.AgentSpec(brain=brain, model=MODEL[brain]),
        request_id=f"{project}-{n}",
    )


async def submit_all(
    stubs: Sequence[pb_grpc.AgentControlServiceStub], requests: Sequence[pb.SubmitJobRequest], in_flight: int
) -> int:
    """Every request, ``in_flight`` at a time, round-robin over the stubs (their channels);
    UNAVAILABLE is retried after a second (the request id makes it safe). The retries."""
    queue = iter(enumerate(requests))
    retries = 0

    async def worker() -> None:
        nonlocal retries
        for n, request in queue:
            for attempt in range(10):
                try:
                    await stubs[n % len(stubs)].SubmitJob(request, timeout=120)
                    break
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 9:
                        raise
                    retries += 1
                    await asyncio.sleep(1.0)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return retries


async def count_jobs(
    stub: pb_grpc.AgentControlServiceStub, project: str, statuses: Sequence[job_pb2.JobStatus.ValueType]
) -> list[job_pb2.Job]:
    """Every job of ``project`` in one of ``statuses`` (all pages)."""
    jobs: list[job_pb2.Job] = []
    token = ""
    while True:
        page = await stub.ListJobs(
            pb.ListJobsRequest(project_id=project, statuses=statuses, page_size=1000, page_token=token),
            timeout=60,
        )
        jobs.extend(page.jobs)
        token = page.next_page_token
        if not token:
            return jobs


async def until_finished(stub: pb_grpc.AgentControlServiceStub, project: str, limit: float) -> None:
    """Until no job of ``project`` is queued or running (one indexed page of one job a poll)."""
    deadline = time.monotonic() + limit
    request = pb.ListJobsRequest(project_id=project, statuses=UNFINISHED, page_size=1)
    while (await stub.ListJobs(request, timeout=60)).jobs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs of {project} still unfinished after {limit:.0f} s")
        await asyncio.sleep(SAMPLE_SECONDS)


async def server_phase(args: argparse.Namespace, model_api: StandIn) -> dict[str, Any]:
    """The jobs on the real server on core 0."""
    root = Path(tempfile.mkdtemp(prefix="cofounder-bench-agents-"))
    async with database(args.database) as database_url:
        flags = [
            *brain_flags(args.brain, model_api.base_url),
            *("--rate-limit-per-second", "0", "--service-rate-limit-per-second", "0"),
        ]
        if database_url:
            flags += ["--database-url", database_url]
        flags += args.server_flag
        if args.queued_first:
            return await queued_first_phase(args, model_api, root, flags)
        server = harness.ServerProcess(
            root / "data", flags, core=harness.SERVER_CORE, nice=args.nice, log_level=None
        )
        background = await asyncio.to_thread(harness.wait_for_quiet, args.quiet_wait, 10.0)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(server)
            channels = [
                await stack.enter_async_context(grpc.aio.insecure_channel(server.address))
                for _ in range(args.channels)
            ]
            stubs = [pb_grpc.AgentControlServiceStub(channel) for channel in channels]
            run_id = uuid.uuid4().hex[:8]
            warmup = f"bench-agents-warmup-{run_id}"
            await stubs[0].SubmitJob(job_request(args.brain, warmup, 0), timeout=60)
            await until_finished(stubs[0], warmup, 120)
            if len(await count_jobs(stubs[0], warmup, [job_pb2.JOB_STATUS_READY])) != 1:
                raise RuntimeError(f"the warm-up job did not end READY; see {server.log_path}")
            await asyncio.sleep(2.0)
            idle_rss = harness.rss_mib(server.pid)
            project = f"bench-agents-{run_id}"
            requests = [job_request(args.brain, project, n) for n in range(args.jobs)]
            await model_api.control(reset_stats=True)
            sampler = Sampler(model_api, server.pid)
            before, cpu0 = await usage(model_api), harness.cpu_seconds(server.pid)
            sampler.start()
            retries = await submit_all(stubs, requests, args.in_flight)
            submitted = time.monotonic() - sampler.started
            loader_cpu = time.process_time() - before.loader
            await until_finished(stubs[0], project, args.limit)
            finished = time.monotonic() - sampler.started
            after, cpu1 = await usage(model_api), harness.cpu_seconds(server.pid)
            await sampler.stop()
            final = await model_api.stats()
            ready = len(await count_jobs(stubs[0], project, [job_pb2.JOB_STATUS_READY]))
            ended = await count_jobs(
                stubs[0], project, [job_pb2.JOB_STATUS_FAILED, job_pb2.JOB_STATUS_CANCELLED]
            )
            await asyncio.sleep(2.0)
            rss_after = harness.rss_mib(server.pid)
    return {
        **outcome(
            args, background, sampler=sampler, final=final, ready=ready, ended=ended, finished=finished
        ),
        "submit_seconds": round(submitted, 2),
        "submit_retries_unavailable": retries,
        "loader_cpu_share_while_submitting": round(loader_cpu / submitted, 3),
        **shares(before, after, cpu1 - cpu0),
        **memory_per_agent(sampler.samples, idle_rss),
        "rss_idle_after_mib": round(rss_after, 1),
    }


async def queued_first_phase(
    args: argparse.Namespace, model_api: StandIn, root: Path, flags: list[str]
) -> dict[str, Any]:
    """``--queued-first``: the jobs submitted to a server that runs none, then the clock
    started as a server with the executor starts on the same data."""
    project = f"bench-agents-{uuid.uuid4().hex[:8]}"
    requests = [job_request(args.brain, project, n) for n in range(args.jobs)]
    intake = harness.ServerProcess(
        root / "data", [*flags, "--executor-enabled", "false"], core=harness.SERVER_CORE, nice=args.nice
    )
    async with intake, contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(intake.address))
            for _ in range(args.channels)
        ]
        stubs = [pb_grpc.AgentControlServiceStub(channel) for channel in channels]
        started = time.monotonic()
        retries = await submit_all(stubs, requests, args.in_flight)
        submitted = time.monotonic() - started
    server = harness.ServerProcess(
        root / "data", flags, core=harness.SERVER_CORE, nice=args.nice, log_level=None
    )
    background = await asyncio.to_thread(harness.wait_for_quiet, args.quiet_wait, 10.0)
    await model_api.control(reset_stats=True)
    before = await usage(model_api)
    started = time.monotonic()
    await server.start()
    try:
        sampler = Sampler(model_api, server.pid)
        sampler.start()
        sampler.started = started  # the clock started with the process
        serving = time.monotonic() - started
        cpu0 = 0.0  # the process is new: all its CPU time is the run's
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AgentControlServiceStub(channel)
            await until_finished(stub, project, args.limit)
            finished = time.monotonic() - started
            after, cpu1 = await usage(model_api), harness.cpu_seconds(server.pid)
            await sampler.stop()
            final = await model_api.stats()
            ready = len(await count_jobs(stub, project, [job_pb2.JOB_STATUS_READY]))
            ended = await count_jobs(stub, project, [job_pb2.JOB_STATUS_FAILED, job_pb2.JOB_STATUS_CANCELLED])
        rss_after = harness.rss_mib(server.pid)
    finally:
        await server.stop()
    return {
        **outcome(
            args, background, sampler=sampler, final=final, ready=ready, ended=ended, finished=finished
        ),
        "queued_first": True,
        "submit_seconds_before_the_clock": round(submitted, 2),
        "submit_retries_unavailable": retries,
        "serving_seconds": round(serving, 2),
        **shares(before, after, cpu1 - cpu0),
        "peak_rss_mib": round(max(sample.rss_mib for sample in sampler.samples), 1),
        "rss_after_mib": round(rss_after, 1),
    }


def outcome(
    args: argparse.Namespace,
    background: float,
    *,
    sampler: Sampler,
    final: Any,
    ready: int,
    ended: Sequence[Any],
    finished: float,
) -> dict[str, Any]:
    """What every server phase reports: call rates, the peak in flight, how the jobs ended."""
    failures: dict[str, int] = {}
    for job in ended:
        key = f"{job_pb2.JobStatus.Name(job.status)} {job.outcome_detail[:160]}"
        failures[key] = failures.get(key, 0) + 1
    return {
        "phase": "server",
        "database": "postgresql" if args.database else "sqlite",
        "background_load_percent": round(background, 1),
        **call_rates(sampler.samples),
        "all_ready_seconds": round(finished, 2),
        "jobs_ready": ready,
        "jobs_failed_or_cancelled": len(ended),
        "failures": failures,
        "error_answers_at_the_stand_in": final.errors,
        "peak_in_flight": final.peak_in_flight,
        "peak_in_flight_share": round(final.peak_in_flight / args.jobs, 3),
    }


# --------------------------------------------------------------------------------------------
# Runs and the report


async def one_run(args: argparse.Namespace, number: int) -> dict[str, Any]:
    """The server and each reference transport once, the order flipped on every other run."""
    phases: list[tuple[str, Callable[[StandIn], Awaitable[dict[str, Any]]]]] = [
        ("server", functools.partial(server_phase, args))
    ]
    phases += [(f"sdk-{t}", functools.partial(sdk_phase, args, transport=t)) for t in args.transports]
    if number % 2:
        phases.reverse()
    tool_turns = args.calls_per_job - 1
    results: dict[str, Any] = {}
    async with standin(
        args.brain, args.latency, tool_turns, core=harness.LOAD_CORE, nice=args.nice
    ) as model_api:
        for name, phase in phases:
            print(f"run {number + 1}: {name} ...", flush=True)
            results[name] = await phase(model_api)
            print(f"  {summary_line(results[name])}", flush=True)
    for transport in args.transports:
        reference = results[f"sdk-{transport}"]
        results[f"ratio_to_sdk_{transport}"] = {
            kind: round(results["server"][key] / reference[key], 2) if reference.get(key) else None
            for kind, key in (("overall", "calls_per_second_overall"), ("steady", "calls_per_second_steady"))
        }
    return results


def summary_line(phase: dict[str, Any]) -> str:
    text = (
        f"{phase.get('calls_per_second_overall', 0):,.0f} calls/s overall, "
        f"{phase.get('calls_per_second_steady', 0):,.0f} steady; peak in flight {phase['peak_in_flight']:,} "
        f"({phase['peak_in_flight_share']:.0%}); CPU {phase['cpu_share_of_core']:.0%} of a core"
    )
    if "kib_per_awake_agent" in phase:
        text += f"; {phase['kib_per_awake_agent']:,.0f} KiB per call in flight"
    other = max(phase["core0_other_percent"], phase["core1_other_percent"])
    if other > 10:
        text += f"; other work took up to {other:.0f} % of a core (noise)"
    if phase["phase"] == "server":
        text += (
            f"; all READY after {phase['all_ready_seconds']:.1f} s ({phase['jobs_ready']:,} READY, "
            f"{phase['jobs_failed_or_cancelled']} not)"
        )
        if phase.get("queued_first"):
            text += f", serving {phase['serving_seconds']:.1f} s after its start"
        else:
            text += f", submitted in {phase['submit_seconds']:.1f} s"
    return text


def table(runs: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    """One row per phase, median (min-max) over the runs."""
    lines = [
        "| phase | calls/s overall | calls/s steady | peak in flight (share) | CPU of its core | "
        "KiB per call in flight | all READY s | vs SDK aiohttp | vs SDK default | other work % core 0 / 1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ["server", *(f"sdk-{t}" for t in args.transports)]:
        rows = [run[name] for run in runs]

        def values(key: str, rows: list[dict[str, Any]] = rows) -> list[float]:
            return [float(row[key]) for row in rows if row.get(key) is not None]

        ratios = {
            t: spread([float(run[f"ratio_to_sdk_{t}"]["overall"] or 0) for run in runs], 2) + "x"
            if name == "server"
            else ""
            for t in ("aiohttp", "default")
            if t in args.transports
        }
        lines.append(
            f"| {name} | {spread(values('calls_per_second_overall'))} | "
            f"{spread(values('calls_per_second_steady'))} | {spread(values('peak_in_flight'))} "
            f"({spread(values('peak_in_flight_share'), 2)}) | {spread(values('cpu_share_of_core'), 2)} | "
            f"{spread(values('kib_per_awake_agent'))} | "
            f"{spread(values('all_ready_seconds'), 1) if name == 'server' else ''} | "
            f"{ratios.get('aiohttp', '')} | {ratios.get('default', '')} | "
            f"{spread(values('core0_other_percent'))} / {spread(values('core1_other_percent'))} |"
        )
    return "\n".join(lines)


def verdict(runs: Sequence[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The targets: >= 0.7x the SDK alone (its faster transport), >= 90 % in flight, all READY."""
    lines = []
    for number, run in enumerate(runs, 1):
        server = run["server"]
        best = max(run[f"sdk-{t}"].get("calls_per_second_overall", 0) for t in args.transports)
        ratio = server.get("calls_per_second_overall", 0) / best if best else 0.0
        met = ratio >= 0.7 and server["peak_in_flight_share"] >= 0.9 and server["jobs_ready"] == args.jobs
        lines.append(
            f"run {number}: {ratio:.2f}x the SDK alone (faster transport), peak in flight "
            f"{server['peak_in_flight_share']:.0%} of the agents, "
            f"{server['jobs_ready']:,}/{args.jobs:,} READY: target {'met' if met else 'NOT met'}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000, help="agents (jobs; loops for the SDK alone)")
    parser.add_argument(
        "--calls-per-job",
        type=int,
        default=3,
        help="model calls per job (the stand-in's tool turns + 1); above 3 the executor's repetition "
        "guard sees the stand-in's identical tool calls",
    )
    parser.add_argument("--latency", type=float, default=2.0, help="seconds the stand-in takes per call")
    parser.add_argument("--runs", type=int, default=1, help="runs (each: the server and the references)")
    parser.add_argument("--brain", choices=("anthropic", "openai"), default="anthropic")
    parser.add_argument("--database", default="", help="PostgreSQL server URL (a throwaway database)")
    parser.add_argument(
        "--transports", default="aiohttp,default", help="SDK transports for the reference (aiohttp,default)"
    )
    parser.add_argument(
        "--server-flag",
        action="append",
        default=[],
        help="one more token on the server's command line, repeated per token (e.g. "
        "--server-flag=--max-running-jobs --server-flag=1000); the workload as specified uses none",
    )
    parser.add_argument(
        "--queued-first",
        action="store_true",
        help="submit every job before the clock starts (to a server that runs none), then start the "
        "executing server",
    )
    parser.add_argument("--channels", type=int, default=4, help="loader channels (default 4)")
    parser.add_argument("--in-flight", type=int, default=64, help="SubmitJob calls in flight (default 64)")
    parser.add_argument("--limit", type=float, default=900.0, help="longest a phase may take, seconds")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="wait up to this long for quiet cores")
    parser.add_argument(
        "--nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="nice value of the server, the SDK process and the stand-in (default -10 as root, else 0)",
    )
    parser.add_argument(
        "--json-out", default="", help="results file (default bench/results/agents-<time>.json)"
    )
    args = parser.parse_args()
    args.transports = [t for t in args.transports.split(",") if t]
    if not harness.two_cores():
        raise SystemExit("needs cores 0 and 1")
    harness.enable_uvloop()
    # The loader and the sampler run beside the stand-in, away from the measured core.
    os.sched_setaffinity(0, {harness.LOAD_CORE})
    settings = {k: v for k, v in vars(args).items() if k != "json_out"}
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {"settings": settings, "runs": runs}
    out = harness.result_path(args.json_out, "agents")
    for number in range(args.runs):
        runs.append(asyncio.run(one_run(args, number)))
        # After every run: a later run that fails leaves the earlier ones on record.
        result["table_markdown"] = table(runs, args)
        result["verdict"] = verdict(runs, args)
        harness.write_result(result, out)
    print()
    store = "PostgreSQL" if args.database else "SQLite"
    print(
        f"CPU: {result['machine']['cpu_model']}; {args.jobs:,} jobs x {args.calls_per_job} calls of "
        f"{args.latency:g} s, brain {args.brain}, {store}"
    )
    print(result["table_markdown"])
    for line in result["verdict"]:
        print(f"- {line}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
