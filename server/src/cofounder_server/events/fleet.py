"""Fleet fan-out: the fleet feed's entries routed, in each process, to the watchers they concern.

The fleet feed is one commit-ordered stream of job changes across owners, published on one
channel. A process follows it once, as a single watcher of its hub topic (gap-free: from the
topic's ring, or from SQL after a lost publish), and routes each entry by its owner and
project to the fleet watchers registered for them. Watchers of other owners and projects are
never looked at, so an entry costs the process one lookup per index it could be in plus the
watchers it concerns, however many fleet watchers there are.

Each watcher keeps the entries not sent yet coalesced by job: a newer entry of a job replaces
the older one (and moves to the end, so pending entries stay in feed order). What a watcher
holds is bounded by the jobs it covers, so a slow reader costs memory in proportion to its
fleet, never to the rate of change, and is never cut off for being slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from cofounder_server.clock import Clock
from cofounder_server.domain.errors import DomainError, Unavailable
from cofounder_server.events.feed import ReadPage, follow
from cofounder_server.events.hub import EventBatch, EventHub, StreamSource, Watcher, WireEvent
from cofounder_server.live import keys

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0
"""Pause before the process follows the feed again after Redis or SQL failed it."""


@dataclass(frozen=True)
class FleetScope:
    """Which jobs a fleet watcher covers: one owner's (``None``: every owner's, for
    operators) in one project (``""``: every project)."""

    owner_id: str | None
    project_id: str = ""

    def covers(self, entry: WireEvent) -> bool:
        """Whether ``entry`` is about a job in this scope."""
        return (self.owner_id is None or entry.owner_id == self.owner_id) and (
            not self.project_id or entry.project_id == self.project_id
        )


@dataclass(eq=False)
class FleetWatcher:
    """One WatchJobs stream's registration: the entries for it not sent yet."""

    scope: FleetScope
    start: int
    """The feed sequence the process had routed when the watcher registered: every later
    entry in scope reaches :attr:`pending`."""
    pending: OrderedDict[str, WireEvent] = field(default_factory=OrderedDict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, entry: WireEvent) -> None:
        """Hold ``entry``, replacing an older one of the same job."""
        self.pending.pop(entry.job_id, None)
        self.pending[entry.job_id] = entry
        self.wake.set()

    def take(self, limit: int) -> list[WireEvent]:
        """Up to ``limit`` pending entries, oldest first."""
        taken: list[WireEvent] = []
        while self.pending and len(taken) < limit:
            taken.append(self.pending.popitem(last=False)[1])
        return taken


class FleetFanOut:
    """Follows the fleet feed once per process and routes its entries to fleet watchers."""

    def __init__(self, hub: EventHub, source: StreamSource, read_page: ReadPage, clock: Clock) -> None:
        """``source`` reads the whole feed for the hub's topic, ``read_page`` the same for a
        catch-up after the topic's ring lost track (both from SQL)."""
        self._hub = hub
        self._source = source
        self._read_page = read_page
        self._clock = clock
        self._index: dict[FleetScope, set[FleetWatcher]] = {}
        self._watchers = 0
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self.routed = 0
        """Every entry up to this feed sequence has been routed."""
        self.failure: DomainError | None = None
        """Why the process stopped following the feed (its watchers end with it)."""

    @property
    def watcher_count(self) -> int:
        """Open fleet watchers in this process."""
        return self._watchers

    @contextlib.asynccontextmanager
    async def watch(self, scope: FleetScope) -> AsyncIterator[FleetWatcher]:
        """Register a watcher of ``scope``, following the feed first if this process does not.

        Raises ``Unavailable`` if the feed cannot be followed (Redis or SQL down).
        """
        await self._follow()
        watcher = FleetWatcher(scope, self.routed)
        self._index.setdefault(scope, set()).add(watcher)
        self._watchers += 1
        try:
            yield watcher
        finally:
            self._watchers -= 1
            members = self._index.get(scope)
            if members is not None:
                members.discard(watcher)
                if not members:
                    del self._index[scope]

    async def stop(self) -> None:
        """Stop following the feed; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self) -> None:
        if self._task is None or self._task.done():
            self.failure = None
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(self._ready), name="fleet-fan-out")
        assert self._ready is not None
        await asyncio.shield(self._ready)

    async def _run(self, ready: asyncio.Future[None]) -> None:
        while True:
            try:
                async with self._hub.watch(keys.FLEET_CHANNEL, self._source) as watcher:
                    if not ready.done():
                        self.routed = watcher.topic.last
                        ready.set_result(None)
                    await self._route_from(watcher)
            except Unavailable as error:
                if not ready.done():
                    ready.set_exception(error)
                    ready.exception()  # retrieved: the first watcher gets it raised
                    return
                if self._hub.stopping.is_set():
                    self._fail(error)
                    return
                # Redis or SQL failed mid-way: resume where routing stopped (the watchers
                # wait meanwhile; they are behind, never missing anything).
                log.warning("fleet feed interrupted, following it again: %s", error)
                await asyncio.sleep(RESTART_DELAY_SECONDS)
            except DomainError as error:
                self._fail(error)
                if not ready.done():
                    ready.set_exception(error)
                    ready.exception()
                return

    async def _route_from(self, watcher: Watcher) -> None:
        while True:
            try:
                async for item in follow(watcher, self.routed, self._read_page, self._clock):
                    if isinstance(item, EventBatch):
                        self._route(item.events)
                    else:
                        self.routed = max(self.routed, item.latest_sequence)
                        self._wake_all()
            except Unavailable as error:
                if error.reason != "WATCHER_TOO_SLOW":
                    raise
                # Coalescing leaves holes in the ring (a job's older entry is superseded);
                # past one, the rest comes from SQL.
                continue

    def _route(self, entries: Iterable[WireEvent]) -> None:
        index = self._index
        for entry in entries:
            self.routed = max(self.routed, entry.sequence)
            if not index:
                continue
            for scope in _scopes_of(entry):
                for watcher in index.get(scope, ()):
                    watcher.offer(entry)

    def _wake_all(self) -> None:
        """The feed is current up to :attr:`routed`: idle watchers may say so."""
        for members in self._index.values():
            for watcher in members:
                watcher.wake.set()

    def _fail(self, error: DomainError) -> None:
        self.failure = error
        self._wake_all()


def _scopes_of(entry: WireEvent) -> tuple[FleetScope, ...]:
    """Every scope that covers ``entry``: the index keys to look up."""
    return (
        FleetScope(entry.owner_id, entry.project_id),
        FleetScope(entry.owner_id),
        FleetScope(None, entry.project_id),
        FleetScope(None),
    )
