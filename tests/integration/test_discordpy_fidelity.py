"""Proof of fidelity: discord.py, pointed at the simulator by its base URLs only, works as against Discord.

Only ``discord.http.Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY`` are
changed (and restored). The library logs in over REST, connects with its
default transport compression (zstd-stream when ``zstandard`` is installed),
receives READY, GUILD_CREATEs and MESSAGE_CREATEs, and survives op 7 by
RESUMING on the ``resume_gateway_url`` - asserted on the simulator's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import discord
import pytest
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from simulator import IdentifyOutcome, ResumeOutcome, Simulator, UrlKind, discord_shaped_token
from tests.conftest import SimFactory

BOT_ID = 1180000000000000001
TOKEN = discord_shaped_token(BOT_ID)


@contextlib.contextmanager
def pointed_at(sim: Simulator) -> Iterator[None]:
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = sim.rest_url
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sim.gateway_url)
    try:
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway


class Collector:
    """Events a discord.py client saw, with waits bounded in time."""

    def __init__(self) -> None:
        self.messages: list[discord.Message] = []
        self.guilds_available: list[int] = []
        self.resumed = 0
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()

    def attach(self, client: discord.Client) -> None:
        @client.event
        async def on_ready() -> None:
            self.ready.set()

        @client.event
        async def on_message(message: discord.Message) -> None:
            self.messages.append(message)
            self.changed.set()

        @client.event
        async def on_guild_available(guild: discord.Guild) -> None:
            self.guilds_available.append(guild.id)

        @client.event
        async def on_resumed() -> None:
            self.resumed += 1
            self.changed.set()

        @client.event
        async def on_shard_resumed(shard_id: int) -> None:
            self.resumed += 1
            self.changed.set()

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def running(client: discord.Client) -> AsyncIterator[asyncio.Task[None]]:
    """Log in and connect ``client`` in a task; always close it."""
    task: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(client.login(TOKEN), 10)
        task = asyncio.create_task(client.connect(reconnect=True))
        yield task
    finally:
        await asyncio.wait_for(client.close(), 10)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)


def intents() -> discord.Intents:
    return discord.Intents.default()  # no privileged intents: no member chunking


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("fault", "params"),
    [
        ("reconnect", {}),
        ("invalid_session", {"resumable": True}),
        ("close", {"code": 4000}),
        ("drop", {}),
    ],
)
async def test_discordpy_client_logs_in_receives_guilds_and_messages_and_resumes(
    sim_factory: SimFactory, fault: str, params: dict[str, Any]
) -> None:
    sim = await sim_factory(token=TOKEN, guilds=3, heartbeat_interval_ms=2000)
    seen = Collector()
    client = discord.Client(intents=intents(), guild_ready_timeout=0.5)
    seen.attach(client)
    with pointed_at(sim):
        async with running(client) as task:
            async with asyncio.timeout(15):
                await seen.ready.wait()
            assert not task.done()
            # login read the bot id from the simulator's REST answers
            assert client.user is not None and client.user.id == BOT_ID
            assert client.application_id == BOT_ID
            assert client.latency < 5  # discord.py beats right after Hello; the ACK came back
            # READY's unavailable guilds became full guilds through GUILD_CREATE
            expected = {sim.factory.guild(i).id for i in range(3)}
            assert {g.id for g in client.guilds} == expected and len(expected) == 3
            guild = client.get_guild(next(iter(expected)))
            assert guild is not None and len(guild.text_channels) >= 1 and guild.me is not None

            first = sim.emit(0, 5, "MESSAGE_CREATE")
            await seen.until(lambda: len(seen.messages) >= 5)
            assert all(m.guild is not None and m.guild.id in expected for m in seen.messages)
            assert all(isinstance(m.channel, discord.TextChannel) for m in seen.messages)

            # op 7 (or op 9 true, a resumable close, a dropped TCP connection): discord.py
            # RESUMEs on resume_gateway_url; events produced meanwhile are replayed, none twice
            assert sim.inject(0, fault, **params)
            missed = sim.emit(0, 5, "MESSAGE_CREATE")
            await sim.record.wait_for(lambda r: len(r.accepted_resumes(0)) == 1, timeout=15)
            after = sim.emit(0, 5, "MESSAGE_CREATE")
            await seen.until(lambda: len(seen.messages) >= 15 and seen.resumed >= 1)
            assert not task.done()

    ids = [m.id for m in seen.messages]
    assert len(ids) == len(set(ids)) == len(first) + len(missed) + len(after) == 15
    identifies = sim.record.accepted_identifies()
    assert len(identifies) == 1 and identifies[0].outcome is IdentifyOutcome.ACCEPTED
    [resume] = sim.record.resumes
    assert resume.outcome is ResumeOutcome.ACCEPTED
    assert resume.url_kind is UrlKind.RESUME
    assert not sim.record.violations
    # discord.py's default transport compression, on both connections
    assert {c.compress for c in sim.record.connections.values()} == {"zstd-stream"}
    # discord.py sent its heartbeats on both connections (it beats right after Hello)
    assert len(sim.record.heartbeats) >= 2


@pytest.mark.timeout(60)
async def test_discordpy_autosharded_client_runs_two_shards_and_resumes_one(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(
        token=TOKEN, shards=2, guilds=6, identify_window_s=0.2, heartbeat_interval_ms=2000
    )

    class Sharded(discord.AutoShardedClient):
        async def before_identify_hook(
            self, shard_id: int | None, *, initial: bool = False
        ) -> None:
            # the documented hook: space identifies by the simulator's (short) window,
            # instead of discord.py's fixed 5 s
            if not initial:
                await asyncio.sleep(0.25)

    client = Sharded(intents=intents(), guild_ready_timeout=0.5)
    seen = Collector()
    seen.attach(client)
    with pointed_at(sim):
        async with running(client) as task:
            async with asyncio.timeout(20):
                await seen.ready.wait()
            assert not task.done()
            assert client.shard_count == 2  # from /gateway/bot
            assert len(client.guilds) == 6
            for guild in client.guilds:
                assert guild.shard_id == (guild.id >> 22) % 2

            sim.emit(0, 3, "MESSAGE_CREATE")
            sim.emit(1, 3, "MESSAGE_CREATE")
            await seen.until(lambda: len(seen.messages) >= 6)
            assert {m.guild.shard_id for m in seen.messages if m.guild} == {0, 1}

            assert sim.inject(1, "reconnect")
            sim.emit(1, 4, "MESSAGE_CREATE")
            await sim.record.wait_for(lambda r: len(r.accepted_resumes(1)) == 1, timeout=15)
            sim.emit(1, 2, "MESSAGE_CREATE")
            await seen.until(lambda: len(seen.messages) >= 12)

    ids = [m.id for m in seen.messages]
    assert len(ids) == len(set(ids)) == 12
    for shard_id in (0, 1):
        [identify] = sim.record.identifies_for(shard_id)
        assert identify.outcome is IdentifyOutcome.ACCEPTED and identify.num_shards == 2
    assert [r.shard_id for r in sim.record.accepted_resumes()] == [1]
    assert sim.record.accepted_resumes()[0].url_kind is UrlKind.RESUME
    first, second = sorted(r.at for r in sim.record.identifies)
    assert second - first >= 0.2  # discord.py waited for the bucket
    assert not sim.record.violations


@pytest.mark.timeout(30)
async def test_discordpy_wrong_token_is_a_login_failure(sim_factory: SimFactory) -> None:
    sim = await sim_factory(token=TOKEN)
    client = discord.Client(intents=intents())
    with pointed_at(sim):
        try:
            with pytest.raises(discord.LoginFailure):
                await asyncio.wait_for(client.login(discord_shaped_token(BOT_ID + 1)), 10)
        finally:
            await asyncio.wait_for(client.close(), 10)
    assert sim.record.rest_requests == [("GET", "/api/v10/users/@me", 401)]


@pytest.mark.timeout(30)
async def test_discordpy_privileged_intents_not_enabled_stop_the_client(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(token=TOKEN)
    wanted = discord.Intents.default()
    wanted.message_content = True
    client = discord.Client(intents=wanted)
    with pointed_at(sim):
        async with running(client) as task:
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await asyncio.wait_for(task, 10)
    [identify] = sim.record.identifies
    assert identify.outcome is IdentifyOutcome.REJECTED and identify.code == 4014


# discord.py without zstandard falls back to zlib-stream; run it so in a child process
# whose import of zstandard fails, as on a machine without it.
_ZLIB_CLIENT = r"""
import asyncio, json, sys
sys.modules["zstandard"] = None
import aiohttp, discord, yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

rest, gateway, admin, token = sys.argv[1:5]
Route.BASE = rest
DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)

async def main() -> None:
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.2)
    messages, resumed, ready = [], asyncio.Event(), asyncio.Event()
    async def on_ready(): ready.set()
    async def on_message(m): messages.append(m.id)
    async def on_resumed(): resumed.set()
    for f in (on_ready, on_message, on_resumed):
        client.event(f)
    async def post(path, body):
        async with aiohttp.ClientSession() as http, http.post(admin + path, json=body) as r:
            assert r.status == 200, await r.text()
    await client.login(token)
    task = asyncio.create_task(client.connect())
    try:
        async with asyncio.timeout(20):
            await ready.wait()
            await post("/emit", {"shard_id": 0, "count": 3, "event_type": "MESSAGE_CREATE"})
            while len(messages) < 3:
                await asyncio.sleep(0.01)
            await post("/fault", {"shard_id": 0, "kind": "reconnect"})
            await post("/emit", {"shard_id": 0, "count": 3, "event_type": "MESSAGE_CREATE"})
            await resumed.wait()
            while len(messages) < 6:
                await asyncio.sleep(0.01)
        print(json.dumps({"compression": discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE,
                          "messages": len(messages), "unique": len(set(messages)),
                          "guilds": len(client.guilds)}))
    finally:
        await client.close()
        task.cancel()

asyncio.run(main())
"""


@pytest.mark.timeout(60)
async def test_discordpy_without_zstandard_uses_zlib_stream_and_resumes(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(token=TOKEN, guilds=2, heartbeat_interval_ms=2000)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ZLIB_CLIENT,
        sim.rest_url,
        sim.gateway_url,
        sim.admin_url,
        TOKEN,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(40):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result == {"compression": "zlib-stream", "messages": 6, "unique": 6, "guilds": 2}
    assert {c.compress for c in sim.record.connections.values()} == {"zlib-stream"}
    assert len(sim.record.accepted_identifies()) == 1
    [resume] = sim.record.resumes
    assert resume.outcome is ResumeOutcome.ACCEPTED and resume.url_kind is UrlKind.RESUME
    assert not sim.record.violations
