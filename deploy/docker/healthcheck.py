"""The container image's HEALTHCHECK: exit 0 when the server in this container is SERVING.

It asks ``grpc.health.v1.Health/Check`` (the overall status: SQL, SQL writes and Redis) on the
port of ``COFOUNDER_LISTEN``, over plaintext on the loopback address. With
``COFOUNDER_TLS_CERT_FILE`` set the port speaks only TLS, whose certificate names a host and not
the loopback address: the check then proves only that the port accepts connections.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def port_of(listen: str) -> int:
    """The port of a ``HOST:PORT`` or ``[V6]:PORT`` listen address."""
    return int(listen.rpartition(":")[2])


def is_serving(environ: Mapping[str, str]) -> bool:
    """Whether the server on ``COFOUNDER_LISTEN``'s port answers health checks with SERVING."""
    port = port_of(environ.get("COFOUNDER_LISTEN", "127.0.0.1:50051"))
    if environ.get("COFOUNDER_TLS_CERT_FILE"):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS):
                return True
        except OSError:
            return False
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


if __name__ == "__main__":
    sys.exit(0 if is_serving(os.environ) else 1)
