"""The check every call to a cofounder service passes before its handler runs."""

from __future__ import annotations

import logging
import math

from cofounder_server.auth.authenticator import AuthContext, Authenticator, Metadata
from cofounder_server.auth.limits import RateLimiter, StreamLimiter, StreamSlot
from cofounder_server.domain.errors import ResourceExhausted
from cofounder_server.domain.principal import Principal

log = logging.getLogger(__name__)

STREAM_RETRY_AFTER_SECONDS = 1.0
"""Suggested wait after hitting the stream cap: a slot frees whenever any stream ends."""


class CallGate:
    """Authenticates a call and applies the per-principal limits.

    Limits are keyed by the principal the call acts as, so each end user of a service has
    their own budget, and one user's runaway dashboard cannot starve the others.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        rate_limiter: RateLimiter | None = None,
        stream_limiter: StreamLimiter | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._limited = authenticator.limited
        self.rate_limiter = rate_limiter
        self.stream_limiter = stream_limiter

    def admit(self, method: str, metadata: Metadata, auth_context: AuthContext) -> Principal:
        """The caller's principal, once it is authenticated and within its request rate."""
        principal = self._authenticator.authenticate(metadata, auth_context)
        if self._limited and self.rate_limiter is not None:
            wait = self.rate_limiter.acquire(principal.principal_id)
            if wait > 0:
                limiter = self.rate_limiter
                raise ResourceExhausted(
                    "RATE_LIMITED",
                    f"more than {limiter.rate_per_second:g} requests per second "
                    f"(burst {limiter.burst}) for this principal; retry after {wait:.3f} s",
                    subject=f"principal:{principal.principal_id}",
                    # Round up to the millisecond: retrying a hair early would fail again.
                    retry_after_seconds=math.ceil(wait * 1000) / 1000,
                )
        log.debug("%s admitted for %s", method, principal)
        return principal

    def open_stream(self, principal: Principal) -> StreamSlot | None:
        """Count one more open stream for ``principal``; ``None`` when nothing is counted.

        Raises ``ResourceExhausted`` when the principal already has the maximum open.
        """
        if not self._limited or self.stream_limiter is None:
            return None
        slot = self.stream_limiter.acquire(principal.principal_id)
        if slot is None:
            raise ResourceExhausted(
                "TOO_MANY_STREAMS",
                f"at most {self.stream_limiter.max_per_key} open streams per principal; "
                "close one or retry later",
                subject=f"principal:{principal.principal_id}",
                retry_after_seconds=STREAM_RETRY_AFTER_SECONDS,
            )
        return slot
