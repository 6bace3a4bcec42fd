"""Workers started before the plan (cluster/warm_start.py): real spawned processes, a real simulator."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest

from cluster.warm_start import WarmStarts, worker_context
from protocol.session import Session
from tests.chaos.supervisor_harness import (
    SupervisorHarness,
    all_ready,
    harness,
    spec_for,
    wait_delivered,
)

__all__ = ["harness"]

pytestmark = pytest.mark.timeout(60)

SimFactory = Any
#: Warm processes are what a platform without a forkserver gets: tested as such here.
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
async def warm_starts() -> AsyncIterator[list[WarmStarts]]:
    made: list[WarmStarts] = []
    try:
        yield made
    finally:
        for warm in made:
            warm.close()


async def exited(process: Any, within_s: float = 15.0) -> int | None:
    await asyncio.get_running_loop().run_in_executor(None, process.join, within_s)
    return process.exitcode


async def test_a_warm_worker_runs_the_spec_it_is_handed(
    sim_factory: SimFactory, harness: SupervisorHarness, warm_starts: list[WarmStarts]
) -> None:
    warm = WarmStarts(1, SPAWN)
    warm_starts.append(warm)
    sim = await sim_factory(shards=2, identify_window_s=0.05)
    taken = warm.take()
    assert taken is not None and len(warm) == 0
    # sessions of shards it does not run make the pickle larger than a pipe's buffer
    # (64 KiB): the write goes on from the loop while the child is still importing
    padding = {1000 + i: Session(f"s{i:060d}", i, "ws://127.0.0.1:1/") for i in range(2000)}
    spec = spec_for(sim, harness, (0, 1), sessions=padding)
    process = taken.hand(spec, asyncio.get_running_loop())
    try:
        await harness.wait_for(all_ready([0, 1]), 15)
        sim.emit(0, 3)
        sim.emit(1, 3)
        await wait_delivered(sim, harness)
        assert len(sim.record.identifies) == 2  # none of the padding was resumed
        await harness.stop_worker(spec.worker_id)
        assert await exited(process) == 0
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)


async def test_warm_workers_not_taken_exit_0_when_closed() -> None:
    warm = WarmStarts(2, SPAWN)
    processes = warm.processes
    warm.close()
    assert len(warm) == 0
    assert [await exited(p) for p in processes] == [0, 0]


async def test_a_dead_warm_worker_is_skipped() -> None:
    warm = WarmStarts(2, SPAWN)
    try:
        first, second = warm.processes
        first.kill()
        await exited(first)
        taken = warm.take()
        assert taken is not None and taken.process is second
        assert warm.take() is None  # the pool then starts a process the usual way
        taken.close()
        assert await exited(second) == 0
    finally:
        warm.close()


async def test_with_a_forkserver_nothing_waits_the_server_starts() -> None:
    context = worker_context()
    if context.get_start_method() != "forkserver":
        pytest.skip("this platform has no forkserver")
    warm = WarmStarts(4, context)
    assert len(warm) == 0 and warm.take() is None  # the pool forks: a few ms each
    commands = [" ".join(child.cmdline()) for child in psutil.Process().children()]
    assert any("forkserver" in command for command in commands)  # importing beside us
