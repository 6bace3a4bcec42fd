#!/usr/bin/env python3
"""Consume the Redis Streams sink (``cluster up --sink redis``) with ``titanium_client``.

Every event is delivered at least once to one member of the consumer group and
acknowledged when the loop body returns; an exception leaves it pending, and
after ``--ack-wait`` seconds another member (or this one, restarted under the
same ``--consumer`` name) gets it again. Run it twice with different
``--consumer`` names: the two share the events. Run it with another ``--group``:
that group sees every event too. Handlers must be idempotent.

    python3 scripts/examples/consume_redis.py --redis redis://127.0.0.1:6379/0 \\
        --group mybot --consumer "$(hostname)" MESSAGE_CREATE GUILD_CREATE
    # and set the bot's presence on all 16 shards through the stream gateway_send:
    python3 scripts/examples/consume_redis.py --presence idle --shards 16 MESSAGE_CREATE

Stop with Ctrl-C: the loop ends, the last event is acknowledged, counters are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from titanium_client import Event, StreamCluster, StreamSubscription


async def handle(event: Event) -> None:
    """The bot's work: must be idempotent (a redelivered event comes again)."""
    again = f" (delivery {event.delivery_count})" if event.delivery_count > 1 else ""
    d = event.d
    content = f" {str(d['content'])[:60]!r}" if isinstance(d, dict) and "content" in d else ""
    print(f"shard {event.shard_id} seq {event.seq} {event.name}{content}{again}", flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the Redis URL")
    parser.add_argument("--group", default="example", help="the consumer group")
    parser.add_argument("--consumer", help="this member's name (default: host-pid)")
    parser.add_argument("--ack-wait", type=float, default=30.0, help="seconds before a claim")
    parser.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    parser.add_argument("--presence", help="first send this presence status to every shard")
    parser.add_argument("--shards", type=int, help="the cluster's shard count (for --presence)")
    parser.add_argument("events", nargs="+", help="stream names, e.g. MESSAGE_CREATE")
    args = parser.parse_args()

    if args.presence:
        if not args.shards:
            parser.error("--presence needs --shards (the cluster's shard count)")
        async with StreamCluster(args.redis, shard_count=args.shards) as cluster:
            shard_ids = await cluster.update_presence(args.presence)
        print(f"presence {args.presence} queued for shards {list(shard_ids)}", file=sys.stderr)

    handled = 0
    events = StreamSubscription(
        args.redis,
        group=args.group,
        consumer=args.consumer,
        events=args.events,
        ack_wait=args.ack_wait,
    )
    async with events:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, events.stop)
        async for event in events:
            await handle(event)  # acknowledged when the next event is asked for
            handled += 1
            if handled == args.count:
                break
    stats = events.stats
    print(
        f"{handled} events: {stats.acked} acked, {stats.redelivered} redelivered, "
        f"{stats.claimed} claimed from other members, {stats.dead_lettered} dead-lettered, "
        f"{stats.lost} lost",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
