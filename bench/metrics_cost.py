"""What metrics cost: GetJobStatus throughput and executor iterations/s, metrics off and on.

    .venv/bin/python -m bench.metrics_cost                        # 5 rounds x 10 s per setting
    .venv/bin/python -m bench.metrics_cost --rounds 2 --duration 2 --jobs 20   # a quick look

Both halves compare the server with ``--metrics-listen`` unset (off) and set (on) in the same
run, interleaved round by round (the order alternates every round) so drift on a shared machine
hits both alike; while a server with metrics on is measured, a thread scrapes its ``/metrics``
every ``--scrape-interval`` seconds, as Prometheus would (each scrape includes the SQL read of
the job gauges when its 5 s cache has expired).

* **GetJobStatus.** Every measurement starts a fresh ``cofounder-server`` process (API only,
  its own embedded Redis engine, SQLite file and job, ``PYTHONHASHSEED=0``), alone on core 0
  when the machine has two cores, and stops it afterwards: no server idles next to the measured
  one, and a process's luck (memory layout, the Redis engine it got) spreads over both settings
  instead of biasing one. This process drives ``--concurrency`` concurrent calls from core 1 on
  one channel for ``--duration`` seconds after a warm-up, and reads the server's CPU time from
  ``/proc``. Figures: calls per second, server CPU microseconds per call (robust when the
  client, not the server, is the limit), and the share of core 0 the server used.
* **Executor.** ``bench.executor``'s run (``--jobs`` scripted jobs whose brain answers at
  once, in this process on core 1) on a fresh server per round: iterations committed per second.

``cost`` is ``1 - median(on) / median(off)`` for throughput (and ``median(on) / median(off) - 1``
for CPU per call); the target is at most 5 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from bench import executor as executor_bench
from bench import harness
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2

TWO_CORES = harness.two_cores()


class Scraper:
    """Fetches ``/metrics`` once on entry (from a thread: the server may share this event
    loop), then every ``interval`` seconds in a thread until exit.

    The first scrape of a process pays one-time costs (imports, first SQL compile); a server in
    production is scraped all its life, so that scrape happens before the measured seconds.
    """

    def __init__(self, port: int, interval: float) -> None:
        self._url = f"http://127.0.0.1:{port}/metrics"
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.scrapes = 0

    def _scrape(self) -> None:
        with urllib.request.urlopen(self._url, timeout=10) as response:
            response.read()
        self.scrapes += 1

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._scrape()

    async def __aenter__(self) -> Scraper:
        await asyncio.to_thread(self._scrape)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join)


@dataclass
class MeasuredServer:
    """A ``cofounder-server`` serving the API only, and the job every call reads."""

    name: str
    server: harness.ServerProcess
    metrics_port: int | None
    job_id: str = ""


async def start_server(name: str, workdir: Path, metrics: bool) -> MeasuredServer:
    """Start it (alone on core 0 when there are two) and submit the job every call reads."""
    metrics_port = harness.free_port() if metrics else None
    flags = ["--executor-enabled", "false", "--rate-limit-per-second", "0"]
    if metrics_port is not None:
        flags += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
    # One hash seed for every server: dict and set layouts then differ by setting only.
    server = harness.ServerProcess(
        workdir / name,
        flags,
        core=harness.SERVER_CORE if TWO_CORES else None,
        env={"PYTHONHASHSEED": "0"},
    )
    await server.start()
    measured = MeasuredServer(name, server, metrics_port)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AgentControlServiceStub(channel)
            config = struct_pb2.Struct()
            config.update({"turns": [{"text": "done"}]})
            request = pb.SubmitJobRequest(
                project_id="bench",
                goal="metrics cost",
                daily_budget_microdollars=10**9,
                agent=job_pb2.AgentSpec(brain="scripted", model="bench-model", config=config),
            )
            measured.job_id = (await stub.SubmitJob(request, timeout=10)).job.job_id
    except BaseException:
        await server.stop()
        raise
    return measured


async def drive(
    server: MeasuredServer, concurrency: int, seconds: float, warmup: float, during: Any
) -> tuple[int, float, float]:
    """``concurrency`` callers in a loop for ``warmup`` seconds, then for ``seconds`` more
    inside ``during`` (an async context manager): (calls completed, wall seconds, server CPU seconds)
    of the second part."""
    pid = server.server.pid
    async with grpc.aio.insecure_channel(server.server.address) as channel:
        stub = pb_grpc.AgentControlServiceStub(channel)
        request = pb.GetJobStatusRequest(job_id=server.job_id)

        async def load(until: float) -> int:
            done = 0

            async def caller() -> None:
                nonlocal done
                while time.monotonic() < until:
                    await stub.GetJobStatus(request, timeout=5)
                    done += 1

            await asyncio.gather(*(caller() for _ in range(concurrency)))
            return done

        await load(time.monotonic() + warmup)
        async with during:
            cpu0, started = harness.cpu_seconds(pid), time.monotonic()
            done = await load(started + seconds)
            elapsed = time.monotonic() - started
            return done, elapsed, harness.cpu_seconds(pid) - cpu0


def summary(off: list[float], on: list[float], higher_is_better: bool = True) -> dict[str, Any]:
    off_median, on_median = statistics.median(off), statistics.median(on)
    cost = 1 - on_median / off_median if higher_is_better else on_median / off_median - 1
    return {
        "off": [round(v, 1) for v in off],
        "on": [round(v, 1) for v in on],
        "median_off": round(off_median, 1),
        "median_on": round(on_median, 1),
        "cost_percent": round(cost * 100, 2),
    }


async def get_job_status_rounds(args: Namespace, workdir: Path) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    busy: dict[str, list[float]] = {"off": [], "on": []}
    for round_number in range(args.rounds):
        order = ("off", "on") if round_number % 2 == 0 else ("on", "off")
        for name in order:
            server = await start_server(f"{name}-{round_number + 1}", workdir, metrics=name == "on")
            try:
                scraping = (
                    Scraper(server.metrics_port, args.scrape_interval)
                    if server.metrics_port is not None
                    else contextlib.nullcontext()
                )
                calls, elapsed, seconds = await drive(
                    server, args.concurrency, args.duration, args.warmup, scraping
                )
            finally:
                await server.server.stop(30)
            rates[name].append(calls / elapsed)
            cpu[name].append(seconds / max(1, calls) * 1e6)
            busy[name].append(seconds / elapsed * 100)
            print(
                f"  GetJobStatus round {round_number + 1} {name}: {rates[name][-1]:,.0f}/s, "
                f"{cpu[name][-1]:.0f} us CPU per call, server core {busy[name][-1]:.0f} % busy",
                flush=True,
            )
    return {
        "calls_per_second": summary(rates["off"], rates["on"]),
        "server_cpu_us_per_call": summary(cpu["off"], cpu["on"], higher_is_better=False),
        "server_core_busy_percent": {
            "off": [round(v) for v in busy["off"]],
            "on": [round(v) for v in busy["on"]],
        },
    }


async def executor_rounds(args: Namespace) -> dict[str, Any]:
    run_args = Namespace(
        jobs=args.jobs, duration=args.duration, warmup=args.warmup, database="", redis_url=""
    )
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for round_number in range(args.rounds):
        order = ("off", "on") if round_number % 2 == 0 else ("on", "off")
        for name in order:
            if name == "on":
                result = await executor_bench.run(
                    run_args,
                    metrics_listen="127.0.0.1:0",
                    while_measuring=lambda app: Scraper(app.metrics_port or 0, args.scrape_interval),
                )
            else:
                result = await executor_bench.run(run_args)
            rates[name].append(float(result["iterations_per_second"]))
            print(
                f"  executor round {round_number + 1} {name}: {result['iterations_per_second']:,}/s",
                flush=True,
            )
    return {"iterations_per_second": summary(rates["off"], rates["on"])}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per half; each measures off and on")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per setting and round")
    parser.add_argument("--concurrency", type=int, default=64, help="GetJobStatus calls in flight")
    parser.add_argument("--jobs", type=int, default=200, help="executor jobs")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of load before measuring (both halves)"
    )
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="seconds between scrapes when on")
    parser.add_argument("--skip", choices=("getjobstatus", "executor"), help="leave one half out")
    parser.add_argument("--json-out", default="", help="also write the result here")
    args = parser.parse_args()
    harness.enable_uvloop()
    if TWO_CORES:
        os.sched_setaffinity(
            0, {harness.LOAD_CORE}
        )  # the load (and the in-process executor server) on core 1
    result: dict[str, Any] = {"rounds": args.rounds, "duration": args.duration}
    with tempfile.TemporaryDirectory(prefix="cofounder-bench-metrics-") as workdir:
        if args.skip != "getjobstatus":
            result["get_job_status"] = asyncio.run(get_job_status_rounds(args, Path(workdir)))
        if args.skip != "executor":
            result["executor"] = asyncio.run(executor_rounds(args))
    harness.write_result(result, args.json_out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
