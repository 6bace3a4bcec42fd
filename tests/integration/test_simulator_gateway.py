"""The simulated gateway's happy path on real websockets: Hello, READY, guilds, heartbeats, resume."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import pytest

from protocol.sharding import shard_for_guild
from simulator import IdentifyOutcome, ResumeOutcome, UrlKind, ViolationKind, discord_shaped_token
from tests.conftest import RawClient, SimFactory

Connect = Callable[..., Awaitable[RawClient]]


async def test_hello_carries_the_configured_interval(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(heartbeat_interval_ms=1234)
    client = await raw_clients(sim.gateway_url)
    msg = client.ws  # first frame: raw bytes in Discord's key order
    raw = await msg.receive(5)
    assert raw.data.startswith('{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":1234')


@pytest.mark.parametrize("compress", ["none", "zlib-stream", "zstd-stream"])
async def test_identify_gets_ready_then_one_guild_create_per_guild_of_the_shard(
    sim_factory: SimFactory, raw_clients: Connect, compress: str
) -> None:
    sim = await sim_factory(shards=3, guilds=10)
    client = await raw_clients(sim.gateway_url, compress=compress)
    ready = await client.ready(shard=[1, 3])
    assert ready["v"] == 10
    assert ready["shard"] == [1, 3]
    assert ready["user"]["bot"] is True
    assert ready["application"]["id"] == ready["user"]["id"]
    assert ready["resume_gateway_url"] == sim.resume_url != sim.gateway_url
    assert len(ready["session_id"]) == 32
    guild_ids = [g["id"] for g in ready["guilds"]]
    assert all(g["unavailable"] is True for g in ready["guilds"])
    assert len(guild_ids) == 3  # guilds 1, 4, 7 of 0..9
    assert all(shard_for_guild(g, 3) == 1 for g in guild_ids)
    for expected in guild_ids:
        create = await client.recv_event("GUILD_CREATE")
        d = create["d"]
        assert d["id"] == expected
        assert d["unavailable"] is False
        assert len(d["channels"]) >= 3 and len(d["roles"]) >= 2 and len(d["members"]) >= 2
        assert 2_000 < len(orjson.dumps(d)) < 50_000  # "a few KB"
    assert [p["s"] for p in client.received if p["op"] == 0] == [1, 2, 3, 4]
    [identify] = sim.record.identifies_for(1)
    assert identify.outcome is IdentifyOutcome.ACCEPTED
    assert (identify.num_shards, identify.intents) == (3, 513)


async def test_every_guild_lands_on_exactly_one_shard(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(shards=4, guilds=13, max_concurrency=4)
    seen: list[str] = []
    for shard_id in range(4):
        client = await raw_clients(sim.gateway_url)
        ready = await client.ready(shard=[shard_id, 4])
        ids = [g["id"] for g in ready["guilds"]]
        assert all(shard_for_guild(g, 4) == shard_id for g in ids)
        seen += ids
    assert len(seen) == len(set(seen)) == 13


async def test_no_shard_field_means_shard_0_of_1(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=3)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    assert len(ready["guilds"]) == 3
    assert sim.record.identifies[0].shard_id == 0 and sim.record.identifies[0].num_shards == 1


async def test_payload_keys_are_in_discords_order(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory()
    client = await raw_clients(sim.gateway_url)
    await client.hello()
    await client.identify()
    raw = await client.ws.receive(5)
    assert raw.data.startswith('{"t":"READY","s":1,"op":0,"d":{')


async def test_heartbeats_are_acked_and_recorded(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory()
    client = await raw_clients(sim.gateway_url)
    await client.hello()
    await client.heartbeat()  # allowed before Identify
    assert (await client.recv())["op"] == 11
    await client.identify()
    await client.recv_event("READY")
    await client.send({"op": 1, "d": 1})
    await client.recv_op(11)
    [conn] = sim.record.connections.values()
    assert conn.heartbeats == 2 and conn.acks == 2
    assert [h.seq for h in sim.record.heartbeats_on(conn.conn_id)] == [None, 1]
    assert sim.record.acks_sent() == 2


async def test_server_heartbeat_request_is_op_1(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory()
    client = await raw_clients(sim.gateway_url)
    await client.ready()
    assert sim.inject(0, "heartbeat_request")
    beat = await client.recv_op(1)
    assert beat == {"t": None, "s": None, "op": 1, "d": None}
    await client.heartbeat()
    await client.recv_op(11)


async def test_silent_client_is_closed_but_its_session_resumes(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(heartbeat_interval_ms=100)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    closed = await client.expect_close(timeout=3)  # 100 ms * 1.5 grace
    assert closed.code == 4000
    [violation] = sim.record.violations_of(ViolationKind.HEARTBEAT_TIMEOUT)
    assert violation.shard_id == 0
    again = await raw_clients(ready["resume_gateway_url"])
    await again.hello()
    await again.resume(ready["session_id"], client.seq)
    await again.recv_event("RESUMED")
    assert len(sim.record.accepted_resumes(0)) == 1


async def test_heartbeating_client_is_not_closed(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(heartbeat_interval_ms=100)
    client = await raw_clients(sim.gateway_url)
    await client.ready()
    for _ in range(6):
        await asyncio.sleep(0.08)
        await client.heartbeat()
    assert not sim.record.violations_of(ViolationKind.HEARTBEAT_TIMEOUT)
    assert not client.ws.closed


@pytest.mark.parametrize("compress", ["none", "zlib-stream", "zstd-stream"])
async def test_resume_replays_exactly_the_missed_events_then_resumed(
    sim_factory: SimFactory, raw_clients: Connect, compress: str
) -> None:
    sim = await sim_factory(guilds=2)
    client = await raw_clients(sim.gateway_url, compress=compress)
    ready = await client.ready()
    await client.recv_event("GUILD_CREATE")
    await client.recv_event("GUILD_CREATE")
    sim.emit(0, 3)
    for _ in range(3):
        await client.recv_event("MESSAGE_CREATE")
    seen = client.seq
    assert seen == 6
    await client.close(4000)
    await sim.record.wait_for(
        lambda r: not any(c.closed_at is None for c in r.connections.values())
    )
    missed = sim.emit(0, 5)  # produced while no connection is attached
    assert len(missed) == 5
    again = await raw_clients(sim.resume_url, compress=compress)
    await again.hello()
    await again.resume(ready["session_id"], seen)
    replay = []
    while True:
        p = await again.recv()
        if p["t"] == "RESUMED":
            assert p["s"] == seen + 6
            break
        replay.append(p)
    assert [p["s"] for p in replay] == [7, 8, 9, 10, 11]
    assert [p["d"]["_sim_event_id"] for p in replay] == missed
    [resume] = sim.record.accepted_resumes(0)
    assert resume.replayed == 5 and resume.url_kind is UrlKind.RESUME and resume.seq == 6
    assert len(sim.record.identifies) == 1
    # after the resume, new events flow on the new connection
    [fresh] = sim.emit(0, 1)
    assert (await again.recv_event("MESSAGE_CREATE"))["d"]["_sim_event_id"] == fresh


async def test_resume_is_also_accepted_on_the_main_url(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=1)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    await client.recv_event("GUILD_CREATE")
    await client.drop()
    again = await raw_clients(sim.gateway_url)
    await again.hello()
    await again.resume(ready["session_id"], 2)
    await again.recv_event("RESUMED")
    [resume] = sim.record.accepted_resumes()
    assert resume.url_kind is UrlKind.MAIN


async def test_resume_of_an_unknown_session_gets_op9_false(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory()
    client = await raw_clients(sim.resume_url)
    await client.hello()
    await client.resume("0" * 32, 1)
    invalid = await client.recv_op(9)
    assert invalid["d"] is False
    [resume] = sim.record.resumes
    assert resume.outcome is ResumeOutcome.INVALID_SESSION


async def test_session_expires_after_the_resume_timeout(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(resume_timeout_s=0.2)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    await client.drop()
    await sim.record.wait_for(lambda r: all(c.closed_at for c in r.connections.values()))
    await asyncio.sleep(0.3)
    again = await raw_clients(sim.resume_url)
    await again.hello()
    await again.resume(ready["session_id"], 1)
    assert (await again.recv_op(9))["d"] is False
    assert sim.record.resumes[0].outcome is ResumeOutcome.INVALID_SESSION


async def test_client_close_1000_ends_the_session(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory()
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    await client.close(1000)
    await sim.record.wait_for(lambda r: all(c.closed_at for c in r.connections.values()))
    again = await raw_clients(sim.resume_url)
    await again.hello()
    await again.resume(ready["session_id"], 1)
    assert (await again.recv_op(9))["d"] is False


@pytest.mark.parametrize("seq", [99, -1, None, "1"])
async def test_resume_with_a_bad_seq_is_closed_4007(
    sim_factory: SimFactory, raw_clients: Connect, seq: object
) -> None:
    sim = await sim_factory(guilds=0)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    await client.close(4000)
    again = await raw_clients(sim.resume_url)
    await again.hello()
    await again.send(
        {"op": 6, "d": {"token": "simulated-token", "session_id": ready["session_id"], "seq": seq}}
    )
    closed = await again.expect_close()
    assert closed.code == 4007
    assert sim.record.violations_of(ViolationKind.INVALID_SEQ)
    assert sim.record.resumes[-1].outcome is ResumeOutcome.REJECTED


async def test_resume_older_than_the_replay_buffer_is_closed_4007(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=0, replay_buffer=4)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    await client.close(4000)
    sim.emit(0, 10)  # seq 2..11; the buffer keeps 8..11
    again = await raw_clients(sim.resume_url)
    await again.hello()
    await again.resume(ready["session_id"], 1)
    assert (await again.expect_close()).code == 4007
    # the edge: exactly the buffer's worth of events after seq still replays
    sim2 = await sim_factory(guilds=0, replay_buffer=4)
    c2 = await raw_clients(sim2.gateway_url)
    r2 = await c2.ready()
    await c2.close(4000)
    sim2.emit(0, 4)
    a2 = await raw_clients(sim2.resume_url)
    await a2.hello()
    await a2.resume(r2["session_id"], 1)
    await a2.recv_event("RESUMED")
    assert sim2.record.accepted_resumes()[0].replayed == 4


async def test_resume_takes_over_a_live_connection(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=0)
    first = await raw_clients(sim.gateway_url)
    ready = await first.ready()
    second = await raw_clients(sim.resume_url)
    await second.hello()
    await second.resume(ready["session_id"], 1)
    await second.recv_event("RESUMED")
    assert (await first.expect_close()).code == 4000
    [event] = sim.emit(0, 1)
    assert (await second.recv_event("MESSAGE_CREATE"))["d"]["_sim_event_id"] == event


async def test_events_flow_at_the_configured_rate_with_unique_ids(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=2, event_rate=200, privileged_intents=(1 << 8) | (1 << 1))
    client = await raw_clients(sim.gateway_url, compress="zlib-stream")
    await client.ready(intents=513 | (1 << 8) | (1 << 1) | (1 << 10) | (1 << 11))
    seen: dict[str, int] = {}
    ids: list[int] = []
    while len(ids) < 60:
        p = await client.recv()
        if p["op"] == 0 and "_sim_event_id" in (p["d"] or {}):
            ids.append(p["d"]["_sim_event_id"])
            seen[p["t"]] = seen.get(p["t"], 0) + 1
    assert len(set(ids)) == len(ids)
    assert set(seen) == {
        "MESSAGE_CREATE",
        "PRESENCE_UPDATE",
        "TYPING_START",
        "GUILD_MEMBER_UPDATE",
        "MESSAGE_REACTION_ADD",
    }
    recorded = [r.event_id for r in sim.record.sent_events(0)][: len(ids)]
    assert recorded == ids


async def test_events_respect_intents(sim_factory: SimFactory, raw_clients: Connect) -> None:
    sim = await sim_factory(guilds=1)
    client = await raw_clients(sim.gateway_url)
    await client.ready(intents=1 | (1 << 11))  # GUILDS | GUILD_MESSAGE_TYPING
    sim.emit(0, 1, "TYPING_START")
    sim.set_event_rate(500)
    await sim.record.wait_for(lambda r: len(r.sent_events()) >= 20)
    assert {r.t for r in sim.record.sent_events()} == {"TYPING_START"}
    with pytest.raises(ValueError, match="event_type"):
        sim.emit(0, 1, "NOT_AN_EVENT")


async def test_message_create_is_realistic(sim_factory: SimFactory, raw_clients: Connect) -> None:
    sim = await sim_factory(guilds=1, privileged_intents=1 << 15)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready(intents=513 | (1 << 15))
    guild = (await client.recv_event("GUILD_CREATE"))["d"]
    sim.emit(0, 1, "MESSAGE_CREATE")
    msg = await client.recv_event("MESSAGE_CREATE")
    d = msg["d"]
    assert 700 < len(orjson.dumps(d)) < 2000
    assert d["guild_id"] == guild["id"] == ready["guilds"][0]["id"]
    assert d["channel_id"] in {c["id"] for c in guild["channels"] if c["type"] == 0}
    assert d["author"]["id"] in {m["user"]["id"] for m in guild["members"]}
    assert d["id"] == d["nonce"]
    assert d["content"]


async def test_message_content_is_empty_without_its_intent(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=1, privileged_intents=1 << 15)
    client = await raw_clients(sim.gateway_url)
    await client.ready(intents=513)
    sim.emit(0, 3, "MESSAGE_CREATE")
    for _ in range(3):
        assert (await client.recv_event("MESSAGE_CREATE"))["d"]["content"] == ""


async def test_request_guild_members_is_answered_and_recorded(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=1, privileged_intents=2)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready(intents=3)
    gid = ready["guilds"][0]["id"]
    await client.send({"op": 8, "d": {"guild_id": gid, "query": "", "limit": 0, "nonce": "n1"}})
    chunk = await client.recv_event("GUILD_MEMBERS_CHUNK")
    assert chunk["d"]["guild_id"] == gid and chunk["d"]["nonce"] == "n1"
    assert chunk["d"]["chunk_count"] == 1 and chunk["d"]["members"]
    [command] = sim.record.commands
    assert command.op == 8 and command.shard_id == 0
    # requesting all members of the same guild again within 30 s is rate limited
    await client.send({"op": 8, "d": {"guild_id": gid, "query": "", "limit": 0, "nonce": "n2"}})
    limited = await client.recv_event("RATE_LIMITED")
    assert limited["d"]["opcode"] == 8 and 0 < limited["d"]["retry_after"] <= 30
    assert limited["d"]["meta"] == {"guild_id": gid, "nonce": "n2"}
    # a query is not limited
    await client.send({"op": 8, "d": {"guild_id": gid, "query": "mem", "limit": 10}})
    await client.recv_event("GUILD_MEMBERS_CHUNK")


async def test_discord_shaped_token_is_accepted_on_the_gateway(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    token = discord_shaped_token(987654321098765432)
    sim = await sim_factory(token=token)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready(token=token)
    assert ready["user"]["id"] == "987654321098765432"


async def test_stop_closes_every_connection(sim_factory: SimFactory, raw_clients: Connect) -> None:
    sim = await sim_factory(event_rate=100)
    client = await raw_clients(sim.gateway_url)
    await client.ready()
    await asyncio.wait_for(sim.stop(), 5)
    await client.expect_close()
    assert not sim.gateway.connections


async def test_a_resume_of_a_session_still_open_elsewhere_closes_the_old_connection(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    """Discord's behaviour the fencing tests must not lean on: the newer connection wins."""
    sim = await sim_factory(guilds=1)
    old = await raw_clients(sim.gateway_url)
    ready = await old.ready()
    await old.recv_event("GUILD_CREATE")
    seen = old.seq
    assert seen is not None
    new = await raw_clients(sim.resume_url)
    await new.hello()
    await new.resume(ready["session_id"], seen)
    await new.recv_event("RESUMED")
    closed = await old.expect_close()
    assert closed.code == 4000 and "elsewhere" in closed.reason
    [fresh] = sim.emit(0, 1)
    assert (await new.recv_event("MESSAGE_CREATE"))["d"]["_sim_event_id"] == fresh
    assert len(sim.record.accepted_resumes(0)) == 1 and len(sim.record.identifies) == 1
