"""The worker as a process: spawn, exit codes, drain and RESUME, parent death, the coordinator."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from cluster.coordinator import Coordinator
from protocol.exitcodes import ExitCode
from protocol.ipc import WorkerStatusKind
from protocol.session import Session
from simulator.record import IdentifyOutcome, UrlKind
from tests.chaos.supervisor_harness import (
    StartGroup,
    SupervisorHarness,
    all_ready,
    got_status,
    harness,
    spec_for,
    start_group,
    wait_delivered,
)
from worker.main import run_worker
from worker.spec import WorkerSpec

__all__ = ["harness", "start_group"]

pytestmark = pytest.mark.timeout(60)

SimFactory = Any
_spawn = multiprocessing.get_context("spawn")


@pytest.fixture
def processes() -> Iterator[list[multiprocessing.process.BaseProcess]]:
    started: list[multiprocessing.process.BaseProcess] = []
    try:
        yield started
    finally:
        for p in started:
            if p.is_alive():
                p.kill()
            p.join(5)


def spawn_worker(
    spec: WorkerSpec, processes: list[multiprocessing.process.BaseProcess]
) -> multiprocessing.process.BaseProcess:
    process = _spawn.Process(target=run_worker, args=(spec,), daemon=True)
    process.start()
    processes.append(process)
    return process


async def join(process: multiprocessing.process.BaseProcess, within_s: float = 15.0) -> int | None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, process.join, within_s)
    return process.exitcode


async def test_a_fatal_close_code_exits_with_the_do_not_respawn_code(
    sim_factory: SimFactory, harness: SupervisorHarness, processes: list[Any]
) -> None:
    sim = await sim_factory(shards=2, identify_window_s=0.05)
    spec = spec_for(sim, harness, (0, 1), token="not-the-token")
    process = spawn_worker(spec, processes)
    assert await join(process) == ExitCode.FATAL
    # no retry storm: at most one IDENTIFY per shard, each refused with 4004
    assert 1 <= len(sim.record.identifies) <= 2
    assert all(
        r.outcome is IdentifyOutcome.REJECTED and r.code == 4004 for r in sim.record.identifies
    )
    assert len(sim.record.connections) <= 2
    (status,) = [s for s in harness.got.statuses if s.status == WorkerStatusKind.FATAL.value]
    assert status.fatal_code == 4004 and "token" in (status.detail or "").lower()
    assert "not-the-token" not in repr(spec)


async def test_drain_then_a_new_worker_resumes_every_saved_session(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    start_group: StartGroup,
    processes: list[Any],
) -> None:
    sim = await sim_factory(shards=2, identify_window_s=0.05)
    first = await start_group(sim, (0, 1))
    await harness.wait_for(all_ready([0, 1]), 10)
    sim.emit(0, 5)
    sim.emit(1, 5)
    await wait_delivered(sim, harness)
    assert await first.stop() is WorkerStatusKind.DRAINED
    # the final reports travel on the same ordered channel, ahead of the last status
    await harness.wait_for(lambda got: "drained" in got_status(got, first.spec.worker_id), 5)
    for shard in (0, 1):
        (conn,) = sim.record.connections_for(shard)
        assert conn.closed_by == "client" and conn.close_code == 4000  # resumable, not 1000
    sessions = {
        sid: Session(r.session_id, r.seq, r.resume_url)
        for sid, r in harness.got.latest.items()
        if r.session_id is not None and r.resume_url is not None
    }
    assert set(sessions) == {0, 1}
    sim.emit(0, 4)  # produced while no worker runs: only a RESUME replay brings them
    second = spec_for(sim, harness, (0, 1), sessions=sessions)
    process = spawn_worker(second, processes)
    await sim.record.wait_for(lambda r: len(r.accepted_resumes()) == 2, 15)
    assert {r.url_kind for r in sim.record.resumes} == {UrlKind.RESUME}
    assert len(sim.record.identifies) == 2  # the first worker's two, no more
    await wait_delivered(sim, harness)
    # stop command over the ROUTER: drained, exit 0
    await harness.stop_worker(second.worker_id)
    assert await join(process) == ExitCode.OK
    assert "drained" in got_status(harness.got, second.worker_id)


async def test_sigterm_drains_and_exits_zero(
    sim_factory: SimFactory, harness: SupervisorHarness, processes: list[Any]
) -> None:
    sim = await sim_factory(shards=1, identify_window_s=0.05)
    spec = spec_for(sim, harness, (0,))
    process = spawn_worker(spec, processes)
    await harness.wait_for(all_ready([0]), 15)
    assert process.pid is not None
    os.kill(process.pid, signal.SIGTERM)
    assert await join(process) == ExitCode.OK
    (conn,) = sim.record.connections_for(0)
    assert conn.close_code == 4000


def _spawn_and_abandon(spec: WorkerSpec, conn: multiprocessing.connection.Connection) -> None:
    """A stand-in supervisor that starts a worker and dies without a word."""
    child = _spawn.Process(target=run_worker, args=(spec,))
    child.start()
    conn.send(child.pid)
    conn.close()
    os._exit(0)


async def test_the_worker_exits_when_its_parent_disappears(
    sim_factory: SimFactory, harness: SupervisorHarness, processes: list[Any]
) -> None:
    sim = await sim_factory(shards=1, identify_window_s=0.05)
    spec = spec_for(sim, harness, (0,))
    parent_end, child_end = _spawn.Pipe()
    middle = _spawn.Process(target=_spawn_and_abandon, args=(spec, child_end))
    middle.start()
    processes.append(middle)
    worker_pid: int = await asyncio.get_running_loop().run_in_executor(None, parent_end.recv)
    try:
        await harness.wait_for(lambda got: "drained" in got_status(got, spec.worker_id), 20)

        def gone() -> bool:
            try:
                return psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        async with asyncio.timeout(10):
            # not our child (it may stay a zombie under a non-reaping init): poll its state
            while not gone():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert sim.record.connections_for(0)[-1].close_code == 4000
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker_pid, signal.SIGKILL)


async def test_identify_permits_come_from_the_coordinator(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    sim = await sim_factory(shards=4, max_concurrency=2, identify_window_s=0.1)
    coordinator = Coordinator(
        "tcp://127.0.0.1:0",
        max_concurrency=2,
        interval_s=0.1,
        session_total=1000,
        session_remaining=1000,
        reset_after_s=3600.0,
    )
    await coordinator.start()
    try:
        await start_group(sim, (0, 1, 2, 3), coordinator_endpoint=coordinator.endpoint)
        await harness.wait_for(all_ready([0, 1, 2, 3]), 15)
        assert len(sim.record.accepted_identifies()) == 4
        assert len(sim.record.identifies) == 4  # none refused by the server's bucket check
        assert coordinator.snapshot() is not None
    finally:
        await coordinator.stop()
