"""The PUB socket on real sockets, with real libzmq SUB clients.

Each subscriber has its own bounded queue: a slow one misses events, counted one
by one (the count equals the seq gaps it sees), a fast one misses nothing, and
``publish`` never waits. The ZMTP side (cluster/publisher.py speaks it on a
listening socket) is checked against libzmq's SUB and XSUB and against raw bytes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import zmq

from cluster.publisher import CHUNK_EVENTS, HANDSHAKE, Publisher
from protocol.pubframe import decode_event, encode_header

pytestmark = pytest.mark.timeout(60)

PAYLOAD = b'{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"content":"' + b"x" * 1000 + b'"}}'


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
async def publisher(context: zmq.Context[zmq.Socket[bytes]]) -> AsyncIterator[Publisher]:
    pub = Publisher(context, "tcp://127.0.0.1:0", hwm=200)
    pub.start(asyncio.get_running_loop())
    try:
        yield pub
    finally:
        pub.close()


def sub_socket(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    prefix: bytes = b"",
    *,
    tiny: bool = False,
    kind: int = zmq.SUB,
) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if tiny:
        sock.setsockopt(zmq.RCVHWM, 10)
        sock.setsockopt(zmq.RCVBUF, 4096)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
    sock.connect(endpoint)
    return sock


async def wait_until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll state that sockets and threads change (no event to wait on)."""
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def read_all(sock: zmq.Socket[bytes], quiet_s: float = 0.3) -> list[tuple[str, int]]:
    """Every event the socket has now and until it stays quiet for ``quiet_s``."""
    got: list[tuple[str, int]] = []
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await asyncio.sleep(0.002)
            continue
        event = decode_event(frames)
        got.append((event.topic, event.seq))
        last = time.monotonic()
    return got


def missed_by_gaps(seqs: list[int], first: int, last: int) -> int:
    """Events of ``first..last`` a subscriber did not get, from the gaps in what it got."""
    assert seqs == sorted(set(seqs)), "out of order or duplicated"
    gaps = 0
    previous = first - 1
    for seq in seqs:
        gaps += seq - previous - 1
        previous = seq
    return gaps + last - previous


class SlowReader(threading.Thread):
    """A real SUB that reads one event every ``pause_s``, recording ``(shard_id, seq)``."""

    def __init__(self, sock: zmq.Socket[bytes], pause_s: float) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.pause_s = pause_s
        self.keys: list[tuple[int, int]] = []
        self.last_at = time.monotonic()
        self.stopping = threading.Event()

    @property
    def seqs(self) -> list[int]:
        return [seq for _, seq in self.keys]

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self.sock.poll(50):
                continue
            event = decode_event(self.sock.recv_multipart())
            self.keys.append((event.shard_id, event.seq))
            self.last_at = time.monotonic()
            time.sleep(self.pause_s)


async def test_a_slow_subscriber_misses_exactly_what_is_counted_and_a_fast_one_misses_nothing(
    context: zmq.Context[zmq.Socket[bytes]], publisher: Publisher
) -> None:
    fast = sub_socket(context, publisher.endpoint)
    slow_sock = sub_socket(context, publisher.endpoint, tiny=True)
    await wait_until(lambda: publisher.subscribers == 2)
    slow = SlowReader(slow_sock, pause_s=0.0005)
    slow.start()
    total = 20_000
    fast_seqs: list[int] = []
    try:
        for seq in range(1, total + 1):
            publisher.publish(b"MESSAGE_CREATE", encode_header(0, seq, "s"), PAYLOAD)
            if seq % 100 == 0:
                # never waits; the fast reader keeps up between bursts
                publisher.flush()
                async with asyncio.timeout(5):
                    while len(fast_seqs) < seq:
                        try:
                            frames = fast.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            await asyncio.sleep(0.001)
                            continue
                        fast_seqs.append(decode_event(frames).seq)
        publisher.flush()
        # what is still queued for the slow one reaches it (written when its socket is writable)
        await wait_until(lambda: publisher.queued == 0, 30)
        await wait_until(lambda: time.monotonic() - slow.last_at > 0.5, 30)
    finally:
        slow.stopping.set()
        slow.join(5)
    assert fast_seqs == list(range(1, total + 1))
    assert publisher.dropped > 0  # the slow one did fall behind
    assert missed_by_gaps(slow.seqs, 1, total) == publisher.dropped
    assert len(slow.seqs) + publisher.dropped == total
    stats = sorted(publisher.subscriber_stats(), key=lambda s: int(str(s["dropped"])))
    assert [s["dropped"] for s in stats] == [0, publisher.dropped]
    assert publisher.lost_at_disconnect == 0


def kernel_send_buffer_max() -> int:
    """The most a TCP send buffer holds here (Linux: the maximum of tcp_wmem)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024  # Linux's default maximum


async def test_a_subscriber_that_never_reads_is_bounded_and_gets_what_was_not_counted(
    context: zmq.Context[zmq.Socket[bytes]], publisher: Publisher
) -> None:
    stuck = sub_socket(context, publisher.endpoint, tiny=True)
    await wait_until(lambda: publisher.subscribers == 1)
    total = 50_000
    for seq in range(1, total + 1):
        publisher.publish(b"MESSAGE_CREATE", encode_header(0, seq), PAYLOAD)
        if seq % 1000 == 0:
            publisher.flush()
            await asyncio.sleep(0)
    publisher.flush()
    # memory: at most hwm events here, the rest is the one chunk being written and the
    # kernel's (a TCP send buffer grows up to tcp_wmem's maximum; the SUB's buffers are tiny)
    assert publisher.queued <= publisher.hwm
    kernel = kernel_send_buffer_max() // len(PAYLOAD) + 100
    assert publisher.dropped >= total - publisher.hwm - CHUNK_EVENTS - kernel
    got = await read_all(stuck, quiet_s=0.5)
    assert missed_by_gaps([seq for _, seq in got], 1, total) == publisher.dropped


async def test_topics_filter_by_prefix_and_subscriptions_are_counted(
    context: zmq.Context[zmq.Socket[bytes]], publisher: Publisher
) -> None:
    everything = sub_socket(context, publisher.endpoint)
    guilds = sub_socket(context, publisher.endpoint, b"GUILD_")
    raw = sub_socket(context, publisher.endpoint, kind=zmq.XSUB)
    raw.send(b"\x01MESSAGE_")
    raw.send(b"\x01TYPING_")
    await wait_until(lambda: publisher.subscriptions == 4 and publisher.subscribers == 3)
    raw.send(b"\x00TYPING_")
    await wait_until(lambda: publisher.subscriptions == 3)
    topics = [b"GUILD_CREATE", b"MESSAGE_CREATE", b"TYPING_START", b"MESSAGE_DELETE"]
    for seq, topic in enumerate(topics, 1):
        publisher.publish(topic, encode_header(0, seq, "s"), b"{}")
    publisher.flush()
    assert [seq for _, seq in await read_all(everything)] == [1, 2, 3, 4]
    assert await read_all(guilds) == [("GUILD_CREATE", 1)]
    assert await read_all(raw) == [("MESSAGE_CREATE", 2), ("MESSAGE_DELETE", 4)]
    guilds.close(0)
    await wait_until(lambda: publisher.subscriptions == 2 and publisher.subscribers == 2)
    assert publisher.dropped == 0


@pytest.mark.parametrize("size", [0, 255, 256, 70_000, 5_000_000])
async def test_payloads_of_any_size_arrive_intact_with_the_session_in_the_header(
    context: zmq.Context[zmq.Socket[bytes]], publisher: Publisher, size: int
) -> None:
    sub = sub_socket(context, publisher.endpoint)
    await wait_until(lambda: publisher.subscribers == 1)
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    long_topic = b"T" * 300
    publisher.publish(b"A", encode_header(1, 7, "abc"), payload)
    publisher.publish(long_topic, encode_header(1, 8, "d" * 300), payload)
    publisher.flush()
    await wait_until(lambda: bool(sub.poll(0)), 10)
    first = decode_event(sub.recv_multipart())
    second = decode_event(sub.recv_multipart())
    assert (first.topic, first.shard_id, first.seq, first.session_id) == ("A", 1, 7, "abc")
    assert first.payload == payload
    assert (second.topic, second.session_id) == (long_topic.decode(), "d" * 300)
    assert second.payload == payload


async def test_heartbeats_are_answered_so_a_quiet_subscriber_stays_connected(
    context: zmq.Context[zmq.Socket[bytes]], publisher: Publisher
) -> None:
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.HEARTBEAT_IVL, 50)
    sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 300)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    monitor = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sub.connect(publisher.endpoint)
    await wait_until(lambda: publisher.subscribers == 1)
    await asyncio.sleep(1.0)  # three timeouts with nothing published
    assert not monitor.poll(0), "the subscriber timed out and disconnected"
    publisher.publish(b"X", encode_header(0, 1), b"{}")
    publisher.flush()
    assert await read_all(sub) == [("X", 1)]
    sub.disable_monitor()
    monitor.close(0)


async def test_events_queued_for_a_subscriber_that_leaves_are_counted_apart(
    context: zmq.Context[zmq.Socket[bytes]], publisher: Publisher
) -> None:
    stuck = sub_socket(context, publisher.endpoint, tiny=True)
    await wait_until(lambda: publisher.subscribers == 1)
    for seq in range(1, 10_001):
        publisher.publish(b"MESSAGE_CREATE", encode_header(0, seq), PAYLOAD)
    publisher.flush()
    queued = publisher.queued
    assert queued > 0
    stuck.close(0)
    await wait_until(lambda: publisher.subscribers == 0)
    assert publisher.lost_at_disconnect == queued
    assert publisher.queued == 0 and publisher.subscriptions == 0


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


async def test_a_peer_that_is_not_a_subscriber_or_speaks_garbage_is_disconnected_alone(
    context: zmq.Context[zmq.Socket[bytes]], publisher: Publisher
) -> None:
    good = sub_socket(context, publisher.endpoint)
    await wait_until(lambda: publisher.subscribers == 1)
    host, port = publisher.endpoint.removeprefix("tcp://").rsplit(":", 1)
    greeting = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32)
    dealer_ready = b"\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER"
    with (
        socket.create_connection((host, int(port)), timeout=5) as junk,
        socket.create_connection((host, int(port)), timeout=5) as dealer,
    ):
        junk.sendall(b"GET / HTTP/1.1\r\n\r\n")
        dealer.sendall(greeting + bytes((4, len(dealer_ready))) + dealer_ready)
        await wait_until(lambda: publisher.refused == 2)
        # each got our handshake, then the connection was closed on it
        assert await asyncio.to_thread(read_to_end, junk) == HANDSHAKE
        assert await asyncio.to_thread(read_to_end, dealer) == HANDSHAKE
    publisher.publish(b"X", encode_header(0, 1), b"{}")
    publisher.flush()
    assert await read_all(good) == [("X", 1)]
    assert publisher.subscribers == 1


async def test_a_zmtp_3_1_subscribe_command_and_a_ping_are_understood(publisher: Publisher) -> None:
    host, port = publisher.endpoint.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"NULL".ljust(20, b"\0") + bytes(32))
        ready = b"\x05READY\x0bSocket-Type\x00\x00\x00\x03SUB"
        writer.write(bytes((4, len(ready))) + ready)
        subscribe = b"\x09SUBSCRIBEPRES"
        writer.write(bytes((4, len(subscribe))) + subscribe)
        writer.write(b"\x04\x09\x04PING\x00\x0aok")  # TTL 1 s, context "ok"
        greeting = await reader.readexactly(64)
        assert greeting[:12] == b"\xff" + bytes(8) + b"\x7f\x03\x00"
        flags, size = await reader.readexactly(2)
        assert flags == 4 and b"Socket-Type\x00\x00\x00\x04XPUB" in await reader.readexactly(size)
        assert await reader.readexactly(9) == b"\x04\x07\x04PONGok"
        await wait_until(lambda: publisher.subscriptions == 1)
        publisher.publish(b"PRESENCE_UPDATE", b"h", b"p")
        publisher.publish(b"MESSAGE_CREATE", b"h", b"p")
        publisher.flush()
        frames = await reader.readexactly(2 + 15 + 2 + 1 + 2 + 1)
        assert frames == b"\x01\x0fPRESENCE_UPDATE\x01\x01h\x00\x01p"
    finally:
        writer.close()


async def test_an_ipc_endpoint_serves_subscribers_too(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    publisher = Publisher(context, "ipc://@titanium-test-publisher", hwm=100)
    publisher.start(asyncio.get_running_loop())
    try:
        sub = sub_socket(context, publisher.endpoint, b"GUILD_")
        await wait_until(lambda: publisher.subscriptions == 1)
        publisher.publish(b"MESSAGE_CREATE", encode_header(0, 1), b"{}")
        publisher.publish(b"GUILD_CREATE", encode_header(0, 2), b"{}")
        publisher.flush()
        assert await read_all(sub) == [("GUILD_CREATE", 2)]
    finally:
        publisher.close()
