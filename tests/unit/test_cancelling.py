"""cancel_and_wait: a task that drops a cancellation is cancelled again until it ends."""

from __future__ import annotations

import asyncio

import pytest

from cluster.cancelling import cancel_and_wait

pytestmark = pytest.mark.timeout(10)


async def test_a_loop_that_drops_one_cancellation_still_ends() -> None:
    dropped = 0

    async def stubborn() -> None:
        nonlocal dropped
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                dropped += 1
                if dropped > 2:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task, None]), 5.0)
    assert task.cancelled() and dropped == 3


async def test_a_wait_for_that_returns_the_result_instead_of_the_cancel() -> None:
    # Python 3.11's wait_for returns a result that came with the cancellation.
    event = asyncio.Event()

    async def loop() -> None:
        while True:
            await asyncio.wait_for(event.wait(), 3600)
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    event.set()
    await asyncio.sleep(0)  # the waited-for Event.wait() ends; wait_for has not resumed
    await asyncio.wait_for(cancel_and_wait([task]), 5.0)
    assert task.done()


async def test_errors_and_finished_tasks_are_fine() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_and_wait([failed, done])
    assert failed.done() and done.done()
