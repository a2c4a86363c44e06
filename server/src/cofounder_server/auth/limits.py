"""Abuse limits per key (a principal, or a service across its users): a token-bucket request
rate and a cap on open streams."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

Monotonic = Callable[[], float]
"""Seconds on a clock that never goes backwards (``time.monotonic`` outside tests)."""

DEFAULT_MAX_KEYS = 100_000
"""Buckets a :class:`RateLimiter` keeps at most (about 200 bytes each)."""


class RateLimiter:
    """A token bucket per key: ``burst`` calls at once, refilled at ``rate_per_second``.

    At most ``max_keys`` buckets are kept, however many keys callers invent (a service may
    name any user id). A bucket that has refilled completely is indistinguishable from a new
    one, so it is dropped when room is needed. One that has not is never dropped: that would
    hand its key a fresh burst, so flooding the table with invented keys could reset a spent
    bucket. Instead, while the table is full of buckets charged within the last
    ``burst / rate_per_second`` seconds, a key without a bucket waits until the least
    recently charged bucket has refilled.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        monotonic: Monotonic = time.monotonic,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("rate_per_second must be positive and burst at least 1")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate_per_second = rate_per_second
        self.burst = burst
        self.max_keys = max_keys
        self._monotonic = monotonic
        # key -> (tokens, as of), least recently charged first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many buckets are kept."""
        return len(self._buckets)

    def tracks(self, key: str) -> bool:
        """Whether ``key`` has a bucket (one that is not known to be full)."""
        return key in self._buckets

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may make a call (0.0: now), without charging for one."""
        now = self._monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            return self._room(now)
        tokens = self._tokens(bucket, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_second

    def charge(self, key: str) -> None:
        """Take one token from ``key``'s bucket; call it only after :meth:`wait` said 0.0."""
        now = self._monotonic()
        bucket = self._buckets.get(key)
        tokens = float(self.burst) if bucket is None else self._tokens(bucket, now)
        self._buckets[key] = (tokens - 1.0, now)
        self._buckets.move_to_end(key)
        # Each bucket is dropped at most once: amortised O(1), and memory follows the keys
        # active within the last burst / rate seconds rather than every key ever seen.
        self._drop_refilled(now)

    def acquire(self, key: str) -> float:
        """Take one token for ``key``: 0.0 when admitted, else seconds until one is available."""
        wait = self.wait(key)
        if wait == 0.0:
            self.charge(key)
        return wait

    def _tokens(self, bucket: tuple[float, float], now: float) -> float:
        tokens, since = bucket
        return min(float(self.burst), tokens + (now - since) * self.rate_per_second)

    def _room(self, now: float) -> float:
        """0.0 when a new bucket fits, else seconds until the least recently charged bucket
        has refilled (and may be dropped)."""
        if len(self._buckets) < self.max_keys:
            return 0.0
        self._drop_refilled(now)
        if len(self._buckets) < self.max_keys:
            return 0.0
        oldest = next(iter(self._buckets.values()))
        return (self.burst - self._tokens(oldest, now)) / self.rate_per_second

    def _drop_refilled(self, now: float) -> None:
        """Drop refilled buckets from the least recently charged end."""
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if self._tokens(bucket, now) < self.burst:
                return
            del self._buckets[key]


class StreamSlot:
    """One open stream counted against its key; :meth:`release` is safe to call repeatedly."""

    def __init__(self, limiter: StreamLimiter, key: str) -> None:
        self._limiter = limiter
        self._key: str | None = key

    def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        if self._key is not None:
            key, self._key = self._key, None
            self._limiter._release(key)


class StreamLimiter:
    """At most ``max_per_key`` open streams per key.

    A key is kept only while it has a stream open, so memory follows the open streams, which
    the per-service cap bounds even when a service names a new user for each.
    """

    def __init__(self, max_per_key: int) -> None:
        if max_per_key < 1:
            raise ValueError("max_per_key must be at least 1")
        self.max_per_key = max_per_key
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> StreamSlot | None:
        """A slot for one more stream of ``key``, or ``None`` when it has ``max_per_key`` open."""
        count = self._open.get(key, 0)
        if count >= self.max_per_key:
            return None
        self._open[key] = count + 1
        return StreamSlot(self, key)

    def open_streams(self, key: str) -> int:
        """How many streams ``key`` has open."""
        return self._open.get(key, 0)

    def _release(self, key: str) -> None:
        count = self._open[key] - 1
        if count:
            self._open[key] = count
        else:
            del self._open[key]
