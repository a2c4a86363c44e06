"""The midnight storm with real model calls: thousands of agents asleep on their budget wake
at once when the window resets, and each makes a model call that takes seconds.

    .venv/bin/python -m bench.storm                      # 5,000 agents, calls of 2 s; ~2 min a run
    .venv/bin/python -m bench.storm --runs 3             # the spread
    .venv/bin/python -m bench.storm --agents 500 --quiet-wait 2   # a quick look

- **The model API** is the stand-in (``standins.model_api``), a child process alone on core 1,
  answering every call after ``--latency`` (2) s: a conversation's first answer calls a tool
  (``narrate``, with an input of 400 characters), the second ends the turn.
- **The server** is the real ``Application`` in this process, which is pinned to core 0 (the
  loader and the sampler are this process too, and idle during the storm), on an injected
  clock so midnight comes when the script says (it moves to a second before midnight, waits
  for a runner-lease renewal, then to midnight: a jump of hours would find the lease
  lapsed); its default settings, the ``anthropic`` brain pointed at the stand-in, the request
  rate limits off. A price table charges output tokens only, one microdollar each, and every
  job's daily budget is 100 microdollars: the first answer (~107 output tokens) takes an
  agent to ~107 % of its budget, so it finishes that turn and sleeps until the next UTC
  midnight; after the reset its second answer (2 tokens) ends the job.
- **Parking.** ``--agents`` jobs are submitted (64 calls in flight) and the script waits
  until SQL shows every agent sleeping, then for ``--settle`` seconds.
- **The storm.** The clock jumps to midnight: every budget window resets at once. Measured
  from that moment: until every agent is awake (each agent's first moment in the executor's
  runs, sampled every 20 ms), until the stand-in has answered every agent's call, until SQL
  shows every job READY; the most agents awake at once and the most memory they were
  charged against ``--awake-memory-mib`` (the executor's admission budget), the process's RSS
  before and at its peak, and its CPU. **Fair order**: the share of pairs of agents woken in
  the opposite order to the parking lot's (its due time, then the order they parked in;
  0 is perfect), and how long after midnight the p50, p99 and last agent woke.

The target: all resumed and their calls made within 30 s, fairly ordered, memory bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from bench import harness
from bench.standin import standin
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2

PRICE_TABLE = '{"default": {"input": 0, "output": 1000000}}'
DAILY_BUDGET = 100
TOOL_INPUT = '{"text": "' + "x" * 400 + '"}'


async def submit(stub: pb_grpc.AgentControlServiceStub, agents: int) -> None:
    in_flight = asyncio.Semaphore(64)

    async def one(n: int) -> None:
        request = pb.SubmitJobRequest(
            project_id="storm",
            goal=f"storm agent {n}",
            daily_budget_microdollars=DAILY_BUDGET,
            agent=job_pb2.AgentSpec(brain="anthropic", model="claude-storm"),
            request_id=f"storm-{n}",
        )
        async with in_flight:
            for _ in range(50):
                try:
                    await stub.SubmitJob(request, timeout=60)
                    return
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.2)
            raise RuntimeError("SubmitJob kept failing")

    await asyncio.gather(*(one(n) for n in range(agents)))


def inversions(ranks: list[int]) -> int:
    """Pairs out of order in ``ranks`` (merge sort count)."""
    if len(ranks) < 2:
        return 0
    middle = len(ranks) // 2
    left, right = ranks[:middle], ranks[middle:]
    count = inversions(left) + inversions(right)
    merged: list[int] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            count += len(left) - i
            j += 1
    merged += left[i:] + right[j:]
    ranks[:] = merged
    return count


class Sampler:
    """Every 20 ms: each agent's first moment awake, the most agents awake, the most memory
    charged for them, the process's RSS."""

    def __init__(self, executor: Any) -> None:
        self._executor = executor
        self.woke: dict[str, float] = {}
        self.awake = 0
        self.charged = 0
        self.rss = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        pid = os.getpid()
        while True:
            now = time.perf_counter()
            for job_id in self._executor.runs:
                self.woke.setdefault(job_id, now)
            self.awake = max(self.awake, self._executor.awake)
            self.charged = max(self.charged, self._executor.slots.used)
            self.rss = max(self.rss, harness.rss_mib(pid))
            await asyncio.sleep(0.02)


async def until(check: Callable[[], Awaitable[bool]], since: float, limit: float, what: str) -> float:
    """Seconds from ``since`` until ``check()`` is true (polled every 20 ms)."""
    while not await check():
        if time.perf_counter() - since > limit:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)
    return time.perf_counter() - since


async def one_run(args: argparse.Namespace) -> dict[str, Any]:
    from cofounder_server.app import Application
    from cofounder_server.clock import ManualClock

    root = Path(tempfile.mkdtemp(prefix="cofounder-bench-storm-"))
    result: dict[str, Any] = {"agents": args.agents, "latency_seconds": args.latency}
    extra = ["--tool-input", TOOL_INPUT]
    async with standin("anthropic", args.latency, 1, core=harness.LOAD_CORE, extra=extra) as model_api:
        clock = ManualClock(datetime.now(UTC))
        settings = harness.in_process_settings(
            root,
            price_table=PRICE_TABLE,
            anthropic_base_url=model_api.base_url,
            anthropic_api_key="sk-ant-bench",
            **({"awake_memory_mib": args.awake_memory_mib} if args.awake_memory_mib else {}),
        )
        result["awake_memory_mib"] = settings.awake_memory_mib
        app = await Application.start(settings, clock=clock)
        try:
            result |= await park(app, root, args)
            result |= await storm(app, clock, model_api, root, args)
        finally:
            await app.stop(grace_seconds=2.0)
    return result


def count(root: Path, query: str) -> Callable[[], Awaitable[int]]:
    """An async reader of one count from the server's SQLite file (in a thread: the server
    shares this process's event loop)."""

    return lambda: asyncio.to_thread(harness.sqlite_count, root, query)


async def park(app: Any, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Submit the agents and wait until every one sleeps."""
    sleeping = count(root, "SELECT count(*) FROM jobs WHERE agent_state = 'sleeping'")
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        await submit(pb_grpc.AgentControlServiceStub(channel), args.agents)

    async def all_asleep() -> bool:
        return await sleeping() >= args.agents

    parked = await until(all_asleep, started, args.limit, "every agent asleep")
    await asyncio.sleep(args.settle)
    return {"submit_to_all_parked_seconds": round(parked, 1)}


async def storm(app: Any, clock: Any, model_api: Any, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Midnight: every budget window resets at once."""
    from cofounder_server.clock import next_utc_midnight

    executor = app.executor
    # The injected clock stands still while the agents park; a jump of hours would find the
    # runner lease lapsed (it is renewed on that clock) and make the executor re-read which
    # jobs are its own in the middle of the storm. So: most of the way now, then wait for a
    # lease renewal, and only the last second at midnight.
    midnight = next_utc_midnight(clock.now())
    await clock.set(midnight - timedelta(seconds=1))
    await asyncio.sleep(3 * app.settings.lease_seconds / 4)
    lot_order = {entry.job_id: (entry.due, entry.order) for entry in executor.lot}
    pid = os.getpid()
    rss_parked = harness.rss_mib(pid)
    await asyncio.to_thread(harness.wait_for_quiet, args.quiet_wait, 0.1)
    await model_api.control(reset_stats=True)
    ready = count(root, "SELECT count(*) FROM jobs WHERE status = 'ready'")
    sampler = Sampler(executor)
    cpu0 = harness.cpu_seconds(pid)
    started = time.perf_counter()
    sampler.start()
    try:
        await clock.set(midnight)

        async def all_awake() -> bool:
            return len(sampler.woke) >= args.agents

        async def all_answered() -> bool:
            return (await model_api.stats()).answered >= args.agents

        async def all_ready() -> bool:
            return await ready() >= args.agents

        await until(all_awake, started, args.limit, "every agent awake")
        calls_made = await until(all_answered, started, args.limit, "every call answered")
        done = await until(all_ready, started, args.limit, "every job ready")
    finally:
        await sampler.stop()
    cpu = harness.cpu_seconds(pid) - cpu0
    stats = await model_api.stats()
    delays = sorted(at - started for at in sampler.woke.values())
    by_lot = {job_id: rank for rank, job_id in enumerate(sorted(lot_order, key=lambda j: lot_order[j]))}
    ranks = [
        by_lot[job_id] for job_id in sorted(sampler.woke, key=lambda j: sampler.woke[j]) if job_id in by_lot
    ]
    pairs = len(ranks) * (len(ranks) - 1) // 2
    return {
        "parked_in_lot": len(lot_order),
        "midnight_to_all_awake_seconds": round(delays[-1], 2),
        "midnight_to_all_calls_answered_seconds": round(calls_made, 2),
        "midnight_to_all_ready_seconds": round(done, 2),
        "woke_after_midnight_p50_p99_max_seconds": [
            round(harness.percentile(delays, 0.5), 2),
            round(harness.percentile(delays, 0.99), 2),
            round(delays[-1], 2),
        ],
        "out_of_order_pairs_share": round(inversions(ranks) / max(1, pairs), 4),
        "peak_awake": sampler.awake,
        "peak_charged_mib": round(sampler.charged / 2**20, 1),
        "rss_parked_mib": round(rss_parked, 1),
        "rss_peak_mib": round(sampler.rss, 1),
        "server_cpu_seconds": round(cpu, 1),
        "model_calls_answered": stats.answered,
        "model_peak_in_flight": stats.peak_in_flight,
        "within_30_s": calls_made <= 30.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=5000, help="agents asleep until midnight (5000)")
    parser.add_argument("--latency", type=float, default=2.0, help="seconds each model call takes (2)")
    parser.add_argument("--runs", type=int, default=1, help="runs, for the spread (1)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds parked before midnight (3)")
    parser.add_argument(
        "--awake-memory-mib", type=int, default=0, help="the server's budget (default: its own)"
    )
    parser.add_argument("--limit", type=float, default=300.0, help="give up after this many seconds (300)")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="wait up to this long for quiet cores")
    parser.add_argument("--json-out", default="", help="also write the result here")
    args = parser.parse_args()
    if not harness.two_cores():
        raise SystemExit("needs cores 0 and 1")
    os.sched_setaffinity(0, {harness.SERVER_CORE})
    harness.enable_uvloop()
    runs = []
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}, load average {harness.load_average()}", flush=True)
        runs.append(asyncio.run(one_run(args)))
        print(runs[-1], flush=True)
    result = {"command": "python -m bench.storm", "args": vars(args), "runs": runs}
    path = harness.write_result(result, args.json_out, default_name="storm")
    print(f"CPU: {result['machine']['cpu_model']}; written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
