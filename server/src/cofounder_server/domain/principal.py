"""Who is calling, and what they may see."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from cofounder_server.domain.errors import PermissionDenied

PRINCIPAL_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}\Z")
"""Principal and end-user ids: 1 to 128 characters, safe in logs, SQL keys and metadata.

Matched whole (``\\Z``, not ``$``, which also matches before a final newline)."""

PRINCIPAL_ID_RULE = "must be 1 to 128 characters of [A-Za-z0-9._@:+-], starting with a letter or digit"


class Role(StrEnum):
    """What a principal may do."""

    USER = "user"
    """Acts as itself and sees only what it owns."""
    SERVICE = "service"
    """A backend acting for its end users; every call names the user it acts for."""
    OPERATOR = "operator"
    """Support and on-call: sees and steers every owner's jobs."""


@dataclass(frozen=True)
class Principal:
    """The caller a request acts as. Every domain read and write is scoped by it.

    A ``service`` credential never becomes a principal of its own: each of its calls acts as
    the end user it names (role ``user``), and ``acting_service`` keeps the service's id for
    audit and logs.
    """

    principal_id: str
    role: Role
    acting_service: str | None = None

    @property
    def owner_scope(self) -> str | None:
        """The owner id that bounds what this principal sees; ``None`` means everything."""
        return None if self.role is Role.OPERATOR else self.principal_id

    def require_operator(self, action: str) -> None:
        """Raise ``PermissionDenied`` unless this principal is an operator.

        For actions that are not about one owner's objects (an owner acting on another
        owner's object is ``NotFound``, never this).
        """
        if self.role is not Role.OPERATOR:
            raise PermissionDenied("OPERATOR_ONLY", f"{action} is reserved for operators")

    def __str__(self) -> str:
        if self.acting_service is not None:
            return f"{self.principal_id} (via service {self.acting_service})"
        return f"{self.principal_id} ({self.role})"


LOCAL_PRINCIPAL = Principal(principal_id="local", role=Role.USER)
"""The single principal of a server running without authentication (loopback only)."""
