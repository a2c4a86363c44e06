"""The model-API stand-in, driven by the providers' own SDKs and by plain HTTP clients."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from standins.model_api import CHAT_COMPLETIONS_PATH, MESSAGES_PATH, ModelApiStandIn

ROOT = Path(__file__).resolve().parents[2]
TOOLS_ANTHROPIC: list[Any] = [
    {"name": "ask_human", "description": "Ask a person", "input_schema": {"type": "object"}},
    {"name": "narrate", "description": "Say what you do", "input_schema": {"type": "object"}},
]
TOOLS_OPENAI: list[Any] = [
    {"type": "function", "function": {"name": tool["name"], "parameters": tool["input_schema"]}}
    for tool in TOOLS_ANTHROPIC
]


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def standin() -> AsyncIterator[ModelApiStandIn]:
    async with ModelApiStandIn(record=True) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def anthropic_client(standin: ModelApiStandIn) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="sk-ant-standin", base_url=standin.base_url, max_retries=0)


def openai_client(standin: ModelApiStandIn) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-standin", base_url=f"{standin.base_url}/v1", max_retries=0)


async def test_a_messages_job_gets_its_tool_turns_then_ends(standin: ModelApiStandIn) -> None:
    standin.tool_turns = 2
    standin.tool_input = {"text": "Planning"}
    client = anthropic_client(standin)
    messages: list[Any] = [{"role": "user", "content": "Build the page"}]
    stops = []
    while True:
        response = await client.messages.create(
            model="claude-standin", max_tokens=100, messages=messages, tools=TOOLS_ANTHROPIC
        )
        stops.append(response.stop_reason)
        if response.stop_reason != "tool_use":
            break
        messages.append({"role": "assistant", "content": [block.model_dump() for block in response.content]})
        [call] = [block for block in response.content if block.type == "tool_use"]
        assert (call.name, call.input) == ("narrate", {"text": "Planning"})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id}]})
    await client.close()

    assert stops == ["tool_use", "tool_use", "end_turn"]
    assert response.model == "claude-standin"
    assert response.id.startswith("msg_")
    assert [block.type for block in response.content] == ["text"]
    assert standin.stats.requests == {MESSAGES_PATH: 3}


async def test_a_chat_completions_job_gets_its_tool_turns_then_ends(standin: ModelApiStandIn) -> None:
    standin.tool_turns = 2
    standin.tool_name = None  # the first tool the request offers
    client = openai_client(standin)
    messages: list[Any] = [{"role": "user", "content": "Build the page"}]
    reasons = []
    while True:
        response = await client.chat.completions.create(
            model="gpt-standin", messages=messages, tools=TOOLS_OPENAI
        )
        choice = response.choices[0]
        reasons.append(choice.finish_reason)
        if choice.finish_reason != "tool_calls":
            break
        [call] = choice.message.tool_calls or []
        assert call.type == "function"
        assert call.function.name == "ask_human"
        assert orjson.loads(call.function.arguments) == {"text": "Working on it."}
        messages.append(choice.message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
    await client.close()

    assert reasons == ["tool_calls", "tool_calls", "stop"]
    assert choice.message.content == "Done."
    assert response.model == "gpt-standin"
    assert response.object == "chat.completion"
    assert standin.stats.requests == {CHAT_COMPLETIONS_PATH: 3}


async def test_a_request_without_tools_gets_the_end_turn_answer(standin: ModelApiStandIn) -> None:
    standin.tool_turns = 5
    client = anthropic_client(standin)

    response = await client.messages.create(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    await client.close()

    assert response.stop_reason == "end_turn"


async def test_usage_grows_with_the_conversation_and_reports_cached_tokens(
    standin: ModelApiStandIn,
) -> None:
    standin.cached_fraction = 0.5
    anthropic_api, openai_api = anthropic_client(standin), openai_client(standin)
    short: list[Any] = [{"role": "user", "content": "x" * 400}]
    long: list[Any] = [{"role": "user", "content": "x" * 40_000}]

    small = await anthropic_api.messages.create(model="m", max_tokens=10, messages=short)
    large = await anthropic_api.messages.create(model="m", max_tokens=10, messages=long)
    chat = await openai_api.chat.completions.create(model="m", messages=long)
    await anthropic_api.close()
    await openai_api.close()

    assert 100 <= small.usage.input_tokens + (small.usage.cache_read_input_tokens or 0) < 200
    assert large.usage.input_tokens + (large.usage.cache_read_input_tokens or 0) > 10_000
    assert large.usage.cache_read_input_tokens == pytest.approx(large.usage.input_tokens, abs=1)
    assert large.usage.output_tokens > 0
    assert chat.usage is not None
    assert chat.usage.prompt_tokens > 10_000
    assert chat.usage.prompt_tokens_details is not None
    assert chat.usage.prompt_tokens_details.cached_tokens == chat.usage.prompt_tokens // 2
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, anthropic.RateLimitError),
        (529, anthropic.InternalServerError),
        (503, anthropic.InternalServerError),
    ],
)
async def test_the_next_requests_fail_with_retry_after_headers(
    standin: ModelApiStandIn, status: int, error: type[Exception]
) -> None:
    standin.fail_next(2, status, retry_after=2, retry_after_ms=2000)
    client = anthropic_client(standin)
    request: dict[str, Any] = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }

    failures = []
    for _ in range(2):
        with pytest.raises(error) as caught:
            await client.messages.create(**request)
        failures.append(caught.value)
    answered = await client.messages.create(**request)
    await client.close()

    for failure in failures:
        assert isinstance(failure, anthropic.APIStatusError)
        assert failure.status_code == status
        assert failure.response.headers["retry-after"] == "2"
        assert failure.response.headers["retry-after-ms"] == "2000"
    assert answered.stop_reason == "end_turn"
    assert standin.stats.statuses == {status: 2, 200: 1}


async def test_a_rate_limit_reads_as_the_providers_error_body(
    standin: ModelApiStandIn, http: aiohttp.ClientSession
) -> None:
    standin.fail_next(2, 429, retry_after="Wed, 21 Oct 2026 07:28:00 GMT")

    async with http.post(f"{standin.base_url}{MESSAGES_PATH}", json={"messages": []}) as response:
        messages_error = await response.json()
        assert response.headers["retry-after"] == "Wed, 21 Oct 2026 07:28:00 GMT"
        assert "retry-after-ms" not in response.headers
    async with http.post(f"{standin.base_url}{CHAT_COMPLETIONS_PATH}", json={"messages": []}) as response:
        chat_error = await response.json()

    assert messages_error["type"] == "error"
    assert messages_error["error"]["type"] == "rate_limit_error"
    assert chat_error["error"]["code"] == "rate_limit_exceeded"


async def test_every_request_fails_until_the_deadline() -> None:
    clock = Clock()
    async with ModelApiStandIn(clock=clock, record_arrivals=True) as standin:
        standin.fail_until(clock.now + 5, 429, retry_after=5)
        client = openai_client(standin)
        for _ in range(3):
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        clock.now += 5
        answered = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
        await client.close()

    assert answered.choices[0].finish_reason == "stop"
    assert [(a.at, a.status) for a in standin.stats.arrivals] == [
        (100.0, 429),
        (100.0, 429),
        (100.0, 429),
        (105.0, 200),
    ]


async def test_queued_replies_come_first_and_in_order(
    standin: ModelApiStandIn, http: aiohttp.ClientSession
) -> None:
    standin.fail_next(1)
    standin.reply({"exact": 1}, status=201, headers={"x-extra": "yes"})
    standin.reply({"exact": 2})

    answers = []
    for _ in range(4):
        async with http.post(f"{standin.base_url}{MESSAGES_PATH}", json={"model": "m", "messages": []}) as r:
            answers.append((r.status, await r.json(), r.headers.get("x-extra")))

    assert [answer[:1] + answer[2:] for answer in answers] == [
        (201, "yes"),
        (200, None),
        (429, None),
        (200, None),
    ]
    assert [answer[1] for answer in answers[:2]] == [{"exact": 1}, {"exact": 2}]
    assert answers[3][1]["type"] == "message"
    [first, *_] = standin.requests
    assert (first.method, first.path, first.body) == ("POST", MESSAGES_PATH, {"model": "m", "messages": []})
    assert first.headers["content-type"] == "application/json"


async def test_a_hung_request_stays_in_flight_until_the_client_gives_up(
    standin: ModelApiStandIn, http: aiohttp.ClientSession
) -> None:
    standin.hang()

    with pytest.raises(TimeoutError):
        async with http.post(
            f"{standin.base_url}{MESSAGES_PATH}", json={}, timeout=aiohttp.ClientTimeout(total=0.2)
        ):
            pass
    await _wait_for(lambda: standin.stats.in_flight == 0)

    assert standin.stats.peak_in_flight == 1
    assert standin.stats.statuses == {}


async def test_latency_delays_answers_and_counts_them_in_flight(standin: ModelApiStandIn) -> None:
    standin.latency = 0.3
    client = anthropic_client(standin)
    request: dict[str, Any] = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }
    loop = asyncio.get_running_loop()

    started = loop.time()
    calls = [asyncio.create_task(client.messages.create(**request)) for _ in range(20)]
    await _wait_for(lambda: standin.stats.in_flight == 20)
    await asyncio.gather(*calls)
    elapsed = loop.time() - started
    await client.close()

    assert elapsed >= 0.3
    assert (standin.stats.in_flight, standin.stats.peak_in_flight) == (0, 20)


async def test_bad_requests_are_answered_not_dropped(
    standin: ModelApiStandIn, http: aiohttp.ClientSession
) -> None:
    base = standin.base_url
    async with http.post(f"{base}/v1/nothing", json={}) as unknown:
        assert unknown.status == 404
    async with http.post(f"{base}{MESSAGES_PATH}", data=b"{not json") as garbled:
        assert garbled.status == 400
        assert (await garbled.json())["error"]["type"] == "invalid_request_error"
    async with http.post(f"{base}{CHAT_COMPLETIONS_PATH}", json={"messages": "no"}) as wrong:
        assert wrong.status == 400
        assert (await wrong.json())["error"]["type"] == "invalid_request_error"

    reader, writer = await asyncio.open_connection(*base.removeprefix("http://").split(":"))
    writer.write(b"NONSENSE\r\n\r\n")
    reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400 ")


async def test_stats_and_control_over_http(standin: ModelApiStandIn, http: aiohttp.ClientSession) -> None:
    base = standin.base_url
    control = {
        "latency": 0.05,
        "tool_turns": 1,
        "tool_name": "search",
        "tool_input": {"q": "x"},
        "fail_next": {"count": 1, "status": 529, "retry_after": 3},
        "record_arrivals": True,
    }
    async with http.post(f"{base}/control", json=control) as response:
        assert response.status == 200
        assert (await response.json())["config"]["tool_turns"] == 1
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [{}]}
    async with http.post(f"{base}{MESSAGES_PATH}", json=body) as failed:
        assert (failed.status, failed.headers["retry-after"]) == (529, "3")
    async with http.post(f"{base}{MESSAGES_PATH}", json=body) as answered:
        content = (await answered.json())["content"]
        assert content[1] | {"id": ""} == {
            "type": "tool_use",
            "id": "",
            "name": "search",
            "input": {"q": "x"},
        }
    async with http.get(f"{base}/stats") as response:
        stats = await response.json()

    assert stats["requests"] == {MESSAGES_PATH: 2}
    assert stats["statuses"] == {"200": 1, "529": 1}
    assert (stats["in_flight"], stats["peak_in_flight"]) == (0, 1)
    assert [status for _, _, status in stats["arrivals"]] == [529, 200]
    assert stats["cpu_seconds"] > 0
    assert stats["config"]["latency"] == 0.05

    async with http.post(f"{base}/control", json={"fail_until": {"in_seconds": 60, "status": 503}}) as r:
        assert r.status == 200
    async with http.post(f"{base}{MESSAGES_PATH}", json=body) as failed:
        assert failed.status == 503
    async with http.post(f"{base}/control", json={"stop_failing": True, "reset_stats": True}) as r:
        assert (await r.json())["requests"] == {}
    async with http.post(f"{base}{MESSAGES_PATH}", json=body) as answered:
        assert answered.status == 200


@pytest.mark.parametrize(
    "command",
    [
        [1],
        {"latency": -1},
        {"latency": "2"},
        {"tool_turns": 1.5},
        {"tool_name": 3},
        {"tool_input": "x"},
        {"fail_next": {"count": 1, "status": 99}},
        {"fail_next": {"when": 1}},
        {"fail_until": 3},
        {"volume": 11},
    ],
)
async def test_a_bad_control_command_is_refused_and_changes_nothing(
    standin: ModelApiStandIn, http: aiohttp.ClientSession, command: Any
) -> None:
    async with http.post(f"{standin.base_url}/control", json=command) as response:
        assert response.status == 400
        assert (await response.json())["error"]

    assert (standin.latency, standin.tool_turns, standin.tool_name) == (0.0, 0, "narrate")


async def test_thousands_of_keep_alive_connections_at_once() -> None:
    clients, calls_each = 1000, 3
    async with ModelApiStandIn(latency=0.5) as standin:

        async def client() -> list[int]:
            # One connection per client, reused for each of its calls.
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                statuses = []
                for _ in range(calls_each):
                    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                    async with session.post(f"{standin.base_url}{MESSAGES_PATH}", json=body) as response:
                        await response.read()
                        statuses.append(response.status)
                return statuses

        results = await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), timeout=60)
        stats = standin.stats

    assert all(statuses == [200] * calls_each for statuses in results)
    assert stats.requests == {MESSAGES_PATH: clients * calls_each}
    assert stats.peak_in_flight == clients
    assert stats.connections_accepted == clients


async def test_the_command_line_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "standins.model_api",
        "--port",
        "0",
        "--tool-turns",
        "2",
        "--latency",
        "0.01",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        assert line.startswith("listening on http://127.0.0.1:")
        base = line.split()[-1]
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [{}]}
        async with http.post(f"{base}{MESSAGES_PATH}", json=body) as response:
            assert (await response.json())["stop_reason"] == "tool_use"
        async with http.get(f"{base}/stats") as response:
            assert (await response.json())["config"]["tool_turns"] == 2
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=20)
    assert code == 0


async def _wait_for(condition: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
