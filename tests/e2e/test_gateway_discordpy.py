"""``cluster up --gateway``: an unchanged discord.py bot runs on the cluster (real processes).

The simulator stands in for Discord; ``cluster up`` connects its shards to it
and serves the endpoint; the bot (``tests/e2e/gateway_bot.py``, discord.py's
``AutoShardedClient`` with the gateway URL and shard count set) is a process of
its own. Checked against the simulator's record of every dispatch:

- READY on every shard, one GUILD_CREATE per guild with the simulator's channels
  and roles as discord.py built them, later events once and in order per shard;
- the bot killed and started again 3 times: no IDENTIFY at the simulator, the
  guilds complete after every start;
- the bot's network cut for a few seconds: it RESUMEs at the endpoint, and the
  events produced meanwhile arrive once, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulator import Simulator, discord_shaped_token
from tests.conftest import SimFactory
from tests.e2e.cluster_process import ClusterProcess, clusters, http_get
from tests.e2e.gateway_harness import BotProcess, Proxy, bots, gateway_url
from tests.e2e.test_up import all_ready, args_for, short_dir

__all__ = ["bots", "clusters", "short_dir"]

pytestmark = pytest.mark.timeout(120)

BOT_ID = 1180000000000000001
TOKEN = discord_shaped_token(BOT_ID)
SHARDS = 2
GUILDS = 6


async def start_cluster(
    clusters: Callable[..., Any], sim: Simulator, where: Path, *extra: str
) -> tuple[ClusterProcess, str, str]:
    """``cluster up --gateway 127.0.0.1:0`` against ``sim``: (process, HTTP URL, gateway URL)."""
    run: ClusterProcess = await clusters(
        *args_for(
            sim,
            where,
            "--gateway",
            "127.0.0.1:0",
            "--gateway-heartbeat-interval",
            "2000",
            *extra,
        )
    )
    url = await gateway_url(run)
    http = await all_ready(run)
    return run, http, url


def expected_guilds(sim: Simulator) -> dict[int, int]:
    """guild id -> its shard, for every guild of the simulated bot."""
    return {
        sim.factory.guild(i).id: (sim.factory.guild(i).id >> 22) % SHARDS
        for i in range(sim.config.guild_count)
    }


def check_ready(sim: Simulator, bot: BotProcess) -> None:
    [ready] = bot.of("ready")[-1:]
    assert ready["shards"] == list(range(SHARDS))
    assert ready["user"] == BOT_ID
    guilds = {g["id"]: g for g in ready["guilds"]}
    assert {gid: g["shard"] for gid, g in guilds.items()} == expected_guilds(sim)
    for guild in guilds.values():
        # discord.py built each guild from the endpoint's GUILD_CREATE: the simulator's
        # channels (a category, text channels, a voice channel) and roles (+ @everyone)
        assert guild["channels"] == sim.config.channels_per_guild
        assert guild["text_channels"] == sim.config.channels_per_guild - 2
        assert guild["roles"] == sim.config.roles_per_guild + 1
        assert guild["me"] is True
        assert guild["member_count"] == sim.config.members_per_guild + 1


def per_shard_ids(bot: BotProcess, since: int = 0) -> dict[int, list[int]]:
    """The simulator event ids of the MESSAGE_CREATEs the bot read, per shard, in order."""
    out: dict[int, list[int]] = {s: [] for s in range(SHARDS)}
    for line in bot.lines[since:]:
        if line.get("event") == "dispatch" and line["t"] == "MESSAGE_CREATE":
            out[(line["guild_id"] >> 22) % SHARDS].append(line["event_id"])
    return out


@pytest.mark.timeout(150)
async def test_discordpy_bot_gets_guilds_from_the_cache_and_restarts_without_identify(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    bots: Callable[..., Any],
    short_dir: Path,
) -> None:
    sim = await sim_factory(
        token=TOKEN, shards=SHARDS, guilds=GUILDS, identify_window_s=0.1, max_concurrency=1
    )
    _, http, url = await start_cluster(clusters, sim, short_dir)
    identifies = len(sim.record.accepted_identifies())
    assert identifies == SHARDS

    for attempt in range(4):  # the first start, then 3 restarts after a SIGKILL
        bot: BotProcess = await bots(sim.rest_url, url, SHARDS, TOKEN)
        await bot.wait(lambda b: bool(b.of("ready")), 30)
        check_ready(sim, bot)
        # one READY per shard, then exactly one GUILD_CREATE per guild of that shard
        assert len(bot.dispatches("READY")) == SHARDS
        creates = [line["guild_id"] for line in bot.dispatches("GUILD_CREATE")]
        assert sorted(creates) == sorted(expected_guilds(sim))
        assert all(line["s"] == 1 for line in bot.dispatches("READY"))

        emitted = {s: sim.emit(s, 5 + attempt, "MESSAGE_CREATE") for s in range(SHARDS)}
        await bot.wait(
            lambda b, e=emitted: all(  # type: ignore[misc]
                len(ids) >= len(e[s]) for s, ids in per_shard_ids(b).items()
            ),
            15,
        )
        assert per_shard_ids(bot) == emitted, "every event once, in order per shard"
        total = sum(len(v) for v in emitted.values())
        await bot.wait(lambda b, n=total: len(b.of("message")) >= n, 5)  # type: ignore[misc]
        messages = bot.of("message")
        assert all(m["channel"] == "TextChannel" and m["guild"] for m in messages)
        # the endpoint numbered each client session's dispatches itself: 1, 2, 3, ...
        ready_seq = {line["s"] for line in bot.dispatches("READY")}
        assert ready_seq == {1}
        await bot.kill()

    # four bot starts cost the simulator (Discord) no IDENTIFY and no RESUME
    assert len(sim.record.accepted_identifies()) == identifies
    assert not sim.record.violations
    _, status = await http_get(f"{http}/status")
    gateway = status["gateway"]
    assert gateway["identifies"] == 4 * SHARDS
    assert gateway["cache"]["guilds"] == GUILDS
    assert gateway["cache"]["bytes_per_guild"] > 0
    print(
        "gateway cache: "
        f"{gateway['cache']['guilds']} guilds, {gateway['cache']['bytes']} bytes, "
        f"{gateway['cache']['bytes_per_guild']} bytes per guild"
    )


@pytest.mark.timeout(120)
async def test_discordpy_bot_resumes_at_the_endpoint_after_a_network_cut(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    bots: Callable[..., Any],
    short_dir: Path,
) -> None:
    sim = await sim_factory(
        token=TOKEN, shards=SHARDS, guilds=GUILDS, identify_window_s=0.1, max_concurrency=1
    )
    _, http, url = await start_cluster(clusters, sim, short_dir)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    proxy = Proxy("127.0.0.1", port)
    await proxy.start()
    try:
        bot: BotProcess = await bots(sim.rest_url, f"ws://127.0.0.1:{proxy.port}/", SHARDS, TOKEN)
        await bot.wait(lambda b: bool(b.of("ready")), 30)
        check_ready(sim, bot)
        before = {s: sim.emit(s, 5, "MESSAGE_CREATE") for s in range(SHARDS)}
        await bot.wait(lambda b: sum(map(len, per_shard_ids(b).values())) >= 10, 15)

        # the network goes away for 3 s: events keep coming meanwhile
        proxy.cut(3.0)
        during = {s: sim.emit(s, 7, "MESSAGE_CREATE") for s in range(SHARDS)}
        await asyncio.sleep(1.0)
        during2 = {s: sim.emit(s, 4, "MESSAGE_CREATE") for s in range(SHARDS)}
        await bot.wait(lambda b: len(b.of("resumed")) >= SHARDS, 30)
        after = {s: sim.emit(s, 3, "MESSAGE_CREATE") for s in range(SHARDS)}
        expected = {s: before[s] + during[s] + during2[s] + after[s] for s in range(SHARDS)}
        await bot.wait(
            lambda b: all(len(per_shard_ids(b)[s]) >= len(expected[s]) for s in range(SHARDS)),
            15,
        )
        await asyncio.sleep(0.3)  # nothing more may come
        assert per_shard_ids(bot) == expected, "no event lost, none twice, in order"
        # a RESUME, not a new session: one READY per shard in the whole run
        assert len(bot.dispatches("READY")) == SHARDS
        assert len(bot.dispatches("RESUMED")) >= SHARDS
    finally:
        await proxy.close()
    _, status = await http_get(f"{http}/status")
    assert status["gateway"]["resumes"] >= SHARDS
    assert status["gateway"]["resumes_failed"] == 0
    assert len(sim.record.accepted_identifies()) == SHARDS  # the cut cost Discord nothing


@pytest.mark.timeout(150)
async def test_discordpy_bot_resumes_across_a_graceful_supervisor_restart(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    bots: Callable[..., Any],
    short_dir: Path,
) -> None:
    """SIGTERM and a new ``cluster up``: the shards RESUME at the simulator, the endpoint's
    cache and client sessions come back from the state dir, the bot RESUMEs at the
    endpoint (its connect waits behind a proxy while no endpoint listens) and gets
    every event, including those produced while no supervisor ran."""
    sim = await sim_factory(
        token=TOKEN, shards=SHARDS, guilds=GUILDS, identify_window_s=0.1, max_concurrency=1
    )
    run, _, url = await start_cluster(clusters, sim, short_dir)
    proxy = Proxy("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")))
    await proxy.start()
    try:
        bot: BotProcess = await bots(sim.rest_url, f"ws://127.0.0.1:{proxy.port}/", SHARDS, TOKEN)
        await bot.wait(lambda b: bool(b.of("ready")), 30)
        check_ready(sim, bot)
        before = {s: sim.emit(s, 5, "MESSAGE_CREATE") for s in range(SHARDS)}
        await bot.wait(lambda b: sum(map(len, per_shard_ids(b).values())) >= 10, 15)

        run.signal(signal.SIGTERM)
        assert await run.wait(30) == 0
        assert (short_dir / "state" / "gateway-cache.msgpack").exists()
        during = {s: sim.emit(s, 6, "MESSAGE_CREATE") for s in range(SHARDS)}
        run2, http2, url2 = await start_cluster(clusters, sim, short_dir)
        proxy.retarget("127.0.0.1", int(url2.rsplit(":", 1)[1].strip("/")))
        await bot.wait(lambda b: len(b.of("resumed")) >= SHARDS, 40)
        after = {s: sim.emit(s, 3, "MESSAGE_CREATE") for s in range(SHARDS)}
        expected = {s: before[s] + during[s] + after[s] for s in range(SHARDS)}
        await bot.wait(
            lambda b: all(len(per_shard_ids(b)[s]) >= len(expected[s]) for s in range(SHARDS)),
            15,
        )
        await asyncio.sleep(0.3)
        assert per_shard_ids(bot) == expected, "no event lost, none twice, in order"
        assert len(bot.dispatches("READY")) == SHARDS  # RESUMEs: no new client session
    finally:
        await proxy.close()
    # the restart cost the simulator no IDENTIFY: the shards RESUMEd
    assert len(sim.record.accepted_identifies()) == SHARDS
    _, status = await http_get(f"{http2}/status")
    assert status["gateway"]["resumes"] == SHARDS
    assert status["gateway"]["cache"]["guilds"] == GUILDS
    del run2


@pytest.mark.timeout(120)
async def test_a_worker_sigkill_is_invisible_to_the_bot(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    bots: Callable[..., Any],
    short_dir: Path,
) -> None:
    """The worker running the shards dies: its replacement RESUMEs them at the simulator,
    the relay dedupes the replay, and the bot's connection to the endpoint never notices."""
    sim = await sim_factory(
        token=TOKEN, shards=SHARDS, guilds=GUILDS, identify_window_s=0.1, max_concurrency=1
    )
    _, http, url = await start_cluster(clusters, sim, short_dir)
    bot: BotProcess = await bots(sim.rest_url, url, SHARDS, TOKEN)
    await bot.wait(lambda b: bool(b.of("ready")), 30)
    before = {s: sim.emit(s, 5, "MESSAGE_CREATE") for s in range(SHARDS)}
    await bot.wait(lambda b: sum(map(len, per_shard_ids(b).values())) >= 10, 15)
    _, status = await http_get(f"{http}/status")
    pids = [w["pid"] for w in status["workers"]]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    during = {s: sim.emit(s, 6, "MESSAGE_CREATE") for s in range(SHARDS)}
    await sim.record.wait_for(
        lambda r: all(len(r.accepted_resumes(s)) >= 1 for s in range(SHARDS)), timeout=30
    )
    after = {s: sim.emit(s, 3, "MESSAGE_CREATE") for s in range(SHARDS)}
    expected = {s: before[s] + during[s] + after[s] for s in range(SHARDS)}
    await bot.wait(
        lambda b: all(len(per_shard_ids(b)[s]) >= len(expected[s]) for s in range(SHARDS)), 20
    )
    await asyncio.sleep(0.3)
    assert per_shard_ids(bot) == expected, "no event lost, none twice, in order"
    assert len(bot.dispatches("READY")) == SHARDS and not bot.dispatches("RESUMED")
    assert not bot.of("resumed")  # the bot's own connection was never interrupted
    assert len(sim.record.accepted_identifies()) == SHARDS
