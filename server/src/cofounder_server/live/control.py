"""The executor control channel: requests to whichever replica runs a job.

One pub/sub channel, ``cofounder:executor:control``, carries one request per message as
``{verb} {subject}``: ``cancel``, ``wake`` and ``answer`` name a job whose change was just
committed, ``released`` names a runner that handed its jobs over at a graceful stop. The
change pipeline publishes them after the commit; every executor subscribes once and acts
on those about jobs it holds. Pub/sub keeps nothing for a replica that is not listening, so
a lost request only delays the action until the executor's next sweep.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

from cofounder_server.live.keys import EXECUTOR_CONTROL_CHANNEL
from cofounder_server.live.subscriber import Subscriber

CONTROL_CLIENT_NAME = "cofounder-executor-control"
"""Redis ``CLIENT SETNAME`` of an executor's control subscription."""


class ControlVerb(StrEnum):
    """What a control request asks of the executor that holds its subject."""

    CANCEL = "cancel"
    """Stop the job's agent (the cancel is committed)."""
    WAKE = "wake"
    """Resume the job's parked agent (the wake is committed)."""
    ANSWER = "answer"
    """Hand the job's waiting agent the decision just committed."""
    RELEASED = "released"
    """The runner named handed its jobs over: claim them now."""


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """One control request: a verb and the job (or, for ``released``, the runner) it is about."""

    verb: ControlVerb
    subject: str

    def encode(self) -> str:
        """The message as published: ``{verb} {subject}``."""
        return f"{self.verb.value} {self.subject}"


def decode(data: bytes | str) -> ControlMessage | None:
    """The request in a published message; None for anything this version does not know."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    verb, _, subject = text.partition(" ")
    try:
        return ControlMessage(ControlVerb(verb), subject)
    except ValueError:
        return None


class ControlSubscription:
    """The control requests this process receives, in order, on a dedicated connection that
    subscribes again after every reconnect. Iterate it; :meth:`aclose` ends it."""

    def __init__(self, url: str) -> None:
        self._queue: asyncio.Queue[ControlMessage] = asyncio.Queue()
        self._subscriber = Subscriber(url, client_name=CONTROL_CLIENT_NAME, on_message=self._received)

    @classmethod
    async def open(cls, url: str) -> ControlSubscription:
        """Subscribe to the control channel of the Redis at ``url`` (retried in the background
        while Redis cannot be reached)."""
        subscription = cls(url)
        await subscription._subscriber.subscribe(EXECUTOR_CONTROL_CHANNEL)
        await subscription._subscriber.start()
        return subscription

    def __aiter__(self) -> ControlSubscription:
        return self

    async def __anext__(self) -> ControlMessage:
        return await self._queue.get()

    async def aclose(self) -> None:
        """Unsubscribe and close the connection."""
        await self._subscriber.stop()

    def _received(self, channel: str, data: bytes) -> None:
        message = decode(data)
        if message is not None:
            self._queue.put_nowait(message)
