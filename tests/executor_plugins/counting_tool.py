"""A tool plug-in that counts its executions where every process sees them: one line per
execution in ``$COUNTING_TOOL_DIR/{key}.log``. With ``hold``, an execution writes
``{key}.started`` and waits until ``{key}.release`` exists (or two minutes pass), so a test
can stop the process in the middle of a call. Servers load it with
``--plugins tests.executor_plugins.counting_tool:register``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cofounder_server import jsontext
from cofounder_server.executor.plugins import ToolContext, ToolResult, ToolSpec
from cofounder_server.executor.registry import PluginRegistry

DIRECTORY_VARIABLE = "COUNTING_TOOL_DIR"
"""Where the counts are written (not ``COFOUNDER_*``: spawned test servers keep it)."""
HOLD_LIMIT_SECONDS = 120.0

_SPEC = ToolSpec(
    name="counter",
    description="Adds `amount` to the counter `key`.",
    input_schema={
        "type": "object",
        "properties": {
            "key": {"type": "string", "minLength": 1},
            "amount": {"type": "integer", "minimum": 1},
            "hold": {"type": "boolean"},
        },
        "required": ["key"],
        "additionalProperties": False,
    },
)


def directory() -> Path:
    """Where the counts of this process's executions are written."""
    return Path(os.environ[DIRECTORY_VARIABLE])


def executions(key: str, where: Path | None = None) -> list[dict[str, Any]]:
    """The arguments of every execution of the counter ``key`` so far."""
    log = (where or directory()) / f"{key}.log"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def _append(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


async def _wait_for(path: Path, limit: float) -> None:
    """Until ``path`` exists (another process creates it: no event to wait on) or ``limit``."""
    loop = asyncio.get_running_loop()
    until = loop.time() + limit
    exists = False
    while not exists and loop.time() < until:
        exists = await asyncio.to_thread(path.exists)
        await asyncio.sleep(0 if exists else 0.02)


class CountingTool:
    """Counts its executions in files (see the module docstring)."""

    @property
    def spec(self) -> ToolSpec:
        return _SPEC

    async def run(self, tool_input: Mapping[str, Any], context: ToolContext) -> ToolResult:
        where = directory()
        key = str(tool_input["key"])
        await asyncio.to_thread(
            _append, where / f"{key}.log", jsontext.dumps(dict(tool_input), sort_keys=True)
        )
        if tool_input.get("hold"):
            await asyncio.to_thread((where / f"{key}.started").touch)
            release = where / f"{key}.release"
            await _wait_for(release, HOLD_LIMIT_SECONDS)
        return ToolResult(f"counted {key} +{tool_input.get('amount', 1)}")


def register(registry: PluginRegistry) -> None:
    """Register the ``counter`` tool."""
    registry.register_tool("counter", CountingTool)
