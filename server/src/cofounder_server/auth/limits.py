"""Per-principal abuse limits: a token-bucket request rate and a cap on open streams."""

from __future__ import annotations

import time
from collections.abc import Callable

Monotonic = Callable[[], float]
"""Seconds on a clock that never goes backwards (``time.monotonic`` outside tests)."""

_PRUNE_FLOOR = 1024


class RateLimiter:
    """A token bucket per key: ``burst`` calls at once, refilled at ``rate_per_second``.

    Buckets that have refilled completely are indistinguishable from new ones, so they are
    dropped whenever the table grows; memory follows the keys active within the last
    ``burst / rate_per_second`` seconds, not every key ever seen.
    """

    def __init__(self, rate_per_second: float, burst: int, monotonic: Monotonic = time.monotonic) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("rate_per_second must be positive and burst at least 1")
        self.rate_per_second = rate_per_second
        self.burst = burst
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of)
        self._prune_at = _PRUNE_FLOOR

    def acquire(self, key: str) -> float:
        """Take one token for ``key``: 0.0 when admitted, else seconds until one is available."""
        now = self._monotonic()
        tokens, since = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - since) * self.rate_per_second)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_second
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) >= self._prune_at:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        full = [
            key
            for key, (tokens, since) in self._buckets.items()
            if tokens + (now - since) * self.rate_per_second >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        self._prune_at = max(_PRUNE_FLOOR, 2 * len(self._buckets))


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
    """At most ``max_per_key`` open streams per key."""

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
