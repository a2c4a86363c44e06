"""A local stand-in for the Anthropic Messages API: recorded replies served on 127.0.0.1.

A tiny HTTP/1.1 responder (keep-alive, Content-Length bodies) that records every request
and answers with the replies queued for it, in order. With nothing queued it answers 500
with a body saying so, so a test that forgot a reply fails visibly.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in received it; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """A queued answer; ``hang`` answers nothing until the client gives up."""

    status: int = 200
    body: dict[str, Any] | None = None
    hang: bool = False


class MessagesApiStandIn:
    """Serves queued :class:`Reply` s to whatever connects, recording the requests."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def reply(self, body: dict[str, Any], status: int = 200) -> None:
        self._replies.append(Reply(status=status, body=body))

    def hang(self) -> None:
        self._replies.append(Reply(hang=True))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await self._read_request(reader):
                self.requests.append(request)
                reply = self._replies.popleft() if self._replies else None
                if reply is not None and reply.hang:
                    await reader.read()  # until the client times out and disconnects
                    return
                if reply is None:
                    reply = Reply(
                        500, {"type": "error", "error": {"type": "api_error", "message": "no reply queued"}}
                    )
                writer.write(_response(reply.status, reply.body or {}))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
        request_line = await reader.readline()
        if not request_line.strip():
            return None
        method, path, _ = request_line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        return RecordedRequest(method, path, headers, json.loads(raw) if raw else {})


def _response(status: int, body: dict[str, Any]) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Overloaded"  # 529 is Anthropic's own
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n"
        "request-id: req_011CStandIn\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + payload
