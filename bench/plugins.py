"""Benchmark plug-ins, loaded by a server with ``--plugins bench.plugins:register``.

``read_file`` stands in for a tool that reads a source file: it returns ``kb`` thousand
characters of text (16 by default) that differ from path to path, so a conversation grows by
that much per call. With the environment variable ``BENCH_TOOL_GATE`` naming a unix socket,
every call first reports ``JOB_ID PATH`` on it and waits for a line back: the benchmark that
listens there holds each agent between iterations while it measures, and lets it go on.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import Mapping
from typing import Any

from cofounder_server.executor.plugins import ToolContext, ToolResult, ToolSpec
from cofounder_server.executor.registry import PluginRegistry

GATE_VARIABLE = "BENCH_TOOL_GATE"

_SPEC = ToolSpec(
    name="read_file",
    description="Read a file of the repository; returns its text.",
    input_schema={
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Path from the repository root."},
            "kb": {"type": "integer", "description": "How much of it, in thousands of characters."},
        },
        "required": ["path"],
    },
)


def file_text(path: str, kb: int) -> str:
    """``kb`` thousand characters of source-like lines, seeded by ``path``."""
    seed = zlib.crc32(path.encode())
    lines = []
    size = 0
    number = 0
    while size < kb * 1000:
        number += 1
        line = (
            f"{number:5d}  value_{(seed + number * 7919) % 100_003:06d} = compute({path!r}, step={number})\n"
        )
        lines.append(line)
        size += len(line)
    return "".join(lines)[: kb * 1000]


class ReadFileTool:
    """Returns a file's worth of text; waits at the benchmark's gate first, when there is one."""

    @property
    def spec(self) -> ToolSpec:
        """The ``read_file`` spec."""
        return _SPEC

    async def run(self, tool_input: Mapping[str, Any], context: ToolContext) -> ToolResult:
        """Pass the gate (if any), then answer with the text."""
        path = str(tool_input.get("path", ""))
        kb = int(tool_input.get("kb", 16))
        gate = os.environ.get(GATE_VARIABLE)
        if gate:
            reader, writer = await asyncio.open_unix_connection(gate)
            writer.write(f"{context.job_id} {path}\n".encode())
            await writer.drain()
            await reader.readline()
            writer.close()
        return ToolResult(file_text(path, kb))


def register(registry: PluginRegistry) -> None:
    """Offer ``read_file`` to every agent of the server."""
    registry.register_tool("read_file", ReadFileTool)
