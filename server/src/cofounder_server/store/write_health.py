"""Whether SQL writes succeed: what the health service reports beside reachability.

A database can answer ``SELECT 1`` while every write fails (SQLite's "database or disk is
full", a read-only file system, PostgreSQL out of space). Every write transaction reports
its outcome here; the health monitor turns a failure into NOT_SERVING (and says why in its
log line) and, while writes fail, probes with a write of its own, so recovery shows even
when nothing else writes.
"""

from __future__ import annotations

from cofounder_server.causes import describe_cause


class WriteHealth:
    """The outcome of the latest SQL write."""

    def __init__(self) -> None:
        self.failure: str | None = None
        """Why the latest write failed (one line), or ``None`` when it succeeded."""

    def failed(self, error: BaseException) -> None:
        """A write failed because of the storage (not because of what it wrote)."""
        self.failure = describe_cause(error)

    def succeeded(self) -> None:
        """A write committed."""
        self.failure = None
