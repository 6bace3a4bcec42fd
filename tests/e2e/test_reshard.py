"""``cluster reshard``: a running cluster moves to a new shard count without downtime.

Real processes: the simulator (several shard counts live at once, each guild's
events delivered to every session that covers it, one event id for all),
``cluster up``, ``cluster reshard`` and a ZeroMQ subscriber. Checked against
the simulator's record: every event generated while the subscriber listened
reaches it exactly once across the switch, the marker once, no identify bucket
broken, the old sessions ended with 1000, each new shard identified once, and a
restart runs the new layout by RESUME.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulator.record import ResumeOutcome, ViolationKind
from tests.conftest import SimFactory
from tests.e2e.cluster_process import (
    ClusterProcess,
    Subscriber,
    clusters,
    http_get,
    subscribers,
    wait_http,
)
from tests.e2e.test_reshard_hosts import eventually
from tests.e2e.test_up import all_ready, args_for, short_dir

__all__ = ["clusters", "short_dir", "subscribers"]

pytestmark = pytest.mark.timeout(120)


async def reshard(clusters: Callable[..., Any], where: Path, shards: int) -> ClusterProcess:
    run: ClusterProcess = await clusters(
        "--shards", str(shards), "--control", f"ipc://{where}/control", command="reshard"
    )
    return run


async def test_one_host_reshards_8_to_16_with_every_event_once(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    subscribers: Callable[..., Subscriber],
    short_dir: Path,
) -> None:
    sim = await sim_factory(
        shards=8, max_concurrency=4, identify_window_s=0.1, event_rate=20.0, guilds=48
    )
    # a 50 ms identify margin: the test checks the bucket rule, not how close to it two
    # busy cores can run (the old and new sets share the buckets)
    args = args_for(sim, short_dir, "--identify-margin", "0.05")
    run = await clusters(*args)
    listening = await run.listening()
    sub = subscribers(listening["pub"])
    url = await all_ready(run, within_s=30)
    await sub.wait_for(lambda s: len(s.event_ids) >= 40, 20)
    since = time.monotonic()  # every event generated from here on must arrive once
    await asyncio.sleep(0.5)

    command = await reshard(clusters, short_dir, 16)
    assert await command.wait(60) == 0, command.text()
    assert "switched, 16/16 new shards ready" in command.text(), command.text()
    await asyncio.sleep(1.0)  # events keep flowing on the new set
    sim.set_event_rate(0.0)

    generated = {
        d.event_id for d in sim.record.dispatches if d.event_id is not None and d.at >= since
    }
    try:
        await sub.wait_for(lambda s: generated <= set(s.event_ids), 20)
    except TimeoutError:
        missing = sorted(generated - set(sub.event_ids))
        raise AssertionError(f"{len(missing)} events never arrived: {missing[:10]}") from None
    twice = {i: n for i, n in sub.event_ids.items() if n > 1}
    assert not twice, f"published twice: {sorted(twice)[:10]}"
    assert sub.topics["TITANIUM_RESHARD"] == 1
    assert len(generated) > 100

    record = sim.record
    assert not record.violations_of(ViolationKind.IDENTIFY_RATE_LIMIT)
    new = record.accepted_identifies(num_shards=16)
    assert sorted(r.shard_id or 0 for r in new) == list(range(16)), "each new shard once"
    old_conns = [c for c in record.connections.values() if c.num_shards == 8]
    assert old_conns and all(c.closed_at is not None for c in old_conns), "\n".join(run.raw[-30:])
    last_old = [c for c in old_conns if c.closed_by == "client"]
    assert last_old and all(c.close_code == 1000 for c in last_old[-8:]), [
        (c.shard_id, c.close_code) for c in last_old
    ]

    _, status = await http_get(f"{url}/status")
    assert len(status["shards"]) == 16
    assert status["reshard"]["switched_total"] == 1
    # /health follows the new set: 200 with all 16 ready
    await wait_http(
        f"{url}/health", lambda code, body: code == 200 and body["shards_ready"] == 16, 10
    )
    _, metrics = await http_get(f"{url}/metrics")
    assert 'titanium_reshards_total{outcome="switched"} 1.0' in metrics
    assert "titanium_reshard_deduplicated_total" in metrics

    # a worker of the new set killed after the switch is replaced, and its shards resume
    identifies = len(record.accepted_identifies())
    await wait_for_old_workers_gone(run)
    victim = min(worker_children(run.process.pid))
    os.kill(victim, signal.SIGKILL)

    def resumed_after_kill() -> set[int]:
        return {
            r.shard_id or 0
            for r in record.resumes_for(outcome=ResumeOutcome.ACCEPTED, num_shards=16)
        }

    assert await eventually(lambda: bool(resumed_after_kill()), 30), "\n".join(run.raw[-30:])
    await wait_http(
        f"{url}/health", lambda code, body: code == 200 and body["shards_ready"] == 16, 20
    )
    assert len(record.accepted_identifies()) == identifies, "the replaced worker identified"

    # a restart with the same command runs the new layout, by RESUME
    run.signal(signal.SIGTERM)
    assert await run.wait(20) == 0
    identifies = len(record.accepted_identifies())
    again = await clusters(*args)
    await all_ready(again, within_s=30)
    assert len(record.accepted_identifies()) == identifies, "the restart spent an identify"
    resumed = {
        r.shard_id for r in record.resumes_for(outcome=ResumeOutcome.ACCEPTED, num_shards=16)
    }
    assert resumed == set(range(16))
    again.signal(signal.SIGTERM)
    assert await again.wait(20) == 0


async def test_a_reshard_the_budget_cannot_cover_is_refused_and_the_old_set_runs_on(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    short_dir: Path,
) -> None:
    sim = await sim_factory(
        shards=4, max_concurrency=4, identify_window_s=0.1, event_rate=5.0, session_start_total=10
    )
    run = await clusters(*args_for(sim, short_dir))
    url = await all_ready(run, within_s=30)
    command = await reshard(clusters, short_dir, 8)
    assert await command.wait(30) == 1
    assert command.raw[-1].startswith("cluster: error: reshard refused: identify budget:"), (
        command.raw
    )
    assert "8 plus a reserve of 4" in command.raw[-1]
    code, body = await http_get(f"{url}/health")
    assert code == 200 and body["shards_total"] == 4
    assert len(sim.record.accepted_identifies()) == 4
    run.signal(signal.SIGTERM)
    assert await run.wait(20) == 0


def _children(pid: int) -> set[int]:
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children.update(int(p) for p in (task / "children").read_text().split())
    return children


async def wait_for_old_workers_gone(run: ClusterProcess) -> None:
    """After a switch: until the retired set's workers have exited (only the new set's run)."""
    _, status = await http_get(f"{(await run.listening())['http']}/status")
    live = len(status["workers"])
    assert await eventually(lambda: len(worker_children(run.process.pid)) == live, 20)


def worker_children(supervisor_pid: int) -> set[int]:
    """The supervisor's worker processes, by /proc: the forks of its forkserver
    (cluster/forkserver.py), or its multiprocessing spawn children where there is none."""
    workers = set()
    for pid in _children(supervisor_pid):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                workers.add(pid)
            elif b"forkserver" in cmdline:
                workers.update(_children(pid))
    return workers


async def test_a_new_set_worker_killed_mid_reshard_resumes_and_a_supervisor_killed_mid_reshard_runs_the_old_layout(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    subscribers: Callable[..., Subscriber],
    short_dir: Path,
) -> None:
    # 16 new shards at max_concurrency 2 identify in 8 windows of 0.4 s: time to kill one
    sim = await sim_factory(
        shards=4, max_concurrency=2, identify_window_s=0.4, event_rate=10.0, guilds=32
    )
    args = args_for(sim, short_dir, interval=0.4)
    run = await clusters(*args)
    sub = subscribers((await run.listening())["pub"])
    url = await all_ready(run, within_s=30)
    await sub.wait_for(lambda s: len(s.event_ids) >= 10, 20)
    since = time.monotonic()
    _, status = await http_get(f"{url}/status")
    old_workers = {w["pid"] for w in status["workers"]}

    command = await reshard(clusters, short_dir, 8)
    async with asyncio.timeout(20):
        while not (worker_children(run.process.pid) - old_workers):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    (new_worker,) = worker_children(run.process.pid) - old_workers
    await asyncio.sleep(0.6)  # some new shards are READY by now, others still wait
    os.kill(new_worker, signal.SIGKILL)
    assert await command.wait(60) == 0, command.text()
    await asyncio.sleep(0.5)
    sim.set_event_rate(0.0)
    generated = {
        d.event_id for d in sim.record.dispatches if d.event_id is not None and d.at >= since
    }
    await sub.wait_for(lambda s: generated <= set(s.event_ids), 20)
    assert max(sub.event_ids.values()) == 1
    new = sim.record.accepted_identifies(num_shards=8)
    assert sorted(r.shard_id or 0 for r in new) == list(range(8)), "the killed worker resumed"

    # a second reshard, 8 -> 16, and the supervisor dies before the switch: the next
    # start runs 8 shards (the layout of the last switch), by RESUME
    sim.set_event_rate(10.0)
    identifies = len(sim.record.accepted_identifies())
    second = await reshard(clusters, short_dir, 16)
    async with asyncio.timeout(20):
        while len(sim.record.accepted_identifies(num_shards=16)) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    os.killpg(run.process.pid, signal.SIGKILL)
    await run.wait(10)
    assert await second.wait(20) != 0
    spent = len(sim.record.accepted_identifies()) - identifies  # the new set's, wasted
    again = await clusters(*args)
    again_url = await all_ready(again, within_s=30)
    _, status = await http_get(f"{again_url}/status")
    assert len(status["shards"]) == 8
    assert len(sim.record.accepted_identifies()) == identifies + spent, "the restart identified"
    again.signal(signal.SIGTERM)
    assert await again.wait(20) == 0
