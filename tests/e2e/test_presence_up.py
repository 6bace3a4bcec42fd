"""``cluster up --status --activity --large-threshold``: what every IDENTIFY carries, and a run-time change."""

from __future__ import annotations

import asyncio
import signal
import sys
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

    # the same from the command line: `cluster presence`
    chess = {
        "since": None,
        "activities": [{"name": "chess", "type": 0}],
        "status": "online",
        "afk": False,
    }
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cluster",
        "presence",
        "--activity",
        "playing:chess",
        "--control",
        f"ipc://{short_dir}/control",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(command.communicate(), 30)
    assert command.returncode == 0, output
    assert output.decode().strip() == f"cluster presence: ipc://{short_dir}/control: 4 shards"

    def all_chess(record: Any) -> bool:
        return {c.shard_id for c in record.commands if c.op == 3 and c.d == chess} == {0, 1, 2, 3}

    await sim.record.wait_for(all_chess, timeout=10)
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


def test_cluster_presence_refuses_a_bad_status_in_one_line() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "cluster", "presence", "--status", "sleepy"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done
    assert "--status" in done.stderr and "sleepy" in done.stderr, done.stderr
