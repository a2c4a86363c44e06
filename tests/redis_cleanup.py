"""A test run on an external Redis deletes the live keys of the jobs it created.

That Redis is shared with other runs and other users, so nothing server-wide is used (no
FLUSHDB, no pattern sweep): the run collects the ids of its own jobs from its own databases,
each PostgreSQL database just before it is dropped and the SQLite files under the run's
temporary directory at the end, and deletes exactly those jobs' keys.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import asyncpg
from redis import Redis

from cofounder_server.live import keys

RUN_JOB_IDS: set[str] = set()
"""Ids of the jobs of this run whose database is already gone."""

_PER_JOB_KEYS = (
    keys.state_key,
    keys.budget_pct_key,
    keys.wake_at_key,
    keys.wake_signal_key,
    keys.summary_key,
    keys.last_sequence_key,
)


async def remember_jobs_in(database_dsn: str) -> None:
    """Add the job ids stored in a PostgreSQL database (none when it was never migrated)."""
    connection = await asyncpg.connect(database_dsn)
    try:
        rows = await connection.fetch("SELECT job_id FROM jobs")
    except asyncpg.UndefinedTableError:
        return
    finally:
        await connection.close()
    RUN_JOB_IDS.update(str(row["job_id"]) for row in rows)


def sqlite_job_ids(root: Path) -> set[str]:
    """The job ids in every server's SQLite file under ``root``."""
    found: set[str] = set()
    for path in root.rglob("cofounder.db"):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            try:
                found.update(str(row[0]) for row in connection.execute("SELECT job_id FROM jobs"))
            except sqlite3.OperationalError:  # never migrated
                continue
    return found


def delete_live_keys(redis_url: str, job_ids: Iterable[str]) -> int:
    """Delete every live key of ``job_ids``; the number of keys that existed."""
    names = [key(job_id) for job_id in job_ids for key in _PER_JOB_KEYS]
    deleted = 0
    with Redis.from_url(redis_url) as client:
        for start in range(0, len(names), 1000):
            deleted += int(client.delete(*names[start : start + 1000]))
    return deleted
