"""SyncClient against the real control plane: its calls, and a follow across a server restart.

The server runs on the test's event loop; every blocking client call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from cofounder.agent.v1 import event_pb2, job_pb2
from cofounder_client import InvalidArgumentError, NotFoundError, SyncClient
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from cofounder_server.config import Settings
from tests.support import eventually, free_port

RPC_TIMEOUT = 10.0
# Clients of one address share gRPC's connection (subchannel), and with it the backoff before
# it reconnects after the server went away: keep it short so the restarted server is reached
# at once.
QUICK_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)
ONE_TURN = {"brain": "scripted", "config": {"turns": [{"text": "done"}]}}


async def test_sync_calls_return_the_messages_and_raise_the_errors_of_the_async_client(
    app: Application, project_id: str
) -> None:
    def calls() -> dict[str, Any]:
        with SyncClient(f"127.0.0.1:{app.port}", timeout=RPC_TIMEOUT) as client:
            job = client.submit_job(
                project_id=project_id,
                goal="From a script",
                daily_budget_microdollars=2_000_000,
                agent=ONE_TURN,
                request_id="sync-1",
            )
            again = client.submit_job(
                project_id=project_id,
                goal="From a script",
                daily_budget_microdollars=2_000_000,
                agent=ONE_TURN,
                request_id="sync-1",
            )
            second = client.submit_job(
                project_id=project_id, goal="Another", daily_budget_microdollars=1_000_000, agent=ONE_TURN
            )
            with contextlib.closing(client.watch_job_events(job.job_id, after_sequence=0)) as stream:
                first_message = next(stream)
            with pytest.raises(InvalidArgumentError) as invalid:
                client.submit_job(project_id=project_id, goal="", daily_budget_microdollars=-1)
            with pytest.raises(NotFoundError) as missing:
                client.get_escalation("00000000-0000-4000-8000-00000000abcd")
            return {
                "job": job,
                "again": again,
                "read": client.get_job(job.job_id),
                "status": client.get_job_status(job.job_id),
                "listed": [j.job_id for j in client.iter_jobs(project_id=project_id, page_size=1)],
                "cancelled": client.cancel_job(second.job_id, reason="not needed"),
                "second": second,
                "first_message": first_message,
                "violations": {field for field, _ in invalid.value.field_violations},
                "reason": missing.value.reason,
            }

    got = await asyncio.wait_for(asyncio.to_thread(calls), RPC_TIMEOUT * 3)
    assert got["again"].job_id == got["job"].job_id, "same request_id, same job"
    assert got["read"].goal == "From a script"
    assert got["status"].job_status == job_pb2.JOB_STATUS_QUEUED
    assert sorted(got["listed"]) == sorted([got["second"].job_id, got["job"].job_id]), "every page"
    assert got["cancelled"].status == job_pb2.JOB_STATUS_CANCELLED
    assert got["first_message"].snapshot.job_id == got["job"].job_id
    assert {"goal", "daily_budget_microdollars", "agent"} <= got["violations"]
    assert got["reason"] == "ESCALATION_NOT_FOUND"


class CountWatches(grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Counts the WatchJobEvents calls a follower opens (each reconnect is one more)."""

    def __init__(self) -> None:
        self.opened = 0

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        if details.method.endswith("/WatchJobEvents"):
            self.opened += 1
        return continuation(details, request)


async def test_a_sync_follow_resumes_across_a_server_restart_without_loss_or_duplicates(
    settings_for: Callable[..., Settings], database_url: str, project_id: str
) -> None:
    settings = settings_for(database_url, listen=f"127.0.0.1:{free_port()}", executor_enabled=True)
    clock = ManualClock(datetime(2026, 11, 26, 9, 30, tzinfo=UTC))
    target = settings.listen
    # The first turn spends 90 % of the budget: the agent sleeps until it is woken.
    agent = {
        "brain": "scripted",
        "model": "claude-sonnet-4",
        "config": {
            "turns": [
                {
                    "text": "Planning",
                    "tool_calls": [{"name": "narrate", "input": {"text": "Drafting"}}],
                    "usage": {"input_tokens": 1_000_000, "output_tokens": 100_000},
                },
                {"text": "Done."},
            ]
        },
    }
    watches = CountWatches()
    events: list[event_pb2.JobEvent] = []
    lock = threading.Lock()

    def follow(job_id: str) -> None:
        with SyncClient(
            target, timeout=RPC_TIMEOUT, interceptors=[watches], channel_options=QUICK_RECONNECT
        ) as client:
            for event in client.follow_job_events(
                job_id, after_sequence=0, max_reconnects=100, initial_backoff=0.05, max_backoff=0.2
            ):
                with lock:
                    events.append(event)

    def submit() -> str:
        with SyncClient(target, timeout=RPC_TIMEOUT) as client:
            job = client.submit_job(
                project_id=project_id,
                goal="Survive a restart",
                daily_budget_microdollars=5_000_000,
                agent=agent,
            )
            return job.job_id

    def wake(job_id: str) -> None:
        with SyncClient(target, timeout=RPC_TIMEOUT, channel_options=QUICK_RECONNECT) as client:
            client.wake_agent(job_id, top_up_microdollars=2_000_000, request_id="wake-after-restart")

    async def seen() -> list[str]:
        with lock:
            return [event.type for event in events]

    first = await Application.start(settings, clock=clock)
    second: Application | None = None
    try:
        job_id = await asyncio.to_thread(submit)
        follower = asyncio.ensure_future(asyncio.to_thread(follow, job_id))
        await eventually(seen, lambda types: "agent.sleeping" in types, within=30)
        await first.stop(grace_seconds=1.0)
        second = await Application.start(settings, clock=clock)
        await asyncio.to_thread(wake, job_id)
        await asyncio.wait_for(follower, 60)
    finally:
        await (second or first).stop(grace_seconds=1.0)

    sequences = [event.sequence for event in events]
    assert sequences == list(range(1, len(sequences) + 1)), "every event once, in order"
    assert events[-1].type == "job.status_changed"
    assert events[-1].job_status_changed.status == job_pb2.JOB_STATUS_READY
    assert "agent.waking" in [event.type for event in events]
    assert watches.opened >= 2, "the follower reconnected to the restarted server"
