"""Worker processes: spawn, watch, kill, and the command channel to them.

One :class:`WorkerSlot` per planned worker. Its :class:`WorkerState` changes
only through :meth:`WorkerSlot.transition`, which checks the move against
:data:`TRANSITIONS` and tells the pool's ``on_change`` hook (the supervisor
points it at the /status view)::

    planned -> spawning -> running -> stopping -> exited -> backoff -> spawning ...

A worker may exit from spawning or running too (a crash, a kill), and an
exited one may be given up instead of backing off.

Workers start from the top-level entry point :func:`worker.entry.run_spec` with a
frozen :class:`WorkerSpec` (STYLE.md 9), forked by multiprocessing's forkserver
where there is one, else spawned (:mod:`cluster.warm_start`).

- **Exit** is seen at once: the process sentinel is registered with
  ``loop.add_reader``; the callback reaps the process and hands
  ``(slot, exit code)`` to the supervisor.
- **Liveness** comes from the worker's own event loop: it reports every shard
  every report interval; :meth:`WorkerPool.silent` names the running slots
  that have not been heard from for the liveness timeout.
- **Commands** go out on a ROUTER with ``ROUTER_MANDATORY``; a worker is
  addressable once its HELLO arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import zmq
import zmq.asyncio

from cluster.restart_policy import RestartPolicy, RestartTracker
from cluster.warm_start import worker_context
from protocol import ipc
from worker.entry import run_spec
from worker.spec import WorkerSpec

log = logging.getLogger(__name__)

_start = worker_context()
#: The exit status multiprocessing reads for a fork whose forkserver died (its status
#: pipe closed without one); no worker exits with it (protocol.exitcodes).
FORKSERVER_LOST: Final = 255


class CommandRoutingError(LookupError):
    """A command could not be handed to a shard's worker."""


class UnknownShardError(CommandRoutingError):
    def __init__(self, shard_id: int) -> None:
        super().__init__(f"shard {shard_id} is not run by this supervisor")
        self.shard_id = shard_id


class ShardNotRunningError(CommandRoutingError):
    def __init__(self, shard_id: int, why: str) -> None:
        super().__init__(f"shard {shard_id} is not running: {why}")
        self.shard_id = shard_id


class WorkerState(enum.Enum):
    """Where a worker slot stands; the values are what /status shows."""

    #: Not spawned yet (only before the first spawn; /status shows it as spawning).
    PLANNED = "planned"
    SPAWNING = "spawning"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    GIVEN_UP = "given_up"


#: Every move a slot may make, by the state it leaves.
TRANSITIONS: Final[dict[WorkerState, frozenset[WorkerState]]] = {
    WorkerState.PLANNED: frozenset({WorkerState.SPAWNING}),
    WorkerState.SPAWNING: frozenset(
        {WorkerState.RUNNING, WorkerState.STOPPING, WorkerState.EXITED}
    ),
    WorkerState.RUNNING: frozenset({WorkerState.STOPPING, WorkerState.EXITED}),
    WorkerState.STOPPING: frozenset({WorkerState.EXITED}),
    WorkerState.EXITED: frozenset({WorkerState.BACKOFF, WorkerState.GIVEN_UP}),
    WorkerState.BACKOFF: frozenset({WorkerState.SPAWNING}),
    WorkerState.GIVEN_UP: frozenset(),
}


class WorkerTransitionError(AssertionError):
    """A slot was asked to make a move :data:`TRANSITIONS` does not allow: a bug."""


#: Told after every transition of a slot: the supervisor hands in the /status view's.
SlotHook = Callable[["WorkerSlot"], None]


def unwatched(slot: WorkerSlot) -> None:
    """The hook of a slot nobody shows (the default; a reshard's retired set)."""
    pass


@dataclass(slots=True)
class WorkerSlot:
    worker_id: int
    shard_ids: tuple[int, ...]
    tracker: RestartTracker
    #: Change it with :meth:`transition` only.
    state: WorkerState = WorkerState.PLANNED
    process: multiprocessing.process.BaseProcess | None = None
    started_at: float = 0.0
    #: monotonic time of the latest report from this worker (or of its spawn)
    last_seen: float = 0.0
    hello: bool = False
    fatal_code: int | None = None
    fatal_detail: str | None = None
    #: the spawn generation; an exit of an older process is ignored
    generation: int = 0
    sentinel: int | None = field(default=None, repr=False)
    #: Told after every transition (the pool's ``on_change``).
    on_change: SlotHook = field(default=unwatched, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def transition(self, to: WorkerState) -> None:
        """Move to ``to``; raises :class:`WorkerTransitionError` if that move is not allowed."""
        if to not in TRANSITIONS[self.state]:
            raise WorkerTransitionError(
                f"worker {self.worker_id}: {self.state.value} -> {to.value} is not a transition"
            )
        self.state = to
        self.on_change(self)


ExitHandler = Callable[[WorkerSlot, int | None], None]


class WorkerPool:
    """The worker slots of one supervisor and their processes."""

    def __init__(
        self,
        plans: list[tuple[int, tuple[int, ...]]],
        policy: RestartPolicy,
        on_exit: ExitHandler,
        router: zmq.asyncio.Socket,
        on_change: SlotHook = unwatched,
    ) -> None:
        self.slots: dict[int, WorkerSlot] = {
            worker_id: WorkerSlot(worker_id, shard_ids, RestartTracker(policy), on_change=on_change)
            for worker_id, shard_ids in plans
        }
        self._shard_to_worker = {s: w for w, shard_ids in plans for s in shard_ids}
        self._on_exit = on_exit
        self._router = router
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- processes ------------------------------------------------------------------------

    def spawn(self, slot: WorkerSlot, spec: WorkerSpec) -> None:
        """Start ``slot``'s process (the slot is PLANNED or in BACKOFF)."""
        if WorkerState.SPAWNING not in TRANSITIONS[slot.state]:
            raise WorkerTransitionError(
                f"worker {slot.worker_id}: spawned while {slot.state.value}"
            )
        loop = asyncio.get_running_loop()
        self._loop = loop
        process = _start.Process(
            target=run_spec, args=(spec,), name=f"titanium-worker-{slot.worker_id}", daemon=True
        )
        process.start()
        slot.generation += 1
        slot.process = process
        slot.hello = False
        slot.started_at = slot.last_seen = time.monotonic()
        sentinel = process.sentinel
        slot.sentinel = sentinel
        generation = slot.generation
        loop.add_reader(sentinel, self._exited, slot, generation)
        slot.transition(WorkerState.SPAWNING)
        log.info(
            "worker %d started (pid %s): shards %d-%d",
            slot.worker_id,
            process.pid,
            slot.shard_ids[0],
            slot.shard_ids[-1],
        )

    def _exited(self, slot: WorkerSlot, generation: int) -> None:
        if slot.sentinel is not None and self._loop is not None:
            self._loop.remove_reader(slot.sentinel)
            slot.sentinel = None
        if generation != slot.generation or slot.process is None:
            return
        # The sentinel closes while the process exits, a moment before it can be
        # reaped: a non-blocking wait could miss the exit status and leave a zombie.
        slot.process.join(1.0)
        code = slot.process.exitcode
        if code == FORKSERVER_LOST and _start.get_start_method() == "forkserver":
            # The forkserver died (SIGKILL, the OOM killer): this status is its, not the
            # worker's, which may still run, unwatched. End it; its replacement resumes.
            pid = slot.process.pid
            log.warning(
                "worker %d: the forkserver it was forked from is gone; ending it (pid %s)",
                slot.worker_id,
                pid,
            )
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        slot.hello = False
        self._on_exit(slot, code)

    def terminate(self, slot: WorkerSlot) -> None:
        """SIGTERM: the worker drains as on a STOP command (for one we cannot reach)."""
        self._signal(slot, signal.SIGTERM)

    def kill(self, slot: WorkerSlot) -> None:
        """SIGKILL."""
        self._signal(slot, signal.SIGKILL)

    def kill_all(self) -> None:
        for slot in self.slots.values():
            self.kill(slot)

    @staticmethod
    def _signal(slot: WorkerSlot, signum: signal.Signals) -> None:
        # Only a process not reaped yet: its pid cannot have been reused.
        if slot.process is not None and slot.sentinel is not None:
            with contextlib.suppress(ProcessLookupError, ValueError):
                pid = slot.process.pid
                if pid is not None:
                    os.kill(pid, signum)

    def alive(self) -> list[WorkerSlot]:
        return [s for s in self.slots.values() if s.sentinel is not None]

    def slot_of(self, shard_id: int) -> WorkerSlot | None:
        worker_id = self._shard_to_worker.get(shard_id)
        return None if worker_id is None else self.slots[worker_id]

    def silent(self, now: float, timeout_s: float) -> list[WorkerSlot]:
        return [
            s
            for s in self.slots.values()
            if s.sentinel is not None
            and s.state in (WorkerState.SPAWNING, WorkerState.RUNNING)
            and now - s.last_seen > timeout_s
        ]

    # -- the command channel ----------------------------------------------------------------

    def on_hello(self, hello: ipc.Hello) -> None:
        slot = self.slots.get(hello.worker_id)
        if slot is not None and slot.pid == hello.pid:
            slot.hello = True

    async def send(self, shard_id: int, payload: bytes) -> None:
        slot = self.slot_of(shard_id)
        if slot is None:
            raise UnknownShardError(shard_id)
        if slot.sentinel is None or slot.state not in (WorkerState.SPAWNING, WorkerState.RUNNING):
            raise ShardNotRunningError(shard_id, f"its worker is {slot.state.value}")
        if not slot.hello:
            raise ShardNotRunningError(shard_id, "its worker has not connected yet")
        await self._to_worker(slot, ipc.encode_command(shard_id, payload), shard_id)

    async def stop_worker(self, slot: WorkerSlot, *, end_sessions: bool = False) -> bool:
        """Ask a worker to drain (STOP, or END_SESSIONS: close with 1000); False if it
        cannot be reached (kill it instead)."""
        if not slot.hello:
            return False
        try:
            await self._to_worker(slot, ipc.encode_stop(end_sessions), None)
        except ShardNotRunningError:
            return False
        return True

    async def _to_worker(self, slot: WorkerSlot, frames: list[bytes], shard_id: int | None) -> None:
        try:
            await self._router.send_multipart(
                [ipc.worker_routing_id(slot.worker_id), *frames], flags=zmq.NOBLOCK
            )
        except zmq.ZMQError as exc:
            # EHOSTUNREACH (ROUTER_MANDATORY: not connected) or EAGAIN (its queue is full)
            raise ShardNotRunningError(
                -1 if shard_id is None else shard_id, f"worker {slot.worker_id}: {exc.strerror}"
            ) from None
