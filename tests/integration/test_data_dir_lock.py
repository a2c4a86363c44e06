"""One server per data directory: a second one refuses at start; a dead holder never blocks."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from cofounder_server.app import Application
from cofounder_server.datadir import LOCK_NAME
from tests.integration.server_process import health_of, run_to_exit, server_argv, spawn, stop
from tests.support import eventually, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_a_second_server_on_a_data_dir_in_use_refuses_and_kill_9_frees_it(
    tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "data"
    first_port = free_port()
    first = await spawn(server_argv(data_dir, first_port, database_url), tmp_path / "first.log")
    third: asyncio.subprocess.Process | None = None
    try:
        await eventually(lambda: health_of(first_port), lambda s: s == SERVING, within=60)
        redis_log = data_dir / "redis.log"
        redis_log_before = redis_log.stat().st_mtime_ns if redis_log.exists() else None

        code, stderr = await run_to_exit(server_argv(data_dir, free_port(), database_url))

        assert code != 0
        assert stderr.count("\n") == 1, stderr
        assert f"data directory {data_dir} is in use by process {first.pid}" in stderr
        assert "Traceback" not in stderr
        # Refused before touching anything: no embedded engine started over the first one's.
        assert (redis_log.stat().st_mtime_ns if redis_log.exists() else None) == redis_log_before
        assert await health_of(first_port) == SERVING

        first.send_signal(signal.SIGKILL)
        await first.wait()
        # The lock file stays behind, naming the dead process; it must not block a restart.
        assert (data_dir / LOCK_NAME).read_text().strip() == str(first.pid)

        third_port = free_port()
        third = await spawn(server_argv(data_dir, third_port, database_url), tmp_path / "third.log")
        await eventually(lambda: health_of(third_port), lambda s: s == SERVING, within=60)
        assert (data_dir / LOCK_NAME).read_text().strip() == str(third.pid)
        third.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(third.wait(), 30) == 0
    finally:
        await stop(first)
        if third is not None:
            await stop(third)


async def test_in_one_process_a_second_start_on_the_same_data_dir_refuses(settings_for, database_url) -> None:
    settings = settings_for(database_url)
    app = await Application.start(settings)
    try:
        with pytest.raises(SystemExit, match=f"is in use by process {os.getpid()}"):
            await Application.start(settings)
    finally:
        await app.stop(grace_seconds=0)
    # Released by a graceful stop: the same directory starts again at once.
    again = await Application.start(settings)
    await again.stop(grace_seconds=0)


async def test_a_lock_file_of_a_process_that_is_gone_does_not_block(settings_for, database_url) -> None:
    settings = settings_for(database_url)
    (settings.data_dir / LOCK_NAME).write_text("999999999\n")
    app = await Application.start(settings)
    await app.stop(grace_seconds=0)
