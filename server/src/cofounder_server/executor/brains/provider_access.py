"""Shared access to model providers: one SDK client and one gate per (provider, base URL, key).

Every brain of every job that talks to the same provider account shares both:

- the SDK client, i.e. one connection pool, on the SDK's aiohttp transport (its connection
  cap, aiohttp's ``TCPConnector(limit=...)``, is ``max_connections``; 0 means none);
- a :class:`ProviderGate`. When the provider refuses a call for load (429, 529, 503) it
  says how long to wait (``retry-after`` in seconds or as an HTTP date, or
  ``retry-after-ms``); from then on no call through that key is sent before the time is
  up: calls wait at the gate, so a thousand agents back off once, together, instead of
  each hammering a provider that asked them to slow down. Without such a header the gate
  closes for a default backoff. The gate also holds optional per-model concurrency limits:
  calls beyond a model's limit wait in FIFO order.

Time comes from injected ``monotonic`` and ``sleep`` functions (``wall`` for HTTP dates),
so tests move it by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

if TYPE_CHECKING:
    import httpx2

_log = logging.getLogger(__name__)

Monotonic = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

PAUSE_STATUSES = frozenset({429, 503, 529})
"""Answers that mean "not now": rate limited (429), unavailable (503), overloaded (529)."""

MAX_RETRY_AFTER_SECONDS = 600.0
"""A longer ``retry-after`` (e.g. a date far ahead on a skewed clock) is held to this."""

DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_BACKOFF_SECONDS = 2.0

# Normalised error names by HTTP status, shared by the adapters' error signatures.
STATUS_NAMES = {
    400: "invalid_request",
    401: "authentication",
    402: "billing",
    403: "permission",
    404: "not_found",
    408: "timeout",
    413: "request_too_large",
    429: "rate_limit",
    500: "api_error",
    503: "unavailable",
    504: "timeout",
    529: "overloaded",
}


def status_verdict(status: int) -> tuple[str, bool]:
    """The normalised name of an error status and whether retrying may help (timeouts,
    rate limits and server errors may pass; bad requests, credentials, permissions and
    unknown models will not)."""
    name = STATUS_NAMES.get(status) or ("server_error" if status >= 500 else f"http_{status}")
    return name, status in (408, 429) or status >= 500


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """The seconds a response asks the client to wait, or ``None`` if it says nothing usable.

    ``retry-after-ms`` wins (it is the more precise); ``retry-after`` is seconds or an HTTP
    date, taken relative to ``now`` (seconds since the epoch). The result is at least 0 and
    at most :data:`MAX_RETRY_AFTER_SECONDS`.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        with contextlib.suppress(ValueError):
            return _bounded(float(raw_ms) / 1000)
    raw = headers.get("retry-after")
    if not raw:
        return None
    with contextlib.suppress(ValueError):
        return _bounded(float(raw))
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, says RFC 5322
        when = when.replace(tzinfo=UTC)
    return _bounded(when.timestamp() - now)


def _bounded(seconds: float) -> float | None:
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def parse_model_concurrency(text: str) -> dict[str, int]:
    """``claude-sonnet-4-5=200,gpt-4.1=100`` as ``{model: limit}``; raises :class:`ValueError`
    with a one-line reason for anything else. Empty means no limits."""
    limits: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        model, sep, raw = item.rpartition("=")
        model = model.strip()
        if not sep or not model:
            raise ValueError(f"expected MODEL=LIMIT, got {item!r}")
        try:
            limit = int(raw.strip())
        except ValueError:
            raise ValueError(f"the limit of {model} must be a whole number, got {raw.strip()!r}") from None
        if limit < 1:
            raise ValueError(f"the limit of {model} must be at least 1, got {limit}")
        if model in limits:
            raise ValueError(f"{model} is given twice")
        limits[model] = limit
    return limits


class _ModelSlots:
    """Calls of one model in flight, at most ``limit``; the rest wait in FIFO order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        # Waiters exist only while every slot is taken, so this keeps arrival order.
        if self.active < self.limit and not self.waiters:
            self.active += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            else:  # handed a slot just as it was cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        """Hand the slot to the first waiter, or free it."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1


class ProviderGate:
    """The shared backoff and per-model limits of one provider account; see the module doc."""

    def __init__(
        self,
        name: str,
        *,
        model_limits: Mapping[str, int],
        default_backoff: float,
        monotonic: Monotonic,
        sleep: Sleep,
        wall: Callable[[], float],
    ) -> None:
        self._name = name
        self._slots = {model: _ModelSlots(limit) for model, limit in model_limits.items()}
        self._default_backoff = default_backoff
        self._monotonic = monotonic
        self._sleep = sleep
        self._wall = wall
        self._open_at = -math.inf
        self._paused = 0

    @property
    def open_at(self) -> float:
        """When (by ``monotonic``) calls may be sent again; in the past while open."""
        return self._open_at

    @property
    def paused(self) -> int:
        """Calls waiting for a backoff to end."""
        return self._paused

    def queued(self, model: str) -> int:
        """Calls of ``model`` waiting for a slot under its concurrency limit."""
        slots = self._slots.get(model)
        return len(slots.waiters) if slots is not None else 0

    def in_flight(self, model: str) -> int:
        """Calls of ``model`` holding a slot (0 for a model without a limit)."""
        slots = self._slots.get(model)
        return slots.active if slots is not None else 0

    @contextlib.asynccontextmanager
    async def call(self, model: str) -> AsyncIterator[None]:
        """Hold a slot of ``model`` and wait out any backoff; send the call inside.

        Waiting here is not a failure and has no deadline: the call's own timeout starts
        when it is sent.
        """
        slots = self._slots.get(model)
        if slots is not None:
            await slots.acquire()
        try:
            # Last, so a backoff that began while the call queued for its slot still holds.
            while (delay := self._open_at - self._monotonic()) > 0:
                self._paused += 1
                try:
                    await self._sleep(delay)
                finally:
                    self._paused -= 1
            yield
        finally:
            if slots is not None:
                slots.release()

    def refused(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Note an answer of ``status``. For a pause status (see :data:`PAUSE_STATUSES`),
        close the gate for the seconds the response asks (or the default backoff) and
        return them; ``None`` for any other status."""
        if status not in PAUSE_STATUSES:
            return None
        seconds = parse_retry_after(headers, now=self._wall())
        if seconds is None:
            seconds = self._default_backoff
        now = self._monotonic()
        if now >= self._open_at:
            _log.warning(
                "%s answered %d: holding every call through this key for %.3g s", self._name, status, seconds
            )
        self._open_at = max(self._open_at, now + seconds)
        return seconds


def _hashed(api_key: str) -> str:
    # Clients are found by a hash of their key: this map may be printed, the key must not be.
    return hashlib.sha256(api_key.encode()).hexdigest()


class _Closable(Protocol):
    async def close(self) -> None: ...


Client = TypeVar("Client", bound=_Closable)


class ModelClients:
    """The SDK clients and gates of this process, one pair per (provider, base URL, key).

    ``model_concurrency`` limits calls in flight per model name on each gate;
    ``default_backoff`` is how long a gate closes after a pause status without a
    ``retry-after``. Close with :meth:`aclose` on shutdown.
    """

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        model_concurrency: Mapping[str, int] | None = None,
        default_backoff: float = DEFAULT_BACKOFF_SECONDS,
        monotonic: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if max_connections < 0:
            raise ValueError("max_connections must be at least 0 (0: no cap)")
        if default_backoff < 0:
            raise ValueError("default_backoff must be at least 0")
        self.max_connections = max_connections
        self._model_concurrency = dict(model_concurrency or {})
        self._default_backoff = default_backoff
        self._monotonic = monotonic
        self._sleep = sleep
        self._wall = wall
        self._entries: dict[tuple[str, str, str], tuple[_Closable, ProviderGate]] = {}

    def get(
        self, provider: str, base_url: str, api_key: str, make: Callable[[], Client]
    ) -> tuple[Client, ProviderGate]:
        """The client and gate of this account, built with ``make`` on first use."""
        key = (provider, base_url, _hashed(api_key))
        entry = self._entries.get(key)
        if entry is None:
            gate = ProviderGate(
                f"the {provider} API{f' at {base_url}' if base_url else ''}",
                model_limits=self._model_concurrency,
                default_backoff=self._default_backoff,
                monotonic=self._monotonic,
                sleep=self._sleep,
                wall=self._wall,
            )
            entry = self._entries[key] = (make(), gate)
        return cast(Client, entry[0]), entry[1]

    def gate(self, provider: str, base_url: str, api_key: str) -> ProviderGate | None:
        """The gate of an account, once a brain has used it."""
        entry = self._entries.get((provider, base_url, _hashed(api_key)))
        return entry[1] if entry is not None else None

    def http_limits(self) -> httpx2.Limits:
        """Connection limits for an SDK's aiohttp transport: ``max_connections`` becomes
        aiohttp's connector limit, where 0 means no limit (as it does here)."""
        import httpx2

        return httpx2.Limits(max_connections=self.max_connections, max_keepalive_connections=None)

    async def aclose(self) -> None:
        """Close every client (their connection pools)."""
        entries, self._entries = self._entries, {}
        for client, _ in entries.values():
            try:
                await client.close()
            except Exception:
                _log.exception("a model API client failed to close")
