"""The ``redis+sentinel://`` syntax of ``--redis-url``: what it accepts, and one clear line
for what it does not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cofounder_server.live.connect import connection_pool
from cofounder_server.live.sentinel_url import SentinelUrl, is_sentinel_url, parse_sentinel_url
from tests.integration.server_process import run_to_exit
from tests.support import free_port


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://h1:26380,h2,[::1]:26381/mymaster/2",
            SentinelUrl((("h1", 26380), ("h2", 26379), ("::1", 26381)), "mymaster", db=2),
        ),
        ("redis+sentinel://sentinel/svc", SentinelUrl((("sentinel", 26379),), "svc")),
        (
            "REDIS+SENTINEL://app:p%40ss@h:1/svc?sentinel_password=s3&sentinel_username=watch",
            SentinelUrl(
                (("h", 1),),
                "svc",
                username="app",
                password="p@ss",
                sentinel_username="watch",
                sentinel_password="s3",
            ),
        ),
        ("redis+sentinel://:secret@h/svc/0", SentinelUrl((("h", 26379),), "svc", password="secret")),
    ],
)
def test_sentinel_urls_parse(url: str, expected: SentinelUrl) -> None:
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h1:26379", "needs the service name as its path"),
        ("redis+sentinel://h1:26379/", "needs the service name as its path"),
        ("redis+sentinel:///svc", "needs one or more sentinels"),
        ("redis+sentinel://h1,,h2/svc", "needs one or more sentinels"),
        ("redis+sentinel://h1:port/svc", "sentinel port must be 1-65535, got 'port'"),
        ("redis+sentinel://h1:0/svc", "sentinel port must be 1-65535, got '0'"),
        ("redis+sentinel://[::1/svc", "malformed sentinel address '[::1'"),
        ("redis+sentinel://h1:1:2/svc", "malformed sentinel address 'h1:1:2'"),
        ("redis+sentinel://h/svc/x", "database number must be a non-negative integer, got 'x'"),
        ("redis+sentinel://h/svc/0/more", "path must be /SERVICE or /SERVICE/DB"),
        ("redis+sentinel://h/svc?password=x", "unknown redis+sentinel:// option 'password'"),
    ],
)
def test_malformed_sentinel_urls_are_refused_naming_the_problem(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_sentinel_url(url)


def test_other_urls_are_not_sentinel_urls() -> None:
    for url in ("redis://h:6379/0", "rediss://h/0", "unix:///tmp/r.sock", "redis+sentinelx://h/svc"):
        assert not is_sentinel_url(url)


async def test_a_sentinel_pool_connects_to_no_one_until_used() -> None:
    pool = connection_pool("redis+sentinel://127.0.0.1:1/svc/3", {"socket_timeout": 1.0})
    try:
        assert pool.connection_kwargs["db"] == 3
        assert pool.connection_kwargs["socket_timeout"] == 1.0
    finally:
        await pool.aclose()


async def test_a_malformed_sentinel_url_stops_start_up_in_one_line(tmp_path: Path) -> None:
    code, stderr = await run_to_exit(
        [
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--data-dir",
            str(tmp_path / "d"),
            "--redis-url",
            "redis+sentinel://127.0.0.1:26379",
        ]
    )
    assert code == 1
    assert stderr.strip() == (
        "invalid --redis-url: redis+sentinel:// URL needs the service name as its path: /SERVICE[/DB]"
    ), stderr
