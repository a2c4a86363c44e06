"""Fixtures of the client tests: a real ``grpc.aio`` server with fake services, and clients of it.

The tests need no database, Redis or real control-plane server: they check what the client
puts on the wire and how it reads what comes back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from client_fakes import RPC_TIMEOUT, Harness, start_harness

from cofounder_client import Client


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """A plaintext server on 127.0.0.1 with fresh fake services."""
    running = await start_harness()
    yield running
    await running.server.stop(None)


@pytest.fixture
async def make_client(harness: Harness) -> AsyncIterator[Callable[..., Client]]:
    """Build clients of ``harness`` (default deadline ``RPC_TIMEOUT``); all are closed afterwards."""
    clients: list[Client] = []

    def make(**options: Any) -> Client:
        options.setdefault("timeout", RPC_TIMEOUT)
        client = Client(harness.target, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    """A client of ``harness`` with a token, acting for ``user-1``."""
    return make_client(token="secret-token", on_behalf_of="user-1")
