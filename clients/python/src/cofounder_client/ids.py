"""Ids as people type them: a unique prefix of a job or escalation id stands for the id.

A full id (or anything that is not a hexadecimal prefix) passes through unchanged, so the
server judges it; a prefix is looked up among the caller's jobs (``ListJobs``) or escalations
(``ListEscalations``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Final

import grpc

from cofounder_client.client import Client
from cofounder_client.errors import NotFoundError

__all__ = ["MIN_PREFIX", "AmbiguousIdError", "resolve_escalation_id", "resolve_job_id"]

MIN_PREFIX: Final = 4
"""Shortest prefix accepted: fewer characters match too many ids to be worth a listing."""

_FULL_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PREFIX: Final = re.compile(r"[0-9a-f][0-9a-f-]*")
_PAGE_SIZE: Final = 1000
_SHOWN_CANDIDATES: Final = 10


class AmbiguousIdError(ValueError):
    """A prefix that is too short, or that more than one id starts with (a usage error)."""


async def resolve_job_id(client: Client, text: str) -> str:
    """The job id ``text`` stands for: itself, or the one job id it is a unique prefix of.

    Raises:
        AmbiguousIdError: the prefix is shorter than :data:`MIN_PREFIX`, or several ids match.
        NotFoundError: no job id of the caller starts with the prefix.
    """
    if not _is_prefix(text):
        return text
    jobs = client.iter_jobs(page_size=_PAGE_SIZE)
    async with contextlib.aclosing(jobs):
        return await _pick("job", text.lower(), (job.job_id async for job in jobs))


async def resolve_escalation_id(client: Client, text: str) -> str:
    """The escalation id ``text`` stands for; as :func:`resolve_job_id`, among escalations."""
    if not _is_prefix(text):
        return text
    escalations = client.iter_escalations(page_size=_PAGE_SIZE)
    async with contextlib.aclosing(escalations):
        return await _pick(
            "escalation", text.lower(), (escalation.escalation_id async for escalation in escalations)
        )


def _is_prefix(text: str) -> bool:
    lowered = text.lower()
    if _FULL_ID.fullmatch(lowered) or not _PREFIX.fullmatch(lowered):
        return False
    if len(text) < MIN_PREFIX:
        raise AmbiguousIdError(f"id prefix {text!r} is too short: give at least {MIN_PREFIX} characters")
    return True


async def _pick(kind: str, prefix: str, ids: AsyncIterator[str]) -> str:
    candidates = [id_ async for id_ in ids if id_.startswith(prefix)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise NotFoundError(grpc.StatusCode.NOT_FOUND, f"no {kind} id starts with {prefix!r}")
    shown = ", ".join(candidates[:_SHOWN_CANDIDATES])
    more = f" and {len(candidates) - _SHOWN_CANDIDATES} more" if len(candidates) > _SHOWN_CANDIDATES else ""
    raise AmbiguousIdError(f"{kind} id prefix {prefix!r} is ambiguous: it matches {shown}{more}")
