"""Flags, and one run of the GetJobStatus benchmark from start to the JSON result."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.getjobstatus.h2load import ensure_h2load
from bench.getjobstatus.measurement import Benchmark
from bench.getjobstatus.processes import Processes, raise_interrupt
from bench.getjobstatus.report import machine_notes, report
from bench.getjobstatus.targets import uvicorn_stack
from bench.harness import LOAD_CORE, SERVER_CORE, machine, write_result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Benchmark GetJobStatus against the predecessor REST endpoint and a no-I/O "
        "grpc.aio server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=int, default=20, help="seconds of measurement per server per run")
    length.add_argument(
        "-n", "--requests", type=int, default=0, help="requests per measurement instead of --duration"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs; each measures every server once")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "--grpc-connections",
        type=int,
        default=4,
        help="HTTP/2 connections for the gRPC servers; in flight per connection = concurrency / this",
    )
    parser.add_argument("--warmup", type=int, default=5000, help="warm-up requests before each measurement")
    parser.add_argument(
        "--rewrite-every",
        type=float,
        default=30.0,
        help="seconds between rewrites of the live keys (TTL 90 s)",
    )
    parser.add_argument(
        "--uvicorn-http",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="uvicorn HTTP implementation for the predecessor (auto: httptools if installed, else h11)",
    )
    parser.add_argument(
        "--also-httptools",
        action="store_true",
        help="also measure the predecessor on uvicorn's httptools parser (needs httptools importable)",
    )
    parser.add_argument(
        "--skip-server", action="store_true", help="measure only the predecessor and the ceiling"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each measurement, wait up to this many seconds for other work on the machine "
        "to leave both cores nearly idle (0: do not wait)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="measure again, up to this many times, when other work on the machine disturbed a "
        "measurement (the least disturbed attempt is kept)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="nice value for the server, h2load and Redis (default -10 as root, else 0)",
    )
    parser.add_argument("--json-out", type=Path, help="write all results as JSON here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with every log")
    args = parser.parse_args(argv)
    if args.concurrency % args.grpc_connections:
        parser.error("--concurrency must be a multiple of --grpc-connections")
    if (args.uvicorn_http == "httptools" or args.also_httptools) and not importlib.util.find_spec(
        "httptools"
    ):
        parser.error("httptools is not importable (pip install httptools, or put it on PYTHONPATH)")
    # Resolve "auto" here and pass the result to uvicorn explicitly, so the table says what ran.
    args.uvicorn_http = uvicorn_stack(args.uvicorn_http)[1]
    if args.also_httptools and args.uvicorn_http == "httptools":
        parser.error(
            "--also-httptools compares against the predecessor on h11, but it would run on httptools "
            "too (httptools is importable): add --uvicorn-http h11"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON, stop everything."""
    args = parse_args(argv)
    cores = os.sched_getaffinity(0)
    if not {SERVER_CORE, LOAD_CORE} <= cores:
        raise SystemExit(f"needs cores {SERVER_CORE} and {LOAD_CORE}; this process may use {sorted(cores)}")
    h2load = ensure_h2load()
    # This script (its stub calls, the key rewriter) belongs with the load generator, away from
    # the server's core.
    os.sched_setaffinity(0, {LOAD_CORE})
    # SIGINT too: a shell that starts us in the background ignores SIGINT, and then Python would
    # not turn it into KeyboardInterrupt; every stop signal must reach the cleanup below.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_interrupt)

    processes = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="bench-getjobstatus-"))
    bench = Benchmark(args, processes, workdir)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    completed = False
    notes: dict[str, str] = {}
    try:
        bench.setup()
        notes = machine_notes(h2load, bench.redis.version, args.uvicorn_http)
        print(
            f"job {bench.job_id}; Redis {bench.redis.url} on core {LOAD_CORE}; logs in {workdir}",
            flush=True,
        )
        if "cofounder" in bench.pending:
            print(f"cofounder-server not measured: {bench.pending['cofounder'][:800]}", flush=True)
        bench.run()
        completed = True
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", file=sys.stderr)
        return 130
    finally:
        processes.stop_all()
        if completed and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        elif workdir.exists():
            print(f"logs kept in {workdir}", file=sys.stderr)

    summary = report(bench)
    command = "h2load commands (last run): \n" + "\n".join(
        f"  {r.server}: {r.command}" for r in bench.results if r.run == args.runs
    )
    print()
    print(summary["table"])
    print()
    print(command)
    for key, value in {**machine(), **notes}.items():
        print(f"{key}: {value}")
    for note in bench.notes:
        print(f"note: {note}")
    for name, why in bench.pending.items():
        print(f"pending: {name}: {why[:300]}")
    problems = [(r.server, r.run, p) for r in bench.results for p in r.problems]
    for server, run, problem in problems:
        print(f"problem: {server} run {run}: {problem}")
    for result in bench.results:
        for warning in result.warnings:
            print(f"warning: {result.server} run {result.run}: {warning}")

    document = {
        "started": started,
        "argv": sys.argv,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "job_id": bench.job_id,
        "notes": bench.notes,
        "pending": bench.pending,
        "ratios": summary["ratios"],
        "table_markdown": summary["table"],
        "results": [asdict(r) for r in bench.results],
        "discarded_attempts": [asdict(r) for r in bench.discarded],
    }
    json_out = write_result(document, args.json_out, default_name="getjobstatus", machine_facts=notes)
    print(f"results: {json_out}")
    # Warnings (noise, a busy load generator) do not fail the run: they are in the output to judge.
    return 1 if problems or bench.pending else 0


if __name__ == "__main__":
    sys.exit(main())
