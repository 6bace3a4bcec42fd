"""The XPUB publisher on real sockets: a stuck subscriber costs drops, never a block or another's events."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import zmq

from cluster.publisher import Publisher
from protocol.pubframe import decode_event, encode_header

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def sub_socket(
    context: zmq.Context[zmq.Socket[bytes]], endpoint: str, prefix: bytes, hwm: int
) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.SUBSCRIBE, prefix)
    sock.connect(endpoint)
    return sock


async def wait_subscriptions(publisher: Publisher, n: int) -> None:
    async with asyncio.timeout(5):
        while True:
            publisher.drain_subscriptions()
            if publisher.subscriptions >= n:
                return
            await asyncio.sleep(0.01)


async def test_a_stuck_subscriber_is_dropped_for_while_a_reading_one_gets_everything(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # ZeroMQ's writer learns what its reader took only every hwm/2 messages, so a
    # reading subscriber has room only if it is more than hwm/2 behind at most
    publisher = Publisher(context, "tcp://127.0.0.1:0", hwm=1000)
    reader = sub_socket(context, publisher.endpoint, b"", 0)
    stuck = sub_socket(context, publisher.endpoint, b"MESSAGE_", 1)
    await wait_subscriptions(publisher, 2)
    payload = b'{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"content":"' + b"x" * 1000 + b'"}}'
    received = 0
    for seq in range(1, 20_001):
        # never blocks: publish returns at once whatever the subscribers do
        publisher.publish(b"MESSAGE_CREATE", encode_header(0, seq), payload)
        if seq % 100 == 0:
            # the reader keeps up (it reads each chunk before the next one is sent)
            async with asyncio.timeout(5):
                while received < seq:
                    try:
                        frames = reader.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        await asyncio.sleep(0.001)
                        continue
                    assert decode_event(frames).seq == received + 1
                    received += 1
    assert received == 20_000
    assert publisher.dropped >= 1
    stuck_got = 0
    while True:
        try:
            stuck.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        stuck_got += 1
    assert stuck_got < 20_000
    publisher.close()


async def test_subscriptions_are_counted_and_a_topic_prefix_filters(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    publisher = Publisher(context, "ipc://@titanium-test-publisher", hwm=100)
    guilds = sub_socket(context, publisher.endpoint, b"GUILD_", 100)
    await wait_subscriptions(publisher, 1)
    assert publisher.subscriptions == 1
    publisher.publish(b"MESSAGE_CREATE", encode_header(0, 1), b"{}")
    publisher.publish(b"GUILD_CREATE", encode_header(0, 2), b"{}")
    async with asyncio.timeout(5):
        while True:
            try:
                frames = guilds.recv_multipart(zmq.NOBLOCK)
                break
            except zmq.Again:
                await asyncio.sleep(0.005)
    event = decode_event(frames)
    assert (event.topic, event.seq) == ("GUILD_CREATE", 2)
    guilds.close(0)
    async with asyncio.timeout(5):
        while publisher.subscriptions:
            publisher.drain_subscriptions()
            await asyncio.sleep(0.01)
    assert publisher.dropped == 0
    publisher.close()
