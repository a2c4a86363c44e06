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


class Encoded:
    """JSON text encoded already: :func:`dumps` returns it as it is, so a JSON column (whose
    serializer :func:`dumps` is) stores it unchanged."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def encode_object(value: Any, fallback: Callable[[Any], Any]) -> Encoded:
    """``value`` (dataclasses, enums, aware datetimes, tuples, plain values) as JSON text in
    one call to orjson, whose forms of those are ``fallback``'s: fields in order, enums by
    value, datetimes in ISO 8601, tuples as arrays. What orjson refuses is written as
    ``dumps(fallback(value))``."""
    try:
        return Encoded(orjson.dumps(value).decode())
    except TypeError:
        return Encoded(dumps(fallback(value)))


def dumps(value: Any, *, sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as compact JSON text (UTF-8, no spaces); ``default`` converts other types.
    :class:`Encoded` text is returned as it is."""
    if type(value) is Encoded:
        return value.text
    try:
        return orjson.dumps(value, default=default, option=orjson.OPT_SORT_KEYS if sort_keys else 0).decode()
    except TypeError:
        return json.dumps(
            value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, default=default
        )
