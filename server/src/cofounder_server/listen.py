"""A check that the listen address can be bound, made before anything else starts.

gRPC's own bind failure says only "Failed to bind" (the reason goes to its C-core log as a
separate line), and it would come after Redis and SQL were started. Binding a plain
socket first names the reason in one line while nothing has started yet.
"""

from __future__ import annotations

import socket


class ListenError(Exception):
    """The address cannot be served on; the message is one line for the operator."""


def check_can_listen(listen: str, *, reuse_port: bool = False) -> None:
    """Raise :class:`ListenError` if a TCP ``HOST:PORT`` cannot be bound now.

    With ``reuse_port`` the probe binds as gRPC will (``SO_REUSEPORT``), so a port that other
    servers of the same user share is free. Port 0 and unix sockets are left to gRPC.
    Blocking (name resolution): run it in a thread from async code.
    """
    if listen.startswith(("unix:", "unix-abstract:")) or ":" not in listen:
        return
    bracketed, _, port_text = listen.rpartition(":")
    # An empty host (":50051") means every address, as for gRPC.
    host = bracketed.removeprefix("[").removesuffix("]") or None
    try:
        port = int(port_text)
    except ValueError:
        raise ListenError(f"cannot listen on {listen}: the port must be a number") from None
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        raise ListenError(f"cannot listen on {listen}: cannot resolve the host ({error})") from error
    failures: list[OSError] = []
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # As gRPC does: a port whose old connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as error:
                failures.append(error)
    # gRPC serves when any resolved address binds (e.g. IPv4 only for "localhost").
    if failures and len(failures) == len(addresses):
        raise ListenError(f"cannot listen on {listen}: {failures[0].strerror}") from failures[0]
