"""Helpers for the live-layer tests: waiting on conditions, counting server commands."""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from redis.asyncio import Redis

from tests.support import eventually

T = TypeVar("T")

EXTERNAL_REDIS_URL = os.environ.get("COFOUNDER_TEST_REDIS_URL", "")

# Commands that the measurement itself (INFO) or the tracking connection's health check
# (PING) may issue while a measured action runs.
_NOT_COUNTED = frozenset({"cmdstat_info", "cmdstat_ping"})


@dataclass(frozen=True)
class Engine:
    """A Redis engine under test. ``private``: this session owns it, so server-wide
    commands (FLUSHALL, DEBUG, ACL, SCRIPT FLUSH, CLIENT KILL TYPE) are allowed."""

    name: str
    url: str
    private: bool


async def until(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait until ``condition()`` holds, failing at the deadline."""

    async def probe() -> bool:
        return condition()

    await eventually(probe, bool, within=within)


async def command_calls(redis: Redis) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``), minus uncounted ones."""
    stats = await redis.info("commandstats")
    return {name: int(entry["calls"]) for name, entry in stats.items() if name not in _NOT_COUNTED}


async def commands_during(redis: Redis, action: Callable[[], Awaitable[object]]) -> dict[str, int]:
    """Commands the server executed (by name, nonzero only) while ``action`` ran.

    Server-wide counters: on a shared server other clients' commands show up too, so
    callers that expect an exact count retry a few times (see :func:`exact_commands`).
    """
    before = await command_calls(redis)
    await action()
    after = await command_calls(redis)
    return {
        name.removeprefix("cmdstat_"): after[name] - before.get(name, 0)
        for name in after
        if after[name] != before.get(name, 0)
    }


async def exact_commands(
    redis: Redis, action_factory: Callable[[], Callable[[], Awaitable[object]]], expected: dict[str, int]
) -> None:
    """Assert some run of a fresh action executes exactly ``expected`` commands (5 tries).

    A bug shows on every run; a concurrent client of a shared server only on some.
    """
    seen = []
    for _ in range(5):
        delta = await commands_during(redis, action_factory())
        if delta == expected:
            return
        seen.append(delta)
    raise AssertionError(f"expected exactly {expected} commands, observed {seen}")


def command_line(pid: int) -> str:
    """The command line of a running process."""
    with open(f"/proc/{pid}/cmdline", encoding="utf-8", errors="replace") as cmdline:
        return cmdline.read().replace("\0", " ")


def socket_mode(path: Path) -> int | None:
    """Permission bits of the unix socket at ``path``; None if there is no socket there."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    return stat.S_IMODE(mode) if stat.S_ISSOCK(mode) else None


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # The state follows the parenthesised command name, which may contain spaces.
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")
