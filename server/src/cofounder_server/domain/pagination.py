"""Opaque page tokens for keyset pagination, bound to the filters they were issued for."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime

from cofounder_server.domain.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN_CHARS = 1024

# The alphabet of encode_page_token, matched whole: the base64 decoder skips characters
# outside it, so "<token>\n" or "<token> " would otherwise decode as the token itself.
_PAGE_TOKEN_RE = re.compile(r"\A[A-Za-z0-9_-]+\Z")


@dataclass(frozen=True)
class Cursor:
    """Position after the last item of a page: its creation time and id."""

    create_time: datetime
    item_id: str


def page_size_or_default(page_size: int) -> int:
    """Apply the default and the cap; a negative size is invalid."""
    if page_size < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def filter_fingerprint(*parts: object) -> str:
    """A short stable digest of the filters a token belongs to."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_page_token(cursor: Cursor, fingerprint: str) -> str:
    """Serialise a cursor for the client; it treats the result as opaque."""
    body = json.dumps(
        {"t": cursor.create_time.isoformat(), "i": cursor.item_id, "f": fingerprint},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str) -> Cursor | None:
    """The cursor in ``token`` (``None`` for the first page); bad or foreign tokens are invalid."""
    if not token:
        return None
    invalid = InvalidArgument(
        [FieldViolation("page_token", "not a token from a previous call with these filters")]
    )
    if len(token) > MAX_PAGE_TOKEN_CHARS or not _PAGE_TOKEN_RE.fullmatch(token):
        raise invalid
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        create_time = datetime.fromisoformat(body["t"])
        item_id = body["i"]
        issued_for = body["f"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError):
        raise invalid from None
    if issued_for != fingerprint or not isinstance(item_id, str) or create_time.tzinfo is None:
        raise invalid
    return Cursor(create_time, item_id)
