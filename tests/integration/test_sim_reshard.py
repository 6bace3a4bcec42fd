"""Resharding against the simulator on real websockets: shard sets of different sizes side by side.

Discord lets a bot run a new shard set alongside the old one while it
reshards: each guild's events go to every live session whose ``(shard_id,
num_shards)`` covers it, with one event identity. Shown here with raw
gateway clients identifying different shard counts at once, the 4011
refusals (too many guilds on a shard, too few shards), and the recommended
shard count raised through the admin API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from simulator import IdentifyOutcome, Simulator, ViolationKind
from tests.conftest import RawClient, SimFactory

Connect = Callable[..., Awaitable[RawClient]]
Shard = tuple[int, int]
AUTH = {"Authorization": "Bot simulated-token"}
#: One identify per bucket per window: tiny, so sessions identified one after the other pass.
IDENTIFY_WINDOW = 1e-6

pytestmark = pytest.mark.timeout(60)


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


def covers(shard: Shard, guild_id: str | int) -> bool:
    return (int(guild_id) >> 22) % shard[1] == shard[0]


def bot_guilds(sim: Simulator) -> list[str]:
    return [str(sim.factory.guild(i).id) for i in range(sim.config.guild_count)]


async def logged_in(client: RawClient, shard: Shard, **identify: Any) -> dict[str, Any]:
    """Hello, IDENTIFY as ``shard``, READY and its GUILD_CREATEs; returns READY's ``d``."""
    ready = await client.ready(shard=list(shard), **identify)
    ready["guild_creates"] = [
        (await client.recv_event("GUILD_CREATE"))["d"]["id"] for _ in ready["guilds"]
    ]
    return ready


async def events_until(client: RawClient, marker: int) -> list[dict[str, Any]]:
    """The generated events a client reads up to and including the one with id ``marker``."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["d"]["_sim_event_id"] != marker:
        p = await client.recv_until(lambda p: "_sim_event_id" in (p.get("d") or {}))
        got.append(p)
    return got


async def sets_side_by_side(
    sim: Simulator, raw_clients: Connect, shards: list[Shard], **identify: Any
) -> dict[Shard, tuple[RawClient, dict[str, Any]]]:
    """Connect every client at once, then identify them one after the other (one bucket)."""
    clients = await asyncio.gather(*(raw_clients(sim.gateway_url) for _ in shards))
    await asyncio.gather(*(c.hello() for c in clients))
    live = {}
    for client, shard in zip(clients, shards, strict=True):
        await client.identify(shard=list(shard), **identify)
        ready: dict[str, Any] = (await client.recv_event("READY"))["d"]
        live[shard] = (client, ready)
    for client, ready in live.values():  # all sessions live; now their GUILD_CREATEs
        ready["guild_creates"] = [
            (await client.recv_event("GUILD_CREATE"))["d"]["id"] for _ in ready["guilds"]
        ]
    return live


async def test_two_shard_counts_at_once_each_guild_reaches_exactly_its_sessions(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=16, shards=2, identify_window_s=IDENTIFY_WINDOW)
    # shard 0 of 2 and shard 1 of 4 at the same time, and shard 2 of 4, which lies
    # inside shard 0 of 2: guilds 2, 6, 10, 14 are covered by two sessions
    shards: list[Shard] = [(0, 2), (1, 4), (2, 4)]
    live = await sets_side_by_side(sim, raw_clients, shards)
    guilds = bot_guilds(sim)
    for shard, (_, ready) in live.items():
        mine = {g for g in guilds if covers(shard, g)}
        assert ready["shard"] == list(shard)
        assert {g["id"] for g in ready["guilds"]} == mine
        assert sorted(ready["guild_creates"]) == sorted(mine)  # each once, under its own count
    assert {r.num_shards for r in sim.record.accepted_identifies()} == {2, 4}
    assert {(c.shard_id, c.num_shards) for c in sim.record.connections.values()} == set(shards)

    emitted = {gid: sim.emit_guild(gid, 2) for gid in guilds}
    for gid, ids in emitted.items():
        assert len(ids) == (2 if any(covers(s, gid) for s in shards) else 0)  # 3 of 4: nobody
    markers = {shard: sim.emit(shard[0], 1, num_shards=shard[1])[0] for shard in shards}
    for shard, (client, _) in live.items():
        got = await events_until(client, markers[shard])
        ids = [p["d"]["_sim_event_id"] for p in got]
        assert len(ids) == len(set(ids))  # nothing twice in one session
        expected = [i for gid, e in emitted.items() if covers(shard, gid) for i in e]
        assert sorted(set(ids) & {i for e in emitted.values() for i in e}) == sorted(expected)
        assert all(covers(shard, p["d"]["guild_id"]) for p in got)

    # the record: one DispatchRecord per session an event reached, one event id
    deliveries = sim.record.deliveries()
    for gid, ids in emitted.items():
        for event_id in ids:
            reached = {(r.shard_id, r.num_shards) for r in deliveries[event_id]}
            assert reached == {s for s in shards if covers(s, gid)}
            assert len(deliveries[event_id]) == len(reached)
    doubled = [i for gid in guilds if covers((2, 4), gid) for i in emitted[gid]]
    assert doubled and all(len(deliveries[i]) == 2 for i in doubled)


async def test_generated_load_across_the_overlap_has_one_identity_per_event(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=16, identify_window_s=IDENTIFY_WINDOW)
    shards: list[Shard] = [(0, 2), (1, 4), (2, 4), (5, 8)]
    live = await sets_side_by_side(sim, raw_clients, shards)
    sim.set_event_rate(200)
    await sim.record.wait_for(lambda r: len(r.deliveries()) >= 80, timeout=10)
    sim.set_event_rate(0)  # nothing is produced after this: the record is complete
    seen: dict[int, set[Shard]] = {}
    guild_of: dict[int, str] = {}
    for shard, (client, ready) in live.items():
        recorded = sim.record.sent_events(session_id=ready["session_id"])
        last = recorded[-1].event_id
        assert last is not None
        got = await events_until(client, last)
        ids = [p["d"]["_sim_event_id"] for p in got]
        # what the session got is exactly what the server produced into it, in order
        assert ids == [r.event_id for r in recorded]
        assert len(ids) == len(set(ids))
        assert {r.num_shards for r in recorded} == {shard[1]}
        for p in got:
            seen.setdefault(p["d"]["_sim_event_id"], set()).add(shard)
            guild_of[p["d"]["_sim_event_id"]] = p["d"]["guild_id"]
    # every event reached exactly the sessions covering its guild, whatever their count
    for event_id, reached in seen.items():
        assert reached == {s for s in shards if covers(s, guild_of[event_id])}
    assert set(seen) == set(sim.record.deliveries())
    assert any(len(reached) == 2 for reached in seen.values())
    # guilds of shard 0 of 2 are generated once (by the smaller set), not once per set
    for_old = [i for i, r in seen.items() if (0, 2) in r]
    assert len(for_old) == len(set(for_old))


async def test_an_old_session_resumed_during_the_overlap_replays_the_same_event_ids(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=8, identify_window_s=IDENTIFY_WINDOW)
    live = await sets_side_by_side(sim, raw_clients, [(0, 2), (2, 4)])
    old, old_ready = live[(0, 2)]
    new, _ = live[(2, 4)]
    seen = old.seq
    await old.close(4000)  # the old set's connection drops; its session stays resumable
    await sim.record.wait_for(lambda r: r.connections[1].closed_at is not None)
    ids = sim.emit(2, 3, num_shards=4)
    live_ids = [p["d"]["_sim_event_id"] for p in await events_until(new, ids[-1])]
    assert live_ids == ids
    again = await raw_clients(sim.resume_url)
    await again.hello()
    await again.resume(old_ready["session_id"], seen)
    replayed = [p["d"]["_sim_event_id"] for p in await events_until(again, ids[-1])]
    assert replayed == ids  # the same identities: a relay can drop them as already published
    await again.recv_event("RESUMED")
    [resume] = sim.record.accepted_resumes(0, num_shards=2)
    assert resume.replayed == 3 and resume.shard_id == 0


@pytest.mark.parametrize(
    ("shard", "why"),
    [
        ((0, 4), "would hold 16 guilds"),  # 16 guilds on one shard, the limit is 10
        ((0, 6), "would hold 11 guilds"),
        ((5, 6), "at least 7 shards"),  # this shard holds 10, but 6 shards are too few for 64
    ],
)
async def test_4011_for_too_many_guilds_per_shard_or_too_few_shards(
    sim_factory: SimFactory, raw_clients: Connect, shard: Shard, why: str
) -> None:
    sim = await sim_factory(
        guilds=64, shards=8, max_guilds_per_shard=10, identify_window_s=IDENTIFY_WINDOW
    )
    # a set that fits is live meanwhile, and keeps its events
    running = await raw_clients(sim.gateway_url)
    await logged_in(running, (0, 8))
    refused = await raw_clients(sim.gateway_url)
    await refused.hello()
    await refused.identify(shard=list(shard))
    closed = await refused.expect_close()
    assert closed.code == 4011
    [violation] = sim.record.violations_of(ViolationKind.SHARDING_REQUIRED)
    assert violation.code == 4011 and why in violation.detail
    [rejected] = sim.record.identifies_for(shard[0], IdentifyOutcome.REJECTED, shard[1])
    assert rejected.code == 4011
    [event] = sim.emit(0, 1, num_shards=8)
    assert (await running.recv_event("MESSAGE_CREATE"))["d"]["_sim_event_id"] == event
    # the smallest count that fits is accepted
    fits = await raw_clients(sim.gateway_url)
    ready = await logged_in(fits, (6, 7))
    assert len(ready["guilds"]) <= 10


async def test_recommended_shards_raised_through_the_admin_api_shows_in_gateway_bot(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(shards=16, max_concurrency=16)
    status, body = await get(sim.rest_url + "/gateway/bot", AUTH)
    assert status == 200 and body["shards"] == 16
    status, body = await post(sim.admin_url + "/config", {"recommended_shards": 32})
    assert status == 200 and body["ok"] and body["recommended_shards"] == 32
    status, body = await get(sim.rest_url + "/gateway/bot", AUTH)
    assert body["shards"] == 32 and body["session_start_limit"]["max_concurrency"] == 16
    assert (await get(sim.admin_url + "/config"))[1]["recommended_shards"] == 32
    # bad values change nothing, also the other settings of the same request
    for bad, needle in [
        (24, "multiple of max_concurrency"),
        (0, "between 1 and"),
        ("32", "integer"),
        (True, "integer"),
    ]:
        status, body = await post(
            sim.admin_url + "/config", {"recommended_shards": bad, "event_rate": 5}
        )
        assert status == 400 and needle in body["error"]
    status, body = await get(sim.admin_url + "/config")
    assert body["recommended_shards"] == 32 and body["event_rate"] == 0
    # in process too, at once
    sim.set_recommended_shards(64)
    assert (await get(sim.rest_url + "/gateway/bot", AUTH))[1]["shards"] == 64
    with pytest.raises(ValueError, match="multiple"):
        sim.set_recommended_shards(40)


async def test_admin_emit_by_guild_and_faults_for_one_shard_set(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=8, identify_window_s=IDENTIFY_WINDOW)
    live = await sets_side_by_side(sim, raw_clients, [(0, 2), (2, 4)])
    old, _ = live[(0, 2)]
    new, _ = live[(2, 4)]
    both = next(g for g in bot_guilds(sim) if covers((2, 4), g))
    status, body = await post(sim.admin_url + "/emit", {"guild_id": both, "count": 2})
    assert status == 200 and len(body["event_ids"]) == 2
    for client in (old, new):
        got = await events_until(client, body["event_ids"][-1])
        assert [p["d"]["_sim_event_id"] for p in got] == body["event_ids"]
    status, body = await post(sim.admin_url + "/emit", {"shard_id": 0, "num_shards": 2, "count": 1})
    assert status == 200 and len(body["event_ids"]) == 1
    for bad in [
        {"guild_id": both, "shard_id": 0, "count": 1},
        {"count": 1},
        {"guild_id": "123", "count": 1},
        {"guild_id": both, "num_shards": 4, "count": 1},
    ]:
        status, body = await post(sim.admin_url + "/emit", bad)
        assert status == 400, bad
    # a fault for the whole 4-shard set reaches only its connection
    status, body = await post(
        sim.admin_url + "/fault",
        {"shard_id": "all", "num_shards": 4, "kind": "heartbeat_request"},
    )
    new_conn = next(c.conn_id for c in sim.record.connections.values() if c.num_shards == 4)
    assert status == 200 and body["connections"] == [new_conn]
    assert (await new.recv_op(1))["op"] == 1
    [fault] = sim.record.faults
    assert (fault.shard_id, fault.num_shards) == (2, 4)
    assert sim.inject(0, "heartbeat_request", num_shards=4) == []  # no shard 0 of 4 is live
