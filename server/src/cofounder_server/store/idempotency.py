"""Idempotency keys: a retried mutation with the same ``request_id`` replays, never repeats.

A key is scoped by owner and operation. It remembers a fingerprint of the request that
first used it, so reusing the ``request_id`` for a different request is an error rather
than a silent replay of something else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from cofounder_server.domain.errors import AlreadyExists
from cofounder_server.store.models import IdempotencyKeyRow


def request_fingerprint(request: object) -> str:
    """A SHA-256 hex digest of ``request``'s canonical JSON (dataclasses field by field).

    Two requests get the same fingerprint exactly when their contents are equal, whatever
    the order of keys in their mappings.
    """
    canonical = json.dumps(
        _fields(request), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _fields(value: object) -> object:
    """Dataclasses as dicts of their fields, at any depth (what ``dataclasses.asdict`` gives
    JSON, without copying every nested value: the text, and so the digest, is the same).
    A field left at its default ``None`` is left out: a field added to a request later keeps
    the fingerprints of requests that do not use it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _fields(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if not (field.default is None and getattr(value, field.name) is None)
        }
    if isinstance(value, tuple):
        return [_fields(item) for item in value]
    return value


async def replayed_resource_id(
    session: AsyncSession, *, owner_id: str, operation: str, request_id: str, fingerprint: str
) -> str | None:
    """The resource an earlier identical request created, or ``None`` if the key is new.

    Raises ``AlreadyExists("REQUEST_ID_REUSED")`` when the key belongs to another request.
    """
    key = await session.get(IdempotencyKeyRow, (owner_id, operation, request_id))
    if key is None:
        return None
    if key.fingerprint != fingerprint:
        raise reused_key(operation, request_id)
    return key.resource_id


def reused_key(operation: str, request_id: str) -> AlreadyExists:
    """The error for a ``request_id`` already used for a different ``operation`` request."""
    return AlreadyExists(
        "REQUEST_ID_REUSED", f"request_id {request_id!r} was already used for a different {operation} request"
    )


def record_key(
    session: AsyncSession,
    *,
    owner_id: str,
    operation: str,
    request_id: str,
    fingerprint: str,
    resource_id: str,
    now: datetime,
) -> None:
    """Add the key to the session's transaction, to commit with the resource it names.

    A concurrent request with the same key makes the flush or commit fail with
    ``sqlalchemy.exc.IntegrityError``; the caller then replays via :func:`replayed_resource_id`.
    """
    session.add(
        IdempotencyKeyRow(
            owner_id=owner_id,
            operation=operation,
            request_id=request_id,
            fingerprint=fingerprint,
            resource_id=resource_id,
            create_time=now,
        )
    )
