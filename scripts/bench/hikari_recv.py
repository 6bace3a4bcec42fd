"""hikari's GatewayBot as a benchmark receiver, raw payload events, no cache.

``python -m scripts.bench.hikari_recv REST_URL SHARDS TOKEN EXPECT``

Pointed at the load source by ``rest_url`` only: the gateway URL comes from
its ``/gateway/bot``. Transport zlib-stream (hikari's default), every cache
component off, banner and optimisation warnings off; dispatches are counted
with a listener of :class:`hikari.ShardPayloadEvent` (the raw payload, no
model building for it) and ``DONE`` is printed after EXPECT of them.
"""

from __future__ import annotations

import asyncio
import sys
import time

import hikari
from hikari.impl import config as hikari_config


def main() -> None:
    rest, shards, token, expect = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    intents = (
        hikari.Intents.GUILDS
        | hikari.Intents.GUILD_MESSAGES
        | hikari.Intents.GUILD_PRESENCES
        | hikari.Intents.MESSAGE_CONTENT
    )
    bot = hikari.GatewayBot(
        token,
        rest_url=rest,
        intents=intents,
        banner=None,
        suppress_optimization_warning=True,
        cache_settings=hikari_config.CacheSettings(components=hikari.api.CacheComponents.NONE),
    )
    count = 0

    async def on_payload(event: hikari.ShardPayloadEvent) -> None:
        nonlocal count
        if event.name == "MESSAGE_CREATE" or event.name == "PRESENCE_UPDATE":
            count += 1
            if count == expect:
                print(f"DONE {count} {time.monotonic_ns()}", flush=True)

    bot.subscribe(hikari.ShardPayloadEvent, on_payload)
    bot.run(
        shard_count=shards, check_for_updates=False, close_loop=True, enable_signal_handlers=True
    )


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
