"""Turns the security settings into a call gate, transport credentials and a listening port.

The safe defaults live here: without a principals file the server is a single local
principal and refuses to listen beyond loopback unless
``--allow-unauthenticated-non-loopback`` says otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from cofounder_server.auth.authenticator import Authenticator, CredentialAuthenticator, LocalAuthenticator
from cofounder_server.auth.gate import CallGate, Limits
from cofounder_server.auth.limits import Monotonic, RateLimiter, StreamLimiter
from cofounder_server.auth.tls import TLSConfigError, server_credentials
from cofounder_server.auth.tokens import CredentialStore, PrincipalsFileError
from cofounder_server.config import Settings
from cofounder_server.domain.principal import LOCAL_PRINCIPAL

log = logging.getLogger(__name__)


def is_loopback(listen: str) -> bool:
    """Whether ``listen`` (``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH``) is reachable only locally."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = listen.rpartition(":")[0] if ":" in listen else listen
    host = host.removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # any other host name may resolve to anything
        return False


def _limits(settings: Settings, monotonic: Monotonic) -> Limits:
    """The limiters the settings ask for (a zero rate or cap switches one off)."""
    for name in (
        "rate_limit_per_second",
        "max_streams_per_principal",
        "service_rate_limit_per_second",
        "max_streams_per_service",
    ):
        if getattr(settings, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must not be negative")
    if settings.rate_limit_tracked_principals < 1:
        raise ValueError("--rate-limit-tracked-principals must be at least 1")

    def rate(per_second: float, burst: int) -> RateLimiter | None:
        if not per_second:
            return None
        return RateLimiter(per_second, burst, monotonic, max_keys=settings.rate_limit_tracked_principals)

    def streams(cap: int) -> StreamLimiter | None:
        return StreamLimiter(cap) if cap else None

    return Limits(
        rate=rate(settings.rate_limit_per_second, settings.rate_limit_burst),
        streams=streams(settings.max_streams_per_principal),
        service_rate=rate(settings.service_rate_limit_per_second, settings.service_rate_limit_burst),
        service_streams=streams(settings.max_streams_per_service),
    )


@dataclass
class Security:
    """Everything about who may call, and how the port is secured."""

    gate: CallGate
    credentials: CredentialStore | None
    transport: grpc.ServerCredentials | None

    @classmethod
    def from_settings(cls, settings: Settings, monotonic: Monotonic = time.monotonic) -> Security:
        """Check the security settings and build from them; ``SystemExit`` explains a refusal."""
        try:
            return cls._build(settings, monotonic)
        except (PrincipalsFileError, TLSConfigError, ValueError) as error:
            raise SystemExit(f"refusing to start: {error}") from None

    @classmethod
    def _build(cls, settings: Settings, monotonic: Monotonic) -> Security:
        if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
            raise ValueError("--tls-cert-file and --tls-key-file must be given together")
        if settings.tls_client_ca_file and not settings.tls_cert_file:
            raise ValueError("--tls-client-ca-file (mutual TLS) needs --tls-cert-file and --tls-key-file")
        if settings.tls_client_ca_file and not settings.auth_tokens_file:
            raise ValueError(
                "--tls-client-ca-file needs --auth-tokens-file: its [[certificates]] map "
                "client certificates to principals"
            )
        if (
            not settings.auth_tokens_file
            and not is_loopback(settings.listen)
            and not settings.allow_unauthenticated_non_loopback
        ):
            raise ValueError(
                f"--listen {settings.listen} is not a loopback address and no --auth-tokens-file "
                "is configured: anyone who can reach it would act as the one local principal. "
                "Configure authentication, listen on 127.0.0.1, or (only behind something that "
                "authenticates for you) pass --allow-unauthenticated-non-loopback"
            )

        transport = None
        if settings.tls_cert_file:
            transport = server_credentials(
                Path(settings.tls_cert_file),
                Path(settings.tls_key_file),
                Path(settings.tls_client_ca_file) if settings.tls_client_ca_file else None,
            )
        store = None
        authenticator: Authenticator = LocalAuthenticator()
        if settings.auth_tokens_file:
            store = CredentialStore(Path(settings.auth_tokens_file))
            authenticator = CredentialAuthenticator(
                store, trust_client_certificates=bool(settings.tls_client_ca_file)
            )
        return cls(
            gate=CallGate(authenticator, _limits(settings, monotonic)),
            credentials=store,
            transport=transport,
        )

    def bind(self, server: grpc.aio.Server, listen: str) -> int:
        """Add the listening port (TLS when configured); the port number bound."""
        if self.transport is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, self.transport)

    def log_start(self, settings: Settings) -> None:
        """Say at start-up how callers are identified and how the port is secured."""
        transport = "plaintext"
        if self.transport is not None:
            transport = "mutual TLS" if settings.tls_client_ca_file else "TLS"
        if self.credentials is None:
            message = (
                "authentication OFF: every call acts as the single local principal %r; "
                "per-principal limits off; transport %s"
            )
            if is_loopback(settings.listen):
                log.info(message + "; listening on loopback only", LOCAL_PRINCIPAL.principal_id, transport)
            else:
                log.warning(
                    "!!! " + message + "; listening on NON-LOOPBACK %s because "
                    "--allow-unauthenticated-non-loopback is set: anyone who reaches it has full access",
                    LOCAL_PRINCIPAL.principal_id,
                    transport,
                    settings.listen,
                )
            return
        log.info(
            "authentication ON: %s from %s; transport %s",
            self.credentials.current.summary(),
            self.credentials.path,
            transport,
        )
        if self.transport is None and not is_loopback(settings.listen):
            log.warning("bearer tokens travel in plaintext on %s: configure --tls-cert-file", settings.listen)

    def reload(self) -> bool:
        """Re-read the principals file (SIGHUP); False when none is configured or it is invalid."""
        if self.credentials is None:
            log.info("SIGHUP: no principals file configured, nothing to reload")
            return False
        return self.credentials.reload()
