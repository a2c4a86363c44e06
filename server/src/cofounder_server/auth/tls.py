"""Server TLS credentials from PEM files, checked at start so mistakes fail loudly and early."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc


class TLSConfigError(ValueError):
    """A TLS file is missing, unreadable, or does not fit with the others."""


def server_credentials(
    cert_file: Path, key_file: Path, client_ca_file: Path | None
) -> grpc.ServerCredentials:
    """TLS with this certificate chain and key; with ``client_ca_file``, mutual TLS.

    With a client CA every client must present a certificate signed by it (the handshake
    fails otherwise), so a certificate's name can be trusted as its identity.
    """
    # grpc reports a bad or mismatched key only as a failed handshake, long after start-up;
    # the ssl module checks the pair now and says what is wrong.
    checker = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        checker.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise TLSConfigError(f"cannot use TLS certificate {cert_file} with key {key_file}: {error}") from None
    client_ca: bytes | None = None
    if client_ca_file is not None:
        try:
            checker.load_verify_locations(cafile=client_ca_file)
            client_ca = client_ca_file.read_bytes()
        except (OSError, ssl.SSLError) as error:
            raise TLSConfigError(f"cannot use client CA file {client_ca_file}: {error}") from None
    return grpc.ssl_server_credentials(
        [(key_file.read_bytes(), cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
