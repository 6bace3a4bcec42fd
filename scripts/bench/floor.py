"""The floor: the least a Python receiver of this design must do per event.

``python -m scripts.bench.floor GATEWAY_URL SHARDS TOKEN PUSH_ENDPOINT``

Per shard one aiohttp websocket (zlib-stream); per dispatch: inflate, read
``t`` and ``s`` (:func:`protocol.envelope.peek`), one ZeroMQ send of the
payload to a PULL in another process. Hello, IDENTIFY and heartbeats are
done just enough to stay connected; nothing else (no reconnects, no state).
"""

from __future__ import annotations

import asyncio
import sys
import zlib

import aiohttp
import orjson
import zmq

from protocol.envelope import peek

_SUFFIX = b"\x00\x00\xff\xff"


async def shard(
    http: aiohttp.ClientSession,
    url: str,
    shard_id: int,
    total: int,
    token: str,
    push: zmq.Socket[bytes],
) -> None:
    async with http.ws_connect(url, max_msg_size=0, autoping=True) as ws:
        inflater = zlib.decompressobj()
        buffer = bytearray()
        send = push.send
        noblock = zmq.NOBLOCK
        heart: asyncio.Task[None] | None = None
        receive = ws.receive
        binary = aiohttp.WSMsgType.BINARY
        text = aiohttp.WSMsgType.TEXT
        try:
            while True:
                msg = await receive()
                if msg.type is binary:
                    data = msg.data
                    if not data.endswith(_SUFFIX):
                        buffer += data
                        continue
                    if buffer:
                        buffer += data
                        data = bytes(buffer)
                        buffer.clear()
                    data = inflater.decompress(data)
                elif msg.type is text:
                    data = msg.data.encode()
                else:
                    return
                op, _t, _s = peek(data)
                if op == 0:
                    while True:
                        try:
                            send(data, noblock)
                            break
                        except zmq.Again:
                            await asyncio.sleep(0.001)
                elif op == 10:
                    interval = orjson.loads(data)["d"]["heartbeat_interval"] / 1000.0
                    heart = asyncio.create_task(beat(ws, interval))
                    identify = {
                        "op": 2,
                        "d": {
                            "token": token,
                            "intents": 1 | 512 | 256 | 32768,
                            "shard": [shard_id, total],
                            "properties": {"os": "linux", "browser": "floor", "device": "floor"},
                        },
                    }
                    await ws.send_bytes(orjson.dumps(identify))
        finally:
            if heart is not None:
                heart.cancel()


async def beat(ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await ws.send_str('{"op":1,"d":null}')


async def main() -> None:
    base, shards, token, endpoint = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    url = base + "?v=10&encoding=json&compress=zlib-stream"
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 200_000)
    push.connect(endpoint)
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(shard(http, url, i, shards, token, push) for i in range(shards)))


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(main())
