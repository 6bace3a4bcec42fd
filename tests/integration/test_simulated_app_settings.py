"""The simulated application's settings on real sockets: privileged intents and session starts.

``cluster simulate --privileged-intents ... --session-start-limit N`` as a real
process, the same settings through the admin API (``/_sim/config``) and in
process, and ``cluster up`` refusing them without ``--simulate``.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from simulator import IdentifyOutcome, ViolationKind
from tests.conftest import RawClient, SimFactory

Connect = Callable[..., Awaitable[RawClient]]
CLI = [sys.executable, "-m", "cluster"]
AUTH = {"Authorization": "Bot simulated-token"}

MEMBERS = 1 << 1
PRESENCES = 1 << 8
MESSAGE_CONTENT = 1 << 15
GUILDS_AND_MESSAGES = 513

pytestmark = pytest.mark.timeout(60)


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


# -- in process and through the admin API ----------------------------------------------------------


async def test_no_privileged_intent_is_enabled_by_default(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory()
    for privileged in (MEMBERS, PRESENCES, MESSAGE_CONTENT):
        client = await raw_clients(sim.gateway_url)
        await client.hello()
        await client.identify(intents=GUILDS_AND_MESSAGES | privileged)
        assert (await client.expect_close()).code == 4014
    assert len(sim.record.violations_of(ViolationKind.DISALLOWED_INTENTS)) == 3
    status, body = await get(sim.admin_url + "/config")
    assert status == 200 and body["privileged_intents"] == []


async def test_the_admin_api_turns_privileged_intents_on_and_off(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=1)
    status, body = await post(
        sim.admin_url + "/config", {"privileged_intents": "GUILD_MEMBERS,MESSAGE_CONTENT"}
    )
    assert status == 200
    assert body == {
        "ok": True,
        "event_rate": 0.0,
        "chaos_rate": 0.0,
        "privileged_intents": ["GUILD_MEMBERS", "MESSAGE_CONTENT"],
    }
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready(intents=GUILDS_AND_MESSAGES | MEMBERS | MESSAGE_CONTENT)
    assert ready["session_id"]
    # the application's flags follow (GATEWAY_GUILD_MEMBERS 1<<14, GATEWAY_MESSAGE_CONTENT 1<<18)
    status, app = await get(sim.rest_url + "/oauth2/applications/@me", AUTH)
    assert status == 200 and app["flags"] & (1 << 14) and app["flags"] & (1 << 18)
    assert not app["flags"] & (1 << 12)
    # presences still off
    other = await raw_clients(sim.gateway_url)
    await other.hello()
    await other.identify(intents=GUILDS_AND_MESSAGES | PRESENCES)
    assert (await other.expect_close()).code == 4014
    # a list of names, then none: the running session keeps its intents, new ones are refused
    status, body = await post(
        sim.admin_url + "/config", {"privileged_intents": ["GUILD_PRESENCES"]}
    )
    assert status == 200 and body["privileged_intents"] == ["GUILD_PRESENCES"]
    status, body = await post(sim.admin_url + "/config", {"privileged_intents": "none"})
    assert status == 200 and body["privileged_intents"] == []
    late = await raw_clients(sim.gateway_url)
    await late.hello()
    await late.identify(intents=GUILDS_AND_MESSAGES | MEMBERS)
    assert (await late.expect_close()).code == 4014
    assert [s["state"] for s in sim.sessions()] == ["attached"]


async def test_in_process_setters_mirror_the_admin_api(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(guilds=1, session_start_remaining=0)
    sim.set_privileged_intents("all")
    sim.set_session_start_limit(total=5000)
    status, body = await get(sim.rest_url + "/gateway/bot", AUTH)
    assert status == 200
    assert body["session_start_limit"]["total"] == 5000
    assert body["session_start_limit"]["remaining"] == 4000  # 1000 spent before the raise
    client = await raw_clients(sim.gateway_url)
    await client.ready(intents=GUILDS_AND_MESSAGES | MEMBERS | PRESENCES | MESSAGE_CONTENT)
    assert sim.gateway.budget.remaining == 3999
    with pytest.raises(ValueError, match="not privileged"):
        sim.set_privileged_intents("GUILDS")
    with pytest.raises(ValueError, match="remaining must be between 0 and total"):
        sim.set_session_start_limit(remaining=6000)


async def test_raising_the_session_start_limit_lets_identifies_through_again(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(shards=4, max_concurrency=4, session_start_total=2)
    status, body = await get(sim.rest_url + "/gateway/bot", AUTH)
    assert body["session_start_limit"]["total"] == 2
    for shard_id in (0, 1):
        client = await raw_clients(sim.gateway_url)
        await client.ready(shard=[shard_id, 4])
    # exhausted: the simulator enforces it (op 9, as Discord)
    refused = await raw_clients(sim.gateway_url)
    await refused.hello()
    await refused.identify(shard=[2, 4])
    assert (await refused.recv_op(9))["d"] is False
    assert sim.record.identifies[-1].outcome is IdentifyOutcome.EXHAUSTED
    # Discord raises the limit: the starts already spent still count
    status, body = await post(sim.admin_url + "/config", {"session_start_limit": 10})
    assert status == 200
    limit = body["session_start_limit"]
    assert (limit["total"], limit["remaining"], limit["max_concurrency"]) == (10, 8, 4)
    assert set(body) == {"ok", "event_rate", "chaos_rate", "session_start_limit"}
    status, bot = await get(sim.rest_url + "/gateway/bot", AUTH)
    assert (bot["session_start_limit"]["total"], bot["session_start_limit"]["remaining"]) == (10, 8)
    again = await raw_clients(sim.gateway_url)
    await again.ready(shard=[2, 4])
    # the object form sets the numbers as given
    status, body = await post(
        sim.admin_url + "/config",
        {"session_start_limit": {"total": 3000, "remaining": 2500, "reset_after": 60_000}},
    )
    assert status == 200
    limit = body["session_start_limit"]
    assert (limit["total"], limit["remaining"]) == (3000, 2500)
    assert 59_000 <= limit["reset_after"] <= 60_000
    status, settings = await get(sim.admin_url + "/config")
    assert status == 200 and settings["session_start_limit"]["remaining"] == 2500
    status, sessions = await get(sim.admin_url + "/sessions")
    assert sessions["session_start_limit"]["total"] == 3000


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"privileged_intents": "GUILDS"}, "GUILDS is not privileged"),
        ({"privileged_intents": "GUILD_MEMBRES"}, "unknown intent"),
        ({"privileged_intents": True}, "intent names or an integer"),
        ({"privileged_intents": [1]}, "list of intent names"),
        ({"session_start_limit": 0}, "session_start_limit must be an integer >= 1"),
        ({"session_start_limit": "5000"}, "session_start_limit must be an integer"),
        ({"session_start_limit": {}}, "must set total, remaining or reset_after"),
        ({"session_start_limit": {"totl": 5}}, "unknown key(s) ['totl']"),
        (
            {"session_start_limit": {"remaining": 2000}},
            "remaining must be between 0 and total (1000)",
        ),
        ({"session_start_limit": {"reset_after": -1}}, "reset_after must be an integer >= 0"),
        # one bad setting: nothing of the request changes
        (
            {"event_rate": 5, "privileged_intents": "all", "session_start_limit": -1},
            "session_start_limit",
        ),
        (
            {"event_rate": 5, "session_start_limit": 5000, "privileged_intents": "GUILDS"},
            "not privileged",
        ),
    ],
)
async def test_bad_settings_are_400_and_change_nothing(
    sim_factory: SimFactory, body: dict[str, Any], fragment: str
) -> None:
    sim = await sim_factory()
    status, answer = await post(sim.admin_url + "/config", body)
    assert status == 400 and answer["ok"] is False
    assert fragment in answer["error"]
    status, settings = await get(sim.admin_url + "/config")
    assert settings["event_rate"] == 0.0
    assert settings["privileged_intents"] == []
    assert (
        settings["session_start_limit"]["total"],
        settings["session_start_limit"]["remaining"],
    ) == (
        1000,
        1000,
    )


# -- cluster simulate as a process ------------------------------------------------------------------


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def start_simulate(
    processes: list[asyncio.subprocess.Process], *flags: str
) -> tuple[asyncio.subprocess.Process, dict[str, str], list[str]]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "simulate",
        "--port",
        "0",
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    processes.append(proc)
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    lines: list[str] = []
    async with asyncio.timeout(15):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "the simulator exited before printing its settings"
            lines.append(line.rstrip("\n"))
            match = re.match(r"(REST|gateway|admin):\s+(\S+)", line)
            if match:
                urls[match.group(1)] = match.group(2)
            if "Ctrl-C to stop" in line:
                break
    return proc, urls, lines


async def stop(proc: asyncio.subprocess.Process) -> list[str]:
    proc.terminate()
    async with asyncio.timeout(10):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode().splitlines()


async def test_simulate_enables_privileged_intents_and_raises_the_session_start_limit(
    processes: list[asyncio.subprocess.Process], raw_clients: Connect
) -> None:
    proc, urls, lines = await start_simulate(
        processes,
        "--shards",
        "4096",
        "--max-concurrency",
        "16",
        "--guilds",
        "0",
        "--privileged-intents",
        "GUILD_MEMBERS,GUILD_PRESENCES,MESSAGE_CONTENT",
        "--session-start-limit",
        "5000",
    )
    assert "session_start_limit=5000" in lines[-1]
    assert "privileged_intents=GUILD_MEMBERS,GUILD_PRESENCES,MESSAGE_CONTENT" in lines[-1]
    status, body = await get(urls["REST"] + "/gateway/bot", AUTH)
    assert status == 200
    assert body["shards"] == 4096
    assert body["session_start_limit"]["total"] == 5000
    assert body["session_start_limit"]["remaining"] == 5000
    client = await raw_clients(urls["gateway"])
    every = GUILDS_AND_MESSAGES | MEMBERS | PRESENCES | MESSAGE_CONTENT
    ready = await client.ready(intents=every, shard=[7, 4096])
    assert ready["shard"] == [7, 4096]
    status, settings = await get(urls["admin"] + "/config")
    assert settings["privileged_intents"] == ["GUILD_MEMBERS", "GUILD_PRESENCES", "MESSAGE_CONTENT"]
    assert settings["session_start_limit"]["remaining"] == 4999
    await client.close()
    await stop(proc)


async def test_simulate_defaults_to_none_and_says_when_the_limit_is_too_small(
    processes: list[asyncio.subprocess.Process], raw_clients: Connect
) -> None:
    proc, urls, lines = await start_simulate(
        processes, "--shards", "2000", "--max-concurrency", "16", "--guilds", "0"
    )
    assert "session_start_limit=1000 privileged_intents=none" in lines[-1]
    status, body = await get(urls["REST"] + "/gateway/bot", AUTH)
    assert status == 200 and body["session_start_limit"]["total"] == 1000
    client = await raw_clients(urls["gateway"])
    await client.hello()
    await client.identify(intents=GUILDS_AND_MESSAGES | MEMBERS, shard=[0, 2000])
    assert (await client.expect_close()).code == 4014
    out = await stop(proc)
    note = [line for line in out if line.startswith("note: ")]
    assert note == [
        "note: identifying all 2000 shards takes 2000 session starts, more than the 1000 a day "
        "allowed; raise it with --session-start-limit 2000 (Discord does for large bots)"
    ]


@pytest.mark.parametrize(
    ("command", "flags", "needle"),
    [
        (
            "simulate",
            ["--privileged-intents", "GUILDS"],
            "--privileged-intents: GUILDS is not privileged",
        ),
        (
            "simulate",
            ["--privileged-intents", "PRESENCE"],
            "--privileged-intents: unknown intent 'PRESENCE'",
        ),
        ("simulate", ["--session-start-limit", "0"], "--session-start-limit must be between 1 and"),
        ("simulate", ["--session-start-limit", "many"], "--session-start-limit"),
        (
            "up",
            ["--token", "x", "--privileged-intents", "all"],
            "--privileged-intents goes with --simulate",
        ),
        (
            "up",
            ["--token", "x", "--session-start-limit", "5000"],
            "--session-start-limit goes with --simulate",
        ),
        (
            "up",
            ["--simulate", "--privileged-intents", "GUILDS"],
            "--privileged-intents: GUILDS is not privileged",
        ),
        (
            "up",
            ["--simulate", "--session-start-limit", "-3"],
            "--session-start-limit must be between 1 and",
        ),
    ],
)
async def test_bad_values_print_one_line_and_exit_2(
    command: str, flags: list[str], needle: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        command,
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(15):
        out, err = await proc.communicate()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("cluster: error: ")
    assert needle in lines[0]
    assert out == b""
