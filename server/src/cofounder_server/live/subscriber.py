"""One dedicated Redis pub/sub connection that keeps its channels subscribed across reconnects.

A :class:`Subscriber` holds a set of channels and one connection: every channel is
subscribed once on it, however many parts of the process listen. When the connection fails
or stays silent (a PING gets no reply), it is replaced with backoff and every channel is
subscribed again; the owner is told when the connection is lost and when it is back, since
messages published meanwhile are gone (pub/sub keeps nothing), and decides what to read
again from the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cofounder_server.live.connect import connection_pool

log = logging.getLogger(__name__)


def _ignore(*_: object) -> None:
    return None


class Subscriber:
    """A pub/sub connection that subscribes ``channels`` again after every reconnect.

    The callbacks run on the event loop, in the connection's reader: ``on_message(channel,
    data)`` for each message, ``on_subscribed(channel)`` when Redis confirms a subscription,
    and ``on_connection(True)`` once a (re)connected connection has sent its subscriptions,
    ``on_connection(False)`` when it is gone.
    """

    def __init__(
        self,
        url: str,
        *,
        client_name: str,
        on_message: Callable[[str, bytes], None],
        on_subscribed: Callable[[str], None] = _ignore,
        on_connection: Callable[[bool], None] = _ignore,
        connect_timeout: float = 5.0,
        health_check_interval: float = 1.0,
    ) -> None:
        """Configure (not connect). ``health_check_interval``: after this long without a
        reply the connection is PINGed, and replaced after three intervals of silence."""
        self._url = url
        self._client_name = client_name
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_connection = on_connection
        self._connect_timeout = connect_timeout
        self._health_check_interval = health_check_interval
        self._channels: set[str] = set()
        self._connection: AbstractConnection | None = None
        self._last_received = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether the connection is up (its subscriptions sent)."""
        return self._connection is not None

    async def start(self) -> None:
        """Start the connection (retried in the background); wait up to the connect timeout
        for the first one."""
        connected = asyncio.Event()
        self._task = asyncio.create_task(self._maintain(connected), name=f"pubsub {self._client_name}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._connect_timeout):
                await connected.wait()

    async def stop(self) -> None:
        """Close the connection; idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def subscribe(self, channel: str) -> None:
        """Subscribe ``channel`` now, and again after every reconnect."""
        self._channels.add(channel)
        await self._send("SUBSCRIBE", channel)

    async def unsubscribe(self, channel: str) -> None:
        """Stop listening on ``channel``."""
        self._channels.discard(channel)
        await self._send("UNSUBSCRIBE", channel)

    async def _send(self, *command: str) -> None:
        # Without a connection, the reconnect subscribes every channel.
        connection = self._connection
        # Checked right before sending: send_command would otherwise open a new connection
        # behind the reader's back.
        if connection is None or not connection.is_connected:
            return
        try:
            await connection.send_command(*command, check_health=False)
        except (RedisError, OSError) as error:
            # The reader sees the broken connection too, reconnects and resubscribes.
            log.warning("%s: %s failed: %s", self._client_name, command[0], error)

    async def _maintain(self, connected: asyncio.Event) -> None:
        options: dict[str, Any] = {
            "protocol": 2,  # pub/sub messages as plain replies
            "socket_timeout": None,  # an idle subscription is normal; health checks find dead ones
            "socket_connect_timeout": self._connect_timeout,
            "client_name": self._client_name,
            "retry": Retry(NoBackoff(), 0),  # reconnecting (and resubscribing) is ours to do
        }
        factory = connection_pool(self._url, options)
        try:
            delay = 0.1
            while True:
                connection: AbstractConnection | None = None
                health: asyncio.Task[None] | None = None
                try:
                    connection = factory.make_connection()  # type: ignore[no-untyped-call]  # unannotated upstream
                    async with asyncio.timeout(self._connect_timeout):
                        await connection.connect()
                    self._connection = connection
                    self._last_received = asyncio.get_running_loop().time()
                    if self._channels:
                        await connection.send_command("SUBSCRIBE", *self._channels, check_health=False)
                    self._on_connection(True)
                    connected.set()
                    delay = 0.1
                    health = asyncio.create_task(self._check_health(connection))
                    await self._receive(connection)
                except (RedisError, OSError, TimeoutError) as error:
                    log.warning(
                        "%s: Redis pub/sub unavailable, retrying: %s: %s",
                        self._client_name,
                        type(error).__name__,
                        error,
                    )
                except Exception:
                    log.exception("%s: unexpected error on the pub/sub connection", self._client_name)
                finally:
                    self._connection = None
                    self._on_connection(False)
                    if health is not None:
                        health.cancel()
                    if connection is not None:
                        with contextlib.suppress(RedisError, OSError):
                            await connection.disconnect()
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)
        finally:
            # With a Sentinel URL the factory holds connections to the sentinels.
            with contextlib.suppress(RedisError, OSError):
                await factory.aclose()

    async def _receive(self, connection: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # No read timeout: cancelling a read half-way would desynchronise the parser.
            # _check_health closes a silent connection instead, which ends this read.
            reply = await connection.read_response(timeout=float("inf"))
            self._last_received = loop.time()
            if not isinstance(reply, list) or len(reply) != 3:
                continue
            kind, channel, data = reply
            if kind == b"message":
                self._on_message(channel.decode(), data)
            elif kind == b"subscribe":
                self._on_subscribed(channel.decode())

    async def _check_health(self, connection: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        interval = self._health_check_interval
        while True:
            await asyncio.sleep(interval)
            silent = loop.time() - self._last_received
            if silent > 3 * interval:
                log.warning("%s: no reply from Redis for %.1f s; reconnecting", self._client_name, silent)
                await connection.disconnect(nowait=True)
                return
            if silent > interval:
                with contextlib.suppress(RedisError, OSError):
                    await connection.send_command("PING", check_health=False)
