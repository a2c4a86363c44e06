"""The instruments the server's code reports to, as a small typed facade.

Call sites hold no metrics objects of their own: they report through
``observability.metrics`` (one line each), which is an :class:`Instruments` whose members do
nothing until the composition root installs the Prometheus-backed one
(:class:`~cofounder_server.observability.prometheus.PrometheusInstruments`). With metrics off,
a report is one call of an empty method.
"""

from __future__ import annotations

from typing import Protocol


class Counter(Protocol):
    """A monotonically increasing count."""

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""


class Histogram(Protocol):
    """A distribution of observed values."""

    def observe(self, amount: float) -> None:
        """Record one value."""


class _Off:
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        """Nothing: metrics are off."""

    def observe(self, amount: float) -> None:
        """Nothing: metrics are off."""


OFF = _Off()
"""The instrument that records nothing."""


class Instruments:
    """Every instrument of the server; all of them record nothing in this base class."""

    def __init__(self) -> None:
        self.events_appended: Counter = OFF
        """Job and escalation events stored (and numbered) in SQL."""
        self.events_delivered: Counter = OFF
        """Events sent to watchers, counted per batch sent."""
        self.watchers_too_slow: Counter = OFF
        """Watch streams ended with WATCHER_TOO_SLOW."""
        self.iterations: Counter = OFF
        """Agent iterations committed by the group-commit writer."""
        self.group_commit_size: Histogram = OFF
        """Iterations per group commit."""
        self.group_commit_seconds: Histogram = OFF
        """Duration of one group commit (SQL)."""
        self.lease_claims_queued: Counter = OFF
        """Queued jobs claimed by this process."""
        self.lease_claims_running: Counter = OFF
        """Running jobs claimed by this process (its own after a restart, released or expired)."""
        self.lease_takeovers: Counter = OFF
        """Running jobs claimed from another runner whose lease had expired."""
        self.leases_lost: Counter = OFF
        """Jobs this process stopped running because its lease renewal found them gone."""
        self.sql_errors: Counter = OFF
        """SQL failures that made the database count as unavailable."""
        self.sql_read_seconds: Histogram = OFF
        """Duration of read transactions."""
        self.sql_write_seconds: Histogram = OFF
        """Duration of write transactions."""
        self.redis_errors: Counter = OFF
        """Redis connection failures and timeouts."""

        self.escalations_expired: Counter = OFF
        """Escalations whose deadline passed without an answer and without a default option."""

    def escalations_raised(self, trigger: str) -> Counter:
        """The count of escalations stored for agents, for one trigger (an
        ``EscalationTrigger`` value)."""
        return OFF

    def escalations_resolved(self, source: str) -> Counter:
        """The count of escalations decided with an option, for one decision source (a
        ``DecisionSource`` value: person, service or deadline)."""
        return OFF

    def redis_seconds(self, operation: str) -> Histogram:
        """The latency histogram of one Redis operation (a fixed name from the code)."""
        return OFF

    def model_call(self, model: str, input_tokens: int, output_tokens: int, cost_microdollars: int) -> None:
        """Count one model call, its tokens and its cost."""
