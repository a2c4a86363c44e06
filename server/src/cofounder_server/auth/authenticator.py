"""From call metadata and the TLS peer to the :class:`Principal` a call acts as.

Rules, in order:

1. ``authorization: Bearer <token>`` identifies the caller when present (exactly one).
2. Otherwise, with mutual TLS configured, the verified client certificate's subject common
   name, mapped through the ``[[certificates]]`` of the principals file.
3. Otherwise the call is ``UNAUTHENTICATED``.

A ``service`` must name the end user of each call in ``cofounder-on-behalf-of``; the call
then acts as that user (role ``user``) and never as the service or as an operator. Without
the header it is ``PERMISSION_DENIED`` (a service has no objects of its own, so there is
nothing it could do as itself); a ``user`` or ``operator`` sending the header is
``PERMISSION_DENIED`` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from cofounder_server.auth.tokens import TOKEN_RE, CredentialStore
from cofounder_server.domain.errors import FieldViolation, InvalidArgument, PermissionDenied, Unauthenticated
from cofounder_server.domain.principal import (
    LOCAL_PRINCIPAL,
    PRINCIPAL_ID_RE,
    PRINCIPAL_ID_RULE,
    Principal,
    Role,
)

AUTHORIZATION_HEADER = "authorization"
ON_BEHALF_OF_HEADER = "cofounder-on-behalf-of"
CLIENT_CN_PROPERTY = "x509_common_name"
"""gRPC auth-context property holding the verified client certificate's subject CN."""

Metadata = Iterable[tuple[str, str | bytes]]
AuthContext = Mapping[str, Iterable[bytes]]


class Authenticator(Protocol):
    """Decides who a call is. Raises ``Unauthenticated``, ``PermissionDenied`` or ``InvalidArgument``."""

    limited: bool
    """Whether per-principal rate and stream limits apply to the principals it returns."""

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        """The principal of a call with this metadata over a connection with this auth context."""
        ...


class LocalAuthenticator:
    """No authentication configured: every call is the single local principal.

    Only used on loopback (or behind the loudly named override), where the one local
    principal is the only tenant; per-principal limits would only throttle it against
    itself, so they are off.
    """

    limited = False

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        """Always :data:`LOCAL_PRINCIPAL`; credentials sent anyway are ignored."""
        return LOCAL_PRINCIPAL


class CredentialAuthenticator:
    """Authenticates calls against the principals file (tokens, and client certificates with mTLS)."""

    limited = True

    def __init__(self, store: CredentialStore, *, trust_client_certificates: bool) -> None:
        self._store = store
        # Only a server that verifies client certificates against a CA may believe their names.
        self._trust_client_certificates = trust_client_certificates

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        """See the module documentation for the rules."""
        credentials = self._store.current  # one version of the file for the whole decision
        authorization = _values(metadata, AUTHORIZATION_HEADER)
        if len(authorization) > 1:
            raise Unauthenticated("AUTHORIZATION_MALFORMED", "send at most one authorization header")
        if authorization:
            # Only spaces and tabs may surround the parts (HTTP's optional whitespace); a
            # token followed by a newline, NUL or line separator is malformed, not trimmed.
            scheme, _, token = authorization[0].strip(" \t").partition(" ")
            token = token.lstrip(" ")
            if scheme.lower() != "bearer" or not TOKEN_RE.fullmatch(token):
                raise Unauthenticated(
                    "AUTHORIZATION_MALFORMED", "the authorization header must be 'Bearer <token>'"
                )
            identity = credentials.identify_token(token)
            if identity is None:
                raise Unauthenticated("CREDENTIALS_UNKNOWN", "the bearer token is not valid")
        else:
            names = auth_context.get(CLIENT_CN_PROPERTY, ()) if self._trust_client_certificates else ()
            name = next(iter(names), None)
            if name is None:
                raise Unauthenticated(
                    "CREDENTIALS_MISSING", "send 'authorization: Bearer <token>' or a client certificate"
                )
            common_name = name.decode(errors="replace")
            identity = credentials.certificates.get(common_name)
            if identity is None:
                raise Unauthenticated(
                    "CREDENTIALS_UNKNOWN", f"client certificate CN={common_name!r} is not a known principal"
                )

        on_behalf_of = _values(metadata, ON_BEHALF_OF_HEADER)
        if identity.role is not Role.SERVICE:
            if on_behalf_of:
                raise PermissionDenied(
                    "ON_BEHALF_OF_NOT_ALLOWED",
                    f"only service principals may send {ON_BEHALF_OF_HEADER}; {identity.role} may not",
                )
            return Principal(identity.principal_id, identity.role)
        if not on_behalf_of:
            raise PermissionDenied(
                "ON_BEHALF_OF_REQUIRED",
                f"a service acts only for its users: name the user in {ON_BEHALF_OF_HEADER}",
            )
        field = f"metadata.{ON_BEHALF_OF_HEADER}"
        if len(on_behalf_of) > 1:
            raise InvalidArgument([FieldViolation(field, "must be sent once")])
        user_id = on_behalf_of[0]
        if not PRINCIPAL_ID_RE.fullmatch(user_id):
            raise InvalidArgument([FieldViolation(field, PRINCIPAL_ID_RULE)])
        if credentials.roles.get(user_id, Role.USER) is not Role.USER:
            # Acting "for" a configured service or operator would borrow its objects.
            raise PermissionDenied(
                "ON_BEHALF_OF_NOT_A_USER", f"{user_id!r} is not a user; a service acts only for users"
            )
        return Principal(user_id, Role.USER, acting_service=identity.principal_id)


def _values(metadata: Metadata, key: str) -> list[str]:
    return [value for k, value in metadata if k == key and isinstance(value, str)]
