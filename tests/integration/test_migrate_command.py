"""``cofounder-server migrate``: a deployment's migration step, run as the real command."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from cofounder_server.store.migrate import alembic_config, migration_connection
from tests.support import free_port, throwaway_database


async def migrate(*argv: str, database_url: str = "") -> tuple[int, str, str]:
    """Run the command (``database_url`` through the environment); exit code, stdout, stderr."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COFOUNDER_")}
    if database_url:
        environment["COFOUNDER_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cofounder_server",
        "migrate",
        *argv,
        env=environment,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite:///unused.db")).get_current_head()


async def revision_of(url: str) -> str | None:
    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with migration_connection(url) as connection:
        return await connection.run_sync(current)


async def test_migrate_brings_an_empty_database_to_head_then_finds_it_there(tmp_path: Path) -> None:
    async with throwaway_database("cofounder_migrate") as external:
        url = external or f"sqlite:///{tmp_path / 'cofounder.db'}"
        assert await revision_of(url) is None

        code, stdout, stderr = await migrate("--database-url", url)
        assert (code, stderr) == (0, "")
        assert stdout.endswith(f"upgraded from revision (none) to {head()}\n")
        assert await revision_of(url) == head()

        # The environment variable the server reads works too; the second run changes nothing.
        code, stdout, stderr = await migrate(database_url=url)
        assert (code, stderr) == (0, "")
        assert stdout.endswith(f"already at revision {head()}\n")


async def test_migrate_masks_the_password_it_prints(tmp_path: Path) -> None:
    port = free_port()
    code, stdout, stderr = await migrate(
        "--database-url", f"postgresql://cofounder:s3cret@127.0.0.1:{port}/cofounder"
    )
    assert code == 1
    assert stdout == ""
    assert stderr.count("\n") == 1, stderr
    assert "cannot reach the database" in stderr
    assert f"postgresql://cofounder:***@127.0.0.1:{port}/cofounder" in stderr
    assert "s3cret" not in stderr


async def test_migrate_without_a_database_url_is_a_usage_error() -> None:
    code, stdout, stderr = await migrate()
    assert (code, stdout) == (2, "")
    assert "needs --database-url or COFOUNDER_DATABASE_URL" in stderr


async def test_migrate_with_an_unparsable_url_is_a_usage_error() -> None:
    code, stdout, stderr = await migrate("--database-url", "mysql://somewhere/db")
    assert (code, stdout) == (2, "")
    assert "invalid --database-url" in stderr
    assert "Traceback" not in stderr


async def test_migrate_help_says_what_it_does() -> None:
    code, stdout, _ = await migrate("--help")
    assert code == 0
    assert "usage: cofounder-server migrate" in stdout
    assert "--database-url" in stdout
