"""scripts/examples/consume_pub.py and consume_redis.py run as documented, on real sockets."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import msgpack
import orjson
import pytest
import redis.asyncio
import zmq
import zmq.asyncio

from protocol.pubframe import event_frames
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

EXAMPLES = Path(__file__).resolve().parents[2] / "scripts" / "examples"


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    try:
        async with asyncio.timeout(15):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_consume_pub_prints_events_and_counts_gaps() -> None:
    context = zmq.asyncio.Context()
    pub = context.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:0")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / "consume_pub.py"), "--pub", endpoint, "--count", "3",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(10):
            assert (await pub.recv())[:1] == b"\x01"  # subscribed
        for seq in (1, 2, 4):
            body = orjson.dumps({"op": 0, "t": "MESSAGE_CREATE", "s": seq, "d": {"content": "hi"}})
            await pub.send_multipart(event_frames(b"MESSAGE_CREATE", 0, seq, body, "s"))
        code, out, err = await finish(process)
    finally:
        pub.close(0)
        context.term()
    assert code == 0, err
    assert out.splitlines() == [f"shard 0 seq {n} MESSAGE_CREATE 'hi'" for n in (1, 2, 4)]
    assert "missed seq 3..3" in err and "3 events, 1 gaps (1 missed)" in err


async def test_consume_redis_handles_and_acks_and_sends_presence(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        for seq in (1, 2):
            obj = {"shardId": 1, "payload": {"op": 0, "t": "MESSAGE_CREATE", "s": seq, "d": {}}}
            await client.xadd("MESSAGE_CREATE", {"data": msgpack.packb(obj)})
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / "consume_redis.py"), "--redis", redis_server.url,
            "--group", "g", "--consumer", "c1", "--count", "2",
            "--presence", "idle", "--shards", "2", "MESSAGE_CREATE",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        code, out, err = await finish(process)
        assert code == 0, err
        assert out.splitlines() == ["shard 1 seq 1 MESSAGE_CREATE", "shard 1 seq 2 MESSAGE_CREATE"]
        assert "2 events: 2 acked" in err
        assert (await client.xpending("MESSAGE_CREATE", "g"))["pending"] == 0
        commands = await client.xrange("gateway_send")
        assert [msgpack.unpackb(f[b"data"])["shardId"] for _, f in commands] == [0, 1]
    finally:
        await client.aclose()
