"""A test stand-in for the supervisor's side of protocol/ipc.py, on real ZeroMQ sockets.

It binds a PULL (the workers' event endpoint) and a ROUTER with
ROUTER_MANDATORY (the command endpoint) on 127.0.0.1:0, decodes every message
with ``protocol.ipc.decode``, dedupes events by ``(shard_id, epoch, seq)``
and checks the ordering promise: a session's session-started report arrives
before that session's READY event. Also the pytest fixtures that run shard
groups in-process against it (import them into a test module to use them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq
import zmq.asyncio

from protocol import ipc
from protocol.compression import Compression
from protocol.envelope import peek
from protocol.ipc import WorkerStatusKind, session_epoch
from simulator import Simulator
from worker.backoff import BackoffPolicy
from worker.group import ShardGroup
from worker.spec import WorkerSpec


@dataclass(slots=True)
class Received:
    #: (shard_id, epoch, seq) -> (topic, payload), first copy only
    events: dict[tuple[int, int, int], tuple[bytes, bytes]] = field(default_factory=dict)
    order: list[tuple[int, int, int]] = field(default_factory=list)
    duplicates: list[tuple[int, int, int]] = field(default_factory=list)
    reports: list[ipc.ShardReport] = field(default_factory=list)
    latest: dict[int, ipc.ShardReport] = field(default_factory=dict)
    statuses: list[ipc.WorkerStatus] = field(default_factory=list)
    hellos: list[ipc.Hello] = field(default_factory=list)
    #: epochs announced by session-started reports, per shard
    started_epochs: dict[int, set[int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def seqs(self, shard_id: int, epoch: int) -> list[int]:
        return sorted(s for (sh, ep, s) in self.events if sh == shard_id and ep == epoch)

    def topics(self, shard_id: int) -> list[bytes]:
        return [self.events[k][0] for k in self.order if k[0] == shard_id]


class SupervisorHarness:
    def __init__(self) -> None:
        self.context = zmq.asyncio.Context()
        self.pull = self.context.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind("tcp://127.0.0.1:0")
        self.event_endpoint: str = self.pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.bind("tcp://127.0.0.1:0")
        self.command_endpoint: str = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.got = Received()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> SupervisorHarness:
        self._tasks = [
            asyncio.create_task(self._pull_loop()),
            asyncio.create_task(self._router_loop()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.pull.close(0)
        self.router.close(0)
        self.context.term()

    def _events(self, batch: ipc.EventBatch) -> None:
        got = self.got
        for i, (topic_view, payload_view) in enumerate(batch.events):
            key = (batch.shard_id, batch.epoch, batch.first_seq + i)
            topic, payload = bytes(topic_view), bytes(payload_view)
            _, t, s = peek(payload)  # what the worker routed the payload by
            if t is None or (t.encode("ascii", "replace"), s) != (topic, key[2]):
                got.problems.append(f"payload {t}/{s} != ipc {topic!r}/{key}")
            if topic == b"READY" and batch.epoch not in got.started_epochs.get(key[0], set()):
                got.problems.append(f"READY of shard {key[0]} before its session-started report")
            if key in got.events:
                got.duplicates.append(key)
            else:
                got.events[key] = (topic, payload)
                got.order.append(key)

    def _handle(self, frames: list[bytes]) -> None:
        got = self.got
        message = ipc.decode(frames)
        if isinstance(message, ipc.EventRuns):
            for batch in message.batches:
                self._events(batch)
        elif isinstance(message, ipc.ShardReport):
            got.reports.append(message)
            got.latest[message.shard_id] = message
            if message.session_started:
                got.started_epochs.setdefault(message.shard_id, set()).add(message.epoch)
        elif isinstance(message, ipc.WorkerStatus):
            got.statuses.append(message)
        else:
            got.problems.append(f"unexpected {type(message).__name__} on the event channel")

    async def _pull_loop(self) -> None:
        while True:
            frames = await self.pull.recv_multipart()
            self._handle(frames)
            # wake waiters at most once per burst
            self._changed.set()

    async def _router_loop(self) -> None:
        while True:
            frames = await self.router.recv_multipart()
            message = ipc.decode(frames[1:])
            if isinstance(message, ipc.Hello):
                self.got.hellos.append(message)
                self._changed.set()

    async def wait_for(self, predicate: Callable[[Received], bool], within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s):
            while not predicate(self.got):
                self._changed.clear()
                await self._changed.wait()

    async def _said_hello(self, worker_id: int) -> None:
        """As the supervisor does: route to a worker only once its hello came (before it, the
        ROUTER may not know the peer yet: EHOSTUNREACH under ROUTER_MANDATORY)."""
        await self.wait_for(lambda got: any(h.worker_id == worker_id for h in got.hellos))

    async def send_command(self, worker_id: int, shard_id: int, payload: bytes) -> None:
        await self._said_hello(worker_id)
        await self.router.send_multipart(
            [ipc.worker_routing_id(worker_id), *ipc.encode_command(shard_id, payload)]
        )

    async def stop_worker(self, worker_id: int) -> None:
        await self._said_hello(worker_id)
        await self.router.send_multipart([ipc.worker_routing_id(worker_id), *ipc.encode_stop()])


# -- fixtures and helpers for shard/worker tests ------------------------------

_ids = itertools.count(1)


@dataclasses.dataclass
class RunningGroup:
    spec: WorkerSpec
    group: ShardGroup
    task: asyncio.Task[WorkerStatusKind]
    context: zmq.asyncio.Context

    async def stop(self, within_s: float = 10.0) -> WorkerStatusKind:
        self.group.stop("test teardown")
        return await asyncio.wait_for(asyncio.shield(self.task), within_s)


StartGroup = Callable[..., Awaitable[RunningGroup]]


def spec_for(
    sim: Simulator, harness: SupervisorHarness, shard_ids: tuple[int, ...], **overrides: Any
) -> WorkerSpec:
    base: dict[str, Any] = {
        "worker_id": next(_ids),
        "shard_ids": shard_ids,
        "total_shards": sim.config.shards,
        "token": sim.config.token,
        "intents": 513,
        "gateway_url": sim.gateway_url,
        "event_endpoint": harness.event_endpoint,
        "command_endpoint": harness.command_endpoint,
        "compression": Compression.NONE,
        "max_concurrency": sim.config.max_concurrency,
        # above the simulator's window: spacing is measured where the server reads,
        # and on a loaded 2-core machine either side can be late by tens of ms
        "identify_interval_s": sim.config.identify_window_s * 1.5 + 0.05,
        "new_session_delay_s": (0.05, 0.1),
        "backoff": BackoffPolicy(base_s=0.05, cap_s=0.5, stable_after_s=5.0),
        "report_interval_s": 0.2,
        "parent_check_interval_s": 0.2,
    }
    base.update(overrides)
    return WorkerSpec(**base)


@pytest.fixture
async def harness() -> AsyncIterator[SupervisorHarness]:
    async with SupervisorHarness() as h:
        yield h


@pytest.fixture
async def start_group(harness: SupervisorHarness) -> AsyncIterator[StartGroup]:
    running: list[RunningGroup] = []

    async def start(
        sim: Simulator, shard_ids: tuple[int, ...] = (0,), **overrides: Any
    ) -> RunningGroup:
        spec = spec_for(sim, harness, shard_ids, **overrides)
        context = zmq.asyncio.Context()
        group = ShardGroup(spec, context)
        run = RunningGroup(spec, group, asyncio.create_task(group.run()), context)
        running.append(run)
        return run

    try:
        yield start
    finally:
        for run in running:
            with contextlib.suppress(Exception):
                await run.stop()
            if not run.task.done():
                run.task.cancel()
                with contextlib.suppress(BaseException):
                    await run.task
            run.context.term()


def all_ready(shard_ids: tuple[int, ...] | list[int]) -> Callable[[Received], bool]:
    return lambda got: all(
        sid in got.latest and got.latest[sid].phase == "ready" for sid in shard_ids
    )


def expected_keys(
    sim: Simulator, shard_ids: tuple[int, ...] | list[int] | None = None
) -> set[tuple[int, int, int]]:
    """Every dispatch the simulator delivered (or would replay), as (shard_id, epoch, seq)."""
    return {
        (d.shard_id, session_epoch(d.session_id), d.seq)
        for d in sim.record.deliverable()
        if shard_ids is None or d.shard_id in shard_ids
    }


async def wait_delivered(
    sim: Simulator,
    harness: SupervisorHarness,
    shard_ids: tuple[int, ...] | list[int] | None = None,
    within_s: float = 10.0,
) -> None:
    """Wait until the harness holds exactly the simulator's dispatches; fail with the difference."""
    try:
        await harness.wait_for(
            lambda got: (
                expected_keys(sim, shard_ids)
                <= {k for k in got.events if shard_ids is None or k[0] in shard_ids}
            ),
            within_s,
        )
    except TimeoutError:
        missing = expected_keys(sim, shard_ids) - set(harness.got.events)
        raise AssertionError(
            f"{len(missing)} events never arrived, e.g. {sorted(missing)[:5]}"
        ) from None
    got = {k for k in harness.got.events if shard_ids is None or k[0] in shard_ids}
    extra = got - expected_keys(sim, shard_ids)
    assert not extra, f"events the simulator never sent: {sorted(extra)[:5]}"
    assert not harness.got.duplicates, harness.got.duplicates[:5]
    assert not harness.got.problems, harness.got.problems[:5]


def got_status(got: Received, worker_id: int) -> list[str]:
    return [s.status for s in got.statuses if s.worker_id == worker_id]
