"""A stand-in for a model provider's HTTP API, served on loopback for tests and benchmarks.

It answers two API shapes exactly as the providers do:

- ``POST /v1/messages``: the Anthropic Messages API (``content`` blocks ``text`` /
  ``tool_use``, ``stop_reason``, ``usage`` with input, output and cache tokens);
- ``POST /v1/chat/completions``: the OpenAI Chat Completions API (``choices[0].message``
  with ``content`` and ``tool_calls``, ``finish_reason``, ``usage`` with
  ``prompt_tokens_details.cached_tokens``).

Behaviour (construction arguments, attributes changeable at run time, and ``POST /control``):

- ``latency`` seconds per answer, plus up to ``jitter`` more (uniformly drawn);
- ``tool_turns``: a conversation gets this many tool-use answers, calling ``tool_name``
  with ``tool_input`` (``tool_name=None``: the first tool the request offers), then an
  end-turn answer. Decided from the request alone (the tool-result rounds already in the
  conversation), so every job makes ``tool_turns + 1`` calls and nothing is kept per job.
  A request that offers no tools always gets the end-turn answer;
- usage tokens from the request size (about one token per 4 bytes), so cost grows with
  the conversation; ``cached_fraction`` of them are reported as cached prompt tokens;
- rate limits on demand: :meth:`ModelApiStandIn.fail_next` answers the next N requests with
  429 (or 529, 503, ...) and ``retry-after`` / ``retry-after-ms`` headers,
  :meth:`ModelApiStandIn.fail_until` every request until a time; injected failures are
  answered at once, without the latency;
- exact replies queued for precise tests (:meth:`ModelApiStandIn.reply`, and
  :meth:`ModelApiStandIn.hang`, which never answers), served before anything else;
- request recording (``record=True``; off by default, so a benchmark holds no bodies) and
  arrival times (``record_arrivals=True``, by the injected ``clock``).

Statistics (:class:`Stats`): requests by path, answered statuses, in flight now, peak in
flight; readable in process (:attr:`ModelApiStandIn.stats`) and as JSON over ``GET /stats``
(with the process's CPU seconds), so a benchmark can drive and read a stand-in running as
its own process (``python -m standins.model_api --port 0 --latency 2 --tool-turns 2``).
``/stats`` and ``/control`` are not counted.

It is a plain :class:`asyncio.Protocol` (no task or stream per connection; answers are
delayed with ``call_later``) speaking HTTP/1.1 keep-alive with ``Content-Length`` bodies,
so thousands of concurrent connections cost little. Its CPU per call, measured as the
process's CPU time over the calls it answered (``python -m standins.model_api`` with uvloop
on one core of an Intel(R) Xeon(R) Processor, 2,000 concurrent keep-alive aiohttp clients on
the other, 0.5 s latency, 2 KB requests offering a tool): 42-49 us on ``/v1/messages`` and
38-42 us on ``/v1/chat/completions`` (five runs), i.e. one core answers over 20,000 calls/s.
The clients, one saturated core, sent 1,700-3,200 calls/s and kept the stand-in's core
under 15 % busy: it is not what limits a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import itertools
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, cast

import orjson

MESSAGES_PATH = "/v1/messages"
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
STATS_PATH = "/stats"
CONTROL_PATH = "/control"
_CONTROL_PATHS = frozenset({STATS_PATH, CONTROL_PATH})

Shape = Literal["anthropic", "openai"]
_SHAPES: dict[str, Shape] = {MESSAGES_PATH: "anthropic", CHAT_COMPLETIONS_PATH: "openai"}

_MAX_HEAD = 64 * 1024
_DEFAULT_TOOL_INPUT: Mapping[str, Any] = {"text": "Working on it."}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in received it; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Reply:
    """A queued answer: ``status`` with JSON ``body`` and extra ``headers``; ``hang`` answers
    nothing, holding the connection until the client gives up."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass(frozen=True)
class Failure:
    """An injected error answer: ``status`` with ``retry-after`` (seconds, or an HTTP date as
    a string) and ``retry-after-ms`` headers when given, and the API's error body."""

    status: int = 429
    retry_after: float | str | None = None
    retry_after_ms: float | None = None

    def headers(self) -> dict[str, str]:
        """The rate-limit headers this failure carries."""
        headers: dict[str, str] = {}
        if isinstance(self.retry_after, str):
            headers["retry-after"] = self.retry_after
        elif self.retry_after is not None:
            headers["retry-after"] = f"{self.retry_after:g}"
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = f"{self.retry_after_ms:g}"
        return headers


@dataclass(frozen=True)
class Arrival:
    """When a request arrived (by the stand-in's clock), where, and the status it was given
    (``None``: never answered, a :meth:`ModelApiStandIn.hang`)."""

    at: float
    path: str
    status: int | None


@dataclass
class Stats:
    """What the stand-in has served since it started or its stats were last reset."""

    requests: Counter[str] = field(default_factory=Counter)
    """Requests by path."""
    statuses: Counter[int] = field(default_factory=Counter)
    """Answers by HTTP status."""
    in_flight: int = 0
    """Requests received and not answered yet."""
    peak_in_flight: int = 0
    connections: int = 0
    """Client connections open now."""
    connections_accepted: int = 0
    """Client connections accepted (with keep-alive, far fewer than requests)."""
    arrivals: list[Arrival] = field(default_factory=list)
    """Only with ``record_arrivals``."""

    def to_json(self) -> dict[str, Any]:
        """The stats as ``GET /stats`` returns them (status keys as strings)."""
        return {
            "requests": dict(self.requests),
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "connections": self.connections,
            "connections_accepted": self.connections_accepted,
            "arrivals": [[a.at, a.path, a.status] for a in self.arrivals],
        }


class ModelApiStandIn:
    """Serves the Messages and Chat Completions APIs on ``host:port`` (port 0: any free one).

    Use as ``async with ModelApiStandIn(...) as standin:`` or call :meth:`start` and
    :meth:`close`. The attributes ``latency``, ``jitter``, ``tool_turns``, ``tool_name``,
    ``tool_input``, ``text``, ``final_text`` and ``cached_fraction`` may be changed at any
    time and apply to the next request.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        tool_turns: int = 0,
        tool_name: str | None = "narrate",
        tool_input: Mapping[str, Any] = _DEFAULT_TOOL_INPUT,
        text: str = "Working on it.",
        final_text: str = "Done.",
        cached_fraction: float = 0.0,
        record: bool = False,
        record_arrivals: bool = False,
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency = latency
        self.jitter = jitter
        self.tool_turns = tool_turns
        self.tool_name = tool_name
        self.tool_input = tool_input
        self.text = text
        self.final_text = final_text
        self.cached_fraction = cached_fraction
        self.record = record
        self.record_arrivals = record_arrivals
        self.clock = clock
        self.requests: list[RecordedRequest] = []
        """Every request, in arrival order, when ``record`` is on."""
        self.stats = Stats()
        self._host = host
        self._port = port
        self._replies: list[Reply] = []
        self._fail_count = 0
        self._fail_next = Failure()
        self._fail_until: tuple[float, Failure] | None = None
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def __aenter__(self) -> ModelApiStandIn:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen. The backlog is large so a burst of thousands of connects is not dropped."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self._host, self._port, backlog=8192
        )

    async def close(self) -> None:
        """Stop listening and drop every connection (pending answers are not sent)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for connection in list(self._connections):
            connection.abort()
        await server.wait_closed()

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the listening socket."""
        assert self._server is not None, "start() the stand-in first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def reply(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        """Answer a coming request with exactly this (queued replies are served in order,
        before injected failures and generated answers)."""
        self._replies.append(Reply(status=status, body=body, headers=dict(headers or {})))

    def hang(self) -> None:
        """Never answer a coming request (it stays in flight until the client disconnects)."""
        self._replies.append(Reply(hang=True))

    def fail_next(
        self,
        count: int,
        status: int = 429,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
    ) -> None:
        """Answer the next ``count`` model requests with ``status`` and these headers."""
        self._fail_count = count
        self._fail_next = Failure(status, retry_after, retry_after_ms)

    def fail_until(
        self,
        deadline: float,
        status: int = 429,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
    ) -> None:
        """Answer every model request with ``status`` until ``deadline`` (by ``clock``)."""
        self._fail_until = (deadline, Failure(status, retry_after, retry_after_ms))

    def stop_failing(self) -> None:
        """Forget :meth:`fail_next` and :meth:`fail_until`."""
        self._fail_count = 0
        self._fail_until = None

    def reset_stats(self) -> None:
        """Start counting afresh (what is open or in flight now stays counted)."""
        in_flight, connections = self.stats.in_flight, self.stats.connections
        self.stats = Stats(in_flight=in_flight, peak_in_flight=in_flight, connections=connections)

    def config_json(self) -> dict[str, Any]:
        """The current behaviour, as ``GET /stats`` reports it under ``config``."""
        return {
            "latency": self.latency,
            "jitter": self.jitter,
            "tool_turns": self.tool_turns,
            "tool_name": self.tool_name,
            "tool_input": dict(self.tool_input),
            "cached_fraction": self.cached_fraction,
            "fail_next": self._fail_count,
            "record": self.record,
            "record_arrivals": self.record_arrivals,
        }

    # -- answering ---------------------------------------------------------------------

    def _answer(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[float, int, bytes, dict[str, str]] | None:
        """``(delay, status, body, headers)`` for one model request, or ``None`` to hang."""
        stats = self.stats
        stats.requests[path] += 1
        shape = _SHAPES.get(path)
        body: Any = None
        if self.record or shape is not None:
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = None
        if self.record:
            self.requests.append(RecordedRequest(method, path, headers, body))
        answer = self._model_answer(method, path, shape, body, len(raw))
        if self.record_arrivals:
            stats.arrivals.append(Arrival(self.clock(), path, None if answer is None else answer[1]))
        return answer

    def _model_answer(
        self, method: str, path: str, shape: Shape | None, body: Any, size: int
    ) -> tuple[float, int, bytes, dict[str, str]] | None:
        if self._replies:
            reply = self._replies.pop(0)
            if reply.hang:
                return None
            return self._delay(), reply.status, orjson.dumps(reply.body), dict(reply.headers)
        if shape is None or method != "POST":
            return 0.0, 404, orjson.dumps(_error_body(shape, 404, f"no route for {method} {path}")), {}
        failure = self._failure()
        if failure is not None:
            error = _error_body(shape, failure.status, "injected failure")
            return 0.0, failure.status, orjson.dumps(error), failure.headers()
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            error = _error_body(shape, 400, "the body must be a JSON object with a messages list")
            return 0.0, 400, orjson.dumps(error), {}
        answer = self._messages_answer(body, size) if shape == "anthropic" else self._chat_answer(body, size)
        return self._delay(), 200, orjson.dumps(answer), {}

    def _delay(self) -> float:
        if self.jitter:
            return self.latency + random.uniform(0.0, self.jitter)
        return self.latency

    def _failure(self) -> Failure | None:
        if self._fail_count > 0:
            self._fail_count -= 1
            return self._fail_next
        if self._fail_until is not None:
            deadline, failure = self._fail_until
            if self.clock() < deadline:
                return failure
            self._fail_until = None
        return None

    def _tool(self, offered: Any, shape: Shape) -> str | None:
        """The tool a tool-use answer calls, or ``None`` when the request offers no tools."""
        if not isinstance(offered, list) or not offered:
            return None
        if self.tool_name is not None:
            return self.tool_name
        first = offered[0] if isinstance(offered[0], dict) else {}
        if shape == "openai":
            first = first.get("function") or {}
        name = first.get("name")
        return name if isinstance(name, str) else None

    def _tokens(self, size: int) -> tuple[int, int]:
        """Prompt tokens for a request of ``size`` bytes, and how many of them were cached."""
        prompt = max(1, size // 4)
        return prompt, int(prompt * self.cached_fraction)

    def _messages_answer(self, request: dict[str, Any], size: int) -> dict[str, Any]:
        rounds = sum(1 for message in request["messages"] if _has_tool_result(message))
        tool = self._tool(request.get("tools"), "anthropic") if rounds < self.tool_turns else None
        number = next(self._ids)
        content: list[dict[str, Any]]
        if tool is not None:
            text = self.text
            content = [
                {"type": "text", "text": text},
                {
                    "type": "tool_use",
                    "id": f"toolu_standin{number:012d}",
                    "name": tool,
                    "input": self.tool_input,
                },
            ]
            output = (len(text) + len(orjson.dumps(self.tool_input))) // 4 + 1
        else:
            content = [{"type": "text", "text": self.final_text}]
            output = len(self.final_text) // 4 + 1
        prompt, cached = self._tokens(size)
        return {
            "id": f"msg_standin{number:012d}",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", ""),
            "content": content,
            "stop_reason": "tool_use" if tool is not None else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt - cached,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached,
                "output_tokens": output,
                "service_tier": "standard",
            },
        }

    def _chat_answer(self, request: dict[str, Any], size: int) -> dict[str, Any]:
        rounds, previous = 0, None
        for message in request["messages"]:
            role = message.get("role") if isinstance(message, dict) else None
            if role == "tool" and previous != "tool":
                rounds += 1
            previous = role
        tool = self._tool(request.get("tools"), "openai") if rounds < self.tool_turns else None
        number = next(self._ids)
        answer: dict[str, Any] = {"role": "assistant", "refusal": None, "annotations": []}
        if tool is not None:
            arguments = orjson.dumps(self.tool_input).decode()
            answer["content"] = None
            answer["tool_calls"] = [
                {
                    "id": f"call_standin{number:012d}",
                    "type": "function",
                    "function": {"name": tool, "arguments": arguments},
                }
            ]
            output = len(arguments) // 4 + 1
        else:
            answer["content"] = self.final_text
            output = len(self.final_text) // 4 + 1
        prompt, cached = self._tokens(size)
        return {
            "id": f"chatcmpl-standin{number:012d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": answer,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if tool is not None else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": output,
                "total_tokens": prompt + output,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_standin",
        }

    def _control_answer(self, method: str, path: str, raw: bytes) -> tuple[int, bytes]:
        """``GET /stats``, or ``POST /control``: change behaviour, answer the stats (or 400
        saying what is wrong)."""
        if path == CONTROL_PATH and method == "POST":
            try:
                command = orjson.loads(raw) if raw else {}
                if not isinstance(command, dict):
                    raise ValueError("the body must be a JSON object")
                self.apply_control(command)
            except (ValueError, TypeError) as exc:
                return 400, orjson.dumps({"error": str(exc)})
        elif not (path == STATS_PATH and method == "GET"):
            return 405, orjson.dumps({"error": f"{method} {path} is not allowed"})
        stats = self.stats.to_json() | {"cpu_seconds": time.process_time(), "config": self.config_json()}
        return 200, orjson.dumps(stats)

    def apply_control(self, command: Mapping[str, Any]) -> None:
        """Apply a ``POST /control`` command; raises :class:`ValueError` for a bad one.

        Keys, all optional: ``latency``, ``jitter``, ``cached_fraction`` (numbers >= 0),
        ``tool_turns`` (whole number >= 0), ``tool_name`` (string or null), ``tool_input``
        (object), ``record_arrivals`` (bool), ``fail_next`` (``{"count", "status",
        "retry_after", "retry_after_ms"}``), ``fail_until`` (``{"in_seconds"}`` from now or
        ``{"at"}`` on the stand-in's clock, with ``status``, ``retry_after``,
        ``retry_after_ms``), ``stop_failing`` and ``reset_stats`` (true).
        """
        unknown = set(command) - _CONTROL_KEYS
        if unknown:
            raise ValueError(f"unknown control key {sorted(unknown)[0]!r}")
        for key in ("latency", "jitter", "cached_fraction"):
            if key in command:
                setattr(self, key, _number(command[key], key))
        if "tool_turns" in command:
            self.tool_turns = _whole(command["tool_turns"], "tool_turns")
        if "tool_name" in command:
            if command["tool_name"] is not None and not isinstance(command["tool_name"], str):
                raise ValueError("tool_name must be a string or null")
            self.tool_name = command["tool_name"]
        if "tool_input" in command:
            if not isinstance(command["tool_input"], dict):
                raise ValueError("tool_input must be an object")
            self.tool_input = command["tool_input"]
        if "record_arrivals" in command:
            self.record_arrivals = bool(command["record_arrivals"])
        if command.get("stop_failing"):
            self.stop_failing()
        if "fail_next" in command:
            spec = _failure_spec(command["fail_next"], "fail_next", {"count"})
            self.fail_next(_whole(spec.pop("count", 1), "fail_next.count"), **spec)
        if "fail_until" in command:
            spec = _failure_spec(command["fail_until"], "fail_until", {"at", "in_seconds"})
            if "at" in spec:
                deadline = _number(spec.pop("at"), "fail_until.at")
            else:
                deadline = self.clock() + _number(spec.pop("in_seconds", 0), "fail_until.in_seconds")
            self.fail_until(deadline, **spec)
        if command.get("reset_stats"):
            self.reset_stats()


_CONTROL_KEYS = frozenset(
    {
        "latency",
        "jitter",
        "cached_fraction",
        "tool_turns",
        "tool_name",
        "tool_input",
        "record_arrivals",
        "fail_next",
        "fail_until",
        "stop_failing",
        "reset_stats",
    }
)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number >= 0")
    return float(value)


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0")
    return value


def _failure_spec(value: Any, name: str, extra: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object")
    unknown = set(value) - extra - {"status", "retry_after", "retry_after_ms"}
    if unknown:
        raise ValueError(f"unknown key {name}.{sorted(unknown)[0]}")
    spec = dict(value)
    status = spec.get("status", 429)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"{name}.status must be an HTTP status")
    retry_after = spec.get("retry_after")
    if retry_after is not None and not isinstance(retry_after, str):
        spec["retry_after"] = _number(retry_after, f"{name}.retry_after")
    if spec.get("retry_after_ms") is not None:
        spec["retry_after_ms"] = _number(spec["retry_after_ms"], f"{name}.retry_after_ms")
    return spec


def _has_tool_result(message: Any) -> bool:
    if not isinstance(message, dict) or message.get("role") != "user":
        return False
    content = message.get("content")
    if not isinstance(content, list):
        return False
    return any(isinstance(block, dict) and block.get("type") == "tool_result" for block in content)


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_CODES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def _error_body(shape: Shape | None, status: int, message: str) -> dict[str, Any]:
    """An error body as the provider of ``shape`` writes it."""
    if shape == "openai":
        kind, code = _OPENAI_ERROR_CODES.get(status, ("server_error", None))
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}
    kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_standin"}


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Overloaded" if status == 529 else "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS_LINES = {status: _status_line(status) for status in (200, 400, 404, 429, 500, 503, 529)}


# method, path, headers, keep-alive, where the body starts, its length
_Head = tuple[str, str, dict[str, str], bool, int, int]


class _Connection(asyncio.Protocol):
    """One client connection: parses requests one at a time and answers them in order."""

    def __init__(self, standin: ModelApiStandIn) -> None:
        self._standin = standin
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        # The parsed head of a request whose body is still arriving.
        self._head: _Head | None = None
        self._waiting: asyncio.TimerHandle | None = None
        self._answering = False
        self._hung = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._standin._connections.add(self)
        stats = self._standin.stats
        stats.connections += 1
        stats.connections_accepted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._standin._connections.discard(self)
        self._standin.stats.connections -= 1
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None
        if self._answering:
            self._answering = False
            self._standin.stats.in_flight -= 1
        self._transport = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._hung:
            return
        self._buffer += data
        if not self._answering:
            self._next_request()

    def _next_request(self) -> None:
        buffer = self._buffer
        while not self._answering and self._transport is not None:
            if self._head is None:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > _MAX_HEAD:
                        self._reject(431, "request head too large")
                    return
                try:
                    self._head = _parse_head(bytes(buffer[:end]), end + 4, self._standin.record)
                except ValueError as exc:
                    self._reject(400, str(exc))
                    return
            method, path, headers, keep_alive, start, length = self._head
            if len(buffer) < start + length:
                return
            raw = bytes(buffer[start : start + length])
            del buffer[: start + length]
            self._head = None
            self._handle(method, path, headers, keep_alive, raw)

    def _handle(self, method: str, path: str, headers: dict[str, str], keep_alive: bool, raw: bytes) -> None:
        standin = self._standin
        if path in _CONTROL_PATHS:
            self._write(*standin._control_answer(method, path, raw), {}, keep_alive)
            return
        stats = standin.stats
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        self._answering = True
        answer = standin._answer(method, path, headers, raw)
        if answer is None:
            self._hung = True
            return
        delay, status, body, extra = answer
        if delay > 0:
            self._waiting = asyncio.get_running_loop().call_later(
                delay, self._send_late, status, body, extra, keep_alive
            )
        else:
            self._send(status, body, extra, keep_alive)

    def _send_late(self, status: int, body: bytes, extra: dict[str, str], keep_alive: bool) -> None:
        """Send a delayed answer, then serve whatever the client sent meanwhile."""
        self._waiting = None
        self._send(status, body, extra, keep_alive)
        if self._buffer:
            self._next_request()

    def _send(self, status: int, body: bytes, extra: dict[str, str], keep_alive: bool) -> None:
        if self._transport is None:
            return
        stats = self._standin.stats
        stats.in_flight -= 1
        stats.statuses[status] += 1
        self._answering = False
        self._write(status, body, extra, keep_alive)

    def _write(self, status: int, body: bytes, extra: dict[str, str], keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        head = _STATUS_LINES.get(status) or _status_line(status)
        lines = "".join(f"{name}: {value}\r\n" for name, value in extra.items())
        transport.write(
            b"%scontent-type: application/json\r\ncontent-length: %d\r\n%s%s\r\n%s"
            % (
                head,
                len(body),
                lines.encode("latin-1"),
                b"" if keep_alive else b"connection: close\r\n",
                body,
            )
        )
        if not keep_alive:
            transport.close()
            self._transport = None

    def _reject(self, status: int, message: str) -> None:
        """Answer a request that cannot be parsed, then close (its end cannot be found)."""
        self._standin.stats.statuses[status] += 1
        self._write(status, orjson.dumps({"error": message}), {}, keep_alive=False)


def _parse_head(
    head: bytes, start: int, keep_headers: bool
) -> tuple[str, str, dict[str, str], bool, int, int]:
    """``(method, path, headers, keep_alive, body_start, body_length)`` of a request head.

    Only the headers the framing needs are read unless ``keep_headers`` (recording) asks for
    all of them, lower-cased.
    """
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("malformed request line")
    method, target, version = parts
    keep_alive = version == "HTTP/1.1"
    length = 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            if not value.strip().isdigit():
                raise ValueError("bad content-length")
            length = int(value)
        elif name == "connection":
            token = value.strip().lower()
            keep_alive = token == "keep-alive" or (keep_alive and token != "close")
        elif name == "transfer-encoding":
            raise ValueError("only content-length bodies are supported")
        if keep_headers:
            headers[name] = value.strip()
    return method, target.partition("?")[0], headers, keep_alive, start, length


def main(argv: list[str] | None = None) -> None:
    """``python -m standins.model_api``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m standins.model_api", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this many seconds more")
    parser.add_argument("--tool-turns", type=int, default=0, help="tool-use answers before the last")
    parser.add_argument("--tool-name", default="narrate", help="the tool they call; '' = the first offered")
    parser.add_argument(
        "--tool-input", type=json.loads, default=dict(_DEFAULT_TOOL_INPUT), help="its input (JSON object)"
    )
    parser.add_argument("--cached-fraction", type=float, default=0.0, help="prompt tokens reported as cached")
    parser.add_argument("--record-arrivals", action="store_true", help="keep arrival times for /stats")
    args = parser.parse_args(argv)
    standin = ModelApiStandIn(
        latency=args.latency,
        jitter=args.jitter,
        tool_turns=args.tool_turns,
        tool_name=args.tool_name or None,
        tool_input=args.tool_input,
        cached_fraction=args.cached_fraction,
        record_arrivals=args.record_arrivals,
        host=args.host,
        port=args.port,
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(standin))
    else:
        uvloop.run(_serve(standin))


async def _serve(standin: ModelApiStandIn) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with standin:
        print(f"listening on {standin.base_url}", flush=True)
        await stopping.wait()


if __name__ == "__main__":
    main()
