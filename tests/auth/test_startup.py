"""Safe defaults: loopback without authentication, refusal elsewhere unless loudly overridden."""

from __future__ import annotations

import logging

import pytest

from cofounder_server.app import Application
from cofounder_server.auth.security import is_loopback
from cofounder_server.config import load_settings
from tests.auth.support import CALLERS, write_principals


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.9.9.9:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/run/cofounder.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.7:50051", False),
        ("cofounder.internal:50051", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


async def test_without_authentication_the_log_says_one_local_principal_on_loopback(
    settings_for, database_url, caplog
) -> None:
    caplog.set_level(logging.INFO)
    app = await Application.start(settings_for(database_url))
    await app.stop(grace_seconds=0)

    assert "authentication OFF: every call acts as the single local principal 'local'" in caplog.text
    assert "loopback only" in caplog.text


async def test_a_non_loopback_address_without_authentication_refuses_to_start(
    settings_for, database_url
) -> None:
    with pytest.raises(SystemExit, match="--allow-unauthenticated-non-loopback"):
        await Application.start(settings_for(database_url, listen="0.0.0.0:0"))


async def test_the_override_starts_and_warns_loudly(settings_for, database_url, caplog) -> None:
    app = await Application.start(
        settings_for(database_url, listen="0.0.0.0:0", allow_unauthenticated_non_loopback=True)
    )
    await app.stop(grace_seconds=0)

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("NON-LOOPBACK" in message and "full access" in message for message in warnings)


async def test_with_authentication_any_address_is_allowed(
    settings_for, database_url, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    principals = write_principals(tmp_path / "principals.toml", CALLERS)
    app = await Application.start(
        settings_for(database_url, listen="0.0.0.0:0", auth_tokens_file=str(principals))
    )
    await app.stop(grace_seconds=0)

    assert "authentication ON: 4 token(s) and 0 certificate name(s) for 4 principal(s)" in caplog.text
    assert "bearer tokens travel in plaintext" in caplog.text


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("", "defines no"),
        ("[[tokens]]\nsha256 = 'abc'\nprincipal = 'a'\nrole = 'user'\n", "sha256 must be 64 hex digits"),
        ("[[tokens]]\nsha256 = '" + "a" * 64 + "'\nprincipal = 'a'\nrole = 'admin'\n", "role must be one of"),
        ("[[tokens]]\nsha256 = '" + "a" * 64 + "'\nprincipal = 'a b'\nrole = 'user'\n", "principal must be"),
        ("[[tokens]]\nsha256 = '" + "a" * 64 + "'\nprincipal = 'a'\n", "missing \\['role'\\]"),
        ("[[users]]\nname = 'a'\n", "unknown table"),
        ("[[tokens]\n", "not valid TOML"),
    ],
    ids=["empty", "bad-hash", "bad-role", "bad-principal", "missing-key", "unknown-table", "not-toml"],
)
async def test_a_bad_principals_file_refuses_to_start(settings_for, tmp_path, content, complaint) -> None:
    path = tmp_path / "principals.toml"
    path.write_text(content)
    with pytest.raises(SystemExit, match=complaint):
        await Application.start(settings_for(auth_tokens_file=str(path)))


def test_the_override_is_a_switch_with_an_environment_variable() -> None:
    assert load_settings([], environ={}).allow_unauthenticated_non_loopback is False
    assert load_settings(
        ["--allow-unauthenticated-non-loopback"], environ={}
    ).allow_unauthenticated_non_loopback
    environ = {"COFOUNDER_ALLOW_UNAUTHENTICATED_NON_LOOPBACK": "true"}
    assert load_settings([], environ=environ).allow_unauthenticated_non_loopback
    with pytest.raises(SystemExit, match="COFOUNDER_ALLOW_UNAUTHENTICATED_NON_LOOPBACK"):
        load_settings([], environ={"COFOUNDER_ALLOW_UNAUTHENTICATED_NON_LOOPBACK": "sure"})
