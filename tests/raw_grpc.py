"""A unary gRPC call over a raw HTTP/2 connection, for metadata grpcio refuses to send.

grpcio's client checks header values before sending (no newline, NUL or non-ASCII), but
the server's transport passes whatever a peer sends through to the application, so an
attacker with their own HTTP/2 client can. This sends the header values as given.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass
from urllib.parse import unquote

import grpc
import h2.config
import h2.connection
import h2.events
from google.rpc import status_pb2

from tests.support import RPC_TIMEOUT


@dataclass(frozen=True)
class RawResult:
    """How the server ended the call: its status code, message and rich status."""

    code: grpc.StatusCode
    message: str
    status: status_pb2.Status


async def raw_unary(port: int, path: str, request: bytes, metadata: list[tuple[str, str]]) -> RawResult:
    """Call ``path`` on 127.0.0.1:``port`` with ``request`` and ``metadata`` sent verbatim."""
    return await asyncio.wait_for(_call(port, path, request, metadata), RPC_TIMEOUT)


async def _call(port: int, path: str, request: bytes, metadata: list[tuple[str, str]]) -> RawResult:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    try:
        connection.initiate_connection()
        stream_id = connection.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        connection.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in headers])
        connection.send_data(stream_id, b"\x00" + len(request).to_bytes(4, "big") + request, end_stream=True)
        writer.write(connection.data_to_send())
        await writer.drain()
        received: dict[str, bytes] = {}
        while "grpc-status" not in received:
            data = await reader.read(65536)
            if not data:
                raise AssertionError(f"connection closed before a status; headers {received}")
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    received.update((bytes(k).decode(), bytes(v)) for k, v in event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    raise AssertionError(f"the server reset the call: {event}")
            writer.write(connection.data_to_send())
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status = status_pb2.Status()
    details = received.get("grpc-status-details-bin")
    if details is not None:
        status.ParseFromString(base64.b64decode(details + b"=" * (-len(details) % 4)))
    code = next(c for c in grpc.StatusCode if c.value[0] == int(received["grpc-status"]))
    message = unquote(received.get("grpc-message", b"").decode())  # percent-encoded on the wire
    return RawResult(code, message, status)
