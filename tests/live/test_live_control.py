"""The executor control channel: its message format, and a subscription that outlives its connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cofounder_server.live import keys
from cofounder_server.live.client import LiveClient, RoundTrip
from cofounder_server.live.control import CONTROL_CLIENT_NAME, ControlMessage, ControlVerb, decode

from .support import Engine


def test_messages_read_back_as_written() -> None:
    for verb in ControlVerb:
        message = ControlMessage(verb, "job-1")
        assert decode(message.encode()) == message
        assert decode(message.encode().encode()) == message
    # The format existing replicas publish and read.
    assert ControlMessage(ControlVerb.CANCEL, "j1").encode() == "cancel j1"
    assert ControlMessage(ControlVerb.RELEASED, "runner-1").encode() == "released runner-1"


@pytest.mark.parametrize("raw", [b"", b"stop j1", b"Cancel j1", b"\xff\xfe j1"])
def test_unknown_messages_are_ignored(raw: bytes) -> None:
    assert decode(raw) is None


async def _next(messages: AsyncIterator[ControlMessage], within: float) -> ControlMessage | None:
    try:
        return await asyncio.wait_for(anext(messages), within)
    except TimeoutError:
        return None


async def _control_connections(client: Redis) -> set[int]:
    return {int(entry["id"]) for entry in await client.client_list() if entry["name"] == CONTROL_CLIENT_NAME}


async def test_a_subscription_receives_requests_in_order_and_again_after_its_connection_dies(
    engine: Engine, client: Redis, job_id: str
) -> None:
    live = LiveClient(engine.url)
    before = await _control_connections(client)
    subscription = await live.subscribe_control()
    messages = aiter(subscription)
    try:
        trip = RoundTrip()
        trip.control(ControlMessage(ControlVerb.CANCEL, job_id))
        trip.control(ControlMessage(ControlVerb.ANSWER, job_id))
        await live.send(trip, "test")
        await live.publish_control(ControlMessage(ControlVerb.RELEASED, "runner-1"), "test")
        await client.publish(keys.EXECUTOR_CONTROL_CHANNEL, "unknown request")
        await live.publish_control(ControlMessage(ControlVerb.WAKE, job_id), "test")
        received = [await _next(messages, 5.0) for _ in range(4)]
        assert received == [
            ControlMessage(ControlVerb.CANCEL, job_id),
            ControlMessage(ControlVerb.ANSWER, job_id),
            ControlMessage(ControlVerb.RELEASED, "runner-1"),
            ControlMessage(ControlVerb.WAKE, job_id),
        ]

        (ours,) = await _control_connections(client) - before
        await client.client_kill_filter(_id=ours)
        # Requests published before the new connection subscribes are lost (the sweep covers
        # them); one published after it arrives.
        deadline = time.monotonic() + 10
        arrived = None
        while arrived is None and time.monotonic() < deadline:
            await live.publish_control(ControlMessage(ControlVerb.WAKE, job_id), "test")
            arrived = await _next(messages, 0.1)
        assert arrived == ControlMessage(ControlVerb.WAKE, job_id)
        assert ours not in await _control_connections(client)
    finally:
        await subscription.aclose()
        await live.aclose()
