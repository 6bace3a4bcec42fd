"""``cluster up --gateway`` with hikari and @discordjs/ws, unchanged but for the README's one change.

Each library runs as its own process against a real ``cluster up`` on the
simulator: READY on every shard, one GUILD_CREATE per guild (the library's own
cache has the simulator's channels and roles), every later event once and in
order per shard, and a restart of the bot costs the simulator no IDENTIFY.

hikari is a test dependency (pyproject.toml; ``$TITANIUM_HIKARI_PYTHON`` may name
another Python that has it); @discordjs/ws comes from ``scripts/examples/node``
(``npm install`` there, as .ci/run does). In CI neither is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulator import Simulator, discord_shaped_token
from tests.conftest import SimFactory
from tests.e2e.cluster_process import clusters
from tests.e2e.gateway_harness import ROOT, BotProcess, bots
from tests.e2e.test_gateway_discordpy import GUILDS, SHARDS, expected_guilds, start_cluster
from tests.e2e.test_up import short_dir

__all__ = ["bots", "clusters", "short_dir"]

pytestmark = pytest.mark.timeout(120)

TOKEN = discord_shaped_token(1180000000000000001)  # hikari reads the bot id from it
NODE_DIR = ROOT / "scripts" / "examples" / "node"
HIKARI_BOT = Path(__file__).resolve().parent / "gateway_hikari_bot.py"


def hikari_python() -> str | None:
    for python in (os.environ.get("TITANIUM_HIKARI_PYTHON"), sys.executable):
        if (
            python
            and subprocess.run(
                [python, "-c", "import hikari"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return python
    return None


def ids_per_shard(bot: BotProcess, since: int = 0) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {s: [] for s in range(SHARDS)}
    for line in bot.lines[since:]:
        if line.get("t") == "MESSAGE_CREATE":
            out[int(line["shard"])].append(line["event_id"])
    return out


def check_guilds(sim: Simulator, bot: BotProcess, since: int = 0) -> None:
    lines = bot.lines[since:]
    creates = [line for line in lines if line.get("t") == "GUILD_CREATE"]
    got = {int(line["guild_id"]): int(line["shard"]) for line in creates}
    assert got == expected_guilds(sim) and len(creates) == GUILDS
    assert sorted(int(line["shard"]) for line in lines if line.get("t") == "READY") == [0, 1]


async def exchange(sim: Simulator, bot: BotProcess, count: int) -> None:
    """Events on every shard after the bot is up: each once, in order per shard."""
    since = len(bot.lines)
    emitted = {s: sim.emit(s, count, "MESSAGE_CREATE") for s in range(SHARDS)}
    await bot.wait(
        lambda b: all(len(ids_per_shard(b, since)[s]) >= count for s in range(SHARDS)), 15
    )
    assert ids_per_shard(bot, since) == emitted


async def test_hikari_gateway_bot_on_the_endpoint(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    bots: Callable[..., Any],
    short_dir: Path,
) -> None:
    python = hikari_python()
    if python is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hikari is a test dependency: pip install -e '.[test]'")
        pytest.skip(
            "hikari is not installed (pip install -e '.[bench]', or TITANIUM_HIKARI_PYTHON)"
        )
    sim = await sim_factory(token=TOKEN, shards=SHARDS, guilds=GUILDS, identify_window_s=0.1)
    _, _, url = await start_cluster(clusters, sim, short_dir)
    endpoint = url.replace("ws://", "http://").rstrip("/")
    argv = [python, str(HIKARI_BOT), "--rest", sim.rest_url, "--endpoint", endpoint]
    for _ in range(2):  # a start, and a start after a SIGKILL
        bot: BotProcess = await bots(TOKEN, argv=argv)
        await bot.wait(lambda b: len(b.of("guild")) >= GUILDS, 30)
        check_guilds(sim, bot)
        for guild in bot.of("guild"):  # hikari's own cache, built from the endpoint's GUILD_CREATE
            assert guild["channels"] == sim.config.channels_per_guild
            assert guild["roles"] == sim.config.roles_per_guild + 1
        await exchange(sim, bot, 6)
        await bot.kill()
    assert len(sim.record.accepted_identifies()) == SHARDS


async def test_discordjs_ws_manager_on_the_endpoint(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    bots: Callable[..., Any],
    short_dir: Path,
) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@discordjs" / "ws").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("Node.js and @discordjs/ws must be installed by .ci/run")
        pytest.skip("Node.js or @discordjs/ws is missing (npm install in scripts/examples/node)")
    sim = await sim_factory(token=TOKEN, shards=SHARDS, guilds=GUILDS, identify_window_s=0.1)
    _, _, url = await start_cluster(clusters, sim, short_dir)
    endpoint = url.replace("ws://", "http://").rstrip("/")
    argv = ["env", f"GATEWAY={endpoint}", node, "gateway_ws.mjs"]
    for _ in range(2):
        bot: BotProcess = await bots(TOKEN, argv=argv, cwd=NODE_DIR)
        await bot.wait(
            lambda b: sum(1 for x in b.lines if x.get("t") == "GUILD_CREATE") >= GUILDS, 30
        )
        check_guilds(sim, bot)
        for line in bot.lines:
            if line.get("t") == "GUILD_CREATE":
                assert line["channels"] == sim.config.channels_per_guild
                assert line["roles"] == sim.config.roles_per_guild + 1
        await exchange(sim, bot, 6)
        await bot.kill()
    assert len(sim.record.accepted_identifies()) == SHARDS
