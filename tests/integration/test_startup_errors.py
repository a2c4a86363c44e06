"""A server that cannot start says why in one line on stderr and exits non-zero; --debug adds
the traceback. Each case runs the real command."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cofounder_server.datadir import LOCK_NAME
from tests.integration.server_process import run_to_exit, server_argv
from tests.support import free_port


def assert_one_line(code: int, stderr: str, *expected: str) -> None:
    assert code != 0
    assert stderr.count("\n") == 1, stderr
    assert stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr
    for text in expected:
        assert text in stderr, stderr


def unwritable_directory(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores mode bits: use /sys)."""
    if os.geteuid() != 0:
        directory = tmp_path / "read-only"
        directory.mkdir(mode=0o500)
        return directory
    directory = Path("/sys/kernel")
    try:
        os.close(os.open(directory / "probe", os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError:
        return directory
    pytest.skip("no directory here that this user cannot write to")


async def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("not a directory")
    code, stderr = await run_to_exit(server_argv(path, free_port()))
    assert_one_line(code, stderr, f"cannot use data directory {path}", "not a directory")


async def test_an_unwritable_data_dir(tmp_path: Path) -> None:
    directory = unwritable_directory(tmp_path)
    code, stderr = await run_to_exit(server_argv(directory, free_port()))
    assert_one_line(code, stderr, f"cannot use data directory {directory}", "Permission denied")


async def test_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = await run_to_exit(server_argv(tmp_path / "new" / "data", port))
    assert_one_line(code, stderr, f"cannot listen on 127.0.0.1:{port}", "Address already in use")
    # Refused before anything was written: the directories made for the data are gone again.
    assert os.listdir(tmp_path) == []


async def test_a_failed_start_keeps_a_data_dir_that_was_there(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, stderr = await run_to_exit(server_argv(data_dir, taken.getsockname()[1]))
    assert_one_line(code, stderr, "cannot listen on 127.0.0.1:", "Address already in use")
    # Refused before anything started (no embedded Redis engine ever ran there); the lock file stays.
    assert os.listdir(data_dir) == [LOCK_NAME]


async def test_a_bad_principals_file(tmp_path: Path) -> None:
    principals = tmp_path / "principals.toml"
    principals.write_text("[[tokens]\n")
    code, stderr = await run_to_exit(
        server_argv(tmp_path / "data", free_port(), "", "--auth-tokens-file", str(principals))
    )
    assert_one_line(code, stderr, str(principals), "not valid TOML")


async def test_unreadable_tls_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    code, stderr = await run_to_exit(
        server_argv(
            tmp_path / "data",
            free_port(),
            "",
            "--tls-cert-file",
            str(missing),
            "--tls-key-file",
            str(missing),
        )
    )
    assert_one_line(code, stderr, f"cannot use TLS certificate {missing}", "No such file or directory")


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("::::", "invalid --database-url: Could not parse"),
        ("mysql://db.internal/cofounder", "invalid --database-url: unsupported database URL scheme 'mysql'"),
    ],
    ids=["unparseable", "unknown-scheme"],
)
async def test_a_bad_database_url(tmp_path: Path, url: str, complaint: str) -> None:
    code, stderr = await run_to_exit(server_argv(tmp_path / "data", free_port(), url))
    assert_one_line(code, stderr, complaint)


async def test_an_unreachable_database(tmp_path: Path) -> None:
    url = f"postgresql://cofounder:s3cret@127.0.0.1:{free_port()}/cofounder"
    code, stderr = await run_to_exit(server_argv(tmp_path / "data", free_port(), url))
    assert_one_line(code, stderr, "cannot reach the database postgresql://cofounder:***@127.0.0.1:")
    assert "s3cret" not in stderr
    assert not (tmp_path / "data").exists()


async def test_an_unreachable_redis(tmp_path: Path) -> None:
    argv = [
        *server_argv(tmp_path / "data", free_port()),
        "--redis-url",
        f"redis://127.0.0.1:{free_port()}/0",
    ]
    code, stderr = await run_to_exit(argv)
    assert_one_line(code, stderr, "cannot reach Redis at redis://127.0.0.1:", "Connection refused")
    assert not (tmp_path / "data").exists()


async def test_a_bad_log_level(tmp_path: Path) -> None:
    code, stderr = await run_to_exit(server_argv(tmp_path / "data", free_port(), "", "--log-level", "loud"))
    assert_one_line(code, stderr, "invalid --log-level 'loud'")


async def test_debug_adds_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("not a directory")
    code, stderr = await run_to_exit([*server_argv(path, free_port()), "--debug"])
    assert code != 0
    assert "Traceback (most recent call last)" in stderr
    assert stderr.endswith(f"cannot use data directory {path}: it exists and is not a directory\n")
