"""One-call jobs from submitted to READY: the write path and the executor together.

    .venv/bin/python -m bench.throughput                        # 2,000 jobs, 3 runs, SQLite
    .venv/bin/python -m bench.throughput --database postgresql://postgres@127.0.0.1:5432/postgres

The real ``cofounder-server`` runs alone on core 0 with its default flags (rate limits off:
the loader is one principal); this process, the loader, on core 1. Each job's brain is the
``scripted`` one with one turn that ends the job: one model call that takes no time, one
iteration, then READY. Such a job costs its submission, its claim, one iteration's commit and
its ending: what every real job pays around its model calls.

**Measured, per run.** The clock starts at the first ``SubmitJob``; ``--jobs`` jobs are
submitted with ``--in-flight`` calls in flight over ``--channels`` channels while the server
runs them. *Jobs/s* is the jobs divided by the time from the first submit until no job of the
run is QUEUED or RUNNING (then every job must be READY). **The reference**, in the same run on
the same server: the same number of submissions to an API replica (``--executor-enabled
false``, a fresh data dir), the submissions alone; *ratio* = jobs READY per second / jobs
submitted per second, the share of the write path's own rate left when the jobs also run.
The server's CPU over the run is given as a share of its core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from bench import harness
from bench.agents import count_jobs, database, submit_all, until_finished
from bench.harness import spread
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2

BUDGET = 1_000_000_000
ONE_TURN = {"turns": [{"text": "done"}]}


def job_request(project: str, n: int) -> pb.SubmitJobRequest:
    """A job whose scripted brain ends it in one call."""
    return pb.SubmitJobRequest(
        project_id=project,
        goal=f"Say done (job {n}).",
        daily_budget_microdollars=BUDGET,
        agent=job_pb2.AgentSpec(brain="scripted", model="bench-model", config=ONE_TURN),
        request_id=f"{project}-{n}",
    )


async def phase(args: argparse.Namespace, database_url: str, *, execute: bool) -> dict[str, Any]:
    """Submit ``--jobs`` jobs to a fresh server; with ``execute``, until every one is READY."""
    root = Path(tempfile.mkdtemp(prefix="cofounder-bench-throughput-"))
    flags = ["--rate-limit-per-second", "0", "--service-rate-limit-per-second", "0"]
    if database_url:
        flags += ["--database-url", database_url]
    if not execute:
        flags += ["--executor-enabled", "false"]
    server = harness.ServerProcess(root / "data", flags, core=harness.SERVER_CORE, nice=args.nice)
    background = await asyncio.to_thread(harness.wait_for_quiet, args.quiet_wait, 10.0)
    async with server, contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(server.address))
            for _ in range(args.channels)
        ]
        stubs = [pb_grpc.AgentControlServiceStub(channel) for channel in channels]
        warmup = f"bench-throughput-warmup-{uuid.uuid4().hex[:8]}"
        await submit_all(stubs, [job_request(warmup, n) for n in range(200)], args.in_flight)
        if execute:
            await until_finished(stubs[0], warmup, 120)
        project = f"bench-throughput-{uuid.uuid4().hex[:8]}"
        requests = [job_request(project, n) for n in range(args.jobs)]
        cpu0 = harness.cpu_seconds(server.pid)
        started = time.monotonic()
        retries = await submit_all(stubs, requests, args.in_flight)
        submitted = time.monotonic() - started
        if execute:
            await until_finished(stubs[0], project, args.limit)
        finished = time.monotonic() - started
        cpu = harness.cpu_seconds(server.pid) - cpu0
        ready = len(await count_jobs(stubs[0], project, [job_pb2.JOB_STATUS_READY]))
        queued = len(await count_jobs(stubs[0], project, [job_pb2.JOB_STATUS_QUEUED]))
    if execute and ready != args.jobs:
        raise RuntimeError(f"{ready} of {args.jobs} jobs READY; see {server.log_path}")
    if not execute and queued != args.jobs:
        raise RuntimeError(f"{queued} of {args.jobs} jobs queued; see {server.log_path}")
    return {
        "background_load_percent": round(background, 1),
        "submit_seconds": round(submitted, 3),
        "seconds": round(finished, 3),
        "jobs_per_second": round(args.jobs / finished, 1),
        "submit_retries_unavailable": retries,
        "cpu_share_of_core": round(cpu / finished, 3),
        "cpu_ms_per_job": round(1000 * cpu / args.jobs, 2),
    }


async def one_run(args: argparse.Namespace, number: int) -> dict[str, Any]:
    """The reference and the measured phase, in an order alternating from run to run."""
    result: dict[str, Any] = {}
    async with database(args.database) as database_url:
        for execute in (True, False) if number % 2 else (False, True):
            name = "ready" if execute else "submit_only"
            result[name] = await phase(args, database_url, execute=execute)
            print(f"run {number + 1} {name}: {result[name]}", flush=True)
    result["ratio"] = round(result["ready"]["jobs_per_second"] / result["submit_only"]["jobs_per_second"], 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000, help="one-call jobs per phase (default 2,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--database", default="", help="PostgreSQL server URL (a throwaway database)")
    parser.add_argument("--channels", type=int, default=4, help="loader channels (default 4)")
    parser.add_argument("--in-flight", type=int, default=64, help="SubmitJob calls in flight (default 64)")
    parser.add_argument("--limit", type=float, default=600.0, help="longest a phase may take, seconds")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="wait up to this long for quiet cores")
    parser.add_argument("--nice", type=int, default=0, help="nice value of the server (default 0)")
    parser.add_argument(
        "--json-out", default="", help="results file (default bench/results/throughput-<time>.json)"
    )
    args = parser.parse_args()
    if not harness.two_cores():
        raise SystemExit("needs cores 0 and 1")
    harness.enable_uvloop()
    os.sched_setaffinity(0, {harness.LOAD_CORE})
    runs = [asyncio.run(one_run(args, number)) for number in range(args.runs)]
    ready = [run["ready"]["jobs_per_second"] for run in runs]
    submit = [run["submit_only"]["jobs_per_second"] for run in runs]
    ratios = [run["ratio"] for run in runs]
    cpu = [run["ready"]["cpu_ms_per_job"] for run in runs]
    result = {"settings": {k: v for k, v in vars(args).items() if k != "json_out"}, "runs": runs}
    out = harness.result_path(args.json_out, "throughput")
    harness.write_result(result, out)
    store = "PostgreSQL" if args.database else "SQLite"
    print(f"\nCPU: {harness.cpu_model()}; {args.jobs:,} one-call jobs, {store}, {args.runs} runs")
    print("| submitted to READY, jobs/s | submissions alone, jobs/s | ratio | server CPU ms per job |")
    print("|---|---|---|---|")
    print(f"| {spread(ready)} | {spread(submit)} | {spread(ratios, 2)} | {spread(cpu, 2)} |")
    print(f"target 400 jobs/s submitted to READY: {'met' if min(ready) >= 400 else 'NOT met'} in every run")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
