"""discord.py's AutoShardedClient as a benchmark receiver, as thin as it allows.

``python -m scripts.bench.dpy_recv REST_URL GATEWAY_URL SHARDS TOKEN EXPECT [IDENTIFY_WAIT]``

Pointed at the load source by its base URLs only (``Route.BASE`` and
``DiscordWebSocket.DEFAULT_GATEWAY``), zlib-stream (``zstandard`` hidden, as
on a machine without it), no message cache, no member cache, no chunking,
raw socket events on (``enable_debug_events``); it counts dispatches with
``on_socket_event_type`` and prints ``DONE`` after EXPECT of them (READY
excluded). With IDENTIFY_WAIT (startup benchmark) the 5 s wait between
identify rounds in ``before_identify_hook`` is scaled to that many seconds,
and it prints ``READY <monotonic ns>`` when every shard is ready.
"""

from __future__ import annotations

import asyncio
import sys
import time

sys.modules["zstandard"] = None  # type: ignore[assignment]

import discord  # noqa: E402
import yarl  # noqa: E402
from discord.gateway import DiscordWebSocket  # noqa: E402
from discord.http import Route  # noqa: E402


async def main() -> None:
    rest, gateway, shards, token, expect = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        sys.argv[4],
        int(sys.argv[5]),
    )
    identify_wait = float(sys.argv[6]) if len(sys.argv) > 6 else None
    Route.BASE = rest
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
    intents = discord.Intents.none()
    intents.guilds = intents.guild_messages = intents.presences = intents.message_content = True

    class Client(discord.AutoShardedClient):
        async def before_identify_hook(
            self, shard_id: int | None, *, initial: bool = False
        ) -> None:
            if identify_wait is not None and not initial:
                await asyncio.sleep(identify_wait)
            elif identify_wait is None:
                await super().before_identify_hook(shard_id, initial=initial)

    client = Client(
        shard_count=shards,
        intents=intents,
        enable_debug_events=True,
        max_messages=None,
        chunk_guilds_at_startup=False,
        member_cache_flags=discord.MemberCacheFlags.none(),
        guild_ready_timeout=0.0,
    )
    count = 0
    done = asyncio.Event()

    async def on_socket_event_type(t: str) -> None:
        nonlocal count
        if t == "MESSAGE_CREATE" or t == "PRESENCE_UPDATE":
            count += 1
            if count >= expect:
                done.set()

    async def on_ready() -> None:
        print(f"READY {time.monotonic_ns()}", flush=True)

    client.event(on_socket_event_type)
    client.event(on_ready)
    await client.login(token)
    task = asyncio.create_task(client.connect(reconnect=False))
    try:
        await done.wait()
        print(f"DONE {count} {time.monotonic_ns()}", flush=True)
        await asyncio.Event().wait()
    finally:
        await client.close()
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
