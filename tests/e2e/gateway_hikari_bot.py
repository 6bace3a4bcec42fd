"""An unchanged hikari GatewayBot pointed at the gateway endpoint, as the README shows.

Run as its own process by the gateway e2e tests (with a Python that has hikari)::

    python tests/e2e/gateway_hikari_bot.py --rest REST_BASE --endpoint HTTP_URL

hikari asks REST ``GET /gateway/bot`` for the gateway URL, the shard count and
the identify concurrency, and nothing else of the gateway: the README's one change
is to ask the endpoint for it instead of Discord (``fetch_gateway_bot_info``).
``rest_url`` is the simulator only because the simulator stands in for Discord.
One JSON line per raw dispatch (``ShardPayloadEvent``: shard, t, guild, the
simulator's event id), and ``guild`` lines from hikari's own cache as guilds
become available.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any

import aiohttp
import hikari
from hikari.impl import config as hikari_config
from hikari.impl import rest as hikari_rest


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def use_endpoint(endpoint: str, token: str) -> None:
    """hikari's GET /gateway/bot goes to the endpoint (the README's change)."""

    async def fetch_gateway_bot_info(self: hikari_rest.RESTClientImpl) -> hikari.GatewayBotInfo:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{endpoint}/api/v10/gateway/bot", headers={"Authorization": f"Bot {token}"}
            ) as response,
        ):
            body = await response.json()
        limit = body["session_start_limit"]
        return hikari.GatewayBotInfo(
            url=body["url"],
            shard_count=body["shards"],
            session_start_limit=hikari.SessionStartLimit(
                total=limit["total"],
                remaining=limit["remaining"],
                reset_after=datetime.timedelta(milliseconds=limit["reset_after"]),
                max_concurrency=limit["max_concurrency"],
            ),
        )

    hikari_rest.RESTClientImpl.fetch_gateway_bot_info = fetch_gateway_bot_info  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rest", required=True)
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args()
    token = os.environ["DISCORD_TOKEN"]
    use_endpoint(args.endpoint, token)
    bot = hikari.GatewayBot(
        token,
        rest_url=args.rest,
        intents=hikari.Intents.GUILDS | hikari.Intents.GUILD_MESSAGES,
        banner=None,
        suppress_optimization_warning=True,
        cache_settings=hikari_config.CacheSettings(),
    )

    async def on_payload(event: hikari.ShardPayloadEvent) -> None:
        d = event.payload
        guild = d.get("guild_id") or (d.get("id") if event.name == "GUILD_CREATE" else None)
        emit(
            event="dispatch",
            shard=event.shard.id,
            t=event.name,
            guild_id=int(guild) if guild else None,
            event_id=d.get("_sim_event_id"),
        )

    async def on_guild(event: hikari.GuildAvailableEvent) -> None:
        channels = bot.cache.get_guild_channels_view_for_guild(event.guild_id)
        roles = bot.cache.get_roles_view_for_guild(event.guild_id)
        emit(event="guild", id=int(event.guild_id), channels=len(channels), roles=len(roles))

    async def on_ready(event: hikari.ShardReadyEvent) -> None:
        emit(event="shard_ready", shard=event.shard.id, user=int(event.my_user.id))

    async def on_resumed(event: hikari.ShardResumedEvent) -> None:
        emit(event="resumed", shard=event.shard.id)

    bot.subscribe(hikari.ShardPayloadEvent, on_payload)
    bot.subscribe(hikari.GuildAvailableEvent, on_guild)
    bot.subscribe(hikari.ShardReadyEvent, on_ready)
    bot.subscribe(hikari.ShardResumedEvent, on_resumed)
    bot.run(check_for_updates=False, close_loop=True, enable_signal_handlers=True)


if __name__ == "__main__":
    main()
