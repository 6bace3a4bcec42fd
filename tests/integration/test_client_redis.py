"""titanium_client on a real redis-server, with entries in the ``@discordjs/brokers`` layout.

The test writes the sink's entries itself (XADD ``data`` = msgpack or JSON of
``{"shardId", "payload": {"op": 0, "t", "s", "d"}}``), exactly what the cluster's
sink and ``PubSubRedisBroker`` agree on, and reads them with the library.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgpack
import orjson
import pytest
import redis
import redis.asyncio
import redis.exceptions

from protocol.sharding import shard_for_guild
from tests.redis_server import RedisServer
from titanium_client import (
    AckState,
    AlreadyAcknowledgedError,
    Event,
    InvalidCommandError,
    StreamCluster,
    StreamSubscription,
    SubscriptionFailedError,
    connect,
    subscribe,
)

pytestmark = pytest.mark.timeout(30)

STREAM = "MESSAGE_CREATE"
PRESENCE: dict[str, Any] = {"since": None, "activities": [], "status": "online", "afk": False}


def sink_data(shard_id: int, seq: int, t: str = STREAM, *, json: bool = False) -> bytes:
    obj = {"shardId": shard_id, "payload": {"op": 0, "t": t, "s": seq, "d": {"n": seq}}}
    return orjson.dumps(obj) if json else msgpack.packb(obj)


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for the module (each test starts from FLUSHALL): 30 starts saved."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed: .ci/run must install it in CI")
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_server(shared_redis: RedisServer) -> RedisServer:
    """The module's server, running and empty (overrides the per-test one of conftest)."""
    if not shared_redis.running:
        shared_redis.start()
    with redis.Redis.from_url(shared_redis.url) as client:
        client.flushall()
    return shared_redis


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def append(r: redis.asyncio.Redis, n: int, stream: str = STREAM, shard_id: int = 0) -> None:
    async with r.pipeline(transaction=False) as pipe:
        for seq in range(1, n + 1):
            pipe.xadd(stream, {"data": sink_data(shard_id, seq, stream)})
        await pipe.execute()


def member(url: str, consumer: str, **options: Any) -> StreamSubscription:
    options.setdefault("events", [STREAM])
    options.setdefault("group", "bot")
    options.setdefault("block", 0.05)
    return StreamSubscription(url, consumer=consumer, **options)


async def take(sub: StreamSubscription, n: int, within: float = 5.0) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(within):
        while len(out) < n:
            out.append(await sub.__anext__())
    return out


async def poll_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """For counters nothing signals: check every 20 ms."""
    for _ in range(int(within / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not hold in time")


async def pending(r: redis.asyncio.Redis, stream: str = STREAM, group: str = "bot") -> int:
    info: dict[str, Any] = await r.xpending(stream, group)
    return int(info["pending"])


async def test_msgpack_and_json_entries_are_decoded_and_acked_after_the_body(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    await r.xadd(STREAM, {"data": sink_data(3, 41)})
    await r.xadd(STREAM, {"data": sink_data(3, 42, json=True)})
    await r.xadd(STREAM, {"data": b"  " + sink_data(3, 43, json=True)})
    seen: list[Event] = []
    async with subscribe(redis_server.url, group="bot", events=[STREAM], block=0.05) as sub:
        async for event in sub:
            seen.append(event)
            assert event.state is AckState.PENDING
            if len(seen) == 3:
                break
    assert [(e.name, e.shard_id, e.seq, e.session_id) for e in seen] == [
        (STREAM, 3, 41, None),
        (STREAM, 3, 42, None),
        (STREAM, 3, 43, None),
    ]
    assert [e.d for e in seen] == [{"n": 41}, {"n": 42}, {"n": 43}]
    assert orjson.loads(seen[0].raw) == {"op": 0, "t": STREAM, "s": 41, "d": {"n": 41}}
    assert all(e.state is AckState.ACKED and e.delivery_count == 1 for e in seen)
    assert await pending(r) == 0
    assert sub.stats.acked == 3


async def test_two_members_of_one_group_share_the_stream_without_overlap(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    total = 300
    handled: dict[str, list[int]] = {"a": [], "b": []}
    members = {name: member(redis_server.url, name, batch=8) for name in handled}
    done = asyncio.Event()

    async def run(name: str) -> None:
        async with members[name] as sub:
            async for event in sub:
                handled[name].append(event.seq)
                await asyncio.sleep(0)  # let the other member in
                if len(handled["a"]) + len(handled["b"]) >= total:
                    done.set()

    tasks = [asyncio.create_task(run(name)) for name in members]
    await asyncio.sleep(0.1)  # both members are reading
    await append(r, total)
    async with asyncio.timeout(10):
        await done.wait()
    for sub in members.values():
        sub.stop()
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    a, b = set(handled["a"]), set(handled["b"])
    assert a and b, "both members took part"
    assert not a & b
    assert a | b == set(range(1, total + 1))
    assert len(handled["a"]) + len(handled["b"]) == total
    assert await pending(r) == 0


async def test_a_member_that_dies_mid_handler_has_its_entries_claimed_after_the_ack_wait(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    ack_wait = 0.5
    await append(r, 10)
    dying = member(redis_server.url, "dying", ack_wait=ack_wait, batch=4, auto_ack=False)
    in_hand = await take(dying, 3)  # handed out, never acked
    died_at = time.monotonic()
    await dying.close()  # as if killed: nothing acked (read-ahead is handed back at once)

    survivor = member(redis_server.url, "survivor", ack_wait=ack_wait, drop_duplicates=True)
    async with survivor:
        got = await take(survivor, 10)
    seqs = [e.seq for e in got]
    assert sorted(seqs) == list(range(1, 11))
    claimed = [e for e in got if e.seq in {x.seq for x in in_hand}]
    assert all(e.delivery_count == 2 for e in claimed)
    assert survivor.stats.claimed >= 3 and survivor.stats.redelivered >= 3
    # the dead member's own entries waited for the ack wait, the rest did not
    assert got[-1].seq in {x.seq for x in in_hand}
    assert time.monotonic() - died_at >= ack_wait
    assert await pending(r) == 0


async def test_a_second_group_sees_every_entry(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    await append(r, 20)
    first = member(redis_server.url, "x", group="moderation")
    second = member(redis_server.url, "y", group="logging")
    async with first, second:
        a = await take(first, 20)
        b = await take(second, 20)
    assert [e.seq for e in a] == [e.seq for e in b] == list(range(1, 21))


async def test_an_entry_past_max_deliveries_goes_to_the_dead_letter_stream(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    await append(r, 1)
    sub = member(
        redis_server.url,
        "c",
        ack_wait=0.3,
        max_deliveries=2,
        drop_duplicates=True,
        dead_letter="dead:bot",
    )
    counts: list[int] = []
    async with sub:
        for _ in range(2):
            (event,) = await take(sub, 1)
            counts.append(event.delivery_count)
            await event.nak()  # the handler cannot do it now
        # the claimer takes it a third time and moves it: wait on the dead-letter stream
        assert await r.xread({"dead:bot": "0"}, block=5000)
    assert counts == [1, 2]  # a redelivery is never dropped as a duplicate
    (dead,) = await r.xrange("dead:bot")
    fields = dead[1]
    assert fields[b"stream"] == STREAM.encode() and fields[b"deliveries"] == b"3"
    assert b"max_deliveries=2" in fields[b"reason"]
    assert msgpack.unpackb(fields[b"data"])["payload"]["s"] == 1
    assert await pending(r) == 0
    assert (sub.stats.naked, sub.stats.dead_lettered) == (2, 1)


async def test_an_exception_in_the_loop_body_leaves_its_entry_pending(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    await append(r, 5)
    with pytest.raises(RuntimeError, match="handler failed"):
        async with member(redis_server.url, "c") as sub:
            async for event in sub:
                if event.seq == 3:
                    raise RuntimeError("handler failed")
    rows = await r.xpending_range(STREAM, "bot", "-", "+", 10)
    # 1 and 2 acked; 3 pending (its handler failed); 4 and 5, read ahead, handed back:
    # pending with an idle time of the ack wait, so any member claims them at once
    assert [row["consumer"] for row in rows] == [b"c"] * 3
    assert rows[0]["time_since_delivered"] < 1000
    assert all(row["time_since_delivered"] >= 30_000 for row in rows[1:])
    # the same consumer comes back: its own pending entry first, then the rest
    async with member(redis_server.url, "c", ack_wait=0.3) as again:
        got = await take(again, 3)
    assert sorted(e.seq for e in got) == [3, 4, 5]
    assert next(e for e in got if e.seq == 3).delivery_count == 2


async def test_explicit_ack_nak_term_and_in_progress(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    await append(r, 3)
    async with member(
        redis_server.url, "c", auto_ack=False, ack_wait=0.4, dead_letter="dead:bot"
    ) as sub:
        one, two, three = await take(sub, 3)
        await one.ack()
        with pytest.raises(AlreadyAcknowledgedError):
            await one.ack()
        with pytest.raises(AlreadyAcknowledgedError):
            await one.nak()
        await asyncio.sleep(0.2)
        await two.in_progress()
        (row,) = await r.xpending_range(STREAM, "bot", two.entry_id, two.entry_id, 1)
        assert row["time_since_delivered"] < 150  # idle time restarted
        await two.term("cannot be handled")
        (dead,) = await r.xrange("dead:bot")
        assert dead[1][b"reason"] == b"cannot be handled"
        started = time.monotonic()
        await three.nak(0.1)
        (again,) = await take(sub, 1)
        assert again.seq == 3 and again.delivery_count == 2
        assert time.monotonic() - started >= 0.1
        await again.ack()
    assert await pending(r) == 0
    assert (sub.stats.acked, sub.stats.terminated, sub.stats.naked) == (2, 1, 1)


async def test_a_slow_consumer_holds_a_bounded_number_of_events(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    await append(r, 100)
    async with member(redis_server.url, "c", auto_ack=False, batch=4, max_in_flight=8) as sub:
        held = await take(sub, 8)
        with pytest.raises(TimeoutError):
            await take(sub, 1, within=0.3)  # nothing more until something is settled
        groups = await r.xinfo_groups(STREAM)
        assert groups[0]["entries-read"] <= 8 + 4  # the rest waits in Redis, not here
        await held[0].ack()
        (more,) = await take(sub, 1)
        assert more.seq == 9


async def test_an_empty_block_is_a_loop_turn_and_stop_ends_the_loop(
    redis_server: RedisServer,
) -> None:
    sub = member(redis_server.url, "c", block=0.02)
    ended = asyncio.Event()

    async def run() -> None:
        async with sub:
            async for _ in sub:
                pass
        ended.set()

    task = asyncio.create_task(run())
    await asyncio.sleep(0.3)  # ~15 empty reads
    assert not task.done()
    sub.stop()
    async with asyncio.timeout(5):
        await task
    assert ended.is_set() and sub.stats.delivered == 0


async def test_undecodable_entries_are_dead_lettered(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    await r.xadd(STREAM, {"data": b"\x00garbage"})
    await r.xadd(STREAM, {"other": b"x"})
    await r.xadd(STREAM, {"data": msgpack.packb({"shardId": 0, "payload": {"s": "1"}})})
    await append(r, 1)
    async with member(redis_server.url, "c", dead_letter="dead:bot") as sub:
        (event,) = await take(sub, 1)
    assert event.seq == 1
    dead = await r.xrange("dead:bot")
    assert [d[1][b"reason"].split(b":")[0] for d in dead] == [b"undecodable"] * 3
    assert sub.stats.malformed == 3 and sub.stats.dead_lettered == 3
    assert await pending(r) == 0


async def test_entries_trimmed_while_pending_are_counted_as_lost(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    await append(r, 6)
    first = member(redis_server.url, "gone", auto_ack=False, batch=2, ack_wait=0.2)
    await take(first, 2)
    await first.close()
    await r.xtrim(STREAM, maxlen=0, approximate=False)  # the sink's retention ran
    await append(r, 1)
    async with member(redis_server.url, "c", ack_wait=0.2) as sub:
        (event,) = await take(sub, 1)
        await poll_until(lambda: sub.stats.lost >= 4)  # 2 in hand + 2 handed back, trimmed
    assert event.seq == 1
    assert sub.stats.lost == 4
    assert await pending(r) == 0


async def test_the_consumer_waits_out_a_redis_restart_and_recreates_its_group(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    await append(r, 1)
    async with member(redis_server.url, "c", backoff_base=0.02, backoff_max=0.1) as sub:
        (first,) = await take(sub, 1)
        redis_server.stop()
        await asyncio.sleep(0.3)
        redis_server.start()  # same port, no data: the group is gone
        await asyncio.sleep(0.3)
        await append(r, 2)
        got = await take(sub, 2, within=10)
    assert first.seq == 1 and [e.seq for e in got] == [1, 2]
    assert sub.stats.reconnects >= 1


async def test_a_key_that_is_no_stream_fails_the_loop_with_a_typed_error(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    await r.set(STREAM, "not a stream")
    with pytest.raises(SubscriptionFailedError, match="WRONGTYPE") as failed:
        async with member(redis_server.url, "c") as sub:
            async for _ in sub:
                pass
    assert isinstance(failed.value.__cause__, redis.exceptions.ResponseError)


async def test_gateway_send_entries_in_the_brokers_layout(
    redis_server: RedisServer, r: redis.asyncio.Redis
) -> None:
    guild = 81384788765712384
    async with StreamCluster(redis_server.url, shard_count=4) as cluster:
        assert await cluster.request_guild_members(guild, query="ab", limit=5) == (
            shard_for_guild(guild, 4),
        )
        assert await cluster.update_presence("idle") == (0, 1, 2, 3)
        assert await cluster.send(4, {"guild_id": str(guild), "channel_id": None,
                                      "self_mute": False, "self_deaf": False},
                                  shard_id=2) == (2,)  # fmt: skip
        with pytest.raises(InvalidCommandError, match="op 2"):
            await cluster.send(2, {"token": "x"}, shard_id=0)  # IDENTIFY is the shard's
        with pytest.raises(InvalidCommandError, match="unknown shard"):
            await cluster.send(3, PRESENCE, shard_id=9)
        with pytest.raises(InvalidCommandError, match="exactly one target"):
            await cluster.send(3, PRESENCE, shard_id=1, all=True)
    entries = await r.xrange("gateway_send")
    decoded = [msgpack.unpackb(fields[b"data"]) for _, fields in entries]
    assert [list(e) for e in decoded] == [["shardId", "payload"]] * 6
    assert decoded[0] == {
        "shardId": shard_for_guild(guild, 4),
        "payload": {"op": 8, "d": {"guild_id": str(guild), "query": "ab", "limit": 5}},
    }
    assert [e["shardId"] for e in decoded[1:5]] == [0, 1, 2, 3]
    assert all(
        e["payload"]["op"] == 3 and e["payload"]["d"]["status"] == "idle" for e in decoded[1:5]
    )
    assert decoded[5]["shardId"] == 2 and decoded[5]["payload"]["op"] == 4


async def test_connect_picks_the_stream_for_a_redis_url(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="shard_count"):
        connect(redis_server.url)
    cluster = connect(redis_server.url, shard_count=2)
    try:
        assert isinstance(cluster, StreamCluster)
    finally:
        await cluster.close()
