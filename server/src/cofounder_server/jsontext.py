"""Compact JSON text, fast.

Every agent iteration serialises several small documents (JSON columns, the status summary
key, tool-call signatures, pub/sub headers): orjson does it several times faster than the
standard library. What orjson refuses but JSON allows (integers beyond 64 bits, say from a
model's tool input) falls back to the standard encoder, with the same compact output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson


def dumps(value: Any, *, sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as compact JSON text (UTF-8, no spaces); ``default`` converts other types."""
    try:
        return orjson.dumps(value, default=default, option=orjson.OPT_SORT_KEYS if sort_keys else 0).decode()
    except TypeError:
        return json.dumps(
            value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, default=default
        )
