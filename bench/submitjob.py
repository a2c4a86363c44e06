"""SubmitJob against GetJobStatus on the same server: how close the write path comes to the
read path, which is near the gRPC stack's ceiling.

The real ``cofounder-server`` runs alone on core 0 (an API replica: ``--executor-enabled
false``, rate limits off), on SQLite and on PostgreSQL (a throwaway database, created and
dropped here). Redis (a Valkey engine) and h2load share core 1. h2load keeps 64 requests in
flight (``-c 4 -m 16``, gRPC framed by hand: a length-prefixed request file and the gRPC
headers). Each run measures ``SubmitJob`` and ``GetJobStatus`` (one job's status) on the same
server, one after the other, the order alternating from run to run, and reports the ratio
SubmitJob / GetJobStatus of that run.

Every answer is checked: a real call through the generated stub before each measurement
gives the success answer's size, and h2load's data bytes must match it for every request
(an error has no message). Every submit must really have created a job: afterwards the
rows of each measurement's project are counted in SQL, each with its first event.

Run from the repository root, under the benchmark lock::

    flock /tmp/cofounder-bench.lock .venv/bin/python -m bench.submitjob
    flock /tmp/cofounder-bench.lock .venv/bin/python -m bench.submitjob --runs 3 --duration 10 \\
        --postgres-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.getjobstatus.h2load import ensure_h2load, latency_percentiles, run_h2load
from bench.getjobstatus.processes import Processes
from bench.getjobstatus.shared_redis import RedisEngine
from bench.harness import (
    LOAD_CORE,
    SERVER_CORE,
    ServerProcess,
    core_share,
    core_ticks,
    cpu_seconds,
    percentile,
    pinned,
    throwaway_postgres,
    two_cores,
    wait_for_quiet,
    write_result,
)
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2

SERVICE = "/cofounder.agent.v1.AgentControlService"
GRPC_PREFIX_BYTES = 5
SIZE_SLACK = 8
"""Bytes a SubmitJob answer may differ from the sample: its two timestamps' nanoseconds
are varints of 1 to 5 bytes."""
QUIET_PERCENT = 10.0


@dataclass
class Measurement:
    """One h2load run of one method against the server."""

    backend: str
    method: str
    run: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    done: int
    started: int
    server_cpu_percent: float
    server_ms_per_request: float
    redis_cpu_percent: float
    loadgen_cpu_percent: float
    core0_other_percent: float
    background_before_percent: float
    bytes_per_response: float
    expected_bytes: int
    project_id: str = ""
    jobs_created: int = -1
    """Rows of the measurement's project (SubmitJob), counted in SQL afterwards."""
    command: str = ""
    problems: list[str] = field(default_factory=list)


def frame(message: Any) -> bytes:
    """A gRPC length-prefixed message (not compressed)."""
    body: bytes = message.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def submit_request(project_id: str) -> pb.SubmitJobRequest:
    """What every SubmitJob of a measurement sends (no request_id: h2load repeats one body)."""
    config = struct_pb2.Struct()
    config.update({"turns": [{"text": "done"}]})
    return pb.SubmitJobRequest(
        project_id=project_id,
        goal="benchmark SubmitJob",
        daily_budget_microdollars=10_000_000,
        agent=job_pb2.AgentSpec(brain="scripted", config=config),
        labels={"bench": "submitjob"},
    )


@dataclass(frozen=True)
class Load:
    """What h2load sends for one method, and the size of its success answer."""

    method: str
    request_file: Path
    warmup_file: Path
    size: int
    slack: int
    project_id: str = ""


class Bench:
    """One invocation: Redis, then per backend a server, its runs, and the SQL checks."""

    def __init__(self, args: argparse.Namespace, workdir: Path, processes: Processes) -> None:
        self.args = args
        self.workdir = workdir
        self.redis = RedisEngine(processes, workdir, args.nice)
        self.measurements: list[Measurement] = []

    @contextlib.asynccontextmanager
    async def server(self, backend: str, database_url: str) -> AsyncIterator[ServerProcess]:
        flags = [
            "--redis-url", self.redis.url,
            "--executor-enabled", "false",
            "--rate-limit-per-second", "0",
            "--service-rate-limit-per-second", "0",
        ]  # fmt: skip
        if database_url:
            flags += ["--database-url", database_url]
        env = {"PYTHONPATH": self.args.server_src} if self.args.server_src else {}
        server = ServerProcess(self.workdir / backend, flags, core=SERVER_CORE, nice=self.args.nice, env=env)
        async with server:
            yield server

    async def backend(self, backend: str, database_url: str) -> None:
        async with self.server(backend, database_url) as server:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = pb_grpc.AgentControlServiceStub(channel)
                submitted = await stub.SubmitJob(submit_request(f"bench-{backend}-0"), timeout=10)
                job_id = submitted.job.job_id
                submit_size = GRPC_PREFIX_BYTES + submitted.ByteSize()
                status_size = (
                    GRPC_PREFIX_BYTES
                    + (await stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=10)).ByteSize()
                )
            status_file = self.workdir / f"{backend}-status.bin"
            status_file.write_bytes(frame(pb.GetJobStatusRequest(job_id=job_id)))
            status = Load("GetJobStatus", status_file, status_file, status_size, 0)
            mine: list[Measurement] = []
            for run in range(1, self.args.runs + 1):
                project = f"bench-{backend}-{run}"
                request_file = self.workdir / f"{backend}-submit-{run}.bin"
                request_file.write_bytes(frame(submit_request(project)))
                warm = self.workdir / f"{backend}-submit-warm.bin"
                warm.write_bytes(frame(submit_request("bench-warmup")))
                submit = Load("SubmitJob", request_file, warm, submit_size, SIZE_SLACK, project)
                for load in (submit, status) if run % 2 else (status, submit):
                    measured = await self.measure(server, backend, load, run)
                    mine.append(measured)
                    self.print_row(measured)
        await self.count_jobs(
            backend, database_url or f"sqlite:///{self.workdir / backend / 'cofounder.db'}", mine
        )
        self.measurements += mine

    async def measure(self, server: ServerProcess, backend: str, load: Load, run: int) -> Measurement:
        background = await asyncio.to_thread(wait_for_quiet, self.args.quiet_wait, QUIET_PERCENT)
        base = [
            *pinned(LOAD_CORE, self.args.nice), "h2load",
            "-c", str(self.args.connections), "-m", str(self.args.concurrency // self.args.connections),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
        ]  # fmt: skip
        method, size, slack = load.method, load.size, load.slack
        url = f"http://{server.address}{SERVICE}/{method}"
        warm = await asyncio.to_thread(
            run_h2load,
            [*base, "-d", str(load.warmup_file), "-n", str(self.args.warmup), url],
            self.workdir / "warmup.out",
            120,
        )
        problems = [] if warm.succeeded == self.args.warmup else [f"warm-up: {warm.text[-500:]}"]
        log_file = self.workdir / f"{backend}-{method}-{run}.tsv"
        argv = [
            *base,
            "-d",
            str(load.request_file),
            "-D",
            str(self.args.duration),
            f"--log-file={log_file}",
            url,
        ]
        redis_pid = self.redis.process.pid if self.redis.process else 0
        server0, redis0, cores0 = cpu_seconds(server.pid), cpu_seconds(redis_pid), core_ticks()
        out = await asyncio.to_thread(
            run_h2load, argv, self.workdir / f"{backend}-{method}-{run}.out", self.args.duration + 120
        )
        cores1 = core_ticks()
        server_cpu, redis_cpu = cpu_seconds(server.pid) - server0, cpu_seconds(redis_pid) - redis0
        latencies, other_rows = latency_percentiles(log_file)
        log_file.unlink(missing_ok=True)
        wall = out.wall_seconds
        if out.exit_code != 0 or out.done == 0 or out.succeeded != out.done:
            problems.append(
                f"h2load exit {out.exit_code}: {out.done - out.succeeded} of {out.done} not succeeded"
            )
        if out.failed or out.errored or out.timeout or out.non_2xx or other_rows:
            problems.append(
                f"failed={out.failed} errored={out.errored} timeout={out.timeout} non-2xx={out.non_2xx}"
            )
        # A gRPC error is HTTP 200 with grpc-status in trailers and no message: every success
        # carries one full answer, so the data bytes must come to one answer per request.
        if not out.done * (size - slack) <= out.data_bytes <= out.started * (size + slack):
            problems.append(f"{out.data_bytes} data bytes for {out.done} answers of ~{size} bytes")
        return Measurement(
            backend=backend,
            method=method,
            run=run,
            requests_per_second=out.requests_per_second,
            p50_ms=percentile(latencies, 0.50),
            p99_ms=percentile(latencies, 0.99),
            done=out.done,
            started=out.started,
            server_cpu_percent=100.0 * server_cpu / wall,
            server_ms_per_request=1000.0 * server_cpu / max(1, out.done),
            redis_cpu_percent=100.0 * redis_cpu / wall,
            loadgen_cpu_percent=100.0 * out.cpu_seconds / wall,
            core0_other_percent=max(
                0.0, core_share(cores0, cores1, SERVER_CORE).tasks - 100.0 * server_cpu / wall
            ),
            background_before_percent=background,
            bytes_per_response=out.data_bytes / out.done if out.done else math.nan,
            expected_bytes=size,
            project_id=load.project_id,
            command=shlex.join(argv),
            problems=problems,
        )

    async def count_jobs(self, backend: str, url: str, measurements: Sequence[Measurement]) -> None:
        """Each SubmitJob measurement created between ``done`` and ``started`` jobs (requests cut
        at the end may have committed unanswered), each with its first event."""
        engine = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://", 1))
        try:
            async with engine.connect() as connection:
                for measured in measurements:
                    if measured.method != "SubmitJob":
                        continue
                    jobs, with_event = (
                        await connection.execute(
                            text(
                                "SELECT count(*), count(e.job_id) FROM jobs j LEFT JOIN job_events e "
                                "ON e.job_id = j.job_id AND e.sequence = 1 "
                                "AND e.type = 'job.status_changed' WHERE j.project_id = :project"
                            ),
                            {"project": measured.project_id},
                        )
                    ).one()
                    measured.jobs_created = int(jobs)
                    if not measured.done <= jobs <= measured.started or with_event != jobs:
                        measured.problems.append(
                            f"{jobs} jobs ({with_event} with their first event) for {measured.done} "
                            f"answered of {measured.started} sent"
                        )
        finally:
            await engine.dispose()

    @staticmethod
    def print_row(m: Measurement) -> None:
        flag = "  PROBLEMS: " + "; ".join(m.problems) if m.problems else ""
        print(
            f"{m.backend:<10} run {m.run} {m.method:<12} {m.requests_per_second:8.1f} req/s  "
            f"p50 {m.p50_ms:6.1f} ms  p99 {m.p99_ms:6.1f} ms  server {m.server_cpu_percent:3.0f} % "
            f"({m.server_ms_per_request:.3f} ms/req)  h2load {m.loadgen_cpu_percent:3.0f} %  "
            f"Redis {m.redis_cpu_percent:3.0f} %  other on core 0 {m.core0_other_percent:3.0f} %{flag}",
            flush=True,
        )


def summary(measurements: Sequence[Measurement]) -> dict[str, Any]:
    """Per backend: the ratio SubmitJob / GetJobStatus of each run, its median and range."""
    result: dict[str, Any] = {}
    for backend in dict.fromkeys(m.backend for m in measurements):
        runs: dict[int, dict[str, Measurement]] = {}
        for m in measurements:
            if m.backend == backend:
                runs.setdefault(m.run, {})[m.method] = m
        ratios = [
            pair["SubmitJob"].requests_per_second / pair["GetJobStatus"].requests_per_second
            for pair in runs.values()
            if len(pair) == 2 and pair["GetJobStatus"].requests_per_second
        ]

        result[backend] = {
            "ratios": ratios,
            "ratio": f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            if ratios
            else "",
            **{
                f"{method} {label}": _spread(runs, method, attribute)
                for method in ("SubmitJob", "GetJobStatus")
                for label, attribute in (
                    ("req/s", "requests_per_second"),
                    ("p50 ms", "p50_ms"),
                    ("p99 ms", "p99_ms"),
                    ("server CPU %", "server_cpu_percent"),
                    ("server ms/req", "server_ms_per_request"),
                )
            },
        }
    return result


def _spread(runs: dict[int, dict[str, Measurement]], method: str, attribute: str) -> str:
    values = [getattr(pair[method], attribute) for pair in runs.values() if method in pair]
    digits = 3 if attribute == "server_ms_per_request" else 1
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SubmitJob against GetJobStatus on one cofounder-server, SQLite and PostgreSQL.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per backend; each measures both methods")
    parser.add_argument("--duration", type=int, default=10, help="seconds of measurement per method per run")
    parser.add_argument("--warmup", type=int, default=2000, help="warm-up requests before each measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--connections", type=int, default=4, help="HTTP/2 connections")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server on which a throwaway database is created and dropped",
    )
    parser.add_argument(
        "--server-src",
        default="",
        help="run the server from this source tree (its server/src) instead of the installed one",
    )
    parser.add_argument("--nice", type=int, default=-10, help="scheduling priority of server, h2load, Redis")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait for quiet cores before each measurement",
    )
    parser.add_argument(
        "--json-out", default="", help="result file (default: bench/results/submitjob-<time>.json)"
    )
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace, workdir: Path, processes: Processes) -> int:
    bench = Bench(args, workdir, processes)
    bench.redis.start()
    for backend in args.backends.split(","):
        if backend == "sqlite":
            await bench.backend("sqlite", "")
        elif backend == "postgresql":
            async with throwaway_postgres(args.postgres_url) as url:
                await bench.backend("postgresql", url)
        else:
            raise SystemExit(f"unknown backend {backend!r}")
    result = summary(bench.measurements)
    for backend, figures in result.items():
        print(f"\n{backend}: SubmitJob / GetJobStatus = {figures['ratio']} (median (min-max) over runs)")
        for name, value in figures.items():
            if name not in ("ratios", "ratio"):
                print(f"  {name:<26} {value}")
    problems = [m for m in bench.measurements if m.problems]
    path = write_result(
        {
            "args": vars(args),
            "summary": result,
            "measurements": [asdict(m) for m in bench.measurements],
            "redis": bench.redis.version,
        },
        args.json_out or None,
        default_name="submitjob",
    )
    print(f"\nresult: {path}")
    if problems:
        print(f"{len(problems)} measurements with problems (wrong answers or missing jobs)", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not two_cores():
        raise SystemExit("needs cores 0 and 1")
    ensure_h2load()
    processes = Processes()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-submitjob-") as directory:
            return asyncio.run(main_async(args, Path(directory), processes))
    finally:
        processes.stop_all()
        print(f"took {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
