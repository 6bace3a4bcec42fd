"""An unchanged discord.py bot pointed at the gateway endpoint, as a README user would write it.

Run as its own process by the gateway e2e tests::

    python tests/e2e/gateway_bot.py --rest REST_BASE --gateway WS_URL --shards N

discord.py is changed only where its users change it: the REST base
(``Route.BASE``: here the simulator, standing in for Discord) and the gateway URL
(``DiscordWebSocket.DEFAULT_GATEWAY``: the endpoint), an ``AutoShardedClient``
given the cluster's shard count, and the documented ``before_identify_hook``
without discord.py's 5 s wait (the endpoint spends no Discord identify). The
token comes from ``DISCORD_TOKEN``.

It prints one JSON line per thing the tests check: every dispatch it reads
(``dispatch``: t, s, the simulator's event id), ``ready`` with its guilds as
discord.py built them, each ``message`` with the guild and channel discord.py
resolved, ``resumed`` and ``shard_ready``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Bot(discord.AutoShardedClient):
    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        return None  # the endpoint spends no Discord identify: no need to wait 5 s

    async def on_socket_raw_receive(self, raw: str) -> None:
        payload = json.loads(raw)
        if payload.get("op") != 0:
            emit(event="op", op=payload.get("op"), d=payload.get("d"))
            return
        d = payload.get("d")
        guild_id = None
        event_id = None
        if isinstance(d, dict):
            event_id = d.get("_sim_event_id")
            raw_guild = d.get("guild_id") or (
                d.get("id") if payload["t"] == "GUILD_CREATE" else None
            )
            guild_id = int(raw_guild) if raw_guild else None
        emit(
            event="dispatch",
            t=payload["t"],
            s=payload["s"],
            event_id=event_id,
            guild_id=guild_id,
            session_id=d.get("session_id") if payload["t"] == "READY" else None,
        )

    async def on_shard_ready(self, shard_id: int) -> None:
        emit(event="shard_ready", shard=shard_id)

    async def on_ready(self) -> None:
        guilds = []
        for guild in self.guilds:
            guilds.append(
                {
                    "id": guild.id,
                    "shard": guild.shard_id,
                    "name": guild.name,
                    "channels": len(guild.channels),
                    "text_channels": len(guild.text_channels),
                    "roles": len(guild.roles),
                    "me": guild.me is not None,
                    "member_count": guild.member_count,
                }
            )
        emit(
            event="ready",
            shards=sorted(self.shards),
            guilds=guilds,
            user=self.user.id if self.user else None,
        )

    async def on_message(self, message: discord.Message) -> None:
        emit(
            event="message",
            id=message.id,
            guild=message.guild.id if message.guild else None,
            channel=type(message.channel).__name__,
            shard=message.guild.shard_id if message.guild else None,
        )

    async def on_shard_resumed(self, shard_id: int) -> None:
        emit(event="resumed", shard=shard_id)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rest", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--intents", type=int, default=None)
    args = parser.parse_args()
    Route.BASE = args.rest
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(args.gateway)
    intents = (
        discord.Intents.default()
        if args.intents is None
        else discord.Intents._from_value(args.intents)
    )
    bot = Bot(
        intents=intents,
        shard_count=args.shards,
        guild_ready_timeout=0.5,
        enable_debug_events=True,
    )
    async with bot:
        await bot.start(os.environ["DISCORD_TOKEN"])


if __name__ == "__main__":
    asyncio.run(main())
