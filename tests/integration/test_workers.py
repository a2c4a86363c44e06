"""``cofounder-server --workers N``: N processes on one port over one Redis and one database
(the embedded defaults, started once by the supervisor), a worker killed with SIGKILL is
started again while the port keeps serving, and SIGTERM drains and stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from urllib.parse import quote

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc
from cofounder_server.live import keys
from cofounder_server.workers import worker_dir
from tests.integration.server_process import health_of, run_to_exit, spawn, stop
from tests.integration.test_server import is_running, processes_mentioning
from tests.support import RPC_TIMEOUT, eventually, free_port, scripted_agent

CONNECTIONS = 24
"""Connections opened; all landing on one worker by chance has odds of 2 in 2**24."""


def worker_pid(data_dir: Path, index: int) -> int | None:
    """The pid worker ``index`` wrote into its data directory's lock file."""
    try:
        return int((worker_dir(data_dir, index) / "server.lock").read_text().strip())
    except (OSError, ValueError):
        return None


async def listening(log_path: Path) -> int:
    """How many times a worker said it serves, in the supervisor's log (stderr)."""
    return (await asyncio.to_thread(log_path.read_text)).count("cofounder-server listening on")


async def serving(port: int) -> bool:
    """Whether a new connection to ``port`` gets SERVING (a generous deadline: a loaded machine).

    A channel of its own subchannels: a new TCP connection each time, not one gRPC shares
    between channels (which, broken by the kill, would be waiting out its reconnect backoff).
    """
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def test_two_workers_share_one_port_survive_a_kill_and_stop_together(
    tmp_path: Path, project_id: str
) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    argv = [
        "--listen", f"127.0.0.1:{port}",
        "--data-dir", str(data_dir),
        "--workers", "2",
        # The job stays queued, so its watchers stay subscribed.
        "--executor-enabled", "false",
        "--rate-limit-per-second", "0",
        "--service-rate-limit-per-second", "0",
    ]  # fmt: skip
    log_path = tmp_path / "supervisor.log"
    supervisor = await spawn(argv, log_path)
    channels: list[grpc.aio.Channel] = []
    try:
        await eventually(lambda: serving(port), bool, within=60)
        # Each worker logs its own start-up line once it serves.
        await eventually(lambda: listening(log_path), lambda n: n == 2, within=60)
        pids = await eventually(
            lambda: asyncio.sleep(0, (worker_pid(data_dir, 0), worker_pid(data_dir, 1))),
            lambda p: None not in p and all(is_running(pid) for pid in p if pid),
            within=60,
        )
        assert len(set(pids)) == 2
        assert supervisor.pid not in pids
        # One SQLite file and one Redis engine, in the supervisor's data directory.
        assert (data_dir / "cofounder.db").exists()
        redis_url = f"unix://{quote(str((data_dir / 'redis.sock').resolve()))}"

        # Both workers serve: one channel per connection, each watching the same job.
        target = f"127.0.0.1:{port}"
        channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CONNECTIONS)
        ]
        stubs = [agent_control_service_pb2_grpc.AgentControlServiceStub(c) for c in channels]
        job = (
            await stubs[0].SubmitJob(
                pb.SubmitJobRequest(
                    project_id=project_id, goal="g", daily_budget_microdollars=10**9, agent=scripted_agent()
                ),
                timeout=RPC_TIMEOUT,
            )
        ).job
        calls = [stub.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job.job_id)) for stub in stubs]
        for call in calls:
            assert (await asyncio.wait_for(call.read(), RPC_TIMEOUT)).HasField("snapshot")
        redis = Redis.from_url(redis_url)
        try:

            async def subscribers() -> int:
                counts = await redis.pubsub_numsub(keys.job_events_channel(job.job_id))
                return int(counts[0][1])

            await eventually(subscribers, lambda n: n == 2, within=30)
        finally:
            await redis.aclose()
        for call in calls:
            call.cancel()

        # A worker killed: the port keeps serving from the other, and it is started again.
        os.kill(pids[1], signal.SIGKILL)
        # Gone, reaped by the supervisor: every thread has exited, so its listening socket is
        # closed (a connection racing the kill may be reset by it, as with any crash).
        await eventually(lambda: asyncio.sleep(0, Path(f"/proc/{pids[1]}").exists()), lambda alive: not alive)
        for _ in range(10):
            assert await serving(port)
        restarted = await eventually(
            lambda: asyncio.sleep(0, worker_pid(data_dir, 1)),
            lambda pid: pid is not None and pid != pids[1] and is_running(pid),
            within=60,
        )
        assert is_running(pids[0])
        assert "worker 1 (pid" in log_path.read_text()
        await eventually(lambda: listening(log_path), lambda n: n == 3, within=60)

        redis_processes = processes_mentioning(str(data_dir.resolve()))
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(supervisor.wait(), 90) == 0
        assert restarted is not None
        for pid in (pids[0], restarted, *redis_processes):
            await eventually(lambda p=pid: asyncio.sleep(0, is_running(p)), lambda alive: not alive)
        assert await health_of(port) == grpc.StatusCode.UNAVAILABLE
    finally:
        for channel in channels:
            await channel.close()
        await stop(supervisor)


async def test_a_worker_that_cannot_start_stops_the_supervisor_in_one_line(tmp_path: Path) -> None:
    argv = [
        "--listen", f"127.0.0.1:{free_port()}",
        "--data-dir", str(tmp_path / "d"),
        "--workers", "2",
        "--price-table", "{not json",
    ]  # fmt: skip
    code, stderr = await run_to_exit(argv)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert any(line.startswith("invalid --price-table") for line in lines), stderr
    assert lines[-1] == "worker 0 exited with status 1 during start-up", stderr


async def test_bad_worker_settings_are_refused_in_one_line(tmp_path: Path) -> None:
    cases = [
        (["--workers", "0"], "invalid --workers 0: must be 1 or more"),
        (
            ["--workers", "2", "--listen", f"unix:{tmp_path / 's'}"],
            f"--workers needs a TCP --listen HOST:PORT, not 'unix:{tmp_path / 's'}'",
        ),
    ]
    for extra, message in cases:
        code, stderr = await run_to_exit(
            ["--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"), *extra]
        )
        assert code == 1
        assert stderr.strip() == message, stderr
