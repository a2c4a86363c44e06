"""The results table, the paired ratios against the targets, and the notes on the machine."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.getjobstatus.measurement import Benchmark, LoadResult
from bench.getjobstatus.targets import uvicorn_stack
from bench.harness import cpu_model


def spread(values: Sequence[float], digits: int = 0, suffix: str = "") -> str:
    """``median (min-max)``, the table's cell format."""
    if not values:
        return "pending"
    fmt = f"{{:,.{digits}f}}"
    if len(values) == 1:
        return fmt.format(values[0]) + suffix
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return f"{fmt.format(statistics.median(values))}{suffix} ({low}-{high})"


def by_server(results: Sequence[LoadResult], name: str) -> list[LoadResult]:
    """The results of one server, in run order."""
    return [r for r in results if r.server == name]


def paired_ratios(
    results: Sequence[LoadResult], a: str, b: str, metric: Callable[[LoadResult], float]
) -> list[float]:
    """metric(a) / metric(b) for each run in which both were measured."""
    first = {r.run: metric(r) for r in by_server(results, a)}
    second = {r.run: metric(r) for r in by_server(results, b)}
    return [first[run] / second[run] for run in sorted(first) if second.get(run)]


def report(bench: Benchmark) -> dict[str, Any]:
    """The table, ratios and target verdict as markdown text plus a JSON-ready summary."""
    rows = [
        ("predecessor", "predecessor: FastAPI + uvicorn, 3 sequential GETs"),
        ("predecessor-httptools", "predecessor with uvicorn httptools (sensitivity)"),
        ("cofounder", "cofounder-server GetJobStatus (grpc.aio)"),
        ("noio", "grpc.aio no-I/O reference (ceiling)"),
    ]
    lines = [
        "| server | requests/s | vs predecessor | p50 ms | p99 ms | server CPU % (core 0) "
        "| h2load CPU % (core 1) | Redis CPU % (core 1) | other work % core 0 / core 1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = bench.results
    for name, label in rows:
        mine = by_server(results, name)
        if not mine and name == "predecessor-httptools":
            continue  # measured only on request
        if not mine:
            lines.append(f"| {label} | pending | | | | | | | |")
            continue
        ratio = (
            "1.00x"
            if name == "predecessor"
            else spread(paired_ratios(results, name, "predecessor", lambda r: r.requests_per_second), 2, "x")
        )
        lines.append(
            f"| {label} | {spread([r.requests_per_second for r in mine])} | {ratio} "
            f"| {spread([r.p50_ms for r in mine], 1)} | {spread([r.p99_ms for r in mine], 1)} "
            f"| {spread([r.server_cpu_percent for r in mine])} "
            f"| {spread([r.loadgen_cpu_percent for r in mine])} "
            f"| {spread([r.redis_cpu_percent for r in mine])} "
            f"| {spread([r.core0_other_percent for r in mine])} "
            f"/ {spread([r.core1_other_percent for r in mine])} |"
        )
    summary: dict[str, Any] = {}
    verdict = []
    if by_server(results, "cofounder") and by_server(results, "predecessor"):
        throughput = paired_ratios(results, "cofounder", "predecessor", lambda r: r.requests_per_second)
        p99 = paired_ratios(results, "cofounder", "predecessor", lambda r: r.p99_ms)
        ceiling = paired_ratios(results, "cofounder", "noio", lambda r: r.requests_per_second)
        summary = {
            "throughput_ratio_median": statistics.median(throughput),
            "throughput_ratio_range": [min(throughput), max(throughput)],
            "p99_ratio_median": statistics.median(p99),
            "p99_ratio_range": [min(p99), max(p99)],
            "share_of_ceiling_median": statistics.median(ceiling) if ceiling else None,
            "throughput_target_met": statistics.median(throughput) >= 1.3,
            "p99_target_met": statistics.median(p99) <= 0.5,
        }
        verdict.append(
            f"throughput cofounder/predecessor: {spread(throughput, 2, 'x')} (target >= 1.3x: "
            f"{'met' if summary['throughput_target_met'] else 'NOT met'})"
        )
        verdict.append(
            f"p99 cofounder/predecessor: {spread(p99, 2, 'x')} (target <= 0.5x: "
            f"{'met' if summary['p99_target_met'] else 'NOT met'})"
        )
        if ceiling:
            verdict.append(f"cofounder throughput / no-I/O ceiling: {spread(ceiling, 2, 'x')}")
        if by_server(results, "predecessor-httptools"):
            fast = "predecessor-httptools"
            fast_throughput = paired_ratios(results, "cofounder", fast, lambda r: r.requests_per_second)
            fast_p99 = paired_ratios(results, "cofounder", fast, lambda r: r.p99_ms)
            summary["vs_httptools"] = {
                "throughput_ratio_median": statistics.median(fast_throughput),
                "throughput_ratio_range": [min(fast_throughput), max(fast_throughput)],
                "p99_ratio_median": statistics.median(fast_p99),
                "p99_ratio_range": [min(fast_p99), max(fast_p99)],
            }
            verdict.append(
                f"against the httptools predecessor: throughput {spread(fast_throughput, 2, 'x')}, "
                f"p99 {spread(fast_p99, 2, 'x')}"
            )
    else:
        verdict.append("targets: pending (cofounder-server figures missing)")
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {v}" for v in verdict)
    return {"table": text, "ratios": summary}


def machine_notes(h2load: str, redis_version: str, uvicorn_http: str) -> dict[str, str]:
    """What the figures depend on besides the machine: governor, kernel, versions, the stacks."""
    governor = "n/a"
    with contextlib.suppress(OSError):
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    versions = {}
    for package in ("grpcio", "protobuf", "fastapi", "uvicorn", "starlette", "pydantic", "redis", "uvloop"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    loop, http = uvicorn_stack(uvicorn_http)
    h2load_version = subprocess.run(
        [h2load, "--version"], check=False, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores, governor {governor}",
        "kernel": platform.release(),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "redis": redis_version,
        "h2load": h2load_version,
        "uvicorn": f"loop {loop}, http {http}, 1 worker, no access log",
    }
