"""Schema migrations: Alembic, driven from code, with the scripts shipped in this package.

The server calls :func:`upgrade_to_head` at start-up, and ``cofounder-server migrate`` calls it
alone (a deployment's migration step before its replicas roll). To write a new revision, upgrade a
scratch database to head, change ``models.py``, then run::

    from alembic import command
    command.revision(alembic_config(url), message="add things", rev_id="0002", autogenerate=True)

and review the generated file in ``migrations/versions``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from cofounder_server.store.database import async_url, open_database

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
"""Alembic's script directory (``env.py`` and ``versions/``)."""

# Any fixed 64-bit number will do, as long as nothing else in the database uses it.
_POSTGRES_LOCK_KEY = 0x636F_666F_756E_6472  # "cofoundr"


def alembic_config(url: str) -> Config:
    """An Alembic ``Config`` for ``url`` with no ``alembic.ini``: for Alembic's command API."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    # Config values are interpolated: a literal "%" (e.g. URL-escaped password) doubles.
    rendered = async_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


@asynccontextmanager
async def migration_connection(url: str) -> AsyncIterator[AsyncConnection]:
    """A connection inside one transaction that only one migrator at a time can hold.

    On PostgreSQL a transaction-scoped advisory lock serialises concurrent start-ups, and
    DDL is transactional, so a second process waits, then finds the schema at head. On
    SQLite the transaction starts with ``BEGIN IMMEDIATE`` (the write lock). Foreign keys
    are off on SQLite, as batch migrations rebuild tables; they are checked before commit.
    """
    database = await open_database(url, sqlite_foreign_keys=False)
    try:
        async with database.write() as session:
            connection = await session.connection()
            if database.dialect_name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK_KEY}
                )
            yield connection
            if database.dialect_name == "sqlite":
                violations = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if violations:
                    raise RuntimeError(f"migration left foreign key violations: {violations}")
    finally:
        await database.close()


async def upgrade_to_head(url: str) -> tuple[str | None, str | None]:
    """Create or upgrade the schema at ``url`` to the newest revision.

    Returns the revision before and after (``None``: no schema yet). Idempotent and safe to
    run from several processes at once. Raises ``Unavailable`` when the database cannot be
    reached.
    """
    config = alembic_config(url)
    async with migration_connection(url) as connection:
        return await connection.run_sync(_upgrade, config)


def _upgrade(connection: Connection, config: Config) -> tuple[str | None, str | None]:
    before = MigrationContext.configure(connection).get_current_revision()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return before, MigrationContext.configure(connection).get_current_revision()
