"""Resolve-to-resume latency: from a ``ResolveEscalation`` call to the waiting agent's next
event reaching a watcher, with the resolve sent to a different server process than the one
running the agent.

    .venv/bin/python -m bench.escalations                        # 10 jobs x 25 escalations, SQLite
    .venv/bin/python -m bench.escalations --database postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python -m bench.escalations --jobs 4 --per-job 50 --json-out result.json

Two server processes share one SQL database and one Redis (an embedded engine started here
unless ``--redis-url``): A runs the executor, B does not. Each job's scripted agent asks a
question with ``ask_human``, then narrates, and again. For every escalation the bench waits
until A's event stream shows the agent waiting, sends ``ResolveEscalation`` to B, and times
until A's stream delivers the job's next event (``agent.escalation_resolved``, which the
agent appends when it takes the answer). Jobs run concurrently; each has one escalation
pending at a time. p50 / p95 / p99 (nearest rank) / max over all escalations are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from bench import harness
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import escalation_service_pb2 as esc
from cofounder.agent.v1 import escalation_service_pb2_grpc as esc_grpc
from cofounder.agent.v1 import job_pb2
from cofounder_server.live.engine import EmbeddedRedis


def script(questions: int) -> dict[str, Any]:
    """Ask, narrate, ask, ... with inputs that never repeat (repetition detection stays quiet)."""
    usage = {"input_tokens": 100, "output_tokens": 10}
    turns: list[dict[str, Any]] = []
    for n in range(questions + 1):
        ask = {
            "name": "ask_human",
            "input": {"question": f"Ship part {n}?", "options": [{"value": "yes"}, {"value": "no"}]},
        }
        narrate = {"name": "narrate", "input": {"text": f"shipping part {n}"}}
        turns += [
            {"text": f"asking about part {n}", "tool_calls": [ask], "usage": usage},
            {"text": f"part {n}", "tool_calls": [narrate], "usage": usage},
        ]
    return {"turns": turns}


async def one_job(
    runner: grpc.aio.Channel, resolver: grpc.aio.Channel, config: struct_pb2.Struct, count: int
) -> list[float]:
    jobs = pb_grpc.AgentControlServiceStub(runner)
    escalations = esc_grpc.EscalationServiceStub(resolver)
    request = pb.SubmitJobRequest(
        project_id="bench",
        goal="answer questions",
        daily_budget_microdollars=10**12,
        agent=job_pb2.AgentSpec(brain="scripted", config=config),
    )
    job_id = (await jobs.SubmitJob(request)).job.job_id
    watch = jobs.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job_id, after_sequence=0))
    latencies: list[float] = []
    sent: float | None = None
    resolving: asyncio.Task[Any] | None = None
    try:
        async for message in watch:
            if message.WhichOneof("kind") != "events":
                continue
            for event in message.events.events:
                if sent is not None:
                    latencies.append(time.perf_counter() - sent)
                    sent = None
                if event.type == "agent.waiting_for_input":
                    if len(latencies) >= count:
                        await jobs.CancelJob(pb.CancelJobRequest(job_id=job_id))
                        return latencies
                    sent = time.perf_counter()
                    resolving = asyncio.ensure_future(
                        escalations.ResolveEscalation(
                            esc.ResolveEscalationRequest(
                                escalation_id=event.agent_waiting_for_input.escalation_id, decision="yes"
                            )
                        )
                    )
            if resolving is not None and resolving.done():
                resolving.result()
    finally:
        watch.cancel()
    return latencies


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cofounder-bench-escalations-"))
    async with contextlib.AsyncExitStack() as stack:
        database_url = f"sqlite:///{root / 'shared.db'}"
        if args.database:
            database_url = await stack.enter_async_context(harness.throwaway_postgres(args.database))
        redis_url = args.redis_url
        if not redis_url:
            engine = EmbeddedRedis(root / "redis")
            redis_url = await engine.start()
            stack.push_async_callback(engine.stop)
        shared = ["--redis-url", redis_url, "--database-url", database_url]
        shared += ["--max-tool-calls", "100000000", "--rate-limit-per-second", "0"]
        per_job = str(args.per_job + 1)
        runner_server = harness.ServerProcess(
            root / "a", [*shared, "--max-running-jobs", str(args.jobs), "--max-escalations-per-job", per_job]
        )
        resolver_server = harness.ServerProcess(root / "b", [*shared, "--executor-enabled", "false"])
        await stack.enter_async_context(runner_server)
        await stack.enter_async_context(resolver_server)
        runner = await stack.enter_async_context(grpc.aio.insecure_channel(runner_server.address))
        resolver = await stack.enter_async_context(grpc.aio.insecure_channel(resolver_server.address))
        config = struct_pb2.Struct()
        config.update(script(args.per_job))
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one_job(runner, resolver, config, args.per_job) for _ in range(args.jobs))
        )
        elapsed = time.perf_counter() - started
    latencies = [seconds * 1000 for job in results for seconds in job]
    return {
        "database": "postgresql" if args.database else "sqlite",
        "jobs": args.jobs,
        "escalations": len(latencies),
        "seconds": round(elapsed, 1),
        "p50_ms": round(harness.percentile(latencies, 0.50), 1),
        "p95_ms": round(harness.percentile(latencies, 0.95), 1),
        "p99_ms": round(harness.percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10, help="concurrent jobs (default 10)")
    parser.add_argument("--per-job", type=int, default=25, help="escalations per job (default 25)")
    parser.add_argument(
        "--database", default="", help="PostgreSQL server URL (default: a shared SQLite file)"
    )
    parser.add_argument("--redis-url", default="", help="external Redis (default: an embedded engine)")
    parser.add_argument("--json-out", default="", help="also write the result here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    harness.write_result(result, args.json_out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
