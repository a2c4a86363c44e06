"""The reference for the agent workload: a model SDK alone, N concurrent agent-like loops.

Each loop is one agent's conversation without the control plane: it calls the provider API
(``messages.create`` of the official ``anthropic`` SDK, or ``chat.completions.create`` of the
``openai`` SDK) with the same tools the server offers, appends the answer and a result for
each tool call, and calls again, ``--calls`` times. One client for all loops, as the server
has, on the SDK's default transport or its aiohttp one (``DefaultAioHttpClient``); no SDK
retries (the server's adapters make none either).

Run by ``bench.agents`` as a child process (pinned to the server's core, with the server
stopped)::

    python -m bench.sdk_loops --base-url http://127.0.0.1:PORT --loops 1000 --calls 3 --transport aiohttp

It imports and builds everything, prints ``ready``, waits for a line on stdin, runs the loops
and prints one JSON line: calls made, errors (and the first one), seconds, and its own CPU
seconds (all threads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import harness

API_KEY = "sk-bench-standin"
MODEL = {"anthropic": "claude-bench", "openai": "gpt-bench"}
GOAL = "Build the landing page for the spring launch and tell the team what you did."


def server_tools() -> list[Any]:
    """The tool specs a server with default plug-ins offers its agents."""
    from cofounder_server.config import Settings
    from cofounder_server.executor.registry import PluginRegistry

    return list(PluginRegistry.default(Settings(), entry_points=False).tool_specs())


def anthropic_loop(base_url: str, transport: str) -> tuple[Callable[[int, int], Awaitable[int]], Any]:
    """One loop on the ``anthropic`` SDK, and the client to close."""
    import anthropic

    from cofounder_server.executor.brains.anthropic import to_tools_api

    http_client = anthropic.DefaultAioHttpClient() if transport == "aiohttp" else None
    client = anthropic.AsyncAnthropic(
        api_key=API_KEY, base_url=base_url, timeout=300.0, max_retries=0, http_client=http_client
    )
    tools = to_tools_api(server_tools())

    async def loop(index: int, calls: int) -> int:
        messages: list[dict[str, Any]] = [{"role": "user", "content": f"{GOAL} (agent {index})"}]
        for _ in range(calls):
            response = await client.messages.create(
                model=MODEL["anthropic"],
                max_tokens=8192,
                messages=messages,  # type: ignore[arg-type]
                tools=tools,  # type: ignore[arg-type]
            )
            content: list[dict[str, Any]] = []
            results: list[dict[str, Any]] = []
            for block in response.content:
                if block.type == "text":
                    content.append({"type": "text", "text": block.text})
                elif block.type == "tool_use":
                    content.append(
                        {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
                    )
                    results.append({"type": "tool_result", "tool_use_id": block.id, "content": "done"})
            messages.append({"role": "assistant", "content": content})
            messages.append({"role": "user", "content": results or [{"type": "text", "text": "Go on."}]})
        return calls

    return loop, client


def openai_loop(base_url: str, transport: str) -> tuple[Callable[[int, int], Awaitable[int]], Any]:
    """One loop on the ``openai`` SDK (Chat Completions with tools), and the client to close."""
    import openai

    http_client = openai.DefaultAioHttpClient() if transport == "aiohttp" else None
    client = openai.AsyncOpenAI(
        api_key=API_KEY, base_url=f"{base_url}/v1", timeout=300.0, max_retries=0, http_client=http_client
    )
    tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": dict(t.input_schema)},
        }
        for t in server_tools()
    ]

    async def loop(index: int, calls: int) -> int:
        messages: list[dict[str, Any]] = [{"role": "user", "content": f"{GOAL} (agent {index})"}]
        for _ in range(calls):
            response = await client.chat.completions.create(
                model=MODEL["openai"],
                messages=messages,  # type: ignore[arg-type]
                tools=tools,  # type: ignore[arg-type]
            )
            message = response.choices[0].message
            calls_made = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in message.tool_calls or ()
                if c.type == "function"
            ]
            assistant: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
            if calls_made:
                assistant["tool_calls"] = calls_made
            messages.append(assistant)
            messages.extend({"role": "tool", "tool_call_id": c["id"], "content": "done"} for c in calls_made)
            if not calls_made:
                messages.append({"role": "user", "content": "Go on."})
        return calls

    return loop, client


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the client, say ``ready``, wait for the go, run every loop; the figures."""
    make = anthropic_loop if args.brain == "anthropic" else openai_loop
    loop, client = make(args.base_url, args.transport)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    errors: list[str] = []

    async def guarded(index: int) -> int:
        try:
            return await loop(index, args.calls)
        except Exception as error:  # counted and reported: the parent judges the run
            errors.append(f"{type(error).__name__}: {error}"[:300])
            return 0

    cpu0, started = time.process_time(), time.perf_counter()
    done = await asyncio.gather(*(guarded(index) for index in range(args.loops)))
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    await client.close()
    return {
        "loops": args.loops,
        "calls": sum(done),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", required=True, help="the stand-in's http://HOST:PORT")
    parser.add_argument("--brain", choices=("anthropic", "openai"), default="anthropic")
    parser.add_argument("--transport", choices=("aiohttp", "default"), default="aiohttp")
    parser.add_argument("--loops", type=int, default=1000, help="concurrent loops (agents)")
    parser.add_argument("--calls", type=int, default=3, help="calls per loop")
    args = parser.parse_args()
    harness.enable_uvloop()
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
