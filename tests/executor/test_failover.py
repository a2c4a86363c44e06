"""Failover between replicas (real server processes on a shared database and Redis): after
``kill -9`` another replica takes the dead one's jobs over, running, sleeping and waiting for
input alike, within 10 s on the default settings; a graceful stop hands them over at once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
from sqlalchemy import select

from cofounder.agent.v1 import job_pb2
from cofounder_server.store.database import open_database
from cofounder_server.store.models import JobRow
from tests.integration.server_process import spawn, stop
from tests.support import eventually, free_port

from .conftest import stub_for
from .support import agent_state, status_of, submit, turn, varied_loop

FAILOVER_SECONDS = 10.0
"""What the default settings promise after a replica dies."""


def sleeper() -> dict[str, object]:
    """An agent whose first call costs 90 % of its 1,000-microdollar budget: it sleeps."""
    return {
        "turns": [turn("most of today", [{"name": "narrate", "input": {"text": "one"}}], tokens=(900, 0))]
    }


def asker() -> dict[str, object]:
    """An agent that asks a question first (no deadline): it waits for input."""
    question = {
        "question": "Which database?",
        "options": [{"value": "pg", "label": "PostgreSQL"}, {"value": "sqlite", "label": "SQLite"}],
        "recommended": "pg",
    }
    return {"turns": [turn("asking", [{"name": "ask_human", "input": question}], tokens=(10, 0))]}


PRICES = '{"default": {"input": 1000000, "output": 1000000}}'


class Replicas:
    """Server processes on one database and Redis, each on its own port and data dir."""

    def __init__(self, tmp_path: Path, database_url: str, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.redis_url = redis_url
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.ports: dict[str, int] = {}

    async def start(self, name: str, *extra: str) -> int:
        port = self.ports.setdefault(name, free_port())
        argv = [
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(self.tmp_path / name),
            "--redis-url",
            self.redis_url,
            "--database-url",
            self.database_url,
            "--price-table",
            PRICES,
            "--max-tool-calls",
            "100000000",
            "--rate-limit-per-second",
            "0",
            *extra,
        ]
        self.processes[name] = await spawn(argv, self.tmp_path / f"{name}.log")
        await eventually(lambda: self.serving(port), bool, within=30)
        return port

    def runner_id(self, name: str) -> str:
        return (self.tmp_path / name / "runner-id").read_text().strip()

    async def serving(self, port: int) -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), 1)
            except TimeoutError:
                return False
        return True

    async def holders(self, job_ids: list[str]) -> dict[str, str | None]:
        database = await open_database(self.database_url)
        try:
            async with database.read() as session:
                rows = await session.execute(
                    select(JobRow.job_id, JobRow.runner_id).where(JobRow.job_id.in_(job_ids))
                )
                return {str(job_id): runner for job_id, runner in rows.all()}
        finally:
            await database.close()

    async def stop_all(self) -> None:
        for process in self.processes.values():
            await stop(process)


async def _jobs_held_by_a(replicas: Replicas, project_id: str) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas.ports['a']}") as channel:
        stub = stub_for(channel)
        running = await submit(stub, project_id, varied_loop())
        sleeping = await submit(stub, project_id, sleeper(), budget=1000)
        waiting = await submit(stub, project_id, asker(), budget=1000)
        await agent_state(stub, sleeping.job_id, job_pb2.AGENT_STATE_SLEEPING)
        await agent_state(stub, waiting.job_id, job_pb2.AGENT_STATE_WAITING_FOR_INPUT)
    job_ids = [running.job_id, sleeping.job_id, waiting.job_id]
    runner_a = replicas.runner_id("a")
    await eventually(lambda: replicas.holders(job_ids), lambda h: set(h.values()) == {runner_a}, within=30)
    return job_ids


async def test_kill_9_jobs_running_and_sleeping_are_taken_over_within_10_s(
    tmp_path: Path, fresh_database_url: str, shared_redis_url: str, project_id: str
) -> None:
    replicas = Replicas(
        tmp_path, fresh_database_url or f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}", shared_redis_url
    )
    try:
        await replicas.start("a")
        job_ids = await _jobs_held_by_a(replicas, project_id)
        await replicas.start("b")
        runner_b = replicas.runner_id("b")

        replicas.processes["a"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await replicas.processes["a"].wait()
        await eventually(
            lambda: replicas.holders(job_ids),
            lambda h: set(h.values()) == {runner_b},
            within=FAILOVER_SECONDS - (time.monotonic() - killed),
        )
    finally:
        await replicas.stop_all()


async def test_a_graceful_stop_hands_jobs_over_at_once(
    tmp_path: Path, fresh_database_url: str, shared_redis_url: str, project_id: str
) -> None:
    replicas = Replicas(
        tmp_path, fresh_database_url or f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}", shared_redis_url
    )
    try:
        await replicas.start("a")
        job_ids = await _jobs_held_by_a(replicas, project_id)
        # B looks for work only every 10 minutes: only A's hand-over can bring the jobs now.
        await replicas.start("b", "--claim-interval-seconds", "600")
        runner_b = replicas.runner_id("b")
        await asyncio.sleep(0.5)  # B's start-up claim round has passed

        replicas.processes["a"].send_signal(signal.SIGTERM)
        await replicas.processes["a"].wait()
        await eventually(lambda: replicas.holders(job_ids), lambda h: set(h.values()) == {runner_b}, within=5)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas.ports['b']}") as channel:
            stub = stub_for(channel)
            assert (await status_of(stub, job_ids[1])).agent_state == job_pb2.AGENT_STATE_SLEEPING
            assert (await status_of(stub, job_ids[2])).agent_state == job_pb2.AGENT_STATE_WAITING_FOR_INPUT
    finally:
        await replicas.stop_all()
