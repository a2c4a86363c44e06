"""SQL storage: the durable record of jobs (and later usage, checkpoints, events, escalations).

SQLite through aiosqlite is the embedded default, PostgreSQL through asyncpg production;
both run the same models, migrations and tests. Start-up is ``upgrade_to_head(url)`` then
``open_database(url)``; repositories take the ``Database``.
"""

from cofounder_server.store.database import Database, open_database
from cofounder_server.store.idempotency import request_fingerprint
from cofounder_server.store.jobs import JobCursor, JobRepository
from cofounder_server.store.migrate import upgrade_to_head

__all__ = [
    "Database",
    "JobCursor",
    "JobRepository",
    "open_database",
    "request_fingerprint",
    "upgrade_to_head",
]
