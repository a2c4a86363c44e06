"""Throwaway PostgreSQL databases for tests and benchmarks: each run gets its own."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def throwaway_postgres(url: str, *, prefix: str) -> AsyncIterator[str]:
    """A new database named ``PREFIX_<random>`` on the PostgreSQL server of ``url``, dropped
    on exit even while clients are still connected; yields its SQLAlchemy URL
    (``postgresql+asyncpg://...``). Runs never see each other's rows."""
    import asyncpg  # type: ignore[import-untyped]  # ships no type information
    from sqlalchemy.engine import make_url

    admin = make_url(url).set(drivername="postgresql")
    dsn = admin.render_as_string(hide_password=False)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    try:
        yield admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    finally:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
