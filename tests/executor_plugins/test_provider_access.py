"""Shared provider access: one client and one gate per account, retry-after honoured by every
brain of the account at once, per-model concurrency limits, the connection cap.

Most tests move time by hand: the gate and the stand-in read the same fake monotonic clock,
so "no call before 2 s" is checked on the stand-in's arrival times without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from cofounder_server.app import Application
from cofounder_server.config import Settings
from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains.anthropic import AnthropicBrainFactory
from cofounder_server.executor.brains.openai import OpenAIBrainFactory
from cofounder_server.executor.brains.provider_access import (
    MAX_RETRY_AFTER_SECONDS,
    ModelClients,
    ProviderGate,
    parse_model_concurrency,
    parse_retry_after,
)
from cofounder_server.executor.plugins import Brain, BrainError, Message
from standins.model_api import ModelApiStandIn
from tests.support import eventually

pytestmark = pytest.mark.usefixtures("no_ambient_credentials")

GOAL = [Message(role="user", text="Build the landing page")]
KEY = "sk-standin"


class FakeTime:
    """A monotonic clock that moves only when told; sleepers wake when it passes their end."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._moved = asyncio.Condition()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        end = self.now + delay
        async with self._moved:
            await self._moved.wait_for(lambda: self.now >= end)

    async def advance(self, seconds: float) -> None:
        async with self._moved:
            self.now += seconds
            self._moved.notify_all()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def timed_standin(fake_time: FakeTime) -> AsyncIterator[ModelApiStandIn]:
    """A stand-in whose arrival times are on the fake clock."""
    async with ModelApiStandIn(record_arrivals=True, clock=fake_time.monotonic) as server:
        yield server


BrainMaker = Callable[[ModelClients, str], Callable[[], Brain]]


def anthropic_brains(clients: ModelClients, base_url: str) -> Callable[[], Brain]:
    factory = AnthropicBrainFactory(
        base_url=base_url, api_key=KEY, max_tokens=64, timeout_seconds=10, clients=clients
    )
    return lambda: factory(AgentSpec(brain="anthropic", model="claude-standin"))


def openai_brains(clients: ModelClients, base_url: str) -> Callable[[], Brain]:
    factory = OpenAIBrainFactory(
        base_url=f"{base_url}/v1", api_key=KEY, max_tokens=64, timeout_seconds=10, clients=clients
    )
    return lambda: factory(AgentSpec(brain="openai", model="gpt-standin"))


BRAINS = pytest.mark.parametrize(
    ("brains", "signature"),
    [(anthropic_brains, "anthropic:rate_limit"), (openai_brains, "openai:rate_limit")],
    ids=["anthropic", "openai"],
)


async def gather_turns(brains: list[Brain]) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*(brain.think(GOAL, []) for brain in brains)), timeout=60)


async def test_a_burst_of_429s_holds_every_brain_of_the_key_for_retry_after(
    standin: ModelApiStandIn,
) -> None:
    """In real time: after 429s with ``retry-after: 2`` no call reaches the API for 2 s, then
    every call goes through; the calls that wait do not fail."""
    clients = ModelClients()
    make = anthropic_brains(clients, standin.base_url)
    standin.fail_next(20, 429, retry_after=2)

    refused = await asyncio.gather(*(make().think(GOAL, []) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(error, BrainError) for error in refused)
    assert {(e.retryable, e.signature, e.retry_after) for e in refused if isinstance(e, BrainError)} == {
        (True, "anthropic:rate_limit", 2.0)
    }
    # The twenty retry at once, and thirty more brains of the same key start.
    turns = await gather_turns([make() for _ in range(50)])
    await clients.aclose()

    arrivals = standin.stats.arrivals
    last_refusal = max(a.at for a in arrivals if a.status == 429)
    later = [a for a in arrivals if a.status != 429]
    assert len(later) == 50
    assert all(a.status == 200 for a in later)
    assert min(a.at for a in later) >= last_refusal + 2.0
    assert all(turn.text == "Done." for turn in turns)


@BRAINS
async def test_no_call_of_the_key_is_sent_before_retry_after_has_passed(
    timed_standin: ModelApiStandIn, fake_time: FakeTime, brains: BrainMaker, signature: str
) -> None:
    clients = ModelClients(monotonic=fake_time.monotonic, sleep=fake_time.sleep)
    make = brains(clients, timed_standin.base_url)
    timed_standin.fail_next(1, 429, retry_after=2)

    with pytest.raises(BrainError) as caught:
        await make().think(GOAL, [])
    assert (caught.value.retryable, caught.value.signature, caught.value.retry_after) == (
        True,
        signature,
        2.0,
    )
    waiting = [asyncio.create_task(make().think(GOAL, [])) for _ in range(30)]
    gate = clients.gate("anthropic", timed_standin.base_url, KEY) or clients.gate(
        "openai", f"{timed_standin.base_url}/v1", KEY
    )
    assert gate is not None
    await calls_paused_at(gate, 30)
    await fake_time.advance(1.999)
    await fake_time.advance(0.001)
    turns = await asyncio.wait_for(asyncio.gather(*waiting), timeout=30)
    await clients.aclose()

    [refusal, *later] = timed_standin.stats.arrivals
    assert (refusal.at, refusal.status) == (1000.0, 429)
    assert [(a.at, a.status) for a in later] == [(1002.0, 200)] * 30
    assert len(turns) == 30


async def test_every_way_of_saying_how_long_is_honoured(
    timed_standin: ModelApiStandIn, fake_time: FakeTime
) -> None:
    wall = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    clients = ModelClients(
        monotonic=fake_time.monotonic, sleep=fake_time.sleep, wall=wall.timestamp, default_backoff=7.0
    )
    make = anthropic_brains(clients, timed_standin.base_url)
    cases: list[tuple[int, dict[str, Any], float]] = [
        (529, {"retry_after": format_datetime(wall + timedelta(seconds=30), usegmt=True)}, 30.0),
        (503, {"retry_after": 10, "retry_after_ms": 1500}, 1.5),
        (429, {}, 7.0),  # no header: the shared default backoff
    ]
    for status, headers, seconds in cases:
        timed_standin.fail_next(1, status, **headers)
        started = fake_time.now
        with pytest.raises(BrainError) as caught:
            await make().think(GOAL, [])
        assert caught.value.retry_after == seconds
        waiting = asyncio.create_task(make().think(GOAL, []))
        gate = clients.gate("anthropic", timed_standin.base_url, KEY)
        assert gate is not None
        await calls_paused_at(gate, 1)
        await fake_time.advance(seconds)
        await asyncio.wait_for(waiting, timeout=30)
        assert timed_standin.stats.arrivals[-1].at == started + seconds
    await clients.aclose()


@pytest.mark.parametrize("status", [400, 500, 502])
async def test_other_errors_do_not_hold_the_key(
    timed_standin: ModelApiStandIn, fake_time: FakeTime, status: int
) -> None:
    clients = ModelClients(monotonic=fake_time.monotonic, sleep=fake_time.sleep)
    make = anthropic_brains(clients, timed_standin.base_url)
    timed_standin.fail_next(1, status, retry_after=30)

    with pytest.raises(BrainError) as caught:
        await make().think(GOAL, [])
    turn = await make().think(GOAL, [])
    await clients.aclose()

    assert caught.value.retry_after is None
    assert turn.text == "Done."
    assert [a.at for a in timed_standin.stats.arrivals] == [1000.0, 1000.0]


async def test_an_exhausted_quota_is_final_and_holds_nothing(
    timed_standin: ModelApiStandIn, fake_time: FakeTime
) -> None:
    clients = ModelClients(monotonic=fake_time.monotonic, sleep=fake_time.sleep)
    make = openai_brains(clients, timed_standin.base_url)
    quota = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota"}}
    timed_standin.reply(quota | {"error": quota["error"] | {"code": "insufficient_quota"}}, status=429)

    with pytest.raises(BrainError) as caught:
        await make().think(GOAL, [])
    await make().think(GOAL, [])
    await clients.aclose()

    assert (caught.value.retryable, caught.value.signature, caught.value.retry_after) == (
        False,
        "openai:insufficient_quota",
        None,
    )
    assert [a.at for a in timed_standin.stats.arrivals] == [1000.0, 1000.0]


async def test_keys_and_base_urls_have_their_own_client_and_gate(
    standin: ModelApiStandIn, fake_time: FakeTime
) -> None:
    clients = ModelClients(monotonic=fake_time.monotonic, sleep=fake_time.sleep)
    made: list[str] = []

    def make(name: str) -> Callable[[], Any]:
        def build() -> Any:
            made.append(name)
            return ModelApiStandIn()  # anything with an async close()

        return build

    first, gate = clients.get("anthropic", "http://a", "k1", make("a-k1"))
    again, same_gate = clients.get("anthropic", "http://a", "k1", make("again"))
    other_key, other_gate = clients.get("anthropic", "http://a", "k2", make("a-k2"))
    clients.get("anthropic", "http://b", "k1", make("b-k1"))
    clients.get("openai", "http://a", "k1", make("openai"))
    gate.refused(429, {"retry-after": "5"})

    assert (again, same_gate) == (first, gate)
    assert other_key is not first
    assert made == ["a-k1", "a-k2", "b-k1", "openai"]
    assert gate.open_at == 1005.0
    assert other_gate.open_at < fake_time.now
    assert clients.gate("anthropic", "http://a", "k1") is gate
    assert clients.gate("anthropic", "http://c", "k1") is None


async def test_brains_of_the_registry_share_one_client_per_account(standin: ModelApiStandIn) -> None:
    from cofounder_server.executor.registry import PluginRegistry

    registry = PluginRegistry.default(
        Settings(anthropic_base_url=standin.base_url, anthropic_api_key=KEY), entry_points=False
    )
    spec = AgentSpec(brain="anthropic", model="claude-standin")

    for _ in range(3):
        await registry.brain_for(spec).think(GOAL, [])
    await registry.aclose()

    # One pool: the second and third brains reuse the first one's connection.
    assert standin.stats.connections_accepted == 1
    assert standin.stats.connections == 0  # closed with the registry


async def test_a_model_over_its_concurrency_limit_waits_in_order(fake_time: FakeTime) -> None:
    gate = ProviderGate(
        "test",
        model_limits={"m": 2},
        default_backoff=1.0,
        monotonic=fake_time.monotonic,
        sleep=fake_time.sleep,
        wall=time.time,
    )
    entered: list[int] = []
    done = [asyncio.Event() for _ in range(6)]

    async def call(i: int) -> None:
        async with gate.call("m"):
            entered.append(i)
            await done[i].wait()

    tasks = [asyncio.create_task(call(i)) for i in range(6)]
    await eventually(_async(lambda: gate.queued("m")), lambda queued: queued == 4)
    assert (entered, gate.in_flight("m")) == ([0, 1], 2)
    tasks[2].cancel()  # gives up while queued: its place passes on
    await eventually(_async(lambda: gate.queued("m")), lambda queued: queued == 3)
    done[1].set()
    await eventually(_async(lambda: list(entered)), lambda seen: seen == [0, 1, 3])
    done[0].set()
    done[3].set()
    await eventually(_async(lambda: list(entered)), lambda seen: seen == [0, 1, 3, 4, 5])
    assert gate.in_flight("m") == 2
    done[4].set()
    done[5].set()
    await asyncio.gather(*tasks, return_exceptions=True)

    assert (gate.in_flight("m"), gate.queued("m")) == (0, 0)
    # Other models have no limit.
    async with gate.call("other"), gate.call("other"), gate.call("other"):
        assert gate.in_flight("other") == 0


async def test_the_concurrency_limit_holds_against_the_api(standin: ModelApiStandIn) -> None:
    clients = ModelClients(model_concurrency={"claude-standin": 3})
    make = anthropic_brains(clients, standin.base_url)
    standin.latency = 0.05

    await gather_turns([make() for _ in range(12)])
    await clients.aclose()

    assert standin.stats.peak_in_flight == 3
    assert standin.stats.requests == {"/v1/messages": 12}


async def test_the_connection_cap_is_the_setting(standin: ModelApiStandIn) -> None:
    clients = ModelClients(max_connections=4)
    make = openai_brains(clients, standin.base_url)
    standin.latency = 0.05

    await gather_turns([make() for _ in range(16)])
    await clients.aclose()

    assert standin.stats.peak_in_flight == 4
    assert standin.stats.connections_accepted == 4


async def test_by_default_more_than_a_thousand_calls_are_in_flight_at_once(standin: ModelApiStandIn) -> None:
    clients = ModelClients()
    make = anthropic_brains(clients, standin.base_url)
    standin.latency = 1.0

    await gather_turns([make() for _ in range(1100)])
    await clients.aclose()

    assert standin.stats.peak_in_flight == 1100


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "Tue, 10 Mar 2026 12:00:30 GMT"}, 30.0),
        ({"retry-after": "Tue, 10 Mar 2026 11:59:00 GMT"}, 0.0),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "86400"}, MAX_RETRY_AFTER_SECONDS),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "tomorrow"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers_are_read(headers: dict[str, str], seconds: float | None) -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()

    assert parse_retry_after(headers, now=now) == seconds


def test_model_concurrency_is_read() -> None:
    assert parse_model_concurrency("") == {}
    assert parse_model_concurrency(" claude-sonnet-4-5=200, gpt-4.1 = 100 ,") == {
        "claude-sonnet-4-5": 200,
        "gpt-4.1": 100,
    }


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("claude", "expected MODEL=LIMIT, got 'claude'"),
        ("=3", "expected MODEL=LIMIT"),
        ("gpt-4.1=many", "the limit of gpt-4.1 must be a whole number, got 'many'"),
        ("gpt-4.1=0", "the limit of gpt-4.1 must be at least 1"),
        ("a=1,a=2", "a is given twice"),
    ],
)
async def test_a_bad_model_concurrency_refuses_to_start(
    settings_for: Callable[..., Settings], text: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_model_concurrency(text)
    with pytest.raises(SystemExit, match=f"^invalid --model-concurrency: {complaint}"):
        await Application.start(settings_for(model_concurrency=text))


async def calls_paused_at(gate: ProviderGate, count: int) -> None:
    """Wait until ``count`` calls wait at ``gate`` for a backoff to end."""
    await eventually(_async(lambda: gate.paused), lambda paused: paused == count)


def _async(read: Callable[[], Any]) -> Callable[[], Any]:
    async def probe() -> Any:
        return read()

    return probe
