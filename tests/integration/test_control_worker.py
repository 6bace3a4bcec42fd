"""The control socket against real parts: the simulator, two worker processes, the command channel.

The test plays the supervisor (tests/chaos/supervisor_harness.py): its ROUTER
is the command channel, and the control server's ``send`` forwards each
command to the worker that runs the shard, as the supervisor does.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import zmq
import zmq.asyncio

from cluster.control import ControlServer
from cluster.coordinator import Coordinator
from protocol.sharding import shard_for_guild
from simulator import Simulator
from simulator.events import GuildShape
from tests.chaos.supervisor_harness import SupervisorHarness, all_ready, harness, spec_for
from tests.conftest import SimFactory
from worker.main import run_worker

__all__ = ["harness"]

pytestmark = pytest.mark.timeout(60)

_spawn = multiprocessing.get_context("spawn")
SHARDS = 4
#: Short send windows, so a flood crosses several windows quickly. The worker's
#: window is longer by a slack that covers a loaded machine: the worker stamps a
#: payload when it sends, the simulator when it reads (Discord: 60 s + 1 s slack).
SIM_SEND_WINDOW_S = 0.5
WORKER_SEND_WINDOW_S = 1.0
IDENTIFY_WINDOW_S = 0.05


@pytest.fixture
def processes() -> Iterator[list[multiprocessing.process.BaseProcess]]:
    started: list[multiprocessing.process.BaseProcess] = []
    try:
        yield started
    finally:
        for process in started:
            if process.is_alive():
                process.kill()
            process.join(5)


@dataclass
class Cluster:
    sim: Simulator
    harness: SupervisorHarness
    control: ControlServer
    context: zmq.asyncio.Context

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.control.endpoint)
        try:
            await sock.send(orjson.dumps(body))
            async with asyncio.timeout(5):
                reply: dict[str, Any] = orjson.loads(await sock.recv())
            return reply
        finally:
            sock.close(0)


@pytest.fixture
async def coordinator() -> AsyncIterator[Coordinator]:
    """One identify coordinator for both workers, as under the supervisor."""
    async with Coordinator(
        "tcp://127.0.0.1:0",
        max_concurrency=1,
        interval_s=IDENTIFY_WINDOW_S * 1.5 + 0.05,
        session_total=1000,
        session_remaining=1000,
        reset_after_s=3600.0,
    ) as running:
        yield running


@pytest.fixture
async def cluster(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    coordinator: Coordinator,
    processes: list[multiprocessing.process.BaseProcess],
) -> AsyncIterator[Cluster]:
    sim = await sim_factory(
        shards=SHARDS, identify_window_s=IDENTIFY_WINDOW_S, send_window_s=SIM_SEND_WINDOW_S
    )
    owner: dict[int, int] = {}
    specs = []
    for shard_ids in ((0, 1), (2, 3)):
        spec = spec_for(
            sim,
            harness,
            shard_ids,
            send_window_s=WORKER_SEND_WINDOW_S,
            coordinator_endpoint=coordinator.endpoint,
        )
        specs.append(spec)
        owner.update(dict.fromkeys(shard_ids, spec.worker_id))
    for spec in specs:
        process = _spawn.Process(target=run_worker, args=(spec,), daemon=True)
        process.start()
        processes.append(process)

    async def send(shard_id: int, payload: bytes) -> None:
        # ROUTER_MANDATORY: a worker that is not connected raises, and the client hears of it
        await harness.send_command(owner[shard_id], shard_id, payload)

    await harness.wait_for(all_ready(list(range(SHARDS))), 20)
    await harness.wait_for(lambda got: len(got.hellos) == len(specs), 5)
    control = ControlServer("tcp://127.0.0.1:0", SHARDS, range(SHARDS), send)
    await control.start()
    context = zmq.asyncio.Context()
    try:
        yield Cluster(sim, harness, control, context)
    finally:
        await control.stop()
        context.term()
        for spec in specs:
            with contextlib.suppress(zmq.ZMQError):
                await harness.stop_worker(spec.worker_id)
        loop = asyncio.get_running_loop()
        for process in processes:
            await loop.run_in_executor(None, process.join, 10)


async def test_commands_by_guild_id_reach_the_shard_of_the_guild(cluster: Cluster) -> None:
    sim = cluster.sim
    guilds = [str(GuildShape(i, sim.config).id) for i in range(sim.config.guild_count)]
    assert len({shard_for_guild(g, SHARDS) for g in guilds}) == SHARDS  # every shard has guilds
    for guild in guilds:
        d = {"guild_id": guild, "channel_id": None, "self_mute": False, "self_deaf": True}
        reply = await cluster.request({"op": 4, "d": d, "guild_id": guild})
        assert reply == {"ok": True, "shard_ids": [shard_for_guild(guild, SHARDS)]}
    await sim.record.wait_for(lambda r: sum(c.op == 4 for c in r.commands) == len(guilds), 10)
    seen = {c.d["guild_id"]: c.shard_id for c in sim.record.commands if c.op == 4}
    assert seen == {g: (int(g) >> 22) % SHARDS for g in guilds}

    # op 8: the simulator only answers a guild's member request on the guild's own shard,
    # so the chunk coming back on that shard proves the route end to end.
    guild = guilds[5]
    shard = shard_for_guild(guild, SHARDS)
    d = {"guild_id": guild, "query": "", "limit": 0, "nonce": "h7"}
    assert (await cluster.request({"op": 8, "d": d, "guild_id": guild}))["ok"] is True
    await cluster.harness.wait_for(lambda got: b"GUILD_MEMBERS_CHUNK" in got.topics(shard), 10)
    chunk = next(
        orjson.loads(cluster.harness.got.events[k][1])
        for k in cluster.harness.got.order
        if k[0] == shard and cluster.harness.got.events[k][0] == b"GUILD_MEMBERS_CHUNK"
    )
    assert chunk["d"]["guild_id"] == guild and chunk["d"]["nonce"] == "h7"
    assert sim.record.violations == []


async def test_a_flood_of_presence_updates_queues_instead_of_earning_4008(cluster: Cluster) -> None:
    sim = cluster.sim
    flood = 300
    dealer = cluster.context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(cluster.control.endpoint)
    try:
        for n in range(flood):
            d = {
                "since": n,
                "activities": [{"name": f"flood {n}", "type": 0}],
                "status": "online",
                "afk": False,
            }
            await dealer.send_multipart([b"", orjson.dumps({"op": 3, "d": d, "shard_id": 1})])
        async with asyncio.timeout(10):
            replies = [orjson.loads((await dealer.recv_multipart())[1]) for _ in range(flood)]
    finally:
        dealer.close(0)
    assert all(r == {"ok": True, "shard_ids": [1]} for r in replies)

    def presences(record: Any) -> list[Any]:
        return [c for c in record.commands if c.op == 3 and c.shard_id == 1]

    # 300 payloads need at least three send windows; wait for all of them
    try:
        await sim.record.wait_for(lambda r: len(presences(r)) == flood, 20)
    except TimeoutError:
        report = cluster.harness.got.latest.get(1)
        raise AssertionError(
            f"{len(presences(sim.record))} of {flood} reached the simulator; "
            f"violations {sim.record.violations}; connections {sim.record.connections_for(1)}; "
            f"shard report {report}"
        ) from None
    assert [c.d["since"] for c in presences(sim.record)] == list(range(flood))  # in order
    assert sim.record.violations == []  # no 4008, and no other rule broken either
    assert len(sim.record.connections_for(1)) == 1  # never closed, never reconnected
    sent = presences(sim.record)
    # the limiter really spread them: no window of the simulator's length held more than 120
    times = [c.at for c in sent]
    assert all(
        sum(1 for t in times if start <= t < start + SIM_SEND_WINDOW_S) <= 120 for start in times
    )
    assert times[-1] - times[0] >= 2 * SIM_SEND_WINDOW_S
