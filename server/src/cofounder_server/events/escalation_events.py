"""The wire form of escalation feed entries: how a committed entry travels through pub/sub to watchers."""

from __future__ import annotations

from collections.abc import Callable

from cofounder_server.domain.events import EscalationEvent
from cofounder_server.events.hub import WireEvent

EscalationEventEncoder = Callable[[EscalationEvent], bytes]
"""Encodes a feed entry as the API sends it (the API layer provides it; the rest stays protobuf-free)."""


def wire_escalation_event(event: EscalationEvent, encode: EscalationEventEncoder) -> WireEvent:
    """A feed entry as published: encoded once, tagged with its owner and job for filtering."""
    escalation = event.escalation
    return WireEvent(event.sequence, encode(event), owner_id=escalation.owner_id, job_id=escalation.job_id)
