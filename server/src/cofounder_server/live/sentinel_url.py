"""``redis+sentinel://`` URLs: a Redis primary found through Redis Sentinel, so the server
follows a failover to whichever replica the sentinels promote.

Syntax (``--redis-url``)::

    redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB][?sentinel_username=U&sentinel_password=P]

* ``HOST[:PORT]``: one or more sentinels, comma-separated (port 26379 when omitted; IPv6
  addresses in brackets). Each is asked in turn which server is the primary of ``SERVICE``.
* ``SERVICE``: the name the sentinels monitor the primary under (``sentinel monitor SERVICE ...``).
* ``DB``: the database number on the primary (default 0).
* ``USER``/``PASSWORD``: credentials of the Redis servers (primary and replicas);
  ``sentinel_username``/``sentinel_password``: those of the sentinels, when they require any.
  Percent-encode reserved characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_QUERY_KEYS = frozenset({"sentinel_username", "sentinel_password"})


@dataclass(frozen=True)
class SentinelUrl:
    """The parts of a ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def server_options(self) -> dict[str, Any]:
        """Connection options for the primary (credentials and database)."""
        return {"db": self.db, "username": self.username, "password": self.password}

    def sentinel_options(self) -> dict[str, Any]:
        """Connection options for the sentinels (their credentials)."""
        return {"username": self.sentinel_username, "password": self.sentinel_password}


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a primary through sentinels."""
    return url.lower().startswith(SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse a ``redis+sentinel://`` URL; ``ValueError`` naming what is wrong."""
    if not is_sentinel_url(url):
        raise ValueError(f"not a {SCHEME}:// URL")
    rest = url[len(SCHEME) + 3 :]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(part) for part in hosts.split(","))
    parts = path.split("/") if slash else []
    if not parts or not parts[0]:
        raise ValueError(f"{SCHEME}:// URL needs the service name as its path: /SERVICE[/DB]")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1]):
        raise ValueError(f"{SCHEME}:// URL path must be /SERVICE or /SERVICE/DB")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"database number must be a non-negative integer, got {parts[1]!r}")
        db = int(parts[1])
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False) if query else {}
    unknown = sorted(set(options) - _QUERY_KEYS)
    if unknown:
        known = ", ".join(sorted(_QUERY_KEYS))
        raise ValueError(f"unknown {SCHEME}:// option {unknown[0]!r} (known: {known})")
    return SentinelUrl(
        sentinels=sentinels,
        service_name=unquote(parts[0]),
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username", [None])[-1] or None,
        sentinel_password=options.get("sentinel_password", [None])[-1] or None,
    )


def _host_port(part: str) -> tuple[str, int]:
    if not part:
        raise ValueError(f"{SCHEME}:// URL needs one or more sentinels: HOST[:PORT][,HOST[:PORT]...]")
    if part.startswith("["):
        host, bracket, tail = part[1:].partition("]")
        if not bracket or not host or (tail and not tail.startswith(":")):
            raise ValueError(f"malformed sentinel address {part!r}")
        port_text = tail[1:] if tail else ""
    else:
        host, _, port_text = part.partition(":")
        if not host or ":" in port_text:
            raise ValueError(f"malformed sentinel address {part!r}")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"sentinel port must be 1-65535, got {port_text!r} in {part!r}")
    return host, int(port_text)
