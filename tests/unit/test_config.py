"""Settings: defaults, environment, flags, and clear failures for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofounder_server.config import Settings, load_settings


def test_defaults_listen_on_loopback_with_embedded_services() -> None:
    settings = load_settings([], environ={})

    assert settings.listen == "127.0.0.1:50051"
    assert settings.redis_url == ""
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.effective_database_url.endswith("/cofounder-data/cofounder.db")


def test_environment_then_flags_override_defaults() -> None:
    environ = {
        "COFOUNDER_LISTEN": "127.0.0.1:7000",
        "COFOUNDER_DATA_DIR": "/tmp/x",
        "COFOUNDER_REDIS_URL": "redis://127.0.0.1:6379/0",
        "COFOUNDER_SHUTDOWN_GRACE_SECONDS": "3.5",
    }
    settings = load_settings(["--listen", "127.0.0.1:8000", "--max-message-bytes", "2048"], environ=environ)

    assert settings.listen == "127.0.0.1:8000"
    assert settings.data_dir == Path("/tmp/x")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.shutdown_grace_seconds == 3.5
    assert settings.max_message_bytes == 2048


def test_an_explicit_database_url_wins() -> None:
    settings = Settings(database_url="postgresql+asyncpg://db/x")
    assert settings.effective_database_url == "postgresql+asyncpg://db/x"


def test_bad_numbers_fail_with_the_variable_named() -> None:
    with pytest.raises(SystemExit, match="COFOUNDER_MAX_MESSAGE_BYTES"):
        load_settings([], environ={"COFOUNDER_MAX_MESSAGE_BYTES": "lots"})
    with pytest.raises(SystemExit, match="--shutdown-grace-seconds"):
        load_settings(["--shutdown-grace-seconds", "soon"], environ={})
