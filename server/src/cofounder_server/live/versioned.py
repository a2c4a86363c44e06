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

from cofounder_server.jsontext import dumps
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


# Many writes in one EVAL: for each key, ARGV[1] (a JSON array) holds (op, payload, ttl). An
# op "+" is a SET and "x" a DEL that run only if the newest versioned write before them found
# its key at the same or an older version (the facts they derive from are current); any other
# op is a version, compared as in _PUT_IF_NEWER. The writes travel as one argument because a
# commit's fan-out writes hundreds of keys: the client encodes each argument of a command in
# Python, one call per argument, and that was the largest share of the fan-out's CPU.
_WRITE_MANY = """
local args = cjson.decode(ARGV[1])
local stored = 0
local current_facts = true
for i, key in ipairs(KEYS) do
  local op = args[3 * i - 2]
  local payload = args[3 * i - 1]
  local ttl = args[3 * i]
  if op == '+' then
    if current_facts then
      redis.call('SET', key, payload, 'EX', ttl)
      stored = stored + 1
    end
  elseif op == 'x' then
    if current_facts then
      redis.call('DEL', key)
    end
  else
    local order = 1
    local held_value = redis.call('GET', key)
    if held_value then
      local held = string.match(held_value, '^0*(%d+):')
      if held then
        if #op < #held or (#op == #held and op < held) then
          order = -1
        elseif op == held then
          order = 0
        end
      end
    end
    if order > 0 then
      redis.call('SET', key, op .. ':' .. payload, 'EX', ttl)
      stored = stored + 1
    end
    current_facts = order >= 0
  end
end
return stored
"""


class LiveWrites:
    """Live-key writes collected to run as one EVAL on a pipeline (a commit's fan-out):
    versioned writes as :func:`put_if_newer`, and writes that depend on the versioned write
    before them, applied in the order they were added."""

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._args: list[str | int] = []

    def __len__(self) -> int:
        return len(self._keys)

    def put_if_newer(self, key: str, version: int, payload: str, ttl_seconds: int) -> None:
        """As :func:`put_if_newer`, when the pipeline these writes are queued on runs."""
        if version < 0 or ttl_seconds < 1:
            raise ValueError("version must not be negative and ttl_seconds at least 1")
        self._keys.append(key)
        self._args += (str(version), payload, ttl_seconds)

    def set_if_current(self, key: str, value: str, ttl_seconds: int) -> None:
        """``SET key value EX ttl_seconds``, only if the last versioned write added before it
        found its key at the same or an older version: values derived from a job's facts are
        never written over those of a newer version."""
        if ttl_seconds < 1:
            raise ValueError("ttl_seconds must be at least 1")
        self._keys.append(key)
        self._args += ("+", value, ttl_seconds)

    def delete_if_current(self, key: str) -> None:
        """``DEL key``, under the same condition as :meth:`set_if_current`."""
        self._keys.append(key)
        self._args += ("x", "", 1)

    def queue(self, pipe: Pipeline) -> None:
        """Queue the writes on ``pipe`` as one command (nothing if there are none)."""
        if not self._keys:
            return
        # EVAL, not EVALSHA: a pipeline holding a registered script first asks SCRIPT EXISTS,
        # a round trip of its own, while Redis caches a script sent with EVAL by its digest.
        pipe.eval(_WRITE_MANY, len(self._keys), *self._keys, dumps(self._args))


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
