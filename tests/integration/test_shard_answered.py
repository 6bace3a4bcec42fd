"""A shard tells its permit source when it read the server's answer (READY) to its IDENTIFY.

One shard against the simulator on a real socket; the permit source records
what the shard told it, in order. Only orderings are asserted, never speeds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from protocol.ipc import ShardReport
from protocol.session import ShardPhase
from worker.permits import LocalPermits
from worker.shard import Shard, ShardConfig

pytestmark = pytest.mark.timeout(60)

SimFactory = Any


class RecordingPermits(LocalPermits):
    """Local permits that note every ``sent`` and ``answered`` with its time."""

    def __init__(self, log: list[tuple[str, float]]) -> None:
        super().__init__(max_concurrency=1, interval_s=0.0)
        self.log = log

    def sent(self, shard_id: int) -> None:
        self.log.append(("sent", time.monotonic()))
        super().sent(shard_id)

    def answered(self, shard_id: int, answered_at: float) -> None:
        self.log.append(("answered", answered_at))
        self.log.append(("told", time.monotonic()))


class Output:
    def __init__(self, log: list[tuple[str, float]]) -> None:
        self.log = log
        self.ready = asyncio.Event()

    def event(self, shard_id: int, epoch: int, seq: int, topic: bytes, payload: bytes) -> bool:
        return True

    def name_session(self, shard_id: int, session_id: str | None) -> None:
        return None

    async def drain(self) -> None:
        return None

    async def report(self, report: ShardReport) -> None:
        if report.session_started:
            self.log.append(("session report", time.monotonic()))
        if report.phase == ShardPhase.READY.value:
            self.ready.set()


async def test_the_shard_reports_the_answer_with_when_it_read_the_ready(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(shards=1, identify_window_s=0.05)
    log: list[tuple[str, float]] = []
    output = Output(log)
    config = ShardConfig(
        shard_id=0,
        total_shards=1,
        token=sim.config.token,
        intents=1,
        gateway_url=sim.gateway_url,
    )
    shard = Shard(config, RecordingPermits(log), output)
    run = asyncio.create_task(shard.run())
    try:
        async with asyncio.timeout(20):
            await output.ready.wait()
    finally:
        shard.stop()
        async with asyncio.timeout(20):
            await run
    assert len(sim.record.accepted_identifies(0)) == 1
    kinds = [kind for kind, _ in log]
    # once, after the write, and before the session's report goes to the supervisor
    assert kinds == ["sent", "answered", "told", "session report"]
    times = [at for _, at in log]
    assert times == sorted(times), "the read's stamp lies between the write and the telling"
