"""``cluster up --status --activity --large-threshold``: what every IDENTIFY carries, and a run-time change."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq
import zmq.asyncio

from tests.conftest import SimFactory
from tests.e2e.cluster_process import clusters
from tests.e2e.test_up import all_ready, args_for, short_dir

__all__ = ["clusters", "short_dir"]

pytestmark = pytest.mark.timeout(60)


async def test_every_identify_carries_the_presence_and_one_request_changes_every_shard(
    sim_factory: SimFactory, clusters: Callable[..., Any], short_dir: Path
) -> None:
    sim = await sim_factory(shards=4, max_concurrency=4, identify_window_s=0.1)
    run = await clusters(
        *args_for(
            sim,
            short_dir,
            "--status",
            "dnd",
            "--activity",
            "watching:the shards",
            "--large-threshold",
            "100",
        )
    )
    await all_ready(run, within_s=30)
    identifies = sim.record.accepted_identifies()
    assert sorted(r.shard_id or 0 for r in identifies) == [0, 1, 2, 3]
    for record in identifies:
        assert record.presence == {
            "since": None,
            "activities": [{"name": "the shards", "type": 3}],
            "status": "dnd",
            "afk": False,
        }
        assert record.large_threshold == 100

    # one control request, every shard of the cluster
    idle = {"since": None, "activities": [], "status": "idle", "afk": False}
    context = zmq.asyncio.Context()
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(f"ipc://{short_dir}/control")
    try:
        await req.send(orjson.dumps({"op": 3, "d": idle, "all": True}))
        reply = orjson.loads(await req.recv())
    finally:
        req.close()
        context.term()
    assert reply == {"ok": True, "shard_ids": [0, 1, 2, 3]}

    def all_idle(record: Any) -> bool:
        return {c.shard_id for c in record.commands if c.op == 3 and c.d == idle} == {0, 1, 2, 3}

    await sim.record.wait_for(all_idle, timeout=10)
    run.signal(signal.SIGTERM)
    assert await run.wait(15) == 0


async def test_a_bad_activity_is_one_line_before_anything_starts(
    clusters: Callable[..., Any],
) -> None:
    run = await clusters("--simulate", "--activity", "dancing:x")
    assert await run.wait(15) == 2
    assert run.raw[-1].startswith("cluster: error: --activity: an activity is playing:NAME"), (
        run.raw
    )
