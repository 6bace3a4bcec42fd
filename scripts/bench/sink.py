"""The consumer end of a benchmark, in its own process: count events, time them, report.

``python -m scripts.bench.sink MODE ENDPOINT EXPECT [--latency]``

- ``ipc``: bind a PULL at ENDPOINT and read the worker's EVENT_RUNS messages
  with protocol/ipc.py's decoder; other kinds are ignored.
- ``floor``: bind a PULL; every message is one event.
- ``sub``: connect a SUB (subscribed to everything) to a PUB at ENDPOINT;
  every message of three frames is one event.

Prints ``BOUND <endpoint>`` once it listens, ``FIRST <ns>`` at the first
event, then ``DONE <events> <monotonic ns>`` when EXPECT events came (or,
when fewer come, after ``--idle-s`` without one: the time is the last
event's; the harness reports the shortfall as dropped). With
``--latency FILE`` it notes the key (``d._k``, put there by the firehose's
paced mode) and the arrival time of every event and writes them to FILE as
two little-endian int64 arrays of equal length (keys, then times); the
harness joins them with the firehose's send times. With
``--topic T`` only events with that topic count (e.g. READY at startup);
without it READY, RESUMED and GUILD_CREATE are not counted. The floor mode
sees payloads only: it tells READY by its first bytes and counts every other message.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from array import array

import orjson
import zmq

from protocol.ipc import HEADER, HEADER_SIZE, MessageKind, decode_event_runs
from simulator.firehose import read_key

_RUNS = int(MessageKind.EVENT_RUNS)
#: Not part of a stream: without --topic these are not counted.
_SESSION_TOPICS = frozenset((b"READY", b"RESUMED", b"GUILD_CREATE"))
#: How the firehose's READY starts (the floor sends payloads only).
_READY = b'{"t":"READY"'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("ipc", "floor", "sub"))
    parser.add_argument("endpoint")
    parser.add_argument("expect", type=int)
    parser.add_argument("--latency", metavar="FILE", default=None)
    parser.add_argument("--topic", default=None)
    parser.add_argument(
        "--seqs",
        action="store_true",
        help="sub mode: record (shard, seq) of every event and the arrival of each RESUMED;"
        " run until SIGTERM, then print SEQS <json>",
    )
    parser.add_argument(
        "--hold",
        action="store_true",
        help="after DONE keep the socket open until SIGTERM (a worker whose channel"
        " closes stops, and the memory benchmark measures it idle after DONE)",
    )
    parser.add_argument(
        "--idle-s",
        type=float,
        default=2.0,
        help="after the first event, give up waiting for EXPECT after this long without one",
    )
    args = parser.parse_args()
    ctx = zmq.Context()
    if args.mode == "sub":
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        # Started before `cluster up` binds its PUB: retry the connect every ms, not every
        # 100 ms (ZeroMQ's default), or a cluster whose first READYs come within 0.1 s of
        # the bind publishes them before this client is subscribed (PUB drops them).
        sock.setsockopt(zmq.RECONNECT_IVL, 1)
        sock.connect(args.endpoint)
        bound = args.endpoint
    else:
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind(args.endpoint)
        bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    print(f"BOUND {bound}", flush=True)
    if args.seqs:
        _record_seqs(sock)
        return
    topic = args.topic.encode() if args.topic else None
    latency = args.latency is not None
    keys = array("q")
    times = array("q")
    now = time.monotonic_ns
    recv = sock.recv_multipart
    mode = args.mode
    expect = args.expect
    n = 0
    last = 0
    idle_ms = int(args.idle_s * 1000)
    noblock = zmq.NOBLOCK
    while n < expect:
        try:
            frames = recv(noblock)
        except zmq.Again:
            if n and (not sock.poll(idle_ms) or now() - last > idle_ms * 1_000_000):
                break  # the rest was dropped upstream (a PUB at its high-water mark)
            if not n:
                sock.poll()
            continue
        if mode == "ipc":
            head = frames[0]
            if len(head) != HEADER_SIZE:
                continue
            _v, kind, count, _shard, _epoch, _seq = HEADER.unpack(head)
            if kind != _RUNS:
                continue
            # (topic, payload) per event; ev[-1] is the payload also where the
            # decoder of an older checkout (--head) gives (topic, header, payload)
            events = [ev for batch in decode_event_runs(count, frames[1]) for ev in batch.events]
        elif mode == "floor":
            payload = frames[-1]
            events = [(b"READY" if payload.startswith(_READY) else b"", payload)]
        else:
            events = [(frames[0], frames[-1])]
        if n == 0:
            print(f"FIRST {now()}", flush=True)
        for ev in events:
            if topic is not None:
                if ev[0] != topic:
                    continue
            elif ev[0] in _SESSION_TOPICS:
                continue
            n += 1
            last = now()
            if latency:
                key = read_key(bytes(ev[-1]))
                if key is not None:
                    keys.append(key)
                    times.append(last)
    print(f"DONE {n} {last if n < expect else now()}", flush=True)
    if args.latency is not None:
        with open(args.latency, "wb") as out:
            keys.tofile(out)
            times.tofile(out)
    if args.hold:
        stop = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
    sock.close(linger=0)
    ctx.term()
    sys.exit(0)


def _record_seqs(sock: zmq.Socket[bytes]) -> None:
    """Every (shard_id, seq) seen and when each RESUMED arrived, until SIGTERM."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    seqs: dict[int, list[int]] = {}
    resumed: list[tuple[int, int]] = []
    now = time.monotonic_ns
    try:
        while True:
            frames = sock.recv_multipart()
            if len(frames) != 3:
                continue
            topic, header, _payload = frames
            head = orjson.loads(header)
            seqs.setdefault(head["shard_id"], []).append(head["seq"])
            if topic == b"RESUMED":
                resumed.append((head["shard_id"], now()))
    except KeyboardInterrupt:
        pass
    summary = {}
    for shard, got in seqs.items():
        unique = set(got)
        summary[shard] = {
            "min": min(unique),
            "max": max(unique),
            "missing": max(unique) - min(unique) + 1 - len(unique),
            "duplicates": len(got) - len(unique),
        }
    out = {"shards": summary, "resumed": resumed}
    print("SEQS " + orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS).decode(), flush=True)


if __name__ == "__main__":
    main()
