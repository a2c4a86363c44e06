"""The model-API stand-in (``standins.model_api``) as a child process, and its ``/stats`` and
``/control`` endpoints read over a keep-alive HTTP/1.1 connection of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench import harness

MODEL_PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
"""The path each brain's provider API is called on."""


@dataclass(frozen=True)
class Stats:
    """One reading of the stand-in's counters (since its last reset)."""

    at: float
    """``time.monotonic()`` when the reading came back."""
    received: int
    """Model requests received."""
    answered: int
    """Model requests answered with 200."""
    errors: int
    """Model requests answered with anything else."""
    in_flight: int
    peak_in_flight: int
    cpu_seconds: float
    """The stand-in process's CPU time (all threads)."""


class StandIn:
    """A running stand-in: its base URL, and calls to ``/stats`` and ``/control``."""

    def __init__(self, process: asyncio.subprocess.Process, base_url: str, path: str) -> None:
        self.process = process
        self.base_url = base_url
        self._path = path
        host, port = base_url.removeprefix("http://").split(":")
        self._address = (host, int(port))
        self._connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def _request(self, method: str, path: str, body: bytes = b"") -> dict[str, Any]:
        async with self._lock:
            if self._connection is None:
                self._connection = await asyncio.open_connection(*self._address)
            reader, writer = self._connection
            head = f"{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {len(body)}\r\n\r\n"
            writer.write(head.encode("latin-1") + body)
            status_and_headers = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in status_and_headers.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            answer: dict[str, Any] = json.loads(await reader.readexactly(length))
            if not status_and_headers.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{method} {path}: {status_and_headers.splitlines()[0]!r} {answer}")
            return answer

    async def stats(self) -> Stats:
        """The counters now."""
        raw = await self._request("GET", "/stats")
        statuses = {int(status): count for status, count in raw["statuses"].items()}
        answered = statuses.get(200, 0)
        return Stats(
            at=time.monotonic(),
            received=int(raw["requests"].get(self._path, 0)),
            answered=answered,
            errors=sum(statuses.values()) - answered,
            in_flight=int(raw["in_flight"]),
            peak_in_flight=int(raw["peak_in_flight"]),
            cpu_seconds=float(raw["cpu_seconds"]),
        )

    async def control(self, **command: Any) -> None:
        """``POST /control`` (``reset_stats=True``, ``latency=...``, ``fail_next={...}``, ...)."""
        await self._request("POST", "/control", json.dumps(command).encode())

    async def close(self) -> None:
        """Close the stats connection (the process is stopped by :func:`standin`)."""
        if self._connection is not None:
            self._connection[1].close()
            self._connection = None


@contextlib.asynccontextmanager
async def standin(
    brain: str,
    latency: float,
    tool_turns: int,
    *,
    core: int | None,
    nice: int = 0,
    extra: Sequence[str] = (),
) -> AsyncIterator[StandIn]:
    """``python -m standins.model_api`` on a port of its own, pinned to ``core``, for the body of
    the ``async with``; every tool-use answer calls ``narrate``."""
    argv = [
        *harness.pinned(core, nice),
        *(harness.PYTHON, "-m", "standins.model_api", "--port", "0"),
        *("--latency", f"{latency:g}", "--tool-turns", str(tool_turns), *extra),
    ]
    async with harness.child_process(
        argv, cwd=harness.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        if not line.startswith("listening on "):
            assert process.stderr is not None
            error = (await process.stderr.read()).decode(errors="replace")[-2000:]
            raise RuntimeError(f"the model-API stand-in did not start: {line!r}\n{error}")
        running = StandIn(process, line.removeprefix("listening on "), MODEL_PATHS[brain])
        try:
            yield running
        finally:
            await running.close()
