"""Migrations: Alembic builds the schema the models describe, idempotently and once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from cofounder_server.store.migrate import alembic_config, migration_connection, upgrade_to_head
from cofounder_server.store.models import Base

T = TypeVar("T")


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _schema_diffs(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def _on(url: str, probe: Callable[[Connection], T]) -> T:
    async with migration_connection(url) as connection:
        return await connection.run_sync(probe)


def _head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite:///unused.db")).get_current_head()


async def test_upgrade_creates_the_schema_at_head(empty_url: str) -> None:
    assert await _on(empty_url, _current_revision) is None

    await upgrade_to_head(empty_url)

    assert await _on(empty_url, _current_revision) == _head() == "0008"
    assert {"jobs", "idempotency_keys", "job_events", "escalation_events", "event_counters"} <= await _on(
        empty_url, _table_names
    )


async def test_upgrade_twice_is_a_no_op(empty_url: str) -> None:
    await upgrade_to_head(empty_url)
    await upgrade_to_head(empty_url)
    assert await _on(empty_url, _current_revision) == _head()


async def test_migrated_schema_matches_the_models(empty_url: str) -> None:
    await upgrade_to_head(empty_url)
    assert await _on(empty_url, _schema_diffs) == []


async def test_schema_comparison_notices_a_difference(empty_url: str) -> None:
    """The comparison above can fail: a missing index shows up as a diff."""
    await upgrade_to_head(empty_url)
    async with migration_connection(empty_url) as connection:
        await connection.exec_driver_sql("DROP INDEX ix_jobs_create_time")
        diffs = await connection.run_sync(_schema_diffs)
    assert [diff[0] for diff in diffs] == ["add_index"]


async def test_alembic_check_finds_nothing_to_generate(empty_url: str) -> None:
    """Alembic's own command API (the path a developer autogenerating a revision takes)."""
    await upgrade_to_head(empty_url)
    # command.check runs its own event loop (env.py's standalone path), so not on this one.
    await asyncio.to_thread(command.check, alembic_config(empty_url))


async def test_concurrent_upgrades_migrate_once(empty_url: str) -> None:
    await asyncio.gather(*(upgrade_to_head(empty_url) for _ in range(4)))
    assert await _on(empty_url, _current_revision) == _head()
    assert await _on(empty_url, _schema_diffs) == []


async def test_downgrade_to_base_and_upgrade_again(empty_url: str) -> None:
    await upgrade_to_head(empty_url)

    def downgrade(connection: Connection, config: Config) -> None:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    async with migration_connection(empty_url) as connection:
        await connection.run_sync(downgrade, alembic_config(empty_url))
    assert await _on(empty_url, _table_names) == {"alembic_version"}

    await upgrade_to_head(empty_url)
    assert await _on(empty_url, _schema_diffs) == []
