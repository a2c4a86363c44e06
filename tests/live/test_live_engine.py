"""The embedded engine: a real server process on a private socket, gone when its owner is."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import pytest
from redis.asyncio import Redis

from cofounder_server.live.engine import BINARY_ENV, EmbeddedRedis, EmbeddedRedisError, find_redis_binary

from .support import command_line, process_gone, socket_mode, until


async def test_serves_on_a_private_socket_and_cleans_up(tmp_path: Path) -> None:
    engine = EmbeddedRedis(tmp_path / "engine")
    url = await engine.start()
    pid = engine.pid
    assert pid is not None
    socket_path = Path(url.removeprefix("unix://"))
    assert url.startswith("unix:///")
    assert socket_path.parent == tmp_path / "engine"
    assert socket_mode(socket_path) == 0o700
    redis = Redis.from_url(url)
    try:
        assert await redis.ping() is True
        config = await redis.config_get("*")
        assert (config["port"], config["save"], config["appendonly"]) == ("0", "", "no")
        assert config["dir"] == str(tmp_path / "engine")
    finally:
        await redis.aclose()

    await engine.stop()
    assert socket_mode(socket_path) is None
    assert process_gone(pid)
    log = await asyncio.to_thread(engine.log_path.read_text)
    assert "ready to exit" in log  # a clean SHUTDOWN, not the signal fallbacks
    assert "SIGTERM" not in log
    await engine.stop()  # idempotent


async def test_refuses_a_second_start(tmp_path: Path) -> None:
    async with EmbeddedRedis(tmp_path) as engine:
        with pytest.raises(EmbeddedRedisError, match="already running"):
            await engine.start()


async def test_long_directory_gets_a_short_socket_path(tmp_path: Path) -> None:
    directory = tmp_path / ("d" * 60) / ("e" * 60)
    engine = EmbeddedRedis(directory)
    url = await engine.start()
    try:
        socket_path = Path(url.removeprefix("unix://"))
        assert len(os.fsencode(socket_path)) <= 107
        assert socket_path.parent.parent == Path("/tmp")
        redis = Redis.from_url(url)
        assert await redis.ping() is True
        await redis.aclose()
    finally:
        await engine.stop()
    assert not await asyncio.to_thread(socket_path.parent.exists)
    assert await asyncio.to_thread((directory / "redis.log").exists)


async def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-redis-server"
    engine = EmbeddedRedis(tmp_path, binary=str(missing))
    with pytest.raises(EmbeddedRedisError, match="cannot run Redis server binary") as caught:
        await engine.start()
    assert str(missing) in str(caught.value)
    assert engine.pid is None
    assert socket_mode(tmp_path / "redis.sock") is None


async def test_a_failing_binary_reports_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "fake-redis"
    fake.write_text("#!/bin/sh\necho 'FATAL: bad config line' >&2\nexit 3\n")
    fake.chmod(0o755)
    engine = EmbeddedRedis(tmp_path, binary=str(fake))
    with pytest.raises(EmbeddedRedisError, match="exited with code 3") as caught:
        await engine.start()
    assert "FATAL: bad config line" in str(caught.value)
    assert engine.pid is None


async def test_a_silent_binary_times_out_with_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "silent-redis"
    fake.write_text("#!/bin/sh\necho 'starting, never listening'\nexec sleep 60\n")
    fake.chmod(0o755)
    engine = EmbeddedRedis(tmp_path, binary=str(fake), startup_timeout=0.3)
    with pytest.raises(EmbeddedRedisError, match="did not answer PING") as caught:
        await engine.start()
    assert "starting, never listening" in str(caught.value)
    assert engine.pid is None


def test_binary_discovery(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(BINARY_ENV, raising=False)
    found = find_redis_binary()
    assert os.access(found, os.X_OK)

    monkeypatch.setenv(BINARY_ENV, found)
    assert find_redis_binary() == found

    monkeypatch.setenv(BINARY_ENV, str(tmp_path / "nothing-here"))
    with pytest.raises(EmbeddedRedisError, match=BINARY_ENV):
        find_redis_binary()


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from cofounder_server.live.engine import EmbeddedRedis

    async def main():
        engine = EmbeddedRedis(sys.argv[1])
        await engine.start()
        print(engine.pid, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
async def test_engine_dies_when_its_owner_is_killed(tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        env=environment,
    )
    redis_pid = None
    try:
        line = await asyncio.wait_for(owner.stdout.readline(), 30) if owner.stdout else b""
        redis_pid = int(line)
        assert not process_gone(redis_pid)
        assert "-server" in command_line(redis_pid)

        owner.kill()
        await owner.wait()

        await until(lambda: process_gone(redis_pid), within=10)
    finally:
        if owner.returncode is None:
            owner.kill()
            await owner.wait()
        if redis_pid is not None and not process_gone(redis_pid):
            os.kill(redis_pid, 9)
