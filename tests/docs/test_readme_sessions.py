"""The console sessions of the READMEs and docs/executor.md, run against a real server: a drift
fails with a diff.

Each session (see :mod:`tests.docs.markdown_sessions` for the markers) gets a fresh server on
its embedded defaults, on a free port, with the agent executor on and a clock that stands still
on a fixed morning, so a sleeping agent wakes only when a command wakes it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from cofounder_server.config import Settings
from tests.docs.markdown_sessions import Session, sessions_in
from tests.docs.session_runner import SessionRunner
from tests.support import throwaway_database

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "clients" / "python" / "README.md", ROOT / "docs" / "executor.md"]
SESSIONS = [session for document in DOCUMENTS for session in sessions_in(document)]
# A morning, far from the midnight a sleeping agent waits for.
START = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)


def test_every_document_has_executed_sessions() -> None:
    assert {session.path for session in SESSIONS} == set(DOCUMENTS)


@pytest.mark.parametrize("session", SESSIONS, ids=lambda s: f"{s.path.relative_to(ROOT)}:{s.name}")
async def test_session_prints_what_the_document_shows(
    session: Session, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    # A database of its own also on an external PostgreSQL: the fleet's sequences and the
    # escalations listed are those of this session alone.
    async with throwaway_database("cofounder_docs") as database_url:
        # The clock stands still: the runner's lease is measured on it too, and would seem to
        # lapse if it jumped ahead of the real time the lease is renewed in.
        app = await Application.start(
            settings_for(database_url, executor_enabled=True), clock=ManualClock(START)
        )
        try:
            await SessionRunner(app.port, tmp_path).run(session)
        finally:
            await app.stop(grace_seconds=1.0)
