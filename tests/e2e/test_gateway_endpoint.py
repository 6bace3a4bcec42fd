"""``cluster up --gateway``: bad input, a client that never reads, commands, the REST routes,
and a reshard refused.

Raw gateway clients (``tests.conftest.RawClient``: nothing hidden, every rule
breakable) against a real ``cluster up`` connected to the simulator:

- each kind of bad input gets one clear close code, and a well-behaved client on
  the same shard keeps getting every event;
- a client that stops reading is cut off once its bounded buffer overflows, the
  supervisor's memory does not grow with what it missed, the other client and
  the shards never wait, and its RESUME then gets op 9 (start over from the cache);
- op 8 through the endpoint: the GUILD_MEMBERS_CHUNK goes only to the client
  that asked, with its own nonce;
- ``GET /api/v10/gateway`` and ``/gateway/bot`` answer the endpoint's URL and
  the cluster's shard count;
- ``cluster reshard`` is refused in one line (the endpoint's clients identify against
  the shard count).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest

from simulator import Simulator
from tests.conftest import GatewayClosed, RawClient, SimFactory
from tests.e2e.cluster_process import ClusterProcess, clusters, http_get
from tests.e2e.gateway_harness import gateway_url
from tests.e2e.test_up import all_ready, args_for, short_dir

__all__ = ["clusters", "short_dir"]

pytestmark = pytest.mark.timeout(120)

TOKEN = "simulated-token"


async def start(
    clusters: Callable[..., Any], sim: Simulator, where: Path, *extra: str, beat_ms: int = 2000
) -> tuple[ClusterProcess, str, str]:
    run: ClusterProcess = await clusters(
        *args_for(
            sim,
            where,
            "--gateway",
            "127.0.0.1:0",
            "--gateway-heartbeat-interval",
            str(beat_ms),
            *extra,
        )
    )
    url = await gateway_url(run)
    http = await all_ready(run)
    return run, http, url


@contextlib.asynccontextmanager
async def raw(url: str, **query: Any) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(url, **query)
    try:
        yield client
    finally:
        await client.close()


async def keep_beating(client: RawClient, every_s: float = 1.0) -> None:
    with contextlib.suppress(Exception):
        while True:
            await client.send({"op": 1, "d": None})
            await asyncio.sleep(every_s)


async def closed_with(url: str, send: Any, **query: Any) -> GatewayClosed:
    """Connect, read Hello, do ``send(client)``, and return how the endpoint closed."""
    async with raw(url, **query) as client:
        try:
            await client.hello()
        except GatewayClosed as closed:  # refused before Hello (the query string)
            return closed
        await send(client)
        return await client.expect_close(5)


def message_ids(received: list[dict[str, Any]]) -> list[int]:
    return [
        p["d"]["_sim_event_id"]
        for p in received
        if p.get("t") == "MESSAGE_CREATE" and isinstance(p.get("d"), dict)
    ]


async def test_bad_input_gets_one_clear_close_code_and_disturbs_nothing(
    sim_factory: SimFactory, clusters: Callable[..., Any], short_dir: Path
) -> None:
    sim = await sim_factory(shards=2, guilds=4, identify_window_s=0.1)
    _, http, url = await start(clusters, sim, short_dir)

    async with raw(url, compress="zlib-stream") as good:
        ready = await good.ready(shard=[0, 2])
        assert ready["shard"] == [0, 2] and ready["resume_gateway_url"] == url
        beats = asyncio.create_task(keep_beating(good))
        try:
            first = sim.emit(0, 3, "MESSAGE_CREATE")

            async def send_raw(data: str) -> Any:
                async def go(client: RawClient) -> None:
                    await client.send(data)

                return go

            cases: list[tuple[str, Any, int, dict[str, Any]]] = [
                ("bad JSON", await send_raw("{not json"), 4002, {}),
                ("an unknown opcode", await send_raw('{"op": 5, "d": null}'), 4001, {}),
                ("op 99", await send_raw('{"op": 99, "d": {}}'), 4001, {}),
                (
                    "a payload over 4096 bytes",
                    await send_raw('{"op":1,"d":"' + "x" * 5000 + '"}'),
                    4002,
                    {},
                ),
                ("a command before IDENTIFY", await send_raw('{"op": 3, "d": {}}'), 4003, {}),
                (
                    "a wrong token",
                    lambda c: c.identify(token="wrong-token", shard=[0, 2]),
                    4004,
                    {},
                ),
                ("a wrong shard count", lambda c: c.identify(shard=[0, 3]), 4010, {}),
                ("a shard out of range", lambda c: c.identify(shard=[2, 2]), 4010, {}),
                ("no shard, 2 shards", lambda c: c.identify(), 4011, {}),
                (
                    "undefined intent bits",
                    lambda c: c.identify(shard=[0, 2], intents=1 << 40),
                    4013,
                    {},
                ),
                (
                    "a privileged intent the cluster lacks",
                    lambda c: c.identify(shard=[0, 2], intents=2),
                    4014,
                    {},
                ),
            ]
            for what, action, code, query in cases:
                closed = await closed_with(url, action, **query)
                assert closed.code == code, f"{what}: {closed}"

            async def identify_twice(client: RawClient) -> None:
                await client.identify(shard=[1, 2])
                await client.recv_event("READY")
                await client.identify(shard=[1, 2])

            assert (await closed_with(url, identify_twice)).code == 4005

            async def nothing(client: RawClient) -> None:
                return None

            assert (await closed_with(url, nothing, encoding="etf")).code == 4002
            assert (await closed_with(url, nothing, v=5)).code == 4012

            async def huge_frame(client: RawClient) -> None:
                await client.ws.send_bytes(b"x" * 100_000)

            with contextlib.suppress(Exception):
                closed = await closed_with(url, huge_frame)
                assert closed.code in (1009, None)

            # the well-behaved client on shard 0 saw all of it pass by
            second = sim.emit(0, 4, "MESSAGE_CREATE")
            await good.recv_until(lambda p: len(message_ids(good.received)) >= 7, 10)
            assert message_ids(good.received) == first + second
            seqs = [p["s"] for p in good.received if p.get("op") == 0]
            assert seqs == list(range(1, len(seqs) + 1))
        finally:
            beats.cancel()
    _, status = await http_get(f"{http}/status")
    closes = status["gateway"]["closes"]
    for code in ("4001", "4002", "4003", "4004", "4005", "4010", "4011", "4012", "4013", "4014"):
        assert closes.get(code), f"close {code} not counted: {closes}"
    assert len(sim.record.accepted_identifies()) == 2  # the shards: nothing else identified
    assert TOKEN not in str(status)
    _, metrics = await http_get(f"{http}/metrics")
    assert 'titanium_gateway_closes_total{code="4004"} 1.0' in metrics
    assert 'titanium_gateway_clients{shard="0"}' not in metrics  # the good client left
    assert "titanium_gateway_cache_guilds 4.0" in metrics


async def test_a_client_that_never_reads_is_cut_off_without_growing_memory(
    sim_factory: SimFactory, clusters: Callable[..., Any], short_dir: Path
) -> None:
    sim = await sim_factory(shards=1, guilds=2, identify_window_s=0.1)
    run, http, url = await start(
        clusters,
        sim,
        short_dir,
        "--gateway-replay-bytes",
        str(1024 * 1024),
        "--gateway-high-water",
        str(256 * 1024),
        beat_ms=20_000,  # this test's own loop is busy reading 48k events: beats come late
    )
    supervisor = psutil.Process(run.process.pid)
    async with raw(url) as stuck, raw(url, compress="zstd-stream") as good:
        stuck_ready = await stuck.ready(shard=[0, 1])
        await good.ready(shard=[0, 1])
        beats = [asyncio.create_task(keep_beating(c)) for c in (stuck, good)]
        bursts, per_burst = 120, 400
        got = [0]

        def all_read(payload: dict[str, Any]) -> bool:
            got[0] += payload.get("t") == "MESSAGE_CREATE"
            return got[0] >= bursts * per_burst

        reader = asyncio.create_task(good.recv_until(all_read, 60))  # reads all it gets
        try:
            # the stuck client reads no more (aiohttp stops reading its socket when its
            # queue is full); about 60 MB of events flow past it
            rss_before = supervisor.memory_info().rss
            emitted: list[int] = []
            for _ in range(bursts):
                emitted += sim.emit(0, per_burst, "MESSAGE_CREATE")
                await asyncio.sleep(0.05)
            status: dict[str, Any] = {}
            try:
                await asyncio.wait_for(asyncio.shield(reader), 30)
            except TimeoutError:
                _, status = await http_get(f"{http}/status")
                raise AssertionError(
                    f"the reading client got {len(message_ids(good.received))} of "
                    f"{len(emitted)}: {status['gateway']} {status['relay']}"
                ) from None
            _, status = await http_get(f"{http}/status")
            rss_after = supervisor.memory_info().rss
            gateway = status["gateway"]
            assert gateway["cut_off"] == 1, gateway
            # the other client got every event, in order: it never waited for the stuck one
            assert message_ids(good.received) == emitted
            grown = (rss_after - rss_before) / 1e6
            print(
                f"supervisor RSS grew {grown:.1f} MB while ~{len(emitted) * 1.2 / 1000:.0f} MB of events passed"
            )
            assert grown < 30, f"the supervisor grew {grown:.1f} MB"
        finally:
            reader.cancel()
            for task in beats:
                task.cancel()

    # the stuck client comes back: its session cannot be replayed, op 9, and a new
    # IDENTIFY starts over from the cache
    async with raw(url) as back:
        await back.hello()
        await back.resume(stuck_ready["session_id"], 5)
        invalid = await back.recv_op(9, 10)
        assert invalid["d"] is False
        await back.identify(shard=[0, 1])
        again = await back.recv_event("READY", 10)
        assert again["s"] == 1
        creates = [await back.recv_event("GUILD_CREATE", 10) for _ in range(2)]
        assert {c["d"]["id"] for c in creates} == {str(sim.factory.guild(i).id) for i in range(2)}
    assert len(sim.record.accepted_identifies()) == 1


async def test_member_chunks_go_to_the_client_that_asked_and_rest_routes_answer(
    sim_factory: SimFactory, clusters: Callable[..., Any], short_dir: Path
) -> None:
    sim = await sim_factory(shards=2, guilds=4, identify_window_s=0.1)
    _, _, url = await start(clusters, sim, short_dir)
    base = url.replace("ws://", "http://").rstrip("/")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/v10/gateway") as response:
            assert response.status == 200
            assert await response.json() == {"url": url}
        async with http.get(f"{base}/api/v10/gateway/bot") as response:
            assert response.status == 401
        async with http.get(
            f"{base}/api/v10/gateway/bot", headers={"Authorization": f"Bot {TOKEN}"}
        ) as response:
            body = orjson.loads(await response.read())
        assert body["url"] == url and body["shards"] == 2
        assert body["session_start_limit"]["remaining"] >= 1000

    guild = str(sim.factory.guild(0).id)  # on shard 0
    async with raw(url) as asker, raw(url) as other, raw(url) as bare:
        for client in (asker, other, bare):
            await client.ready(shard=[0, 2])
        await asker.send(
            {"op": 8, "d": {"guild_id": guild, "query": "", "limit": 0, "nonce": "mine"}}
        )
        chunk = await asker.recv_event("GUILD_MEMBERS_CHUNK", 10)
        assert chunk["d"]["nonce"] == "mine" and chunk["d"]["guild_id"] == guild
        await bare.send(
            {"op": 8, "d": {"guild_id": guild, "user_ids": [str(sim.factory.guild(0).user_id(1))]}}
        )
        bare_chunk = await bare.recv_event("GUILD_MEMBERS_CHUNK", 10)
        assert "nonce" not in bare_chunk["d"]  # it gave none: the endpoint's own is removed
        # a MESSAGE_CREATE after both answers reaches all three; chunks only their askers
        ids = sim.emit(0, 1, "MESSAGE_CREATE")
        for client in (asker, other, bare):
            await client.recv_until(lambda p: message_ids([p]) == ids, 10)
        assert not [p for p in other.received if p.get("t") == "GUILD_MEMBERS_CHUNK"]
        assert len([p for p in asker.received if p.get("t") == "GUILD_MEMBERS_CHUNK"]) == 1
        assert len([p for p in bare.received if p.get("t") == "GUILD_MEMBERS_CHUNK"]) == 1
    # the shard sent both requests to the simulator, with the endpoint's nonces
    commands = [c for c in sim.record.commands if c.op == 8]
    assert len(commands) == 2
    assert all(str(c.d.get("nonce", "")).startswith("tc") for c in commands)

    # a reshard would leave the endpoint's clients on the old shard count: refused, in a line
    command = await clusters(
        "--shards", "4", "--control", f"ipc://{short_dir}/control", command="reshard"
    )
    assert await command.wait(30) == 1
    assert "resharding is not supported with --gateway" in command.raw[-1], command.raw
    assert len(sim.record.accepted_identifies(num_shards=4)) == 0
