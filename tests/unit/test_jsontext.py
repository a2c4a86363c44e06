"""Compact JSON text: orjson's speed, the standard library's reach."""

from __future__ import annotations

import json

import pytest

from cofounder_server.jsontext import dumps


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": [1.5, None, True, "naïve ✓"], "c": {"z": {}, "y": []}},
        {"big": 2**70, "negative": -(2**65), "small": 1},  # beyond orjson: the fallback
        [],
        "text",
    ],
)
def test_output_is_compact_json_that_reads_back(value: object) -> None:
    text = dumps(value)
    assert json.loads(text) == value
    assert ", " not in text
    assert ": " not in text


@pytest.mark.parametrize("value", [{"b": 1, "a": {"d": 2, "c": 3}}, {"b": 2**70, "a": {"d": 2, "c": 3}}])
def test_sorted_keys_are_the_same_text_on_both_paths(value: dict[str, object]) -> None:
    assert dumps(value, sort_keys=True) == json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def test_default_converts_what_json_cannot_say() -> None:
    assert dumps({"ids": frozenset([3, 1, 2])}, default=sorted) == '{"ids":[1,2,3]}'
    assert (
        dumps({"ids": frozenset([3]), "big": 2**70}, default=sorted)
        == '{"ids":[3],"big":1180591620717411303424}'
    )
