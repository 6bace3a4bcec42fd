"""A host with an index takes any range while another host holds its own (``--shard-ids auto``).

StatefulSet pods come and go in any order: a spare may hold pod 0's range when
pod 0 starts, and a pod back from a rolling restart finds its range taken. Such
a pod prefers its own range but covers whichever range's lease expires, so no
range waits for one particular pod to come back (and none costs an IDENTIFY).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulator import Simulator
from simulator.record import ResumeOutcome
from tests.conftest import SimFactory
from tests.e2e.cluster_process import ClusterProcess, clusters, http_get, wait_http
from tests.e2e.test_up import args_for, short_dir
from tests.redis_server import RedisServer

__all__ = ["clusters", "short_dir"]

pytestmark = pytest.mark.timeout(90)

LEASE = ["--lease-ttl", "3", "--lease-renew", "0.5", "--fence-after", "2", "--takeover-wait", "0.3"]


async def host(
    clusters: Callable[..., Any],
    sim: Simulator,
    where: Path,
    redis: RedisServer,
    index: int | None,
) -> tuple[ClusterProcess, str]:
    where.mkdir()  # noqa: ASYNC240 (a test directory, before any process starts)
    extra = ["--redis", redis.url, "--shard-ids", "auto", "--hosts", "2", *LEASE]
    if index is not None:
        extra += ["--host-index", str(index)]
    run: ClusterProcess = await clusters(*args_for(sim, where, *extra))
    return run, (await run.listening())["http"]


async def owned(url: str) -> list[int] | None:
    """The shards ``url``'s supervisor owns (None: a spare)."""
    _, body = await http_get(f"{url}/status")
    return sorted(s["shard_id"] for s in body["shards"]) if body.get("role") == "owner" else None


async def wait_owner(url: str, within_s: float = 30) -> list[int]:
    await wait_http(
        f"{url}/health", lambda code, body: code == 200 and body.get("role") == "owner", within_s
    )
    shards = await owned(url)
    assert shards is not None
    return shards


async def test_an_indexed_host_covers_another_range_while_its_own_is_held(
    sim_factory: SimFactory,
    redis_server: RedisServer,
    clusters: Callable[..., Any],
    short_dir: Path,
) -> None:
    sim = await sim_factory(shards=4, max_concurrency=2, identify_window_s=0.1, event_rate=5.0)
    spare, spare_url = await host(clusters, sim, short_dir / "s", redis_server, None)
    assert await wait_owner(spare_url) == [0, 1]  # the first free range
    first, first_url = await host(clusters, sim, short_dir / "a", redis_server, 0)
    assert await wait_owner(first_url) == [2, 3]  # its own (0-1) is held: the other one
    second, second_url = await host(clusters, sim, short_dir / "b", redis_server, 1)
    await wait_http(f"{second_url}/health", lambda c, b: c == 200 and b["role"] == "spare", 20)
    identifies = len(sim.record.accepted_identifies())
    assert identifies == 4

    spare.signal(signal.SIGTERM)  # its range's lease is released: host 1 covers it
    assert await spare.wait(20) == 0
    assert await wait_owner(second_url) == [0, 1]
    await asyncio.sleep(0.5)
    assert len(sim.record.accepted_identifies()) == identifies, "the hand-over spent an IDENTIFY"
    resumed = {r.shard_id for r in sim.record.resumes_for(outcome=ResumeOutcome.ACCEPTED)}
    assert {0, 1} <= resumed
    for run in (first, second):
        run.signal(signal.SIGTERM)
        assert await run.wait(20) == 0
