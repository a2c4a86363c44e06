"""Alembic environment: runs migrations on the connection ``migrate`` hands over.

Started without one (Alembic's command API with only a URL, e.g. to autogenerate a
revision), it opens its own through ``migrate.migration_connection``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from cofounder_server.store.migrate import migration_connection
from cofounder_server.store.models import Base


def run_migrations(connection: Connection) -> None:
    """Run the pending revisions inside the caller's transaction."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    async with migration_connection(url) as connection:
        await connection.run_sync(run_migrations)


_shared_connection = context.config.attributes.get("connection")
if isinstance(_shared_connection, Connection):
    run_migrations(_shared_connection)
else:
    _url = context.config.get_main_option("sqlalchemy.url")
    if _url is None:
        raise RuntimeError("alembic config has neither a connection nor sqlalchemy.url")
    asyncio.run(_run_standalone(_url))
