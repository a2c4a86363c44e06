"""The wire form of job events: how a committed event travels through pub/sub to watchers."""

from __future__ import annotations

from collections.abc import Callable

from cofounder_server.domain.events import JobEvent, is_terminal
from cofounder_server.events.hub import WireEvent

JobEventEncoder = Callable[[JobEvent], bytes]
"""Encodes an event as the API sends it (the API layer provides it; the rest stays protobuf-free)."""


def wire_event(event: JobEvent, encode: JobEventEncoder) -> WireEvent:
    """The fan-out form of a job event."""
    return WireEvent(event.sequence, encode(event), terminal=is_terminal(event.payload), job_id=event.job_id)
