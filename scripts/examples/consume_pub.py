#!/usr/bin/env python3
"""Consume a Titanium Cluster's PUB tap with the consumer library (``titanium_client``).

The tap is the fast path: every event once, no acknowledgements, nothing
redelivered. A subscriber slower than its high-water mark loses events; the
library reports them as gaps per shard and session (only without ``--filter``:
with one, the skipped seqs are other event types) and drops duplicates (a seq
repeated after the cluster RESUMEd from its last checkpoint).

    python3 scripts/examples/consume_pub.py --pub tcp://127.0.0.1:5555 --filter MESSAGE_
    python3 scripts/examples/consume_pub.py --pub tcp://10.0.0.1:5555 --pub tcp://10.0.0.2:5555

Stop with Ctrl-C: the loop ends and the counters are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from titanium_client import Event, subscribe


def describe(event: Event) -> str:
    d = event.d  # parsed here, on first access, not before
    if isinstance(d, dict) and "content" in d:
        return f" {str(d['content'])[:60]!r}"
    if isinstance(d, dict) and "guild_id" in d:
        return f" guild {d['guild_id']}"
    return ""


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--pub", action="append", default=[], help="a PUB endpoint (repeat: one per host)"
    )
    parser.add_argument(
        "--filter", action="append", default=[], help="event name prefix (repeatable)"
    )
    parser.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    args = parser.parse_args()

    def on_gap(shard_id: int, session_id: str | None, expected: int, got: int) -> None:
        print(f"gap: shard {shard_id} missed seq {expected}..{got - 1}", file=sys.stderr)

    handled = 0
    async with subscribe(
        args.pub or ["tcp://127.0.0.1:5555"], events=args.filter or None, on_gap=on_gap
    ) as events:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, events.stop)
        async for event in events:
            print(
                f"shard {event.shard_id} seq {event.seq} {event.name}{describe(event)}", flush=True
            )
            handled += 1
            if handled == args.count:
                break
    stats = events.stats
    print(
        f"{handled} events, {stats.gaps} gaps ({stats.missed} missed), "
        f"{stats.duplicates} duplicates dropped",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
