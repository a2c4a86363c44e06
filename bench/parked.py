"""Parked agents: what thousands of sleeping agents cost a server that holds them, how long a
restart takes to hold them all again, how fast a parked agent reacts to WakeAgent, and the
midnight wake storm.

    .venv/bin/python -m bench.parked                          # 1,000 agents
    .venv/bin/python -m bench.parked -n 1000 -n 5000 -n 10000 --idle 30
    .venv/bin/python -m bench.parked -n 200 --idle 5 --storm 500   # quick look while developing

Stages, for each ``-n``:

1. **Empty server.** A real ``cofounder-server`` process on its embedded defaults (embedded
   Redis engine, SQLite file in a temporary data dir), nothing submitted: its CPU share over
   ``--idle`` seconds and its RSS, the baseline.
2. **Parking.** N scripted jobs are submitted (``--in-flight`` calls at a time). Each job's
   first model call costs 90 % of its daily budget (a price table of 1 microdollar per
   token), so the agent finishes that turn and sleeps until the next UTC midnight; with
   ``--waiting K``, K of the N agents instead ask a question (``ask_human``, no deadline) and
   wait for input. Measured: the time from the first SubmitJob until SQL shows all N agents
   parked (``sleeping`` or ``waiting_for_input``).
3. **Idle with N parked.** After ``--settle`` seconds, the server's CPU share over ``--idle``
   seconds (utime + stime of the process from ``/proc/PID/stat``; the embedded Redis engine,
   its child, separately) and its RSS (``VmRSS``); memory per parked agent = (RSS - empty
   RSS) / N.
4. **Restart.** SIGTERM, wait for the exit, start again on the same data directory. Timed
   from the start: until SQL shows all N jobs held by the restarted runner again; until the
   embedded Redis engine (which restarts empty) holds every parked agent's ``state`` key
   again (the server rebuilds the live keys from SQL); and until the server is quiet again
   (a 2 s window at most 2 points of a core above the idle share before the restart). Then
   the idle CPU share again.
5. **WakeAgent.** For ``--wake-sample`` sleeping agents one after the other: open
   ``WatchJobEvents``, call ``WakeAgent`` with a top-up of one day's budget, and time from the
   call to the woken agent's next ``agent.thinking`` event (its run resumed and made its next
   model call); p50/p99/max.

Then, with ``--storm M``, **the midnight storm** in this process (the real ``Application``
on an injected clock, so midnight comes when the script says): M agents park as above, then
the clock jumps to midnight and every budget window resets at once. Measured: the time until
all M resumed (SQL: no agent sleeping), until all M jobs ended (their next turn ends them),
and the most agents awake at once against ``max_running_jobs`` (sampled every 5 ms).

The machine is shared: the script prints the load average before each stage, and the CPU
model (``lscpu``) with the results; compare figures within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from bench import harness
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2

PRICE_TABLE = json.dumps({"default": {"input": 1_000_000, "output": 1_000_000}})
"""One microdollar per token, so a call's cost is its token count."""
BUDGET = 1_000
"""Daily budget per job, in microdollars: the first call (900 tokens) takes 90 %."""
IN_FLIGHT = 50


def script() -> struct_pb2.Struct:
    """First turn: 90 % of the budget and a tool call (so the job goes on, and sleeps);
    second turn, after the wake: the job ends."""
    config = struct_pb2.Struct()
    config.update(
        {
            "turns": [
                {
                    "text": "Spent most of today's budget on the first step.",
                    "tool_calls": [{"name": "narrate", "input": {"text": "step one"}}],
                    "usage": {"input_tokens": 900, "output_tokens": 0},
                },
                {"text": "Done.", "usage": {"input_tokens": 10, "output_tokens": 0}},
            ]
        }
    )
    return config


def asking_script() -> struct_pb2.Struct:
    """First turn: an ``ask_human`` question without a deadline, so the agent waits for input
    until someone answers (nobody does in this benchmark)."""
    config = struct_pb2.Struct()
    question: dict[str, Any] = {
        "question": "Which database?",
        "options": [{"value": "pg", "label": "PostgreSQL"}, {"value": "sqlite", "label": "SQLite"}],
        "recommended": "pg",
    }
    config.update(
        {
            "turns": [
                {
                    "text": "Asking the owner first.",
                    "tool_calls": [{"name": "ask_human", "call_id": "ask-1", "input": question}],
                    "usage": {"input_tokens": 10, "output_tokens": 0},
                },
                {"text": "Done.", "usage": {"input_tokens": 10, "output_tokens": 0}},
            ]
        }
    )
    return config


class ParkedServer:
    """One ``cofounder-server`` on a data directory, and what the script reads of it."""

    def __init__(self, data_dir: Path, extra: list[str]) -> None:
        self.data_dir = data_dir
        flags = ["--price-table", PRICE_TABLE, "--rate-limit-per-second", "0"]
        flags += ["--service-rate-limit-per-second", "0", *extra]
        self.server = harness.ServerProcess(data_dir, flags)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int:
        return self.server.pid

    async def start(self) -> float:
        """Start and wait until it serves; seconds it took."""
        return await self.server.start()

    async def stop(self) -> float:
        """SIGTERM and wait; seconds it took."""
        return await self.server.stop()

    def sql(self, query: str) -> Any:
        with harness.read_only_sqlite(self.data_dir / "cofounder.db") as db:
            return db.execute(query).fetchone()[0]

    def sql_rows(self, query: str) -> list[Any]:
        with harness.read_only_sqlite(self.data_dir / "cofounder.db") as db:
            return db.execute(query).fetchall()

    async def count(self, query: str) -> int:
        return int(await asyncio.to_thread(self.sql, query))

    async def wait_for_count(self, query: str, target: int, limit: float) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < limit:
            if await self.count(query) >= target:
                return time.perf_counter() - started
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{query!r} did not reach {target} within {limit} s")

    async def wait_for_live_keys(self, job_ids: list[str], limit: float) -> None:
        """Until the embedded Redis engine holds the agent state key of every job in
        ``job_ids`` (it restarts empty; the server rebuilds the keys from SQL)."""
        from redis.asyncio import Redis

        names = [f"cofounder:agent:{job_id}:state" for job_id in job_ids]
        started = time.perf_counter()
        redis: Redis | None = None
        try:
            while time.perf_counter() - started < limit:
                try:
                    if redis is None:
                        redis = Redis(unix_socket_path=str(self.data_dir / "redis.sock"))
                    missing = 0
                    for first in range(0, len(names), 2_000):
                        values = await redis.mget(names[first : first + 2_000])
                        missing += sum(value is None for value in values)
                    if missing == 0:
                        return
                except (OSError, ConnectionError) as error:
                    del error  # the engine is not up yet
                    redis = None
                await asyncio.sleep(0.2)
        finally:
            if redis is not None:
                await redis.aclose()
        raise TimeoutError(f"live keys of {len(job_ids)} jobs not rebuilt within {limit} s")

    async def wait_for_quiet(self, share_percent: float, window: float, limit: float) -> None:
        """Until the server's CPU share over a window of ``window`` seconds is at most
        ``share_percent`` of a core."""
        started = time.perf_counter()
        while time.perf_counter() - started < limit:
            t0, c0 = time.perf_counter(), harness.cpu_seconds(self.pid)
            await asyncio.sleep(window)
            if 100 * (harness.cpu_seconds(self.pid) - c0) / (time.perf_counter() - t0) <= share_percent:
                return
        raise TimeoutError(f"the server's CPU did not fall to {share_percent} % within {limit} s")

    async def idle(self, seconds: float) -> dict[str, float]:
        """CPU shares (of one core) of the server and its Redis engine over ``seconds``."""
        cpu_seconds = harness.cpu_seconds
        redis = harness.children(self.pid)
        t0, s0 = time.perf_counter(), cpu_seconds(self.pid)
        r0 = sum(cpu_seconds(p) for p in redis)
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - t0
        return {
            "server_cpu_percent": round(100 * (cpu_seconds(self.pid) - s0) / elapsed, 2),
            "redis_cpu_percent": round(100 * (sum(cpu_seconds(p) for p in redis) - r0) / elapsed, 2),
            "server_rss_mib": round(harness.rss_mib(self.pid), 1),
        }


async def submit(
    stub: pb_grpc.AgentControlServiceStub, n: int, waiting: int = 0, in_flight: int = IN_FLIGHT
) -> list[str]:
    """Submit ``n`` jobs, the first ``waiting`` of them asking a question; the ids of the
    sleepers (those WakeAgent can wake)."""
    sleeper = job_pb2.AgentSpec(brain="scripted", model="bench", config=script())
    asker = job_pb2.AgentSpec(brain="scripted", model="bench", config=asking_script())
    ids: list[str] = []
    gate = asyncio.Semaphore(in_flight)

    async def one(k: int) -> None:
        async with gate:
            request = pb.SubmitJobRequest(
                project_id="bench-parked",
                goal=f"parked job {k}",
                daily_budget_microdollars=BUDGET,
                agent=asker if k < waiting else sleeper,
                request_id=f"bench-parked-{k}",
            )
            # UNAVAILABLE is retryable, and the request_id makes the retry safe.
            for attempt in range(5):
                try:
                    job_id = (await stub.SubmitJob(request, timeout=60)).job.job_id
                    if k >= waiting:
                        ids.append(job_id)
                    return
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                        raise
                    await asyncio.sleep(1.0)

    await asyncio.gather(*(one(k) for k in range(n)))
    return ids


async def wake_latencies(stub: pb_grpc.AgentControlServiceStub, job_ids: list[str]) -> list[float]:
    latencies = []
    for job_id in job_ids:
        call = stub.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job_id))
        await asyncio.wait_for(call.read(), 30)  # the snapshot
        started = time.perf_counter()
        # With a top-up: the woken agent is below 90 % again and makes its next model call.
        await stub.WakeAgent(pb.WakeAgentRequest(job_id=job_id, top_up_microdollars=BUDGET), timeout=30)
        done = False
        while not done:
            response = await asyncio.wait_for(call.read(), 30)
            if response is grpc.aio.EOF:
                break
            if response.HasField("events"):
                done = any(event.type == "agent.thinking" for event in response.events.events)
        latencies.append(time.perf_counter() - started)
        call.cancel()
    return latencies


async def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cofounder-bench-parked-"))
    server = ParkedServer(root / "data", args.server_arg)
    result: dict[str, Any] = {"agents": n}
    try:
        await server.start()
        await asyncio.sleep(args.settle)
        result["load_before_empty"] = harness.load_average()
        result["empty"] = await server.idle(args.idle)

        parked_query = "SELECT count(*) FROM jobs WHERE agent_state IN ('sleeping', 'waiting_for_input')"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.AgentControlServiceStub(channel)
            started = time.perf_counter()
            job_ids = await submit(stub, n, args.waiting, args.in_flight)
            result["submit_seconds"] = round(time.perf_counter() - started, 1)
            await server.wait_for_count(parked_query, n, args.limit)
            result["submit_to_all_parked_seconds"] = round(time.perf_counter() - started, 1)
        result["waiting_for_input"] = await server.count(
            "SELECT count(*) FROM jobs WHERE agent_state = 'waiting_for_input'"
        )
        all_ids = [
            row[0]
            for row in await asyncio.to_thread(
                server.sql_rows, "SELECT job_id FROM jobs WHERE status = 'running'"
            )
        ]
        await asyncio.sleep(args.settle)
        result["load_before_parked"] = harness.load_average()
        parked = await server.idle(args.idle)
        parked["kib_per_agent"] = round(
            (parked["server_rss_mib"] - result["empty"]["server_rss_mib"]) * 1024 / n, 2
        )
        result["parked"] = parked

        result["stop_seconds"] = round(await server.stop(), 1)
        runner_id = (server.data_dir / "runner-id").read_text().strip()
        held = f"SELECT count(*) FROM jobs WHERE status = 'running' AND runner_id = '{runner_id}'"
        # Quiet again: a window's share at most the parked idle share plus 2 points of a core.
        quiet = parked["server_cpu_percent"] + 2.0
        result["quiet_threshold_percent"] = round(quiet, 2)
        started = time.perf_counter()
        result["restart_until_serving_seconds"] = round(await server.start(), 1)

        async def since_restart(waiting: Any) -> float:
            await waiting
            return round(time.perf_counter() - started, 1)

        held_at, keys_at, quiet_at = await asyncio.gather(
            since_restart(server.wait_for_count(held, n, args.limit)),
            since_restart(server.wait_for_live_keys(all_ids, args.limit)),
            since_restart(server.wait_for_quiet(quiet, 2.0, args.limit)),
        )
        result["restart_to_all_parked_seconds"] = held_at
        result["restart_to_live_keys_seconds"] = keys_at
        result["restart_to_quiet_seconds"] = quiet_at
        await asyncio.sleep(args.settle)
        result["load_before_restarted"] = harness.load_average()
        restarted = await server.idle(args.idle)
        restarted["kib_per_agent"] = round(
            (restarted["server_rss_mib"] - result["empty"]["server_rss_mib"]) * 1024 / n, 2
        )
        result["after_restart"] = restarted

        sample = job_ids[: min(args.wake_sample, n)]
        if sample:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                latencies = await wake_latencies(pb_grpc.AgentControlServiceStub(channel), sample)
            result["wake_agent_ms"] = {
                "count": len(latencies),
                "p50": round(statistics.median(latencies) * 1000, 1),
                "p99": round(harness.percentile(latencies, 0.99) * 1000, 1),
                "max": round(max(latencies) * 1000, 1),
            }
    finally:
        await server.stop()
    return result


async def storm(m: int, args: argparse.Namespace) -> dict[str, Any]:
    """The midnight storm on an injected clock, in this process."""
    from cofounder_server.app import Application
    from cofounder_server.clock import ManualClock, next_utc_midnight

    root = Path(tempfile.mkdtemp(prefix="cofounder-bench-storm-"))
    clock = ManualClock(datetime.now(UTC))
    settings = harness.in_process_settings(root, price_table=PRICE_TABLE, **dict(args.storm_setting))
    app = await Application.start(settings, clock=clock)
    result: dict[str, Any] = {"agents": m, "max_running_jobs": settings.max_running_jobs}
    executor = app.executor
    assert executor is not None

    async def until(query: str, target: int) -> float:
        started = time.perf_counter()
        # In a thread: the server shares this process's event loop.
        while await asyncio.to_thread(harness.sqlite_count, root, query) < target:
            if time.perf_counter() - started > args.limit:
                raise TimeoutError(query)
            await asyncio.sleep(0.05)
        return time.perf_counter() - started

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            started = time.perf_counter()
            await submit(pb_grpc.AgentControlServiceStub(channel), m)
            await until("SELECT count(*) FROM jobs WHERE agent_state = 'sleeping'", m)
            result["submit_to_all_parked_seconds"] = round(time.perf_counter() - started, 1)
        peak = 0
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, executor.awake)
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        await clock.set(next_utc_midnight(clock.now()))
        resumed = await until("SELECT count(*) FROM jobs WHERE agent_state IS NOT 'sleeping'", m)
        result["midnight_to_all_resumed_seconds"] = round(resumed, 1)
        await until("SELECT count(*) FROM jobs WHERE status = 'ready'", m)
        result["midnight_to_all_done_seconds"] = round(time.perf_counter() - started, 1)
        sampling = False
        await sampler
        result["peak_awake_sampled"] = peak
    finally:
        await app.stop(grace_seconds=2.0)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-n", dest="agents", type=int, action="append", help="parked agents (repeatable; 1000)"
    )
    parser.add_argument("--idle", type=float, default=30.0, help="measured idle seconds (default 30)")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds before each idle window (default 5)"
    )
    parser.add_argument(
        "--limit", type=float, default=900.0, help="longest wait for any stage (default 900 s)"
    )
    parser.add_argument("--wake-sample", type=int, default=100, help="WakeAgent calls timed (default 100)")
    parser.add_argument(
        "--storm", type=int, default=0, help="agents in the midnight storm (default: no storm)"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra flag for the server (repeat for each token)"
    )
    parser.add_argument(
        "--storm-setting",
        action="append",
        default=[],
        type=lambda text: (text.split("=", 1)[0], json.loads(text.split("=", 1)[1])),
        help="Settings field for the storm's server, NAME=JSON (e.g. max_running_jobs=50)",
    )
    parser.add_argument(
        "--waiting",
        type=int,
        default=0,
        help="of each -n, this many agents ask a question and wait for input instead (default 0)",
    )
    parser.add_argument(
        "--in-flight", type=int, default=IN_FLIGHT, help=f"SubmitJob calls in flight (default {IN_FLIGHT})"
    )
    parser.add_argument("--json-out", default="", help="also write the results here")
    args = parser.parse_args()
    results: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "runs": []}
    for n in args.agents or [1000]:
        run = asyncio.run(measure(n, args))
        print(json.dumps(run), flush=True)
        results["runs"].append(run)
    if args.storm:
        results["storm"] = asyncio.run(storm(args.storm, args))
        print(json.dumps(results["storm"]), flush=True)
    harness.write_result(results, args.json_out)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
