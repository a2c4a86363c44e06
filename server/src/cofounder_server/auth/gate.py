"""The check every call to a cofounder service passes before its handler runs."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TypeVar

from cofounder_server.auth.authenticator import AuthContext, Authenticator, Metadata
from cofounder_server.auth.limits import RateLimiter, StreamLimiter, StreamSlot
from cofounder_server.domain.errors import ResourceExhausted
from cofounder_server.domain.principal import Principal

log = logging.getLogger(__name__)

L = TypeVar("L", RateLimiter, StreamLimiter)

STREAM_RETRY_AFTER_SECONDS = 1.0
"""Suggested wait after hitting the stream cap: a slot frees whenever any stream ends."""


@dataclass(frozen=True)
class Limits:
    """The limiters of a gate; ``None`` switches one off.

    ``rate`` and ``streams`` hold per principal: each user, and each end user a service acts
    for. ``service_rate`` and ``service_streams`` hold per service across all the users it
    acts for, so one service token has an overall bound however many user ids it names.
    """

    rate: RateLimiter | None = None
    streams: StreamLimiter | None = None
    service_rate: RateLimiter | None = None
    service_streams: StreamLimiter | None = None


@dataclass(frozen=True)
class _Budget:
    """One limit a call is held to: under which key, and how it is described."""

    key: str
    subject: str
    scope: str


class CallGate:
    """Authenticates a call and applies the limits.

    Limits are keyed by the principal the call acts as, so each end user of a service has
    their own budget, and one user's runaway dashboard cannot starve the others; a service's
    calls also count against the service's own aggregate budget.
    """

    def __init__(self, authenticator: Authenticator, limits: Limits | None = None) -> None:
        self._authenticator = authenticator
        self._limited = authenticator.limited
        self.limits = limits or Limits()

    def admit(self, method: str, metadata: Metadata, auth_context: AuthContext) -> Principal:
        """The caller's principal, once it is authenticated and within its request rates."""
        principal = self._authenticator.authenticate(metadata, auth_context)
        if self._limited:
            self._charge_rates(principal)
        log.debug("%s admitted for %s", method, principal)
        return principal

    def open_stream(self, principal: Principal) -> list[StreamSlot]:
        """Count one more open stream for ``principal`` (and its service); the slots to release.

        Raises ``ResourceExhausted`` when a cap is reached; then nothing stays counted.
        """
        if not self._limited:
            return []
        slots: list[StreamSlot] = []
        for limiter, budget in self._budgets(principal, self.limits.streams, self.limits.service_streams):
            slot = limiter.acquire(budget.key)
            if slot is None:
                for taken in slots:
                    taken.release()
                raise ResourceExhausted(
                    "TOO_MANY_STREAMS",
                    f"at most {limiter.max_per_key} open streams {budget.scope}; close one or retry later",
                    subject=budget.subject,
                    retry_after_seconds=STREAM_RETRY_AFTER_SECONDS,
                )
            slots.append(slot)
        return slots

    def _charge_rates(self, principal: Principal) -> None:
        # Every budget is checked before any is charged: a call refused by one limit spends
        # nothing from the others (a user over its own rate does not drain its service's).
        budgets = self._budgets(principal, self.limits.rate, self.limits.service_rate)
        for limiter, budget in budgets:
            wait = limiter.wait(budget.key)
            if wait > 0:
                if limiter.tracks(budget.key):
                    message = (
                        f"more than {limiter.rate_per_second:g} requests per second "
                        f"(burst {limiter.burst}) {budget.scope}; retry after {wait:.3f} s"
                    )
                else:
                    message = (
                        f"the server is holding the request rates of {limiter.max_keys} principals "
                        f"active in the last {limiter.burst / limiter.rate_per_second:g} s; "
                        f"retry after {wait:.3f} s"
                    )
                raise ResourceExhausted(
                    "RATE_LIMITED",
                    message,
                    subject=budget.subject,
                    # Round up to the millisecond: retrying a hair early would fail again.
                    retry_after_seconds=math.ceil(wait * 1000) / 1000,
                )
        for limiter, budget in budgets:
            limiter.charge(budget.key)

    @staticmethod
    def _budgets(principal: Principal, own: L | None, service: L | None) -> list[tuple[L, _Budget]]:
        budgets: list[tuple[L, _Budget]] = []
        if own is not None:
            key = principal.principal_id
            budgets.append((own, _Budget(key, f"principal:{key}", "per principal")))
        if service is not None and principal.acting_service is not None:
            key = principal.acting_service
            budgets.append((service, _Budget(key, f"service:{key}", "per service across its users")))
        return budgets
