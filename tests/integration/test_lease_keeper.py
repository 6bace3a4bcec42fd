"""The lease keeper against a real redis-server: claim, spare, renew, fence, re-assert.

Lease timing is scaled down (renew 0.1 s, fence after 0.4 s, TTL 0.8 s); only
orderings are asserted (fenced before the TTL ran out, taken over only after),
never how fast anything happened.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio

from cluster.config import RedisSettings
from cluster.state.lease import LeaseKeeper
from cluster.state.redis_state import RedisState
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

RANGES = [(0, 3), (4, 7)]


def settings(url: str) -> RedisSettings:
    return RedisSettings(
        url=url, ttl_s=0.8, renew_s=0.1, fence_after_s=0.4, takeover_wait_s=0.1, spare_poll_s=0.05
    )


async def keeper(server: RedisServer, name: str) -> tuple[RedisState, LeaseKeeper]:
    state = RedisState(server.url, "4242", holder=name, timeout_s=0.3)
    await state.connect()
    return state, LeaseKeeper(state, settings(server.url))


async def test_two_keepers_take_different_ranges_and_a_third_waits_as_a_spare(
    redis_server: RedisServer,
) -> None:
    stop = asyncio.Event()
    a_state, a = await keeper(redis_server, "a")
    b_state, b = await keeper(redis_server, "b")
    c_state, c = await keeper(redis_server, "c")
    try:
        lease_a = await a.claim(RANGES, stop)
        lease_b = await b.claim(RANGES, stop)
        assert lease_a is not None and lease_b is not None
        assert {lease_a.shard_range, lease_b.shard_range} == set(RANGES)
        fences: list[str] = []
        holding = asyncio.create_task(a.hold(fences.append))
        holding_b = asyncio.create_task(b.hold(fences.append))
        spare = asyncio.create_task(c.claim(RANGES, stop))
        await asyncio.sleep(0.3)
        assert not spare.done() and c.waiting
        await asyncio.sleep(1.0)  # both renew past their TTL: still held
        assert not spare.done() and not fences
        holding.cancel()
        await a.release()
        lease_c = await asyncio.wait_for(spare, 5)
        assert lease_c is not None and lease_c.shard_range == lease_a.shard_range
        assert lease_c.token > lease_a.token  # a new owner, a higher fencing token
        holding_b.cancel()
    finally:
        stop.set()
        for state in (a_state, b_state, c_state):
            await state.close()


async def test_a_holder_that_cannot_reach_redis_fences_before_anyone_can_take_over(
    redis_factory: object,
) -> None:
    server: RedisServer = redis_factory(appendonly=True)  # type: ignore[operator]
    stop = asyncio.Event()
    a_state, a = await keeper(server, "a")
    try:
        lease = await a.claim(RANGES[:1], stop)
        assert lease is not None
        fences: list[str] = []
        fenced_at: list[float] = []

        def on_fence(why: str) -> None:
            fences.append(why)
            fenced_at.append(time.monotonic())

        holding = asyncio.create_task(a.hold(on_fence))
        await asyncio.sleep(0.3)
        server.stop()  # the holder is cut off from Redis (its AOF keeps the lease)
        stopped_at = time.monotonic()
        await asyncio.wait_for(holding, 5)
        assert fences and "renewal" in fences[0]
        assert a.lease is None and a.status_json()["held"] is False
        server.restart(keep_data=True)
        b_state, b = await keeper(server, "b")
        try:
            taken = await asyncio.wait_for(b.claim(RANGES[:1], stop), 5)
            assert taken is not None and taken.token > lease.token
            # the fence came first: a new owner only after the old one's TTL
            assert fenced_at[0] - stopped_at < settings(server.url).ttl_s
        finally:
            await b_state.close()
    finally:
        stop.set()
        await a_state.close()


async def test_a_holder_whose_lease_was_taken_fences_at_once(redis_server: RedisServer) -> None:
    stop = asyncio.Event()
    a_state, a = await keeper(redis_server, "a")
    b_state, b = await keeper(redis_server, "b")
    try:
        assert await a.claim(RANGES[:1], stop) is not None
        fences: list[str] = []
        holding = asyncio.create_task(a.hold(fences.append))
        # someone else's lease appears (as after a long pause of this holder)
        raw = redis.asyncio.from_url(redis_server.url)
        await raw.delete(a_state.key("lease:0-3"))
        await raw.aclose()
        assert await b.claim(RANGES[:1], stop) is not None
        await asyncio.wait_for(holding, 5)
        assert fences and "taken by b" in fences[0]
    finally:
        stop.set()
        await a_state.close()
        await b_state.close()


async def test_a_lease_lost_in_an_empty_redis_restart_is_re_asserted(
    redis_server: RedisServer,
) -> None:
    stop = asyncio.Event()
    a_state, a = await keeper(redis_server, "a")
    try:
        lease = await a.claim(RANGES[:1], stop)
        assert lease is not None
        fences: list[str] = []
        holding = asyncio.create_task(a.hold(fences.append))
        redis_server.restart(keep_data=False)
        await asyncio.sleep(0.6)
        assert not fences and not holding.done()
        info = await a_state.lease_info(RANGES[0])
        assert info is not None and info.holder == "a" and info.token == lease.token
        holding.cancel()
    finally:
        stop.set()
        await a_state.close()
