#!/usr/bin/env python3
"""Subscribe to a Titanium Cluster's event stream: a minimal client in plain Python.

It needs only pyzmq (``pip install pyzmq``), not this project, to show that
any language with ZeroMQ can read the stream. Each event is one multipart
message of three frames (PUB format v1, DESIGN.md 4.2)::

    topic    the event name, e.g. b"MESSAGE_CREATE" (subscribe by prefix)
    header   JSON with at least "shard_id" and "seq" (ignore keys you do not know)
    payload  the gateway payload exactly as Discord sent it: JSON with op, s, t, d

It also checks the stream's promise: per shard, seq grows by one within a
session (a READY starts a new session at seq 1), so a gap means lost events
(a subscriber too slow for its high-water mark) and a repeat means a duplicate.

    python3 scripts/examples/subscriber.py --pub tcp://127.0.0.1:5555 --filter MESSAGE_
"""

from __future__ import annotations

import argparse
import json
import sys

import zmq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pub", default="tcp://127.0.0.1:5555", help="the cluster's PUB endpoint")
    parser.add_argument(
        "--filter", action="append", default=[], help="event name prefix (repeatable)"
    )
    parser.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    args = parser.parse_args()

    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for prefix in args.filter or [""]:
        sub.setsockopt(zmq.SUBSCRIBE, prefix.encode("ascii"))
    sub.connect(args.pub)

    last_seq: dict[int, int] = {}  # shard_id -> last seq seen
    received = gaps = duplicates = 0
    try:
        while args.count == 0 or received < args.count:
            frames = sub.recv_multipart()
            if len(frames) != 3:
                print(f"skipping a message of {len(frames)} frames", file=sys.stderr)
                continue
            topic, header_raw, payload_raw = frames
            header = json.loads(header_raw)
            shard_id, seq = header["shard_id"], header["seq"]
            event = json.loads(payload_raw)
            received += 1

            previous = last_seq.get(shard_id)
            if topic == b"READY" or previous is None:
                pass  # a new session (or our first event of this shard)
            elif seq <= previous:
                duplicates += 1
            elif seq > previous + 1 and not args.filter:
                gaps += 1  # with a filter, skipped seqs are other event types
            last_seq[shard_id] = seq

            d = event.get("d") or {}
            where = f" guild {d['guild_id']}" if isinstance(d, dict) and "guild_id" in d else ""
            print(f"shard {shard_id} seq {seq} {topic.decode()}{where}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
        context.term()
    print(f"{received} events, {gaps} gaps, {duplicates} duplicates", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
