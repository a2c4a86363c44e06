"""What every benchmark shares: ports, a ``cofounder-server`` child, CPU and memory readings,
percentiles, the machine's facts and the JSON result that records them.

Benchmarks run from the repository root as ``python -m bench.NAME`` with the project's venv.
CPU time comes from ``/proc`` (a process: all its threads; a core: ``/proc/stat``), so a
benchmark can say how busy the server's core was and whether the load generator was the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from standins import postgres

if TYPE_CHECKING:
    from cofounder_server.config import Settings

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
"""The project's venv interpreter: every Python child runs on it too."""
SERVER_CORE = 0
LOAD_CORE = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")


def two_cores() -> bool:
    """Whether this process may use cores 0 and 1 (the server on one, the load on the other)."""
    return {SERVER_CORE, LOAD_CORE} <= os.sched_getaffinity(0)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for children that cannot report a port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(core: int | None, nice: int = 0) -> list[str]:
    """Command prefix running a program on one core (``taskset``) at a scheduling priority.

    A higher priority (negative ``nice``) for every process of a benchmark keeps unpinned work
    of a shared machine from taking turns on its cores; it changes nothing on a quiet machine.
    """
    prefix = ["nice", "-n", str(nice)] if nice else []
    if core is not None and shutil.which("taskset"):
        prefix += ["taskset", "-c", str(core)]
    return prefix


def enable_uvloop() -> None:
    """Run this process's event loops on uvloop when installed, as ``cofounder-server`` does."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


# --------------------------------------------------------------------------------------------
# CPU and memory


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, all threads included (``/proc/PID/stat``)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses: fields are counted after the last ')'.
    rest = raw.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident memory of a live process (``VmRSS``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (e.g. a server's embedded Redis engine)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@dataclass(frozen=True)
class CoreTicks:
    """Cumulative jiffies of one CPU from ``/proc/stat``."""

    task: int
    """user + nice + system: time charged to processes."""
    interrupt: int
    """irq + softirq: loopback TCP processing lands here, charged to no process."""
    steal: int
    """Taken by the hypervisor: the VM's own noise."""
    total: int


def core_ticks() -> dict[int, CoreTicks]:
    """Per-CPU counters, to see whole-core load besides the processes a benchmark samples."""
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

    busy: float
    """Tasks + interrupts."""
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


def wait_for_quiet(limit: float, threshold: float, cores: Sequence[int] = (SERVER_CORE, LOAD_CORE)) -> float:
    """Wait up to ``limit`` s for ``cores`` to be nearly idle; return the last load seen (%).

    Load seen while nothing of the benchmark runs is other work on a shared machine. Starting in
    a quiet moment keeps it out of the figures; the wait is bounded, and the load is recorded
    either way. Blocks: call it between measurements, or through ``asyncio.to_thread``.
    """
    deadline = time.monotonic() + limit
    while True:
        before = core_ticks()
        time.sleep(1.0)
        after = core_ticks()
        load = max(core_share(before, after, core).busy for core in cores)
        if load <= threshold or time.monotonic() >= deadline:
            return load


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` prints them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of ``values``, sorted here; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------------------------
# The machine and the result file


def spread(values: Sequence[float], digits: int = 0) -> str:
    """``median (min-max)`` of a figure over runs (one value, or all equal: that value; none: -)."""
    if not values:
        return "-"
    cell = f"{{:,.{digits}f}}"
    if min(values) == max(values):
        return cell.format(values[0])
    return f"{cell.format(statistics.median(values))} ({cell.format(min(values))}-{cell.format(max(values))})"


def cpu_model() -> str:
    """``lscpu``'s model name: every result says which CPU it was measured on."""
    with contextlib.suppress(OSError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """The facts every result records: CPU model, cores, Python, platform, date, load."""
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": load_average(),
    }


def result_path(json_out: str | Path | None, default_name: str = "") -> Path | None:
    """``json_out`` when given, else ``bench/results/<default_name>-<time>.json`` (git-ignored)
    when ``default_name`` is given, else None."""
    if json_out:
        return Path(json_out)
    if default_name:
        return REPO / "bench" / "results" / f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return None


def write_result(
    result: dict[str, Any],
    json_out: str | Path | None,
    *,
    default_name: str = "",
    machine_facts: Mapping[str, Any] | None = None,
) -> Path | None:
    """Record the machine in ``result["machine"]`` and write ``result`` as JSON to
    :func:`result_path` (if any). ``machine_facts`` add to the machine (versions of the stacks
    compared, ...). Returns the path written."""
    result["machine"] = {**machine(), **(machine_facts or {})}
    path = result_path(json_out, default_name)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Child processes


def server_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without ``COFOUNDER_*`` (the server's settings come from flags only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COFOUNDER_")}
    return {**env, **(extra or {})}


async def wait_for_port(port: int, within: float = 30.0) -> None:
    """Until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def stop_group(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM ``process``, SIGKILL its session if it outlives ``grace``, then anything left in it.

    The child runs in a session of its own (``start_new_session``), so what it started (an
    embedded Redis engine) goes with it even when it could not stop it itself.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def child_process(
    argv: Sequence[str], grace: float = 10.0, **kwargs: Any
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``argv`` in its own session for the body of the ``async with``, stopped on exit."""
    process = await asyncio.create_subprocess_exec(*argv, start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        await stop_group(process, grace)


class ServerNotServing(RuntimeError):
    """The server exited, or its health service did not say SERVING in time."""


async def health_serving(port: int) -> bool:
    """Whether ``grpc.health.v1`` on 127.0.0.1:``port`` reports the whole server SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def server_argv(
    port: int,
    data_dir: Path,
    flags: Sequence[str] = (),
    *,
    core: int | None = None,
    nice: int = 0,
    log_level: str | None = "WARNING",
) -> list[str]:
    """The command line of a ``cofounder-server`` on 127.0.0.1:``port``; ``log_level`` None
    keeps the server's default."""
    levels = ["--log-level", log_level] if log_level else []
    return [
        *pinned(core, nice),
        *(PYTHON, "-m", "cofounder_server", "--listen", f"127.0.0.1:{port}"),
        *("--data-dir", str(data_dir), *levels, *flags),
    ]


@dataclass
class ServerProcess:
    """A ``cofounder-server`` child: its flags, data dir, core and priority; started until its
    health service says SERVING, stopped with SIGTERM (then SIGKILL); ``pid`` is the server
    itself (``nice`` and ``taskset`` exec it), for CPU and memory readings.

    Its stderr goes to ``<data_dir>.log`` beside the data dir, appended across restarts.
    """

    data_dir: Path
    flags: Sequence[str] = ()
    core: int | None = None
    nice: int = 0
    log_level: str | None = "WARNING"
    """``--log-level``; None: the server's default."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to this environment, from which ``COFOUNDER_*`` variables are removed."""
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` for a gRPC channel."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id (while it runs)."""
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def log_path(self) -> Path:
        """Where the server's stderr goes."""
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def argv(self) -> list[str]:
        """The full command line."""
        return server_argv(
            self.port, self.data_dir, self.flags, core=self.core, nice=self.nice, log_level=self.log_level
        )

    async def start(self, within: float = 60.0) -> float:
        """Start, and wait until health says SERVING; the seconds that took."""
        started = time.perf_counter()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv(),
                env=server_environment(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + within
        while not await health_serving(self.port):
            if self.process.returncode is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                await self.stop()
                raise ServerNotServing(f"cofounder-server not serving; {self.log_path} ends:\n{tail}")
            await asyncio.sleep(0.1)
        return time.perf_counter() - started

    async def stop(self, grace: float = 60.0) -> float:
        """SIGTERM and wait for the exit (SIGKILL after ``grace``); the seconds that took."""
        if self.process is None:
            return 0.0
        started = time.perf_counter()
        await stop_group(self.process, grace)
        return time.perf_counter() - started

    async def kill(self) -> None:
        """SIGKILL the server and what it started (a crash: nothing is flushed or closed)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --------------------------------------------------------------------------------------------
# A server in this process


def in_process_settings(data_dir: Path, **fields: Any) -> Settings:
    """Settings of a server that a benchmark starts in its own process: a free port, its data
    (the SQLite file) in ``data_dir``, warnings only and no rate limits; ``fields`` set the rest."""
    from cofounder_server.config import Settings

    return replace(
        Settings(),
        listen="127.0.0.1:0",
        data_dir=data_dir,
        log_level="WARNING",
        rate_limit_per_second=0.0,
        service_rate_limit_per_second=0.0,
        **fields,
    )


@dataclass(frozen=True)
class Publisher:
    """Another replica's publishing path: its database, event log, clock and change pipeline."""

    database: Any
    event_log: Any
    clock: Any
    changes: Any


@contextlib.asynccontextmanager
async def replica_publisher(redis_port: int, database_url: str) -> AsyncIterator[Publisher]:
    """The real publishing path of a replica, in this process (SQL commit, then the change
    pipeline's live keys and PUBLISH in one round trip), on the Redis at ``redis_port`` and
    the database at ``database_url``; everything closed on exit."""
    from cofounder_server.api.convert import encode_escalation_event, encode_job_event, encode_status
    from cofounder_server.clock import SystemClock
    from cofounder_server.live import keys
    from cofounder_server.live.client import LiveClient
    from cofounder_server.live.tracked_cache import TrackedCache
    from cofounder_server.services.changes import ChangePipeline
    from cofounder_server.store.database import open_database
    from cofounder_server.store.events import EventLogRepository
    from cofounder_server.store.jobs import JobRepository
    from cofounder_server.store.ledger import LedgerRepository

    url = f"redis://127.0.0.1:{redis_port}/0"
    database = await open_database(database_url)
    live = LiveClient(url)
    cache = TrackedCache(url, [keys.JOB_KEY_PREFIX])
    await cache.start()
    clock = SystemClock()
    event_log = EventLogRepository(database, retention_events=100_000)
    changes = ChangePipeline(
        live,
        cache,
        clock,
        encode_job_event,
        encode_escalation=encode_escalation_event,
        encode_status=encode_status,
        jobs=JobRepository(database, event_log),
        ledger=LedgerRepository(database),
        event_log=event_log,
    )
    try:
        yield Publisher(database, event_log, clock, changes)
    finally:
        await changes.stop()
        await cache.stop()
        await live.aclose()
        await database.close()


@contextlib.contextmanager
def read_only_sqlite(database: Path) -> Iterator[sqlite3.Connection]:
    """The SQLite file ``database`` opened read-only beside the server that writes it,
    waiting up to 5 s for the server's write locks."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        yield db


def sqlite_count(data_dir: Path, query: str) -> int:
    """The count ``query`` reads from the SQLite file of the server with its data in
    ``data_dir`` (run it in a thread when the server shares this process's event loop)."""
    with read_only_sqlite(data_dir / "cofounder.db") as db:
        return int(db.execute(query).fetchone()[0])


# --------------------------------------------------------------------------------------------
# PostgreSQL


def throwaway_postgres(url: str) -> contextlib.AbstractAsyncContextManager[str]:
    """A fresh database on the PostgreSQL server of ``url``, dropped on exit; yields its
    SQLAlchemy URL (``postgresql+asyncpg://...``)."""
    return postgres.throwaway_postgres(url, prefix="cofounder_bench")
