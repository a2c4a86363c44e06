"""truncate_middle: long tool results keep their head and tail, and say how much was cut."""

from __future__ import annotations

import re

import pytest

from cofounder_server.executor.text import truncate_middle


def test_text_within_the_limit_is_unchanged() -> None:
    assert truncate_middle("abc", 3) == "abc"
    assert truncate_middle("", 0) == ""


def test_the_middle_is_cut_and_the_marker_counts_exactly_what_was_removed() -> None:
    text = "HEAD" + "x" * 10_000 + "TAIL"

    result = truncate_middle(text, 200)

    assert len(result) <= 200
    assert result.startswith("HEAD")
    assert result.endswith("TAIL")
    match = re.search(r"\[\.\.\. (\d+) characters cut \.\.\.\]", result)
    assert match is not None
    marker = match.group(0)
    kept = len(result) - len(marker) - 2  # the marker sits on a line of its own
    assert int(match.group(1)) == len(text) - kept


@pytest.mark.parametrize("limit", range(60, 85))
def test_every_limit_is_respected_and_fully_used_when_the_digit_count_shifts(limit: int) -> None:
    # Around these limits the cut count crosses 99 -> 100 characters, changing the marker's width.
    text = "y" * 140

    result = truncate_middle(text, limit)

    assert len(result) == limit
    cut = int(re.findall(r"(\d+) characters cut", result)[0])
    assert result.count("y") == len(text) - cut


def test_a_limit_too_small_for_the_marker_cuts_hard() -> None:
    assert truncate_middle("abcdefghijklmnopqrstuvwxyz" * 4, 5) == "abcde"


def test_a_negative_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        truncate_middle("abc", -1)
