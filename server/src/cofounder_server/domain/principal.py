"""Who is calling, and what they may see."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """What a principal may do."""

    USER = "user"
    SERVICE = "service"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """The caller a request acts as. Every domain read and write is scoped by it."""

    principal_id: str
    role: Role

    @property
    def owner_scope(self) -> str | None:
        """The owner id that bounds what this principal sees; ``None`` means everything."""
        return None if self.role is Role.OPERATOR else self.principal_id


LOCAL_PRINCIPAL = Principal(principal_id="local", role=Role.USER)
"""The single principal of a server running without authentication (loopback only)."""
