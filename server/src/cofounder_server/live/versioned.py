"""Version-ordered cache values: a newer value is never overwritten by an older one.

A reader that misses a cached value rebuilds it from SQL and writes it back. If a writer
commits a newer version meanwhile and publishes it, the slow reader's write would put the
old data back. Values therefore carry their version (``"{version}:{payload}"``) and are
written by a Lua script that compares versions atomically on the server.
"""

from __future__ import annotations

import re

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from cofounder_server.live.connect import unavailable_on_error

# Versions are compared as decimal strings (length, then lexically) rather than with Lua's
# tonumber, whose doubles lose precision above 2**53. A current value without a version
# prefix is garbage and is overwritten, matching decode() treating it as absent.
_PUT_IF_NEWER = b"""
local current = redis.call('GET', KEYS[1])
if current then
  local held = string.match(current, '^0*(%d+):')
  if held then
    local new = ARGV[1]
    if #new < #held or (#new == #held and new <= held) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'EX', ARGV[3])
return 1
"""


def queue_put_if_newer(pipe: Pipeline, key: str, version: int, payload: str, ttl_seconds: int) -> None:
    """:func:`put_if_newer` queued on a pipeline (its result is the pipeline's, ignored here).

    The pipeline makes sure Redis has the script before it runs (one ``SCRIPT EXISTS`` per
    execution).
    """
    if version < 0 or ttl_seconds < 1:
        raise ValueError("version must not be negative and ttl_seconds at least 1")
    script = pipe.register_script(_PUT_IF_NEWER)
    pipe.scripts.add(script)  # type: ignore[arg-type]  # the stubs mix up the sync and async Script
    pipe.evalsha(script.sha, 1, key, str(version), payload, ttl_seconds)


_VERSIONED = re.compile(r"([0-9]+):")


async def put_if_newer(redis: Redis, key: str, version: int, payload: str, ttl_seconds: int) -> bool:
    """Store ``"{version}:{payload}"`` with a TTL unless the key holds the same or a newer version.

    One EVALSHA round trip (the script is loaded on NOSCRIPT). Returns True if stored.
    """
    if version < 0:
        raise ValueError("version must not be negative")
    if ttl_seconds < 1:
        raise ValueError("ttl_seconds must be at least 1")
    script = redis.register_script(_PUT_IF_NEWER)
    with unavailable_on_error("versioned write"):
        stored = await script(keys=[key], args=[str(version), payload, ttl_seconds])
    return bool(stored)


def decode(raw: bytes | str | None) -> tuple[int, str] | None:
    """``(version, payload)`` of a value written by :func:`put_if_newer`; None if absent or malformed."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    match = _VERSIONED.match(raw)
    if match is None:
        return None
    return int(match.group(1)), raw[match.end() :]
