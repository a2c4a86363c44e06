"""Fleet watchers: one WatchJobs stream per dashboard against one WatchJobEvents per job, one run.

The fleet: W small dashboards of J jobs each (a project apiece) and one big dashboard of B
jobs (its own project). For each design, a fresh ``cofounder-server`` runs alone on core 0
(its SQL a SQLite file, an external Valkey on core 1, no executor); a load generator on core 1
(``bench.fleet_loadgen``) opens the watchers: W + 1 WatchJobs streams (``fleet``), or one
WatchJobEvents stream per job, W x J + B of them (``per-job``). This script, as another
replica would, then commits C changes at R changes/s to random jobs through the real path
(a SQL transaction appending an event and stamping the job's fleet sequence, then the change
pipeline's one Redis round trip) and reports, per design: latency from commit to the watcher
(p50, p99, max), changes lost (a fleet watcher must see the change's state or a newer one of
the same job; a job watcher the event itself), the server's CPU per change and its memory.

    .venv/bin/python -m bench.fleet                         # W=1000, J=20, B=5000; 6000 changes at 200/s
    .venv/bin/python -m bench.fleet --small 100 --big 500   # a quick run
    .venv/bin/python -m bench.fleet --help

Run it under the machine's benchmark lock when the machine is shared. All traffic is on
127.0.0.1; everything started is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import harness
from bench.fanout import redis_server
from bench.harness import LOAD_CORE, SERVER_CORE, child_process, pinned
from cofounder_server.domain.changes import Change
from cofounder_server.domain.events import AgentThinking
from cofounder_server.domain.model import AgentSpec, Job, NewJob
from cofounder_server.store.database import open_database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.job_creation import JobCreation
from cofounder_server.store.jobs import JobRepository


@dataclass(frozen=True)
class Fleet:
    """The jobs of every dashboard: ``small[i]`` are dashboard i's, ``big`` the big one's."""

    small: list[list[Job]]
    big: list[Job]

    @property
    def jobs(self) -> list[Job]:
        return [job for jobs in self.small for job in jobs] + self.big


async def create_fleet(database_url: str, small: int, per_small: int, big: int) -> Fleet:
    """Store the fleet's jobs (queued, version 1) in batches, as SubmitJob's writer does."""
    database = await open_database(database_url)
    try:
        jobs = JobRepository(database, EventLogRepository(database, retention_events=100_000))

        async def create(project: str, count: int) -> list[Job]:
            new = NewJob("local", project, "fleet benchmark", 1_000_000, AgentSpec(brain="scripted"))
            created: list[Job] = []
            for first in range(0, count, 500):
                batch = [JobCreation(new, None, "")] * min(500, count - first)
                for outcome in await jobs.create_many(batch, now=datetime.now(UTC)):
                    assert not isinstance(outcome, Exception), outcome
                    created.append(outcome[0])
            return created

        return Fleet([await create(f"small-{i}", per_small) for i in range(small)], await create("big", big))
    finally:
        await database.close()


@contextlib.asynccontextmanager
async def publisher(redis_port: int, database_url: str) -> AsyncIterator[Any]:
    """Commit one change of a job (an event appended in a transaction that stamps the fleet
    sequence) and run the change pipeline, as another replica's agent does; returns the
    event's sequence and the commit time."""
    async with harness.replica_publisher(redis_port, database_url) as replica:

        async def commit(job: Job, index: int) -> tuple[int, float]:
            async with replica.database.write() as session:
                (events,) = await replica.event_log.append_many_in(
                    session,
                    [(job.job_id, [AgentThinking(iteration=index, text="fleet")])],
                    now=replica.clock.now(),
                )
            committed = time.time()
            await replica.changes.committed(Change.of(job, events))
            return events[0].sequence, committed

        yield commit


@dataclass
class Outcome:
    latencies_ms: list[float]
    lost: int


def delivery(
    commits: Sequence[tuple[str, int, float]], receipts: Sequence[tuple[str, int, float]], *, coalesced: bool
) -> Outcome:
    """Match each commit with the first receipt of its job at its sequence (or, coalesced, at
    any later one)."""
    by_job: dict[str, list[tuple[int, float]]] = {}
    for job_id, sequence, at in receipts:
        by_job.setdefault(job_id, []).append((sequence, at))
    for seen in by_job.values():
        seen.sort()
    latencies: list[float] = []
    lost = 0
    for job_id, sequence, committed in commits:
        seen = by_job.get(job_id, [])
        index = bisect.bisect_left(seen, (sequence, 0.0))
        if index == len(seen) or (not coalesced and seen[index][0] != sequence):
            lost += 1
            continue
        # The earliest receipt showing this state or a newer one.
        first = min(at for _, at in seen[index:]) if coalesced else seen[index][1]
        latencies.append((first - committed) * 1000)
    return Outcome(latencies, lost)


async def measure(design: str, redis_port: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(dir=workdir)) / "data"
    database_url = f"sqlite:///{data_dir / 'cofounder.db'}"
    flags = [
        "--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--database-url", database_url,
        "--max-streams-per-principal", "0", "--rate-limit-per-second", "0", "--executor-enabled", "false",
    ]  # fmt: skip
    async with harness.ServerProcess(data_dir, flags, core=SERVER_CORE) as server:
        fleet = await create_fleet(database_url, args.small, args.per_small, args.big)
        jobs = fleet.jobs
        watch = (
            [f"small-{i}" for i in range(args.small)] + ["big"]
            if design == "fleet"
            else [job.job_id for job in jobs]
        )
        receipts_path = workdir / f"receipts-{design}.json"
        config_path = workdir / f"loadgen-{design}.json"
        config = {"target": server.address, "mode": design, "watch": watch, "receipts": str(receipts_path)}
        config_path.write_text(json.dumps(config))
        command = [*pinned(LOAD_CORE), harness.PYTHON, "-m", "bench.fleet_loadgen", str(config_path)]
        async with child_process(
            command, cwd=harness.REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        ) as loadgen:
            assert loadgen.stdout is not None
            assert loadgen.stdin is not None
            opened = time.monotonic()
            ready = json.loads(await asyncio.wait_for(loadgen.stdout.readline(), args.open_timeout))
            open_seconds = time.monotonic() - opened
            idle_rss = harness.rss_mib(server.pid)
            cpu_before = harness.cpu_seconds(server.pid)
            commits: list[tuple[str, int, float]] = []
            picker = random.Random(7)
            async with publisher(redis_port, database_url) as commit:
                start = time.monotonic()
                lag = 0.0
                for index in range(args.changes):
                    due = start + index / args.rate
                    if (delay := due - time.monotonic()) > 0:
                        await asyncio.sleep(delay)
                    else:
                        lag = max(lag, -delay)
                    job = picker.choice(jobs)
                    sequence, committed = await commit(job, index)
                    commits.append((job.job_id, sequence, committed))
                published_in = time.monotonic() - start
            await asyncio.sleep(args.drain)
            server_cpu = harness.cpu_seconds(server.pid) - cpu_before
            peak_rss = harness.rss_mib(server.pid)
            loadgen.stdin.write(b"report\n")
            await loadgen.stdin.drain()
            errors = json.loads(await asyncio.wait_for(loadgen.stdout.readline(), 120))
        receipts = [tuple(item) for item in json.loads(receipts_path.read_text())]
    outcome = delivery(commits, receipts, coalesced=design == "fleet")  # type: ignore[arg-type]
    latencies = outcome.latencies_ms
    return {
        "design": design, "streams": ready["ready"], "jobs": len(jobs), "changes": args.changes,
        "rate": args.rate, "publish_seconds": round(published_in, 2), "publisher_max_lag_s": round(lag, 3),
        "open_seconds": round(open_seconds, 1),
        "p50_ms": round(harness.percentile(latencies, 0.50), 2) if latencies else None,
        "p99_ms": round(harness.percentile(latencies, 0.99), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
        "lost": outcome.lost, "errors": errors,
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_ms_per_change": round(server_cpu * 1000 / args.changes, 3),
        "server_rss_idle_mib": round(idle_rss, 1), "server_rss_mib": round(peak_rss, 1),
    }  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| design | streams | jobs | p50 ms | p99 ms | max ms | lost | server CPU ms / change | "
        "server RSS MiB (idle / end) | streams open in s |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        lines.append(
            f"| {r['design']} | {r['streams']:,} | {r['jobs']:,} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['max_ms']} | {r['lost']} | {r['server_cpu_ms_per_change']} | "
            f"{r['server_rss_idle_mib']} / {r['server_rss_mib']} | {r['open_seconds']} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=1000, help="small dashboards (W)")
    parser.add_argument("--per-small", type=int, default=20, help="jobs per small dashboard (J)")
    parser.add_argument("--big", type=int, default=5000, help="jobs of the big dashboard (B)")
    parser.add_argument("--changes", type=int, default=6000, help="changes committed per design (C)")
    parser.add_argument("--rate", type=float, default=200.0, help="changes per second (R)")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late changes")
    parser.add_argument("--open-timeout", type=float, default=900.0, help="seconds to open every stream")
    parser.add_argument(
        "--designs", default="fleet,per-job", help="fleet (WatchJobs), per-job (WatchJobEvents)"
    )
    parser.add_argument(
        "--json-out", type=Path, help="results file (default bench/results/fleet-<time>.json)"
    )
    args = parser.parse_args()

    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOAD_CORE})  # this script commits the changes: off the server core
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        workdir = Path(tmp)
        async with redis_server(workdir) as redis_port:
            for design in args.designs.split(","):
                row = await measure(design, redis_port, workdir, args)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(f"CPU: {harness.cpu_model()}")
    print(
        f"{args.small} dashboards of {args.per_small} jobs and one of {args.big}; {args.changes} changes "
        f"at {args.rate:g}/s to random jobs; server on core {SERVER_CORE}, load generator, publisher "
        f"and Redis on core {LOAD_CORE}"
    )
    print(table(rows))
    out = harness.write_result({"rows": rows, "argv": sys.argv}, args.json_out, default_name="fleet")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    asyncio.run(main())
