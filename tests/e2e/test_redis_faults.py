"""The Redis faults a ``cluster up --redis`` survives, against a real redis-server.

One host on loopback (the multi-host cases are in test_redis_hosts.py):
Redis unreachable for a while, then restarted with its AOF; Redis restarted
empty (the cold-start guard, the budget and the lease put back); the script
cache flushed. A shard is made to need an IDENTIFY (op 9, not resumable) at
the worst moment, and the simulator's record says whether it was sent.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from simulator import Simulator, ViolationKind
from tests.conftest import RedisFactory, SimFactory
from tests.e2e.cluster_process import ClusterProcess, Subscriber, clusters, http_get, subscribers
from tests.e2e.test_up import all_ready, args_for, short_dir
from tests.redis_server import RedisServer

__all__ = ["clusters", "short_dir", "subscribers"]

pytestmark = pytest.mark.timeout(120)

LEASE = ["--lease-ttl", "12", "--lease-renew", "0.5", "--fence-after", "8"]


async def start(
    clusters: Callable[..., Any], sim: Simulator, server: RedisServer, where: Path
) -> tuple[ClusterProcess, str]:
    run: ClusterProcess = await clusters(
        *args_for(sim, where, "--redis", server.url, "--identify-interval", "0.2", *LEASE)
    )
    url = await all_ready(run, within_s=30)
    return run, url


async def status_of(url: str) -> dict[str, Any]:
    _, body = await http_get(f"{url}/status")
    assert isinstance(body, dict)
    return body


async def wait_status(
    url: str, predicate: Callable[[dict[str, Any]], bool], within_s: float
) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        while True:
            body = await status_of(url)
            if predicate(body):
                return body
            await asyncio.sleep(0.1)


def identified(sim: Simulator, shard_id: int) -> int:
    return len(sim.record.accepted_identifies(shard_id))


@pytest.fixture
def sim_args() -> Iterator[dict[str, Any]]:
    yield {"shards": 4, "max_concurrency": 2, "identify_window_s": 0.2, "event_rate": 10}


async def test_redis_unreachable_then_back_with_its_aof(
    sim_factory: SimFactory,
    redis_factory: RedisFactory,
    clusters: Callable[..., Any],
    subscribers: Callable[..., Subscriber],
    short_dir: Path,
    sim_args: dict[str, Any],
) -> None:
    server = redis_factory(appendonly=True)
    sim = await sim_factory(**sim_args)
    run, url = await start(clusters, sim, server, short_dir)
    sub = subscribers((await run.listening())["pub"])
    token = (await status_of(url))["lease"]["token"]

    server.stop()
    body = await wait_status(url, lambda b: b["redis"].get("up") is False, within_s=10)
    _, health = await http_get(f"{url}/health")
    # the owner's shards still run and relay: /health names the problem, readiness is its work's
    assert any("Redis is unreachable" in p for p in health["problems"])
    received = len(sub.event_ids)
    sim.inject(0, "invalid_session", resumable=False)  # shard 0 now needs an IDENTIFY
    await sub.wait_for(lambda s: len(s.event_ids) > received + 10, 10)  # the others go on
    await asyncio.sleep(0.5)
    assert identified(sim, 0) == 1, "an IDENTIFY went out without a grant"

    server.restart(keep_data=True)
    await sim.record.wait_for(lambda r: len(r.accepted_identifies(0)) == 2, timeout=20)
    body = await wait_status(url, lambda b: b["redis"].get("up") is True, within_s=10)
    assert body["lease"]["held"] and body["lease"]["token"] == token  # kept, not re-taken
    assert body["lease"]["fenced"] == 0
    assert not sim.record.violations_of(ViolationKind.IDENTIFY_RATE_LIMIT)
    assert sum(identified(sim, s) for s in range(4)) == 5
    run.signal(signal.SIGTERM)
    assert await run.wait(15) == 0


async def test_redis_restarted_empty_and_its_script_cache_flushed(
    sim_factory: SimFactory,
    redis_factory: RedisFactory,
    clusters: Callable[..., Any],
    short_dir: Path,
    sim_args: dict[str, Any],
) -> None:
    server = redis_factory()
    sim = await sim_factory(**sim_args)
    run, url = await start(clusters, sim, server, short_dir)
    token = (await status_of(url))["lease"]["token"]

    server.restart(keep_data=False)
    # the lease re-asserted under its token, the budget re-synced from /gateway/bot
    body = await wait_status(
        url,
        lambda b: (
            b["redis"].get("up") is True
            and b["redis"].get("budget") is not None
            and any(r["token"] == token for r in b["redis"].get("ranges", {}).values())
        ),
        within_s=15,
    )
    assert body["lease"]["held"] and body["lease"]["fenced"] == 0
    sim.inject(1, "invalid_session", resumable=False)
    await sim.record.wait_for(lambda r: len(r.accepted_identifies(1)) == 2, timeout=20)
    body = await status_of(url)
    assert body["identify_redis"]["refused"].get("cold_start", 0) >= 1  # waited one interval

    raw = redis.asyncio.from_url(server.url)
    try:
        await raw.script_flush()
    finally:
        await raw.aclose()
    sim.inject(2, "invalid_session", resumable=False)
    await sim.record.wait_for(lambda r: len(r.accepted_identifies(2)) == 2, timeout=20)
    assert not sim.record.violations_of(ViolationKind.IDENTIFY_RATE_LIMIT)
    run.signal(signal.SIGTERM)
    assert await run.wait(15) == 0


async def test_two_hosts_that_disagree_on_the_layout_refuse_with_one_line(
    sim_factory: SimFactory,
    redis_factory: RedisFactory,
    clusters: Callable[..., Any],
    short_dir: Path,
) -> None:
    server = redis_factory()
    sim = await sim_factory(shards=4, max_concurrency=2, identify_window_s=0.2)
    first, _ = await start(clusters, sim, server, short_dir)
    other = short_dir / "other"
    other.mkdir()
    second: ClusterProcess = await clusters(
        *args_for(sim, other, "--redis", server.url, "--shards", "8", "--health", "127.0.0.1:0")
    )
    assert await second.wait(20) == 1
    lines = [line for line in second.raw if "error" in line.lower()]
    assert any("4 shards" in line and "8" in line for line in lines), second.raw[-3:]
    assert len(sim.record.accepted_identifies()) == 4
    first.signal(signal.SIGTERM)
    assert await first.wait(30) == 0
