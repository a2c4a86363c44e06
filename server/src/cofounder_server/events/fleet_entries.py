"""The wire form of fleet feed entries: a job's status after a change, tagged for routing."""

from __future__ import annotations

from collections.abc import Callable

from cofounder_server.domain.model import Job, JobStatusSnapshot
from cofounder_server.events.hub import WireEvent

StatusEncoder = Callable[[JobStatusSnapshot], bytes]
"""Encodes a job's status as the API sends it (the API layer provides it; the rest stays
protobuf-free)."""


def wire_status(fleet_sequence: int, job: Job, status: JobStatusSnapshot, encode: StatusEncoder) -> WireEvent:
    """A fleet entry: ``status`` encoded once, tagged with the job's owner, project and status."""
    return WireEvent(
        fleet_sequence,
        encode(status),
        owner_id=job.owner_id,
        job_id=job.job_id,
        project_id=job.project_id,
        job_status=job.status.value,
    )
