"""The Redis key contract: names, value formats and TTLs of the live keys, in one place.

Existing dashboards read these keys, so names, values and TTLs are a compatibility contract:

====================================  ===========================================  ==================
key                                   value                                        TTL
====================================  ===========================================  ==================
``cofounder:agent:{id}:state``        an :class:`AgentState` value                 90 000 s
``cofounder:agent:{id}:budget_pct``   integer 0-100 (today's spend / budget)       90 s
``cofounder:agent:{id}:wake_at``      ISO-8601 UTC, ``2026-01-02T00:00:00+00:00``  until then, >= 1 s
``cofounder:agent:{id}:wake_signal``  ``1``; present means "wake now"              300 s
``cofounder:job:{id}:summary``        versioned JSON (see :mod:`.versioned`)       90 000 s
``cofounder:job:{id}:last_seq``       versioned, ``{seq}:``: newest event sequence  90 000 s
====================================  ===========================================  ==================

Pub/sub channels (not keys): ``cofounder:job:{id}:events`` carries each event of a job once
it is committed, ``cofounder:escalations:events`` each entry of the escalation feed, and
``cofounder:executor:control`` the requests to the replica running a job (:mod:`.control`).

Every write of the agent's keys is queued by this module's functions, and only the change
pipeline (:mod:`cofounder_server.services.changes`) runs them, after the SQL commit.

``wake_at`` is written the way Python's ``datetime.isoformat()`` renders a UTC time (offset
``+00:00``, fractional seconds only when present), which is what the predecessor wrote; the
parser also accepts ``Z`` and any other offset.

The parsers never raise: a value that does not follow the contract (written by a buggy or
older writer, or truncated) is treated as absent, so readers fall back to the durable record.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from cofounder_server.domain.model import AgentState
from cofounder_server.live.versioned import LiveWrites

KEY_PREFIX = "cofounder:"
"""Every key of this project starts with this."""
AGENT_KEY_PREFIX = "cofounder:agent:"
JOB_KEY_PREFIX = "cofounder:job:"

STATE_TTL_SECONDS = 90_000
BUDGET_PCT_TTL_SECONDS = 90
WAKE_SIGNAL_TTL_SECONDS = 300
SUMMARY_TTL_SECONDS = 90_000

_INTEGER = re.compile(r"-?[0-9]+")


def _agent_key(job_id: str, suffix: str) -> str:
    if not job_id:
        raise ValueError("job_id must not be empty")
    return f"{AGENT_KEY_PREFIX}{job_id}:{suffix}"


def state_key(job_id: str) -> str:
    """``cofounder:agent:{id}:state``."""
    return _agent_key(job_id, "state")


def budget_pct_key(job_id: str) -> str:
    """``cofounder:agent:{id}:budget_pct``."""
    return _agent_key(job_id, "budget_pct")


def wake_at_key(job_id: str) -> str:
    """``cofounder:agent:{id}:wake_at``."""
    return _agent_key(job_id, "wake_at")


def wake_signal_key(job_id: str) -> str:
    """``cofounder:agent:{id}:wake_signal``."""
    return _agent_key(job_id, "wake_signal")


def summary_key(job_id: str) -> str:
    """``cofounder:job:{id}:summary``: the job's durable facts, cached for the status reader."""
    if not job_id:
        raise ValueError("job_id must not be empty")
    return f"{JOB_KEY_PREFIX}{job_id}:summary"


def last_sequence_key(job_id: str) -> str:
    """``cofounder:job:{id}:last_seq``: the newest event sequence of the job (never decreases)."""
    if not job_id:
        raise ValueError("job_id must not be empty")
    return f"{JOB_KEY_PREFIX}{job_id}:last_seq"


def job_events_channel(job_id: str) -> str:
    """``cofounder:job:{id}:events``: the pub/sub channel of the job's events."""
    if not job_id:
        raise ValueError("job_id must not be empty")
    return f"{JOB_KEY_PREFIX}{job_id}:events"


ESCALATION_EVENTS_CHANNEL = "cofounder:escalations:events"
"""The pub/sub channel of the escalation feed (every owner's entries)."""

FLEET_CHANNEL = "cofounder:fleet:changes"
"""The pub/sub channel of the fleet feed: every job's status changes, one entry per change."""

EXECUTOR_CONTROL_CHANNEL = "cofounder:executor:control"
"""The pub/sub channel of requests to whichever replica runs a job (:mod:`.control`)."""


def format_wake_at(when: datetime) -> str:
    """The ``wake_at`` value for an aware datetime: ISO-8601 in UTC with offset ``+00:00``."""
    if when.tzinfo is None:
        raise ValueError("wake_at must be timezone-aware")
    return when.astimezone(UTC).isoformat()


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_state(raw: bytes | str | None) -> AgentState | None:
    """The agent state in a ``state`` value, or None when absent or not a known state."""
    text = _text(raw)
    if text is None:
        return None
    try:
        return AgentState(text.strip())
    except ValueError:
        return None


def parse_budget_pct(raw: bytes | str | None) -> int | None:
    """The percentage in a ``budget_pct`` value, clamped to 0..100; None when absent or not an integer.

    Clamped rather than rejected because the predecessor wrote ``int(ratio * 100)``, which
    exceeds 100 after a runaway call; such a value still means "budget used up".
    """
    text = _text(raw)
    if text is None:
        return None
    text = text.strip()
    # int() alone would also accept "4_2" and non-ASCII digits.
    if not _INTEGER.fullmatch(text):
        return None
    return min(100, max(0, int(text)))


def parse_wake_at(raw: bytes | str | None) -> datetime | None:
    """The aware UTC time in a ``wake_at`` value; None when absent, malformed or without an offset."""
    text = _text(raw)
    if text is None:
        return None
    try:
        # Python 3.11 parses both "Z" and "+00:00".
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    # A naive time does not say which zone it is in; guessing could wake an agent hours off.
    if when.tzinfo is None:
        return None
    return when.astimezone(UTC)


def wake_at_ttl(when: datetime, now: datetime) -> int:
    """The TTL of a ``wake_at`` key: the seconds until ``when``, rounded up so the key never
    disappears before the agent is due to wake, and at least 1."""
    return max(1, math.ceil((when - now).total_seconds()))


def queue_agent_state(
    writes: LiveWrites, job_id: str, state: AgentState | None, wake_at: datetime | None, now: datetime
) -> None:
    """Queue the agent's ``state`` and ``wake_at`` keys as ``state`` and ``wake_at`` say
    (``state`` None: the agent is off the job, both keys go). Each write happens only if the
    versioned write queued before it (the job's summary) is current, so a slower writer
    of an older change never overwrites a newer one's keys."""
    if state is None:
        writes.delete_if_current(state_key(job_id))
        writes.delete_if_current(wake_at_key(job_id))
        return
    writes.set_if_current(state_key(job_id), state.value, STATE_TTL_SECONDS)
    if state is AgentState.SLEEPING and wake_at is not None and wake_at > now:
        writes.set_if_current(wake_at_key(job_id), format_wake_at(wake_at), wake_at_ttl(wake_at, now))
    else:
        writes.delete_if_current(wake_at_key(job_id))


def queue_budget_pct(writes: LiveWrites, job_id: str, pct: int) -> None:
    """Queue ``budget_pct`` = ``pct`` clamped to 0..100 (TTL 90 s), under the same condition
    as :func:`queue_agent_state`."""
    writes.set_if_current(budget_pct_key(job_id), str(min(100, max(0, pct))), BUDGET_PCT_TTL_SECONDS)
