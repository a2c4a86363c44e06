"""Calls a server receives while it stops. gRPC's core cancels the calls that reached the
server but that it had not yet started, and those arriving on an open connection before the
client read the GOAWAY: the client sees ``CANCELLED`` for calls the server never ran. The
Python client retries them, so none fails with a status its retry policy does not retry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from cofounder_client import Client, CofounderError, NotFoundError
from cofounder_server.app import Application
from tests.support import RPC_TIMEOUT, eventually

CALLERS = 50


async def test_calls_a_stopping_server_never_started_fail_only_with_retried_statuses(
    settings_for: Callable[..., Any],
) -> None:
    app = await Application.start(settings_for(shutdown_grace_seconds=5.0))
    client = Client(f"127.0.0.1:{app.port}", retries=4, timeout=RPC_TIMEOUT)
    answered = 0
    failures: list[CofounderError] = []
    stopped = asyncio.Event()

    async def caller() -> None:
        nonlocal answered
        while not stopped.is_set():
            try:
                await client.get_job(str(uuid.uuid4()))
            except NotFoundError:
                answered += 1
            except CofounderError as error:
                failures.append(error)
                await asyncio.sleep(0.01)

    callers = [asyncio.create_task(caller()) for _ in range(CALLERS)]
    try:
        # Calls keep arriving on the open connection while the server stops.
        await eventually(lambda: asyncio.sleep(0, answered), lambda n: n >= 3 * CALLERS, within=60)
        await app.stop(pause_seconds=0.0)
    finally:
        stopped.set()
        await asyncio.wait_for(asyncio.gather(*callers), 3 * RPC_TIMEOUT)
        await client.close()
        await app.stop(grace_seconds=0.0)
    # Once the only server is gone the client runs out of retries with UNAVAILABLE; a
    # CANCELLED would be a call the server dropped and the client gave up on.
    assert {failure.code for failure in failures} <= {grpc.StatusCode.UNAVAILABLE}, failures[:3]
