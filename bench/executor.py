"""Executor overhead: many concurrent jobs whose scripted brain answers at once.

Every iteration of a job does what the control plane does around a model call - price it
into the usage ledger, run its tool call (``narrate``), append the conversation to the
checkpoint, publish ``agent.thinking`` / ``agent.budget_updated`` / ``agent.tool.called``
events, write ``budget_pct`` and the status summary to Redis - and the brain costs nothing,
so iterations per second measure the control plane alone.

    .venv/bin/python -m bench.executor                              # 200 jobs, 10 s, SQLite
    .venv/bin/python -m bench.executor --database postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python -m bench.executor --jobs 20 --duration 5 --json-out result.json

The server runs in this process (the real ``Application``: embedded Redis engine unless
``--redis-url``, SQLite file in a temporary data dir unless ``--database``; a PostgreSQL URL
gets a throwaway database created and dropped here). Each job's script is 12 different
turns played in a loop (so repetition detection never fires) with one ``narrate`` call each;
``max_tool_calls`` and the budget are set high enough that no job ends or sleeps. After a
warm-up, the iterations the group-commit writer committed over ``--duration`` seconds are
counted; the writer's time in SQL commits and in the Redis fan-out, and the process's CPU
time, say where the time goes.

Then, as a reference measured in the same run (these machines drift), the same jobs run on a
fresh server whose writer commits each iteration in a transaction of its own (group size 1,
the one-transaction-per-iteration design, measured near 680 iterations/s);
``ratio_to_reference`` compares the two. ``--no-reference`` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from bench import harness
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2
from cofounder_server.app import Application
from cofounder_server.config import Settings


def script() -> dict[str, Any]:
    turns = [
        {
            "text": f"Step {n}: writing the next part.",
            "tool_calls": [{"name": "narrate", "input": {"text": f"working on part {n}"}}],
            "usage": {"input_tokens": 1200, "output_tokens": 150},
        }
        for n in range(12)
    ]
    return {"turns": turns, "loop": True}


async def run(
    args: argparse.Namespace,
    *,
    max_batch: int | None = None,
    metrics_listen: str = "",
    while_measuring: Callable[[Application], contextlib.AbstractAsyncContextManager[object]] | None = None,
) -> dict[str, Any]:
    """One measurement; ``while_measuring(app)`` (if given) is entered for the measured seconds."""
    async with contextlib.AsyncExitStack() as stack:
        database_url = ""
        if args.database:
            database_url = await stack.enter_async_context(harness.throwaway_postgres(args.database))
        return await measure(args, database_url, max_batch, metrics_listen, while_measuring)


async def measure(
    args: argparse.Namespace,
    database_url: str,
    max_batch: int | None,
    metrics_listen: str,
    while_measuring: Callable[[Application], contextlib.AbstractAsyncContextManager[object]] | None,
) -> dict[str, Any]:
    """Start the server in this process on ``database_url`` (empty: SQLite), load it, stop it."""
    data_dir = Path(tempfile.mkdtemp(prefix="cofounder-bench-executor-"))
    settings = replace(
        Settings(),
        listen="127.0.0.1:0",
        data_dir=data_dir,
        redis_url=args.redis_url,
        database_url=database_url,
        log_level="WARNING",
        rate_limit_per_second=0.0,
        max_running_jobs=args.jobs,
        max_tool_calls=10**9,
        claim_interval_seconds=0.5,
        metrics_listen=metrics_listen,
    )
    app = await Application.start(settings)
    result: dict[str, Any] = {}
    try:
        assert app.executor is not None
        writer = app.executor.writer  # the benchmark reads the writer's counters
        if max_batch is not None:
            writer._max_batch = max_batch  # the reference design: a transaction per iteration
        config = struct_pb2.Struct()
        config.update(script())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.AgentControlServiceStub(channel)
            jobs = []
            for n in range(args.jobs):
                request = pb.SubmitJobRequest(
                    project_id="bench",
                    goal=f"benchmark job {n}",
                    daily_budget_microdollars=10**12,
                    agent=job_pb2.AgentSpec(brain="scripted", model="bench-model", config=config),
                )
                jobs.append((await stub.SubmitJob(request)).job.job_id)
            deadline = time.monotonic() + 30
            while len(app.executor.runs) < args.jobs and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await asyncio.sleep(args.warmup)
            i0, b0, sql0, fan0 = writer.iterations, writer.batches, writer.sql_seconds, writer.fan_out_seconds
            async with while_measuring(app) if while_measuring else contextlib.nullcontext():
                cpu0, t0 = time.process_time(), time.perf_counter()
                await asyncio.sleep(args.duration)
                elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            iterations, batches = writer.iterations - i0, writer.batches - b0
            sql, fan = writer.sql_seconds - sql0, writer.fan_out_seconds - fan0
            running = len(app.executor.runs)
            for job_id in jobs:
                await stub.CancelJob(pb.CancelJobRequest(job_id=job_id))
        result = {
            "database": "postgresql" if args.database else "sqlite",
            "jobs": args.jobs,
            "running": running,
            "seconds": round(elapsed, 2),
            "iterations": iterations,
            "iterations_per_second": round(iterations / elapsed),
            "batches": batches,
            "mean_batch": round(iterations / max(1, batches), 1),
            "writer_sql_share": round(sql / elapsed, 3),
            "writer_fan_out_share": round(fan / elapsed, 3),
            "process_cpu_share": round(cpu / elapsed, 3),
            "cpu_us_per_iteration": round(cpu / max(1, iterations) * 1e6, 1),
        }
    finally:
        await app.stop(grace_seconds=2.0)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200, help="concurrent jobs (default 200)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (default 2)")
    parser.add_argument("--database", default="", help="PostgreSQL server URL (default: SQLite file)")
    parser.add_argument("--redis-url", default="", help="external Redis (default: embedded engine)")
    parser.add_argument("--json-out", default="", help="also write the result here")
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the reference run (the same jobs, each iteration committed in its own transaction)",
    )
    args = parser.parse_args()
    harness.enable_uvloop()
    result = asyncio.run(run(args))
    if args.reference:
        reference = asyncio.run(run(args, max_batch=1))
        result["reference_one_transaction_per_iteration"] = reference
        result["ratio_to_reference"] = round(
            result["iterations_per_second"] / max(1, reference["iterations_per_second"]), 2
        )
    harness.write_result(result, args.json_out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
