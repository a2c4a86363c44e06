"""Driving h2load (nghttp2's HTTP/2 and HTTP/1.1 load generator) and reading what it reports."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.getjobstatus.targets import Target
from bench.harness import LOAD_CORE, REPO, pinned


@dataclass
class H2loadOutput:
    """The numbers parsed from h2load's summary."""

    exit_code: int
    text: str
    cpu_seconds: float
    wall_seconds: float
    requests_per_second: float = 0.0
    done: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    errored: int = 0
    timeout: int = 0
    non_2xx: int = 0
    data_bytes: int = 0


def ensure_h2load() -> str:
    """Path to h2load, installing Debian's nghttp2-client when it is missing and we are root."""
    found = shutil.which("h2load")
    if found:
        return found
    how = "apt-get update && apt-get install -y nghttp2-client"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(f"h2load is missing: install it with `{how}` (as root)")
    print(f"h2load missing: running `{how}`", flush=True)
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "nghttp2-client"], check=True)
    found = shutil.which("h2load")
    if not found:
        raise SystemExit("nghttp2-client installed but h2load is still not on PATH")
    return found


def h2load_argv(target: Target, job_id: str, request_file: Path, args: argparse.Namespace) -> list[str]:
    """The h2load command for ``target`` (without the length and log options)."""
    argv = [*pinned(LOAD_CORE, args.nice), "h2load"]
    if target.protocol == "grpc":
        streams = args.concurrency // args.grpc_connections
        argv += [
            "-c", str(args.grpc_connections), "-m", str(streams),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-d", str(request_file), target.url,
        ]  # fmt: skip
    else:
        # HTTP/1.1 has no multiplexing: 64 in flight means 64 connections, one request each.
        argv += ["--h1", "-c", str(args.concurrency), "-m", "1", target.url.format(job_id=job_id)]
    return argv


_INT = r"([\d]+)"


def run_h2load(argv: Sequence[str], log_path: Path, timeout: float) -> H2loadOutput:
    """Run h2load to completion and return its parsed summary and its own CPU time.

    ``os.wait4`` returns the child's resource usage, so h2load's CPU time is exact without a
    sampler racing its exit.
    """
    with log_path.open("w+b") as out:
        child = subprocess.Popen(
            list(argv), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        started = time.monotonic()
        deadline = started + timeout
        try:
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    os.killpg(child.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(child.pid, 0)
                    break
                time.sleep(0.05)
        except BaseException:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.killpg(child.pid, signal.SIGKILL)
                os.wait4(child.pid, 0)
            raise
        wall = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)  # already reaped by wait4
        out.seek(0)
        text = out.read().decode(errors="replace")
    result = H2loadOutput(
        exit_code=child.returncode, text=text, cpu_seconds=usage.ru_utime + usage.ru_stime, wall_seconds=wall
    )
    if match := re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text):
        result.requests_per_second = float(match.group(1))
    if match := re.search(
        rf"requests: {_INT} total, {_INT} started, {_INT} done, {_INT} succeeded, {_INT} failed, "
        rf"{_INT} errored, {_INT} timeout",
        text,
    ):
        _, result.started, result.done, result.succeeded, result.failed, result.errored, result.timeout = (
            int(g) for g in match.groups()
        )
    if match := re.search(rf"status codes: {_INT} 2xx, {_INT} 3xx, {_INT} 4xx, {_INT} 5xx", text):
        result.non_2xx = sum(int(g) for g in match.groups()[1:])
    if match := re.search(r"traffic: .*?, .*?headers.*?\), [\d.]+\w*B \((\d+)\) data", text):
        result.data_bytes = int(match.group(1))
    return result


def latency_percentiles(log_file: Path) -> tuple[list[float], int]:
    """Sorted per-request latencies (ms) of 2xx responses from h2load's log, and the other rows.

    Columns: start time (us since epoch), HTTP status (-1 for a failed stream), duration (us).
    """
    latencies: list[float] = []
    other = 0
    with log_file.open() as rows:
        for row in rows:
            parts = row.split("\t")
            if len(parts) < 3:
                continue
            if 200 <= int(parts[1]) < 300:
                latencies.append(int(parts[2]) / 1000.0)
            else:
                other += 1
    latencies.sort()
    return latencies, other
