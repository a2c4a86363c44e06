"""Page tokens: round trip, bound to their filters, and rejected when tampered with."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cofounder_server.domain.errors import InvalidArgument
from cofounder_server.domain.pagination import (
    MAX_PAGE_SIZE,
    Cursor,
    decode_page_token,
    encode_page_token,
    filter_fingerprint,
    page_size_or_default,
)

CURSOR = Cursor(datetime(2026, 3, 1, 12, 30, tzinfo=UTC), "00000000-0000-4000-8000-000000000001")


def test_token_round_trips() -> None:
    fingerprint = filter_fingerprint("local", ["queued"], "p")
    assert decode_page_token(encode_page_token(CURSOR, fingerprint), fingerprint) == CURSOR


def test_empty_token_is_the_first_page() -> None:
    assert decode_page_token("", "f") is None


@pytest.mark.parametrize(
    "token",
    ["%%%", "eyJ0IjoxfQ", encode_page_token(CURSOR, "other"), "a" * 2000, "e30", "bnVsbA"],
)
def test_foreign_or_broken_tokens_are_invalid(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, filter_fingerprint("local", [], ""))
    assert caught.value.violations[0].field == "page_token"


def test_page_size_defaults_caps_and_rejects_negatives() -> None:
    assert page_size_or_default(0) == 50
    assert page_size_or_default(7) == 7
    assert page_size_or_default(10**9) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        page_size_or_default(-1)
