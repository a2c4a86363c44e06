"""Transport security settings: server-authenticated TLS and mutual TLS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TLSConfig"]


@dataclass(frozen=True)
class TLSConfig:
    """How to secure the channel to the control plane.

    ``TLSConfig()`` verifies the server against the system's trusted roots. Pass
    ``root_certificates`` to trust a private CA, and ``certificate_chain`` with ``private_key``
    to present a client certificate (mutual TLS). All values are PEM-encoded bytes.
    """

    root_certificates: bytes | None = None
    """PEM bundle of CAs that may sign the server's certificate; ``None`` for the system roots."""
    certificate_chain: bytes | None = None
    """PEM client certificate chain, for mutual TLS."""
    private_key: bytes | None = None
    """PEM private key of the client certificate, for mutual TLS."""
    server_name_override: str | None = None
    """Verify the server certificate against this name instead of the target's host.

    Useful when connecting by IP address or through a tunnel; not a way to skip verification.
    """

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("certificate_chain and private_key must be given together (mutual TLS)")

    @classmethod
    def from_files(
        cls,
        *,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name_override: str | None = None,
    ) -> TLSConfig:
        """Build a configuration from PEM files on disk.

        Args:
            ca_file: CA bundle that signed the server certificate; omit for the system roots.
            cert_file: client certificate chain, for mutual TLS (needs ``key_file``).
            key_file: client private key, for mutual TLS (needs ``cert_file``).
            server_name_override: see :attr:`server_name_override`.
        """
        return cls(
            root_certificates=_read(ca_file),
            certificate_chain=_read(cert_file),
            private_key=_read(key_file),
            server_name_override=server_name_override,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials for this configuration."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
