"""Worker slots: one transition point, checked against the table, seen by the /status view."""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import zmq
import zmq.asyncio

from cluster.restart_policy import RestartPolicy, RestartTracker
from cluster.status import ClusterStatus
from cluster.workers import (
    TRANSITIONS,
    WorkerPool,
    WorkerSlot,
    WorkerState,
    WorkerTransitionError,
)

ALLOWED = sorted(
    ((a, b) for a, targets in TRANSITIONS.items() for b in targets),
    key=lambda t: (t[0].value, t[1].value),
)
FORBIDDEN = [(a, b) for a in WorkerState for b in WorkerState if b not in TRANSITIONS[a]]


def slot_in(state: WorkerState, seen: list[WorkerState] | None = None) -> WorkerSlot:
    slot = WorkerSlot(0, (0, 1), RestartTracker(RestartPolicy()), state=state)
    if seen is not None:
        slot.on_change = lambda s: seen.append(s.state)
    return slot


def test_the_table_is_the_lifecycle() -> None:
    assert set(ALLOWED) == {
        (WorkerState.PLANNED, WorkerState.SPAWNING),
        (WorkerState.SPAWNING, WorkerState.RUNNING),
        (WorkerState.SPAWNING, WorkerState.STOPPING),
        (WorkerState.SPAWNING, WorkerState.EXITED),
        (WorkerState.RUNNING, WorkerState.STOPPING),
        (WorkerState.RUNNING, WorkerState.EXITED),
        (WorkerState.STOPPING, WorkerState.EXITED),
        (WorkerState.EXITED, WorkerState.BACKOFF),
        (WorkerState.EXITED, WorkerState.GIVEN_UP),
        (WorkerState.BACKOFF, WorkerState.SPAWNING),
    }
    assert set(TRANSITIONS) == set(WorkerState)
    assert WorkerSlot(0, (0,), RestartTracker(RestartPolicy())).state is WorkerState.PLANNED
    assert issubclass(WorkerTransitionError, AssertionError)  # a bad move is a bug


@pytest.mark.parametrize(("source", "target"), ALLOWED, ids=lambda s: s.value)
def test_every_allowed_transition_moves_and_tells_the_hook(
    source: WorkerState, target: WorkerState
) -> None:
    seen: list[WorkerState] = []
    slot = slot_in(source, seen)
    slot.transition(target)
    assert slot.state is target
    assert seen == [target]


@pytest.mark.parametrize(("source", "target"), FORBIDDEN, ids=lambda s: s.value)
def test_every_other_transition_is_refused_and_changes_nothing(
    source: WorkerState, target: WorkerState
) -> None:
    seen: list[WorkerState] = []
    slot = slot_in(source, seen)
    with pytest.raises(WorkerTransitionError, match=f"{source.value} -> {target.value}"):
        slot.transition(target)
    assert slot.state is source
    assert seen == []


@pytest.fixture
def router() -> Iterator[zmq.asyncio.Socket]:
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.ROUTER)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        context.term()


def test_the_pool_hook_keeps_the_status_view_in_step(router: zmq.asyncio.Socket) -> None:
    status = ClusterStatus(2, [(0, (0, 1))])
    pool = WorkerPool(
        [(0, (0, 1))], RestartPolicy(), lambda slot, code: None, router, status.apply_worker
    )
    slot = pool.slots[0]
    view = status.workers[0]
    assert view.to_json()["state"] == "spawning"  # not spawned yet: shown as about to be
    slot.process = SimpleNamespace(pid=4242)  # type: ignore[assignment]
    slot.sentinel = 99
    slot.transition(WorkerState.SPAWNING)
    assert (view.pid, view.state, view.alive) == (4242, WorkerState.SPAWNING, True)
    slot.transition(WorkerState.RUNNING)
    assert view.to_json()["state"] == "running"
    slot.sentinel = None  # reaped
    slot.tracker.on_exit(-9, started_at=0.0, now=1000.0)
    slot.transition(WorkerState.EXITED)
    assert (view.pid, view.state, view.alive) == (4242, WorkerState.EXITED, False)
    slot.transition(WorkerState.BACKOFF)
    assert view.restarts == 1 and view.to_json()["state"] == "backoff"


def test_spawn_refuses_a_slot_that_is_not_planned_or_backing_off(
    router: zmq.asyncio.Socket,
) -> None:
    pool = WorkerPool([(0, (0,))], RestartPolicy(), lambda slot, code: None, router)
    slot = pool.slots[0]
    slot.state = WorkerState.RUNNING
    with pytest.raises(WorkerTransitionError):
        pool.spawn(slot, None)  # type: ignore[arg-type]  # refused before the spec is read
    assert slot.process is None and slot.generation == 0


@pytest.mark.parametrize(
    ("method", "signum"), [("terminate", signal.SIGTERM), ("kill", signal.SIGKILL)]
)
def test_terminate_and_kill_signal_a_live_worker_only(
    router: zmq.asyncio.Socket, method: str, signum: signal.Signals
) -> None:
    pool = WorkerPool([(0, (0,))], RestartPolicy(), lambda slot, code: None, router)
    slot = pool.slots[0]
    getattr(pool, method)(slot)  # no process yet: nothing to signal
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(30,))
    process.start()
    try:
        slot.process = process
        slot.sentinel = None  # as if reaped already: its pid may be reused, leave it be
        getattr(pool, method)(slot)
        process.join(0.3)
        assert process.exitcode is None
        slot.sentinel = process.sentinel
        getattr(pool, method)(slot)
        process.join(10)
        assert process.exitcode == -signum
    finally:
        process.kill()
        process.join()
