"""``--workers N``: N server processes on one port, supervised by the process that was started.

Python serves gRPC on one core per process. The supervisor holds the data directory, starts
what the workers share (the embedded Redis engine when no ``--redis-url`` is set; the SQLite
file of the data directory when no ``--database-url`` is set), and runs each worker as
``cofounder-server`` with the same flags plus ``--reuse-port``, the shared ``--redis-url`` and
``--database-url``, and a data directory of its own (``DATA_DIR/workers/I``: its lock and its
runner id, kept across its restarts). The kernel spreads connections over the workers.

Worker 0 starts first: if it exits before it accepts a connection, its one-line reason is on
stderr and the supervisor exits with status 1. Then the others start. A worker that dies is
started again after a delay that doubles from 0.5 s up to 30 s (and resets once a worker has
run for a minute). SIGTERM or SIGINT to the supervisor drains every worker at once (each one
as on its own SIGTERM); SIGHUP is passed on (the principals file is reloaded). Workers and the
embedded engine are tied to the supervisor's life: on Linux the kernel kills them if it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cofounder_server.config import Settings
from cofounder_server.datadir import DataDirError, DataDirLock
from cofounder_server.listen import ListenError, check_can_listen
from cofounder_server.live.engine import EmbeddedRedis, EmbeddedRedisError, launch_command

log = logging.getLogger(__name__)

WORKERS_DIR = "workers"
"""Under the data directory: one directory per worker."""
FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
STABLE_SECONDS = 60.0
"""A worker that ran this long before it died is restarted after the first delay again."""
STOP_MARGIN_SECONDS = 15.0
"""Beyond a worker's own drain (the pause, then the grace twice: calls, then agents), how long it
may take to hand its jobs over and exit before SIGKILL."""


class WorkersError(Exception):
    """The workers cannot be started; the message is one line for the operator."""


@dataclass(frozen=True)
class Shared:
    """What every worker is given: one port, one Redis, one database."""

    listen: str
    redis_url: str
    database_url: str


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` as host and port; ``WorkersError`` for a unix socket or a bad port."""
    if listen.startswith(("unix:", "unix-abstract:")) or ":" not in listen:
        raise WorkersError(f"--workers needs a TCP --listen HOST:PORT, not {listen!r}")
    host, _, port_text = listen.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise WorkersError(f"cannot listen on {listen}: the port must be a number") from None
    return host, port


def pick_port(host: str) -> int:
    """A port free on ``host`` now, for ``--listen HOST:0`` (every worker needs the same one).
    Blocking: run it in a thread from async code."""
    bare = host.removeprefix("[").removesuffix("]") or None
    family, kind, protocol, _, address = socket.getaddrinfo(
        bare, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        return int(probe.getsockname()[1])


def worker_argv(argv: Sequence[str], settings: Settings, shared: Shared, index: int) -> list[str]:
    """The flags of worker ``index``: the supervisor's own, then what makes it one of the
    workers (later flags win)."""
    extra = [
        "--workers", "1",
        "--listen", shared.listen,
        "--reuse-port", "true",
        "--redis-url", shared.redis_url,
        "--database-url", shared.database_url,
        "--data-dir", str(worker_dir(settings.data_dir, index)),
    ]  # fmt: skip
    if settings.runner_id:
        extra += ["--runner-id", f"{settings.runner_id}-{index}"]
    if settings.metrics_listen:
        host, port = split_listen(settings.metrics_listen)
        extra += ["--metrics-listen", f"{host}:{port + index if port else 0}"]
    return [*argv, *extra]


def worker_dir(data_dir: Path, index: int) -> Path:
    """The data directory of worker ``index``."""
    return data_dir / WORKERS_DIR / str(index)


class Supervisor:
    """Runs the workers until :meth:`stop`. Build it with :meth:`start`."""

    def __init__(self, argv: Sequence[str], settings: Settings, shared: Shared) -> None:
        self._argv = list(argv)
        self._settings = settings
        self._shared = shared
        self._stopping = asyncio.Event()
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def start(
        cls, argv: Sequence[str], settings: Settings, stack: contextlib.AsyncExitStack
    ) -> Supervisor:
        """Hold the data directory, start what the workers share, then the workers (worker 0
        first). ``WorkersError`` when any of it fails; ``stack`` undoes what was started."""
        host, port = split_listen(settings.listen)
        try:
            if port == 0:
                port = await asyncio.to_thread(pick_port, host)
            listen = f"{host}:{port}"
            await asyncio.to_thread(check_can_listen, listen, reuse_port=True)
            lock = await asyncio.to_thread(DataDirLock.acquire, settings.data_dir)
        except (ListenError, DataDirError, OSError) as error:
            raise WorkersError(str(error)) from error
        stack.callback(lock.release)
        redis_url = settings.redis_url
        if not redis_url:
            engine = EmbeddedRedis(settings.data_dir)
            try:
                redis_url = await engine.start()
            except EmbeddedRedisError as error:
                raise WorkersError(str(error)) from error
            # Registered before the workers' stop: Redis goes only once every worker has exited.
            stack.push_async_callback(engine.stop)
            log.info("embedded Redis engine for the workers running on %s", redis_url)
        shared = Shared(listen, redis_url, settings.effective_database_url)
        supervisor = cls(argv, settings, shared)
        stack.push_async_callback(supervisor.stop)
        await supervisor._start_first()
        return supervisor

    @property
    def listen(self) -> str:
        """The address every worker serves."""
        return self._shared.listen

    async def _start_first(self) -> None:
        first = await self._spawn(0)
        accepting = asyncio.create_task(self._accepting())
        exited = asyncio.create_task(first.wait())
        await asyncio.wait((accepting, exited), return_when=asyncio.FIRST_COMPLETED)
        accepting.cancel()
        if exited.done():
            raise WorkersError(f"worker 0 exited with status {first.returncode} during start-up")
        exited.cancel()
        self._tasks.append(asyncio.create_task(self._keep(0, first), name="worker 0"))
        for index in range(1, self._settings.workers):
            process = await self._spawn(index)
            self._tasks.append(asyncio.create_task(self._keep(index, process), name=f"worker {index}"))
        log.info(
            "cofounder-server: %d workers started on %s (pids %s)",
            self._settings.workers,
            self.listen,
            ", ".join(str(p.pid) for p in self._processes.values()),
        )

    async def _accepting(self) -> None:
        """Return once the port accepts a TCP connection (only worker 0 may be listening)."""
        host, port = split_listen(self.listen)
        host = host.removeprefix("[").removesuffix("]")
        target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        while True:
            try:
                _, writer = await asyncio.open_connection(target, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        args = ["-m", "cofounder_server", *worker_argv(self._argv, self._settings, self._shared, index)]
        process = await asyncio.create_subprocess_exec(
            *launch_command(sys.executable, args),
            stdin=asyncio.subprocess.DEVNULL,
            # Its own session: a terminal's Ctrl-C reaches the supervisor, which drains them all.
            start_new_session=True,
        )
        self._processes[index] = process
        log.info("worker %d started (pid %d)", index, process.pid)
        return process

    async def _keep(self, index: int, process: asyncio.subprocess.Process) -> None:
        """Start worker ``index`` again whenever it dies, with backoff, until stopping."""
        delay = FIRST_RESTART_DELAY
        started = time.monotonic()
        while True:
            code = await process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= STABLE_SECONDS:
                delay = FIRST_RESTART_DELAY
            log.warning(
                "worker %d (pid %d) exited with status %d; starting it again in %.1f s",
                index,
                process.pid,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            delay = min(MAX_RESTART_DELAY, delay * 2)
            process = await self._spawn(index)
            started = time.monotonic()

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every running worker."""
        for process in self._processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def stop(self) -> None:
        """Drain every worker (SIGTERM), wait for them, SIGKILL the ones that outstay their
        drain; idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        limit = (
            self._settings.drain_pause_seconds
            + 2 * self._settings.shutdown_grace_seconds
            + STOP_MARGIN_SECONDS
        )
        # Again while any runs: a worker being started again as the stop came is stopped too.
        while running := [(i, p) for i, p in self._processes.items() if p.returncode is None]:
            self.signal_all(signal.SIGTERM)
            for index, process in running:
                try:
                    await asyncio.wait_for(process.wait(), limit)
                except TimeoutError:
                    log.warning("worker %d (pid %d) did not stop; killing it", index, process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("stopped")


async def supervise(argv: Sequence[str], settings: Settings) -> None:
    """Run ``settings.workers`` workers until SIGTERM or SIGINT, then drain them and stop.
    ``SystemExit`` in one line when they cannot be started."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    async with contextlib.AsyncExitStack() as stack:
        try:
            supervisor = await Supervisor.start(argv, settings, stack)
        except WorkersError as error:
            raise SystemExit(str(error)) from error
        loop.add_signal_handler(signal.SIGHUP, supervisor.signal_all, signal.SIGHUP)
        await stop_requested.wait()
        log.info("shutting down: draining %d workers", settings.workers)


def check_workers(settings: Settings) -> None:
    """``SystemExit`` in one line for a worker count below 1."""
    if settings.workers < 1:
        raise SystemExit(f"invalid --workers {settings.workers}: must be 1 or more")
