"""The watchers of ``bench.fleet``, in a process of their own (run by it, pinned to the load core).

    python -m bench.fleet_loadgen CONFIG.json

The config names the server, the mode (``fleet``: one WatchJobs per project; ``jobs``: one
WatchJobEvents per job) and what to watch. Opens every stream (100 per HTTP/2 connection),
prints ``{"ready": N}`` once each has its first message, then records when each change
arrives: ``(job_id, event sequence, time.time())`` (a fleet change's status names the job's
newest event). On ``report`` (a stdin line) it writes the receipts to the config's
``receipts`` path and prints ``{"errors": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from bench.harness import enable_uvloop
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc

STREAMS_PER_CONNECTION = 100


async def watch_fleet(
    stub: pb_grpc.AgentControlServiceStub, project_id: str, ready: asyncio.Queue[None], receipts: list[Any]
) -> None:
    async for message in stub.WatchJobs(pb.WatchJobsRequest(project_id=project_id)):
        kind = message.WhichOneof("kind")
        if kind == "snapshot" and message.snapshot.last:
            ready.put_nowait(None)
        elif kind == "changes":
            now = time.time()
            receipts.extend(
                (change.status.job_id, change.status.latest_event_sequence, now)
                for change in message.changes.changes
            )


async def watch_job(
    stub: pb_grpc.AgentControlServiceStub, job_id: str, ready: asyncio.Queue[None], receipts: list[Any]
) -> None:
    async for message in stub.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job_id)):
        kind = message.WhichOneof("kind")
        if kind == "snapshot":
            ready.put_nowait(None)
        elif kind == "events":
            now = time.time()
            receipts.extend((event.job_id, event.sequence, now) for event in message.events.events)


async def main(config: dict[str, Any]) -> None:
    targets: list[str] = config["watch"]
    watch = watch_fleet if config["mode"] == "fleet" else watch_job
    channels = [
        grpc.aio.insecure_channel(config["target"], options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(0, len(targets), STREAMS_PER_CONNECTION)
    ]
    ready: asyncio.Queue[None] = asyncio.Queue()
    receipts: list[Any] = []
    errors: list[str] = []

    async def run(index: int, target: str) -> None:
        stub = pb_grpc.AgentControlServiceStub(channels[index // STREAMS_PER_CONNECTION])
        try:
            await watch(stub, target, ready, receipts)
        except grpc.aio.AioRpcError as error:
            errors.append(f"{error.code().name}: {error.details()}")

    tasks = [asyncio.create_task(run(index, target)) for index, target in enumerate(targets)]
    for _ in targets:
        await ready.get()
    print(json.dumps({"ready": len(targets)}), flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while (line := await reader.readline()) and line.strip() != b"report":
        pass
    await asyncio.to_thread(Path(config["receipts"]).write_text, json.dumps(receipts))
    print(json.dumps({"errors": errors[:10], "error_count": len(errors)}), flush=True)
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close()


if __name__ == "__main__":
    enable_uvloop()
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
