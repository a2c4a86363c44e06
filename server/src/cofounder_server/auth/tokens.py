"""The principals file: which bearer tokens and client certificates may call, as whom.

The server reads it at start and again on SIGHUP. It holds only SHA-256 digests of tokens,
never tokens, so a leaked copy of the file (or of a backup) lets nobody call the server::

    # One entry per token; several tokens may name the same principal (rotation).
    [[tokens]]
    sha256 = "<64 hex digits: the output of `cofounder-server hash-token`>"
    principal = "billing-backend"
    role = "service"          # user | service | operator

    # A service names the user of each call; the call counts against that user's limits
    # and against the service's own limits across all its users
    # (--service-rate-limit-per-second, --service-rate-limit-burst, --max-streams-per-service).

    # With --tls-client-ca-file: a verified client certificate whose subject CN is
    # `common_name` calls as `principal`.
    [[certificates]]
    common_name = "reporting.internal"
    principal = "reporting"
    role = "service"

Why a plain SHA-256 and a dict lookup are enough here: tokens are random secrets of at
least 192 bits (``hash-token`` refuses shorter ones), so a slow password hash adds nothing,
and a lookup keyed by the digest of the presented token is constant-time where it matters.
The timing of a dict lookup depends on the presented token's digest, which an attacker can
compute anyway, not on how many leading characters of a real token they guessed; learning
anything about a stored digest from timing would require SHA-256 preimages.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cofounder_server.domain.principal import PRINCIPAL_ID_RE, PRINCIPAL_ID_RULE, Role

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 32
"""Shortest token ``hash-token`` accepts (32 URL-safe characters carry 192 bits)."""

TOKEN_RE = re.compile(r"\A[A-Za-z0-9._~+/-]+=*\Z")
"""RFC 6750 ``b64token``: what may follow ``Bearer`` in an authorization header."""

_SHA256_HEX_RE = re.compile(r"\A[0-9a-fA-F]{64}\Z")
_ENTRY_KEYS = {
    "tokens": ("sha256", "principal", "role"),
    "certificates": ("common_name", "principal", "role"),
}


class PrincipalsFileError(ValueError):
    """The principals file cannot be used. The message names the entry, never a secret."""


@dataclass(frozen=True)
class Identity:
    """A configured caller: the principal id a credential proves, and its role."""

    principal_id: str
    role: Role


@dataclass(frozen=True)
class Credentials:
    """One consistent reading of the principals file."""

    tokens: Mapping[bytes, Identity]
    """Raw SHA-256 digest of a token -> who presents it."""
    certificates: Mapping[str, Identity]
    """Client certificate subject common name -> who presents it."""
    roles: Mapping[str, Role]
    """Every configured principal id and its role."""

    def identify_token(self, token: str) -> Identity | None:
        """Who ``token`` belongs to, or ``None``; constant-time in the sense explained above."""
        return self.tokens.get(token_digest(token))

    def summary(self) -> str:
        """Counts for the log; never a secret."""
        return (
            f"{len(self.tokens)} token(s) and {len(self.certificates)} certificate name(s) "
            f"for {len(self.roles)} principal(s)"
        )


def token_digest(token: str) -> bytes:
    """The SHA-256 digest of ``token`` (UTF-8)."""
    return hashlib.sha256(token.encode()).digest()


def hash_token(token: str) -> str:
    """The hex digest to put in the principals file for ``token``.

    Raises ``ValueError`` for tokens that are too short to be secret or that cannot travel
    in an ``authorization: Bearer`` header.
    """
    if not TOKEN_RE.fullmatch(token):
        raise ValueError("a token may contain only A-Z a-z 0-9 . _ ~ + / - (and trailing =)")
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"a token must be at least {MIN_TOKEN_CHARS} characters of random data; make one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return hashlib.sha256(token.encode()).hexdigest()


def load_credentials(path: Path) -> Credentials:
    """Read and check the principals file; ``PrincipalsFileError`` says what is wrong."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PrincipalsFileError(f"{path}: cannot read: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        # Parser messages give a position, not the offending text.
        raise PrincipalsFileError(f"{path}: not valid TOML: {error}") from None
    unknown = sorted(set(document) - set(_ENTRY_KEYS))
    if unknown:
        raise PrincipalsFileError(
            f"{path}: unknown table(s) {unknown}; expected [[tokens]], [[certificates]]"
        )
    tokens: dict[bytes, Identity] = {}
    certificates: dict[str, Identity] = {}
    roles: dict[str, Role] = {}
    for table, keys in _ENTRY_KEYS.items():
        entries = document.get(table, [])
        if not isinstance(entries, list):
            raise PrincipalsFileError(f"{path}: {table} must be an array of tables ([[{table}]])")
        for index, entry in enumerate(entries):
            where = f"{path}: {table}[{index}]"
            identity = _identity(where, entry, keys)
            known_role = roles.setdefault(identity.principal_id, identity.role)
            if known_role is not identity.role:
                raise PrincipalsFileError(
                    f"{where}: principal {identity.principal_id!r} already has role {known_role}"
                )
            if table == "tokens":
                digest = bytes.fromhex(entry["sha256"])
                if digest in tokens:
                    raise PrincipalsFileError(f"{where}: the same token digest appears twice")
                tokens[digest] = identity
            else:
                name = entry["common_name"]
                if name in certificates:
                    raise PrincipalsFileError(f"{where}: common_name {name!r} appears twice")
                certificates[name] = identity
    if not roles:
        raise PrincipalsFileError(f"{path}: defines no [[tokens]] or [[certificates]]; nobody could call")
    return Credentials(tokens=tokens, certificates=certificates, roles=roles)


def _identity(where: str, entry: Any, keys: tuple[str, ...]) -> Identity:
    if not isinstance(entry, dict):
        raise PrincipalsFileError(f"{where}: must be a table")
    missing = [key for key in keys if key not in entry]
    extra = sorted(set(entry) - set(keys))
    if missing or extra:
        raise PrincipalsFileError(
            f"{where}: needs exactly the keys {list(keys)} (missing {missing}, unknown {extra})"
        )
    if not all(isinstance(entry[key], str) for key in keys):
        raise PrincipalsFileError(f"{where}: every value must be a string")
    # Name the field, never echo its value: someone may have pasted a token by mistake.
    if "sha256" in entry and not _SHA256_HEX_RE.fullmatch(entry["sha256"]):
        raise PrincipalsFileError(f"{where}: sha256 must be 64 hex digits (cofounder-server hash-token)")
    if "common_name" in entry and not entry["common_name"].strip():
        raise PrincipalsFileError(f"{where}: common_name must not be empty")
    if not PRINCIPAL_ID_RE.fullmatch(entry["principal"]):
        raise PrincipalsFileError(f"{where}: principal {PRINCIPAL_ID_RULE}")
    try:
        role = Role(entry["role"])
    except ValueError:
        raise PrincipalsFileError(f"{where}: role must be one of {[r.value for r in Role]}") from None
    return Identity(principal_id=entry["principal"], role=role)


class CredentialStore:
    """The credentials in force, replaced as a whole on :meth:`reload`.

    Calls read :attr:`current` once, so a reload never mixes two versions of the file into
    one decision; calls already admitted (open streams included) are not affected.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = load_credentials(path)

    def reload(self) -> bool:
        """Re-read the file. On any error keep the credentials in force and log why."""
        try:
            fresh = load_credentials(self.path)
        except PrincipalsFileError as error:
            log.error("principals file NOT reloaded, previous credentials stay in force: %s", error)
            return False
        self.current = fresh
        log.info("principals file reloaded: %s", fresh.summary())
        return True
