"""The per-connection send limiter: 120 per 60 s, heartbeat slots reserved."""

from __future__ import annotations

import asyncio

import pytest

from worker.ratelimit import SendLimiter, SendWindow, heartbeat_reserve


@pytest.mark.parametrize(
    ("interval", "reserve"),
    [(41.25, 3), (45.0, 3), (60.0, 2), (30.0, 3), (10.0, 7), (1.0, 10), (0.0, 10)],
)
def test_heartbeat_reserve(interval: float, reserve: int) -> None:
    assert heartbeat_reserve(interval) == reserve


def test_commands_leave_the_reserve_to_heartbeats() -> None:
    w = SendWindow(limit=120, window_s=60.0)
    w.set_heartbeat_interval(41.25)  # reserve 3
    now = 0.0
    for _ in range(117):
        assert w.try_acquire(now) == 0.0
        now += 0.01
    wait = w.try_acquire(now)
    assert wait == pytest.approx(60.0 - now)
    for _ in range(3):  # heartbeats still fit
        assert w.try_acquire(now, priority=True) == 0.0
    assert w.try_acquire(now, priority=True) > 0  # 120 is a hard wall
    # after the window the oldest entries leave
    assert w.try_acquire(60.0) > 0  # the heartbeats filled the last slots
    assert w.try_acquire(61.0) == 0.0


def _max_in_any_window(times: list[float], window: float) -> int:
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_a_flood_never_exceeds_the_limit_in_any_window() -> None:
    w = SendWindow(limit=120, window_s=60.0)
    w.set_heartbeat_interval(10.0)  # reserve 7
    sent: list[float] = []
    now = 0.0
    next_beat = 0.0
    while now < 300.0:
        if now >= next_beat:
            assert w.try_acquire(now, priority=True) == 0.0, "a heartbeat was refused"
            sent.append(now)
            next_beat += 10.0
        wait = w.try_acquire(now)
        if wait == 0.0:
            sent.append(now)
            now += 0.001
        else:
            now += min(wait, max(next_beat - now, 0.0) or wait)
    assert _max_in_any_window(sent, 60.0) <= 120
    assert len(sent) > 4 * 110  # commands kept flowing at the allowed rate


async def test_async_limiter_flood_waits_instead_of_sending() -> None:
    clock = [0.0]
    window = SendWindow(limit=12, window_s=0.2, reserved=2)
    limiter = SendLimiter(window, clock=lambda: clock[0])
    got = 0

    async def flood() -> None:
        nonlocal got
        for _ in range(15):
            await limiter.acquire()
            got += 1

    task = asyncio.create_task(flood())
    await asyncio.sleep(0.05)
    assert got == 10  # 12 - 2 reserved; the rest wait
    await limiter.acquire_priority()  # a heartbeat gets through at once
    clock[0] = 1.0  # the window has passed
    await asyncio.wait_for(task, 2.0)
    assert got == 15
