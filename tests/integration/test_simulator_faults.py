"""Fault injection on real websockets: every kind, on demand and over the admin API, and chaos."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from protocol.errors import DecompressionError
from simulator import FaultKind, ResumeOutcome
from simulator.faults import CHAOS_SAFE, ChaosPicker
from tests.conftest import GatewayClosed, RawClient, SimFactory

Connect = Callable[..., Awaitable[RawClient]]


async def post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def resume_on(
    raw_clients: Connect, url: str, session_id: str, seq: int | None, compress: str = "none"
) -> tuple[RawClient, list[dict[str, Any]]]:
    """Resume; return the new client and the replayed dispatches (RESUMED excluded)."""
    client = await raw_clients(url, compress=compress)
    await client.hello()
    await client.resume(session_id, seq)
    replayed: list[dict[str, Any]] = []
    while True:
        p = await client.recv()
        if p["t"] == "RESUMED":
            return client, replayed
        if p["op"] == 0:
            replayed.append(p)


async def test_reconnect_sends_op7_and_may_close_later(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory()
    client = await raw_clients(sim.gateway_url)
    await client.ready()
    assert sim.inject(0, "op7", close_after_s=0.05) == [1]
    assert await client.recv_op(7) == {"t": None, "s": None, "op": 7, "d": None}
    assert (await client.expect_close()).code == 4000
    [fault] = sim.record.faults
    assert fault.kind == "reconnect" and fault.shard_id == 0 and not fault.chaos


@pytest.mark.parametrize("resumable", [True, False])
async def test_invalid_session_true_keeps_and_false_ends_the_session(
    sim_factory: SimFactory, raw_clients: Connect, resumable: bool
) -> None:
    sim = await sim_factory(guilds=0)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    sim.inject(0, FaultKind.INVALID_SESSION, resumable=resumable)
    assert (await client.recv_op(9))["d"] is resumable
    await client.close(4000)
    again = await raw_clients(sim.resume_url)
    await again.hello()
    await again.resume(ready["session_id"], 1)
    if resumable:
        await again.recv_event("RESUMED")
    else:
        assert (await again.recv_op(9))["d"] is False
        assert sim.record.resumes[-1].outcome is ResumeOutcome.INVALID_SESSION


@pytest.mark.parametrize(
    ("code", "resumable"), [(4000, True), (1000, True), (4321, True), (4009, False), (4007, False)]
)
async def test_close_with_any_code(
    sim_factory: SimFactory, raw_clients: Connect, code: int, resumable: bool
) -> None:
    sim = await sim_factory(guilds=0)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    sim.inject(0, "close", code=code, reason="injected")
    closed = await client.expect_close()
    assert (closed.code, closed.reason) == (code, "injected")
    again = await raw_clients(sim.resume_url)
    await again.hello()
    await again.resume(ready["session_id"], 1)
    if resumable:
        await again.recv_event("RESUMED")
    else:  # 4007/4009 mean "start a new session"
        assert (await again.recv_op(9))["d"] is False


async def test_drop_aborts_tcp_without_a_close_frame_and_the_session_resumes(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=0)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    sim.inject(0, "drop")
    closed = await client.expect_close()
    assert closed.code in (None, 1006)  # no close frame from the server
    [conn] = sim.record.connections_for(0)
    assert conn.closed_by == "abort"
    missed = sim.emit(0, 3)
    _, replayed = await resume_on(raw_clients, sim.resume_url, ready["session_id"], 1)
    assert [p["d"]["_sim_event_id"] for p in replayed] == missed


async def test_zombie_stops_acks_and_dispatches_which_a_resume_replays(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=0)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    sim.inject(0, "zombie")
    await client.heartbeat()
    missed = sim.emit(0, 4)
    with pytest.raises(TimeoutError):
        await client.recv(timeout=0.3)
    [conn] = sim.record.connections_for(0)
    assert conn.heartbeats == 1 and conn.acks == 0
    assert sim.record.heartbeats[-1].acked is False
    assert all(r.conn_id is None for r in sim.record.sent_events(0))  # never written
    await client.close(4000)  # what a client does about a zombie: close, resume
    _, replayed = await resume_on(raw_clients, sim.resume_url, ready["session_id"], 1)
    assert [p["d"]["_sim_event_id"] for p in replayed] == missed


@pytest.mark.parametrize("compress", ["none", "zlib-stream", "zstd-stream"])
async def test_malformed_json_is_sent_as_is(
    sim_factory: SimFactory, raw_clients: Connect, compress: str
) -> None:
    sim = await sim_factory(guilds=0)
    client = await raw_clients(sim.gateway_url, compress=compress)
    await client.ready()
    sim.inject(0, "malformed_json")
    with pytest.raises(orjson.JSONDecodeError):
        await client.recv()


@pytest.mark.parametrize("compress", ["zlib-stream", "zstd-stream", "none"])
async def test_truncated_frame_breaks_the_stream(
    sim_factory: SimFactory, raw_clients: Connect, compress: str
) -> None:
    sim = await sim_factory(guilds=0)
    client = await raw_clients(sim.gateway_url, compress=compress)
    await client.ready()
    sim.inject(0, "truncated_frame")
    sim.emit(0, 1)
    # the half message cannot decode: either it fails at once, or it poisons the next one
    with pytest.raises((DecompressionError, orjson.JSONDecodeError)):
        for _ in range(2):
            await client.recv(timeout=2)


async def test_unknown_opcode_is_sent(sim_factory: SimFactory, raw_clients: Connect) -> None:
    sim = await sim_factory(guilds=0)
    client = await raw_clients(sim.gateway_url)
    await client.ready()
    sim.inject(0, "unknown_opcode")
    assert (await client.recv())["op"] == 42


async def test_faults_target_one_shard_or_all(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(shards=2, max_concurrency=2)
    c0 = await raw_clients(sim.gateway_url)
    await c0.ready(shard=[0, 2])
    c1 = await raw_clients(sim.gateway_url)
    await c1.ready(shard=[1, 2])
    assert sim.inject(1, "unknown_opcode") == [2]
    assert (await c1.recv_op(42))["op"] == 42
    assert sorted(sim.inject("all", "heartbeat_request")) == [1, 2]
    await c0.recv_op(1)
    await c1.recv_op(1)
    assert sim.inject(5, "drop") == []
    assert sim.inject(None, "unknown_opcode", conn_id=1) == [1]


async def test_admin_api_injects_emits_and_configures(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=1)
    client = await raw_clients(sim.gateway_url)
    await client.ready()
    await client.recv_event("GUILD_CREATE")
    status, body = await post(
        sim.admin_url + "/emit", {"shard_id": 0, "count": 2, "event_type": "TYPING_START"}
    )
    assert status == 200 and len(body["event_ids"]) == 2
    for expected in body["event_ids"]:
        p = await client.recv_event("TYPING_START")
        assert p["d"]["_sim_event_id"] == expected
    status, body = await post(
        sim.admin_url + "/fault", {"shard_id": 0, "kind": "close", "code": 4321}
    )
    assert status == 200 and body == {"ok": True, "connections": [1]}
    assert (await client.expect_close()).code == 4321
    status, body = await post(sim.admin_url + "/config", {"event_rate": 100})
    assert status == 200
    await sim.record.wait_for(lambda r: len(r.sent_events(0)) >= 12)  # buffered, no connection
    async with aiohttp.ClientSession() as http:
        async with http.get(sim.admin_url + "/record") as resp:
            record = await resp.json()
        async with http.get(sim.admin_url + "/sessions") as resp:
            sessions = await resp.json()
    assert record["identifies"][0]["outcome"] == "accepted"
    assert record["faults"][0]["kind"] == "close"
    assert len(record["dispatches"]) >= 14
    assert all(d["conn_id"] is None for d in record["dispatches"] if d["t"] == "MESSAGE_CREATE")
    [session] = sessions["sessions"]
    assert session["state"] == "detached" and session["seq"] >= 14 and session["conn_id"] is None


def test_chaos_picker_is_seeded_and_only_picks_safe_faults() -> None:
    a = ChaosPicker(7, None)
    b = ChaosPicker(7, None)
    picks_a = [a.pick() for _ in range(200)]
    assert picks_a == [b.pick() for _ in range(200)]
    assert {k for k, _ in picks_a} == set(CHAOS_SAFE)
    for kind, params in picks_a:
        if kind is FaultKind.CLOSE:
            assert params["code"] in (1000, 1001, 4000, 4001, 4002, 4008)
    only = ChaosPicker(1, ("reconnect", "drop"))
    assert {only.pick()[0] for _ in range(50)} == {FaultKind.RECONNECT, FaultKind.DROP}
    with pytest.raises(ValueError, match="unknown fault kind"):
        ChaosPicker(1, ("explode",))


async def test_chaos_mode_injects_seeded_faults_into_live_connections(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(
        guilds=0, chaos_rate=50.0, chaos_seed=3, chaos_kinds=("unknown_opcode", "heartbeat_request")
    )
    client = await raw_clients(sim.gateway_url)
    await client.ready()
    await sim.record.wait_for(lambda r: len(r.faults) >= 5, timeout=5)
    sim.set_chaos_rate(0)
    assert all(
        f.chaos and f.kind in ("unknown_opcode", "heartbeat_request") for f in sim.record.faults
    )
    ops: list[int] = []
    while len(ops) < 5:
        ops.append((await client.recv())["op"])
    assert set(ops) <= {42, 1}


async def test_events_keep_flowing_into_a_detached_session(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    """The exactly-once premise: what is produced while disconnected is replayed, in order, once."""
    sim = await sim_factory(guilds=2, event_rate=300)
    client = await raw_clients(sim.gateway_url, compress="zlib-stream")
    ready = await client.ready()
    got: list[int] = []
    while len(got) < 20:
        p = await client.recv()
        if p["op"] == 0 and p["t"] not in ("READY", "GUILD_CREATE"):
            got.append(p["d"]["_sim_event_id"])
    await client.drop()
    before = len(sim.record.sent_events(0))
    await sim.record.wait_for(lambda r: len(r.sent_events(0)) >= before + 30)
    again, replayed = await resume_on(
        raw_clients, sim.resume_url, ready["session_id"], client.seq, "zlib-stream"
    )
    got += [p["d"]["_sim_event_id"] for p in replayed]
    sim.set_event_rate(0)
    await asyncio.sleep(0.05)
    total = len(sim.record.sent_events(0))
    while len(got) < total:
        p = await again.recv()
        if p["op"] == 0:
            got.append(p["d"]["_sim_event_id"])
    assert got == [r.event_id for r in sim.record.sent_events(0)]
    with pytest.raises((TimeoutError, GatewayClosed)):
        await again.recv_event("MESSAGE_CREATE", timeout=0.2)
