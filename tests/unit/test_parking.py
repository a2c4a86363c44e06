"""The parking lot and the awake slots, on the injected clock: one timer for every parked
agent, wakes in due order, notifications at once, and never more than the cap awake."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from cofounder_server.clock import ManualClock
from cofounder_server.executor.parking import Parked, ParkingLot, WakeCause
from cofounder_server.executor.slots import (
    AGENT_BASE_BYTES,
    CONVERSATION_FACTOR,
    AwakeSlots,
    Waiting,
    charge_of,
)
from tests.support import eventually

MIDNIGHT = datetime(2026, 5, 2, tzinfo=UTC)


def lot_on(clock: ManualClock, **options: object) -> tuple[ParkingLot, list[tuple[str, WakeCause]]]:
    woken: list[tuple[str, WakeCause]] = []
    lot = ParkingLot(clock, lambda entry, cause: woken.append((entry.job_id, cause)), **options)  # type: ignore[arg-type]
    return lot, woken


async def settle() -> None:
    """Let the timer task run what is ready (a negative check: nothing else may happen)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_parked_agents_wake_at_their_time_in_due_order_with_one_timer() -> None:
    clock = ManualClock(MIDNIGHT - timedelta(hours=1))
    lot, woken = lot_on(clock)
    tasks_before = len(asyncio.all_tasks())
    lot.start()
    for n in range(1000):
        lot.park(f"late-{n}", "sleeping", MIDNIGHT + timedelta(seconds=1))
    lot.park("early", "sleeping", MIDNIGHT - timedelta(minutes=30))
    lot.park("forever", "waiting_for_input", None)
    lot.park("first-at-midnight", "sleeping", MIDNIGHT)
    # One task for the whole lot, however many are parked.
    assert len(asyncio.all_tasks()) == tasks_before + 1
    await settle()
    assert woken == []

    await clock.advance(timedelta(minutes=30))
    await eventually(lambda: asyncio.sleep(0, list(woken)), lambda w: w == [("early", WakeCause.DUE)])
    await clock.set(MIDNIGHT + timedelta(seconds=1))
    await eventually(lambda: asyncio.sleep(0, len(woken)), lambda n: n == 1002)
    assert [job_id for job_id, _ in woken[1:3]] == ["first-at-midnight", "late-0"]
    # Ties leave in the order they parked.
    assert [job_id for job_id, _ in woken[2:]] == [f"late-{n}" for n in range(1000)]
    assert list(lot) == [Parked("forever", "waiting_for_input", None, 1001)]
    await lot.stop()


async def test_an_earlier_entry_rearms_the_timer() -> None:
    clock = ManualClock(MIDNIGHT - timedelta(hours=1))
    lot, woken = lot_on(clock)
    lot.start()
    lot.park("later", "sleeping", MIDNIGHT)
    await settle()
    lot.park("sooner", "sleeping", MIDNIGHT - timedelta(minutes=10))
    await settle()
    await clock.set(MIDNIGHT - timedelta(minutes=10))
    await eventually(lambda: asyncio.sleep(0, list(woken)), lambda w: w == [("sooner", WakeCause.DUE)])
    await lot.stop()


async def test_a_notification_wakes_at_once_and_take_removes_without_waking() -> None:
    clock = ManualClock(MIDNIGHT - timedelta(hours=1))
    lot, woken = lot_on(clock)
    lot.start()
    lot.park("a", "sleeping", MIDNIGHT)
    lot.park("b", "sleeping", MIDNIGHT)
    lot.park("c", "waiting_for_input", None)
    assert lot.notify("c") is True
    assert lot.notify("c") is False
    assert lot.take("b") is not None
    assert woken == [("c", WakeCause.NOTIFIED)]
    await clock.set(MIDNIGHT)
    await eventually(lambda: asyncio.sleep(0, list(woken)), lambda w: w[1:] == [("a", WakeCause.DUE)])
    await settle()
    assert len(woken) == 2
    assert len(lot) == 0
    await lot.stop()


async def test_parking_again_replaces_the_entry_and_its_time() -> None:
    clock = ManualClock(MIDNIGHT - timedelta(hours=1))
    lot, woken = lot_on(clock)
    lot.start()
    for _ in range(500):  # stale timer items stay bounded
        lot.park("a", "sleeping", MIDNIGHT - timedelta(minutes=30))
    lot.park("a", "sleeping", MIDNIGHT)
    assert len(lot._heap) < 200
    await clock.set(MIDNIGHT - timedelta(minutes=30))
    await settle()
    assert woken == []
    await clock.set(MIDNIGHT)
    await eventually(lambda: asyncio.sleep(0, list(woken)), lambda w: w == [("a", WakeCause.DUE)])
    await lot.stop()


async def test_jitter_spreads_due_times_and_orders_by_them() -> None:
    clock = ManualClock(MIDNIGHT - timedelta(hours=1))
    lot, woken = lot_on(clock, jitter_seconds=60.0, rng=random.Random(7))
    lot.start()
    for n in range(200):
        lot.park(f"job-{n}", "sleeping", MIDNIGHT)
    dues = {entry.job_id: entry.due for entry in lot}
    assert all(
        due is not None and MIDNIGHT <= due <= MIDNIGHT + timedelta(seconds=60) for due in dues.values()
    )
    assert len(set(dues.values())) == 200
    await clock.set(MIDNIGHT + timedelta(seconds=30))
    await eventually(lambda: asyncio.sleep(0, len(woken)), lambda n: n > 0)
    await settle()
    early = [job_id for job_id, _ in woken]
    assert early == sorted((j for j, d in dues.items() if d <= clock.now()), key=lambda j: dues[j])
    assert 0 < len(early) < 200
    await clock.set(MIDNIGHT + timedelta(seconds=60))
    await eventually(lambda: asyncio.sleep(0, len(woken)), lambda n: n == 200)
    assert [job_id for job_id, _ in woken] == sorted(dues, key=lambda j: dues[j])
    await lot.stop()


def test_negative_jitter_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        ParkingLot(ManualClock(MIDNIGHT), lambda entry, cause: None, jitter_seconds=-1)


def entry(job_id: str, order: int, size: int = 0) -> Parked:
    return Parked(job_id, "sleeping", MIDNIGHT, order, size)


BASE = AGENT_BASE_BYTES


def test_a_storm_takes_turns_within_the_budget_and_in_order() -> None:
    resumed: list[Waiting] = []
    slots = AwakeSlots(50 * BASE, resumed.append)
    for n in range(5000):
        slots.request(entry(f"job-{n}", n), WakeCause.DUE)
    assert (slots.awake, slots.waiting, len(resumed)) == (50, 4950, 50)
    while slots.awake:
        slots.give_back(resumed[len(resumed) - slots.awake].entry.job_id)
        assert slots.awake <= 50
        assert slots.used <= 50 * BASE
    assert [w.entry.job_id for w in resumed] == [f"job-{n}" for n in range(5000)]
    assert slots.peak == 50
    assert slots.used == 0


def test_a_large_conversation_costs_more_room_and_is_not_overtaken() -> None:
    resumed: list[str] = []
    slots = AwakeSlots(10 * BASE, lambda waiting: resumed.append(waiting.entry.job_id))
    big = int(6 * BASE / CONVERSATION_FACTOR)  # charged 7 x BASE
    slots.request(entry("small-1", 1), WakeCause.DUE)
    slots.request(entry("big", 2, size=big), WakeCause.DUE)
    slots.request(entry("small-2", 3), WakeCause.DUE)
    slots.request(entry("small-3", 4), WakeCause.DUE)
    slots.request(entry("small-4", 5), WakeCause.DUE)
    assert resumed == ["small-1", "big", "small-2", "small-3"]
    assert slots.used == charge_of(big) + 3 * BASE <= 10 * BASE
    slots.give_back("big")
    assert resumed == ["small-1", "big", "small-2", "small-3", "small-4"]


def test_a_growing_conversation_holds_back_admissions() -> None:
    resumed: list[str] = []
    slots = AwakeSlots(4 * BASE, lambda waiting: resumed.append(waiting.entry.job_id))
    assert slots.try_take("running")
    assert slots.free == 3
    slots.charge("running", int(2 * BASE / CONVERSATION_FACTOR))  # now 3 x BASE
    assert slots.free == 1
    slots.request(entry("parked", 1, size=BASE), WakeCause.DUE)  # needs 4 x BASE: waits
    assert resumed == []
    assert slots.free == 0  # new work waits behind the line
    slots.give_back("running")
    assert resumed == ["parked"]


def test_one_agent_is_admitted_however_large_and_a_count_cap_applies_on_top() -> None:
    resumed: list[str] = []
    slots = AwakeSlots(BASE, lambda waiting: resumed.append(waiting.entry.job_id), max_count=2)
    slots.request(entry("huge", 1, size=100 * BASE), WakeCause.DUE)
    assert resumed == ["huge"]
    assert slots.free == 0
    slots.give_back("huge")
    roomy = AwakeSlots(100 * BASE, lambda waiting: None, max_count=2)
    assert roomy.free == 2
    assert roomy.try_take("a")
    assert roomy.try_take("b")
    assert not roomy.try_take("c")


def test_woken_agents_go_first_and_new_work_waits_behind_the_line() -> None:
    resumed: list[str] = []
    slots = AwakeSlots(2 * BASE, lambda waiting: resumed.append(waiting.entry.job_id))
    assert slots.try_take("new-1")
    assert slots.try_take("new-2")
    assert not slots.try_take("new-3")
    slots.request(entry("due-1", 1), WakeCause.DUE)
    slots.request(entry("due-2", 2), WakeCause.DUE)
    slots.request(entry("woken", 3), WakeCause.NOTIFIED)
    assert slots.withdraw("due-1")
    slots.give_back("new-1")
    assert resumed == ["woken"]
    slots.give_back("new-2")
    assert resumed == ["woken", "due-2"]
    slots.give_back("woken")
    assert slots.free == 1
    assert slots.try_take("new-3")
    assert slots.peak == 2


def test_giving_back_room_never_taken_is_a_bug() -> None:
    slots = AwakeSlots(BASE, lambda waiting: None)
    with pytest.raises(RuntimeError):
        slots.give_back("nobody")
    assert slots.try_take("once")
    slots.give_back("once")
    with pytest.raises(RuntimeError):
        slots.give_back("once")
