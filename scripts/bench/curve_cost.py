"""What CURVE costs the PUB socket per event: the publishing process's CPU, NULL vs CURVE.

    python -m scripts.bench.curve_cost [--events 20000] [--runs 5] [--payload 1000]

One :class:`cluster.publisher.Publisher` in this process, one libzmq SUB in a
child process (with CURVE keys in the CURVE runs) that reads every event and
says when it has them all. Events go out as the relay sends them: batches of 64
``publish`` calls, then ``flush``. The figure is this process's CPU time (user +
system, ZeroMQ's I/O thread included) from the first publish until the
subscriber has the last event, divided by the events; runs alternate NULL and
CURVE, medians are printed. Absolute figures move between machines; the ratio
is what counts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import zmq

from cluster.publisher import Publisher
from protocol.curvezmq import CurveServerKeys, decode_key, encode_key, new_key_pair
from protocol.pubframe import encode_header

BATCH = 64

SUBSCRIBER = r"""
import sys, zmq
endpoint, count, server, public, secret = sys.argv[1:6]
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.RCVHWM, 0)
if server != "-":
    sub.curve_serverkey = server.encode()
    sub.curve_publickey = public.encode()
    sub.curve_secretkey = secret.encode()
sub.subscribe(b"")
sub.connect(endpoint)
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    for _ in range(n):
        sub.recv_multipart()
    print("done", flush=True)
sub.close(0)
ctx.term()
"""


async def one_run(
    curve: CurveServerKeys | None,
    client: tuple[bytes, bytes],
    events: int,
    payload: bytes,
) -> float:
    """CPU microseconds per event of this process for one run."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    publisher = Publisher(context, "tcp://127.0.0.1:0", hwm=events + 1, curve=curve)
    publisher.start(asyncio.get_running_loop())
    keys = (
        ["-", "-", "-"]
        if curve is None
        else [encode_key(curve.public_key), encode_key(client[0]), encode_key(client[1])]
    )
    child = subprocess.Popen(  # noqa: ASYNC220 - a benchmark, not the cluster
        [sys.executable, "-c", SUBSCRIBER, publisher.endpoint, str(events), *keys],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        await asyncio.to_thread(child.stdout.readline)
        deadline = time.monotonic() + 10
        while publisher.subscribers == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the subscriber did not subscribe")
            await asyncio.sleep(0.01)
        topic = b"MESSAGE_CREATE"
        headers = [encode_header(i % 16, i + 1) for i in range(events)]
        child.stdin.write(f"{events}\n")
        child.stdin.flush()
        done = asyncio.ensure_future(asyncio.to_thread(child.stdout.readline))
        start = time.process_time()
        for at in range(0, events, BATCH):
            for header in headers[at : at + BATCH]:
                publisher.publish(topic, header, payload)
            publisher.flush()
            await asyncio.sleep(0)
        while not done.done():
            publisher.flush()
            await asyncio.sleep(0.001)
        spent = time.process_time() - start
        assert done.result().strip() == "done"
        if publisher.dropped:
            raise RuntimeError(f"{publisher.dropped} events dropped: the figures are off")
        return spent / events * 1e6
    finally:
        child.kill()
        child.wait()
        publisher.close()
        context.term()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--payload", type=int, default=1000, help="payload bytes per event")
    args = parser.parse_args()
    payload = b'{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"content":"' + b"x" * args.payload + b'"}}'
    server_public, server_secret = new_key_pair()
    client = new_key_pair()
    curve = CurveServerKeys(server_secret, frozenset({client[0]}))
    assert decode_key(encode_key(server_public)) == curve.public_key
    results: dict[str, list[float]] = {"NULL": [], "CURVE": []}
    for _ in range(args.runs):
        results["NULL"].append(await one_run(None, client, args.events, payload))
        results["CURVE"].append(await one_run(curve, client, args.events, payload))
    null = statistics.median(results["NULL"])
    boxed = statistics.median(results["CURVE"])
    print(f"events/run {args.events}, payload {len(payload)} B, runs {args.runs}, one subscriber")
    for name, values in results.items():
        print(f"{name:6} us/event median {statistics.median(values):6.2f}  runs {values}")
    print(f"CURVE / NULL = {boxed / null:.2f}  (+{boxed - null:.2f} us per event and subscriber)")


if __name__ == "__main__":
    asyncio.run(main())
