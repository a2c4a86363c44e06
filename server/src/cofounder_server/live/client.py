"""The way the services and the executor reach Redis: a few named round trips.

:class:`LiveClient` owns the connection pool. Each of its methods is one round trip, and
each reports Redis trouble one way, as :class:`~cofounder_server.domain.errors.Unavailable`,
so no caller outside this package handles a Redis error or knows a Redis command. What a
committed change sends (its key writes, its announcements, its control requests) is
collected in a :class:`RoundTrip` and sent at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cofounder_server.domain.errors import Unavailable
from cofounder_server.live import keys
from cofounder_server.live.connect import create_client, unavailable_on_error
from cofounder_server.live.control import ControlMessage, ControlSubscription
from cofounder_server.live.versioned import LiveWrites


class RoundTrip:
    """What one committed batch sends to Redis at once, in this order: the key writes, then
    each announcement, then each control request. Keys are written before the announcement,
    so a watcher that has an event never reads an older summary."""

    def __init__(self) -> None:
        self.writes = LiveWrites()
        """The versioned key writes (one script)."""
        self._messages: list[tuple[str, bytes | str]] = []

    def __bool__(self) -> bool:
        return bool(self.writes) or bool(self._messages)

    def announce(self, channel: str, message: bytes) -> None:
        """PUBLISH ``message`` on ``channel`` after the writes."""
        self._messages.append((channel, message))

    def control(self, message: ControlMessage) -> None:
        """Publish a control request on the executor control channel."""
        self._messages.append((keys.EXECUTOR_CONTROL_CHANNEL, message.encode()))

    def queue(self, pipe: Pipeline) -> None:
        """Queue everything on ``pipe``."""
        self.writes.queue(pipe)
        for channel, message in self._messages:
            pipe.publish(channel, message)


class LiveClient:
    """The services' and the executor's Redis: a pool of connections to ``url``."""

    def __init__(self, url: str) -> None:
        """A client of the Redis at ``url`` (not connected yet); ``ValueError`` for a URL
        that is not one."""
        self.url = url
        self._redis = create_client(url)

    async def aclose(self) -> None:
        """Close every connection."""
        await self._redis.aclose()

    async def ping(self) -> None:
        """Check that Redis answers (start-up, health probes); raises ``Unavailable``."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as error:
            raise Unavailable(f"Redis is unavailable (ping): {error}") from error

    async def send(self, trip: RoundTrip, operation: str) -> None:
        """Send ``trip`` in one round trip (nothing when it is empty). ``operation`` names it
        in the metrics and in the error."""
        if not trip:
            return
        with _refused_as_unavailable(operation):
            async with self._redis.pipeline(transaction=False) as pipe:
                trip.queue(pipe)
                await pipe.execute()

    async def publish_control(self, message: ControlMessage, operation: str) -> None:
        """Publish one control request on its own."""
        trip = RoundTrip()
        trip.control(message)
        await self.send(trip, operation)

    async def subscribe_control(self) -> ControlSubscription:
        """This process's subscription to the executor control channel."""
        return await ControlSubscription.open(self.url)

    async def missing_agent_states(self, job_ids: Sequence[str]) -> set[str]:
        """The jobs among ``job_ids`` whose ``state`` key is absent (one MGET)."""
        with _refused_as_unavailable("read agent states"):
            present = await self._redis.mget([keys.state_key(job_id) for job_id in job_ids])
        return {job_id for job_id, value in zip(job_ids, present, strict=True) if value is None}

    async def pending_wake_signals(self, job_ids: Sequence[str]) -> list[str]:
        """The jobs among ``job_ids`` with a ``wake_signal`` key present (one MGET; the
        signals are not taken)."""
        with _refused_as_unavailable("read wake signals"):
            values = await self._redis.mget([keys.wake_signal_key(job_id) for job_id in job_ids])
        return [job_id for job_id, value in zip(job_ids, values, strict=True) if value is not None]

    async def take_wake_signal(self, job_id: str) -> bool:
        """Consume a pending ``wake_signal`` atomically; True if there was one."""
        with _refused_as_unavailable("take wake signal"):
            taken = await self._redis.getdel(keys.wake_signal_key(job_id))
        return taken is not None


@contextmanager
def _refused_as_unavailable(operation: str) -> Iterator[None]:
    """:func:`unavailable_on_error`, and a command Redis refuses (an error reply: a full or
    read-only Redis, a script error) reported the same way: to the caller, both mean the
    live layer did not take it."""
    with unavailable_on_error(operation):
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError):
            raise
        except (RedisError, OSError) as error:
            raise Unavailable(f"Redis refused {operation}: {error}") from error
