"""Text helpers for the executor."""

from __future__ import annotations


def _marker(cut: int) -> str:
    return f"\n[... {cut} characters cut ...]\n"


def truncate_middle(text: str, limit: int) -> str:
    """``text`` shortened to at most ``limit`` characters by cutting out its middle.

    Long tool results keep their beginning (what was run) and end (how it finished, the
    error at the bottom of a trace); the cut is replaced by a marker saying how many
    characters were removed. Text within the limit is returned unchanged. If ``limit`` is
    too small to hold the marker, the text is simply cut at ``limit``.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    if len(text) <= limit:
        return text
    # The marker's length depends on the number of digits of the count it reports, which
    # depends on how much the marker itself displaces: settle it by recomputing once more
    # whenever the digit count changes (at most twice in practice).
    marker = _marker(len(text) - limit)
    while True:
        keep = limit - len(marker)
        if keep <= 0:
            return text[:limit]
        settled = _marker(len(text) - keep)
        if len(settled) == len(marker):
            marker = settled
            break
        marker = settled
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + marker + (text[len(text) - tail :] if tail else "")
