"""The workers' channel (cluster/channel.py) on real sockets: libzmq PUSH sockets, and raw
ZMTP streams cut at every place a kernel may cut them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.channel import DIRECT_FRAME, READ_BYTES, EventChannel, Peer
from protocol.zmtp import GREETING, command, metadata

pytestmark = pytest.mark.timeout(60)

Message = list[bytes]


def zmtp_frames(message: Message) -> bytes:
    """A message as a ZMTP 3.0 PUSH writes it."""
    out = bytearray()
    for i, frame in enumerate(message):
        more = 0x01 if i < len(message) - 1 else 0
        if len(frame) < 256:
            out += bytes((more, len(frame)))
        else:
            out += bytes((more | 0x02,)) + len(frame).to_bytes(8, "big")
        out += frame
    return bytes(out)


def push_handshake(socket_type: bytes = b"PUSH") -> bytes:
    return GREETING + command(b"READY", metadata(b"Socket-Type", socket_type))


class Collector:
    """Reads the channel as the relay does: up to ``limit`` messages per call, held
    messages read again soon."""

    def __init__(self, channel: EventChannel, limit: int) -> None:
        self.channel = channel
        self.limit = limit
        self.got: list[Message] = []
        self.reads = 0

    def __call__(self, peer: Peer) -> None:
        self.reads += 1
        for message in self.channel.read(peer, self.limit):
            self.got.append([bytes(frame) for frame in message])
        if peer.held:
            asyncio.get_running_loop().call_soon(self, peer)

    async def until(self, n: int, within_s: float = 5.0) -> list[Message]:
        async with asyncio.timeout(within_s):
            while len(self.got) < n:  # noqa: ASYNC110 (filled by the loop's reader)
                await asyncio.sleep(0.002)
        return self.got


@contextlib.asynccontextmanager
async def watched(endpoint: str, limit: int = 2000) -> AsyncIterator[Collector]:
    channel = EventChannel(endpoint)
    collector = Collector(channel, limit)
    channel.watch(asyncio.get_running_loop(), collector)
    try:
        yield collector
    finally:
        channel.close()


@contextlib.contextmanager
def push_to(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(endpoint)
    try:
        yield push
    finally:
        push.close(0)
        context.term()


def big(size: int, seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(251)) * (size // 251) + bytes(size % 251)


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
async def test_messages_of_a_libzmq_push_arrive_whole_and_in_order(
    transport: str, tmp_path: Path
) -> None:
    endpoint = f"ipc://{tmp_path}/events" if transport == "ipc" else "tcp://127.0.0.1:0"
    sizes = [0, 1, 255, 256, 70_000, READ_BYTES + 5, 3 * READ_BYTES, 10, 2_000_000]
    sent = [[b"head%d" % i, big(size, i)] for i, size in enumerate(sizes)]
    sent += [[b"one frame"], [b"a", b"b", b"c", b""]]
    async with watched(endpoint) as collector:
        with push_to(collector.channel.endpoint) as push:
            for message in sent:
                push.send_multipart(message)
            assert await collector.until(len(sent)) == sent
            assert collector.channel.refused == 0


async def test_each_worker_is_its_own_connection_in_its_own_order(tmp_path: Path) -> None:
    async with watched(f"ipc://{tmp_path}/events", limit=3) as collector:
        with push_to(collector.channel.endpoint) as one, push_to(collector.channel.endpoint) as two:
            for seq in range(200):
                one.send_multipart([b"one", b"%d" % seq])
                two.send_multipart([b"two", b"%d" % seq])
            got = await collector.until(400)
            for name in (b"one", b"two"):
                assert [int(m[1]) for m in got if m[0] == name] == list(range(200))
            assert len(collector.channel.peers) == 2


async def test_a_paused_channel_reads_nothing_and_goes_on_where_it_stopped(tmp_path: Path) -> None:
    async with watched(f"ipc://{tmp_path}/events", limit=5) as collector:
        channel = collector.channel
        with push_to(channel.endpoint) as push:
            push.send_multipart([b"first"])
            await collector.until(1)
            channel.pause()
            for seq in range(50):
                push.send_multipart([b"%d" % seq])
            await asyncio.sleep(0.1)
            assert len(collector.got) == 1
            assert channel.waiting()
            channel.resume()
            got = await collector.until(51)
            assert [m[0] for m in got[1:]] == [b"%d" % seq for seq in range(50)]
            await asyncio.sleep(0.05)
            assert not channel.waiting()


async def test_drain_takes_everything_a_gone_worker_sent(tmp_path: Path) -> None:
    # What the supervisor does when a worker exits: its last messages are all in the
    # kernel (its PUSH flushed them before the process ended), and one drain takes them.
    async with watched(f"ipc://{tmp_path}/events") as collector:
        channel = collector.channel
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.connect(channel.endpoint)
        push.send_multipart([b"hello"])
        await collector.until(1)
        channel.pause()
        sent = [[b"%d" % seq, big(40 * seq, seq)] for seq in range(40)]  # fits the kernel
        for message in sent:
            push.send_multipart(message)
        push.close(linger=5000)  # returns once libzmq has written them all
        await asyncio.to_thread(context.term)
        (peer,) = channel.peers
        drained = [[bytes(f) for f in m] for m in channel.drain(peer)]
        assert drained == sent
        assert channel.drain(peer) == []


async def test_drain_takes_what_the_kernel_holds_and_the_rest_follows(tmp_path: Path) -> None:
    async with watched(f"ipc://{tmp_path}/events") as collector:
        channel = collector.channel
        with push_to(channel.endpoint) as push:
            push.send_multipart([b"hello"])
            await collector.until(1)
            channel.pause()
            sent = [[b"%d" % seq, big(DIRECT_FRAME * (seq % 3), seq)] for seq in range(40)]
            for message in sent:
                push.send_multipart(message)
            await asyncio.sleep(0.2)  # libzmq's I/O thread writes what the kernel takes
            (peer,) = channel.peers
            drained = [[bytes(f) for f in m] for m in channel.drain(peer)]
            assert drained and drained == sent[: len(drained)]
            channel.resume()
            got = await collector.until(1 + len(sent) - len(drained))
            assert drained + got[1:] == sent


@pytest.mark.parametrize("socket_type", [zmq.DEALER, zmq.PUB, zmq.PAIR])
async def test_a_libzmq_socket_that_is_not_a_push_never_delivers(
    socket_type: int, tmp_path: Path
) -> None:
    # libzmq itself hangs up on a PULL it cannot talk to; either way nothing is read
    async with watched(f"ipc://{tmp_path}/events") as collector:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = context.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(collector.channel.endpoint)
            with contextlib.suppress(zmq.Again):
                sock.send_multipart([b"not", b"for you"], zmq.NOBLOCK)
            await asyncio.sleep(0.3)
            assert collector.channel.peers == []
            assert collector.got == []
        finally:
            sock.close(0)
            context.term()


async def test_a_peer_that_says_it_is_not_a_push_is_refused(tmp_path: Path) -> None:
    async with watched(f"ipc://{tmp_path}/events") as collector:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            raw.connect(f"{tmp_path}/events")
            raw.sendall(push_handshake(b"DEALER") + zmtp_frames([b"not", b"for you"]))
            async with asyncio.timeout(5):
                while collector.channel.refused < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert collector.channel.peers == []
            assert collector.got == []
        finally:
            raw.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        GREETING[:10] + b"\x02\x00" + GREETING[12:],  # ZMTP 2
        GREETING[:12] + b"PLAIN".ljust(20, b"\x00") + GREETING[32:],
        push_handshake() + b"\x02" + (1 << 40).to_bytes(8, "big") + b"x" * 100,  # 1 TiB frame
    ],
)
async def test_garbage_costs_its_connection_only(garbage: bytes, tmp_path: Path) -> None:
    async with watched(f"ipc://{tmp_path}/events") as collector:
        channel = collector.channel
        with push_to(channel.endpoint) as push:
            push.send_multipart([b"before"])
            await collector.until(1)
            bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bad.connect(f"{tmp_path}/events")
            bad.sendall(garbage)
            try:
                async with asyncio.timeout(5):
                    while channel.refused < 1:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            finally:
                bad.close()
            push.send_multipart([b"after"])
            assert await collector.until(2) == [[b"before"], [b"after"]]


async def test_a_worker_gone_mid_message_loses_only_that_message(tmp_path: Path) -> None:
    async with watched(f"ipc://{tmp_path}/events") as collector:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(f"{tmp_path}/events")
        try:
            whole = zmtp_frames([b"whole", b"message"])
            cut = zmtp_frames([b"cut", big(DIRECT_FRAME * 2, 1)])[:DIRECT_FRAME]
            raw.sendall(push_handshake() + whole + cut)
            assert await collector.until(1) == [[b"whole", b"message"]]
        finally:
            raw.close()
        async with asyncio.timeout(5):
            while collector.channel.peers:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert collector.got == [[b"whole", b"message"]]


frame_sizes = st.one_of(
    st.integers(0, 300),
    st.sampled_from([DIRECT_FRAME - 1, DIRECT_FRAME, READ_BYTES - 3, READ_BYTES + 9]),
)
messages_strategy = st.lists(
    st.lists(st.tuples(frame_sizes, st.integers(0, 250)), min_size=1, max_size=3),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    shapes=messages_strategy,
    cuts=st.lists(st.integers(1, 400_000), max_size=8),
    limit=st.integers(1, 4),
)
def test_any_stream_cut_anywhere_reads_back_as_sent(
    shapes: list[list[tuple[int, int]]], cuts: list[int], limit: int, tmp_path: Path
) -> None:
    sent = [[big(size, seed) for size, seed in shape] for shape in shapes]
    stream = push_handshake() + b"".join(zmtp_frames(m) for m in sent)
    points = sorted({min(c, len(stream)) for c in cuts} | {len(stream)})
    pieces = [stream[a:b] for a, b in zip([0, *points], points, strict=False) if b > a]
    path = tmp_path / f"ch-{len(stream)}-{limit}"
    got = asyncio.run(_feed(f"ipc://{path}", str(path), pieces, len(sent), limit))
    assert got == sent


async def _feed(endpoint: str, path: str, pieces: list[bytes], n: int, limit: int) -> list[Message]:
    async with watched(endpoint, limit=limit) as collector:
        loop = asyncio.get_running_loop()
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.setblocking(False)
        try:
            await loop.sock_connect(raw, path)
            for piece in pieces:
                await loop.sock_sendall(raw, piece)
                await asyncio.sleep(0)
            got = await collector.until(n)
            await asyncio.sleep(0.005)
            assert collector.channel.refused == 0
            return list(got)
        finally:
            raw.close()


async def test_waiting_counts_whole_messages_not_a_partial_frame(tmp_path: Path) -> None:
    # The liveness check skips its kills while input waits: a worker stuck in the middle
    # of a message must not look busy for ever.
    async with watched(f"ipc://{tmp_path}/events", limit=1) as collector:
        channel = collector.channel
        channel.pause()
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            raw.connect(f"{tmp_path}/events")
            three = b"".join(zmtp_frames([b"%d" % n]) for n in range(3))
            raw.sendall(push_handshake() + three)
            async with asyncio.timeout(5):
                while not channel.peers:  # noqa: ASYNC110 (the handshake is read by the loop)
                    await asyncio.sleep(0.01)
            (peer,) = channel.peers
            assert channel.waiting()  # the kernel holds them
            assert [bytes(m[0]) for m in channel.read(peer, 1)] == [b"0"]
            assert peer.held and channel.waiting()  # two whole messages held by the limit
            assert [bytes(m[0]) for m in channel.read(peer, 5)] == [b"1", b"2"]
            raw.sendall(zmtp_frames([b"cut", big(DIRECT_FRAME // 2, 3)])[:1000])
            await asyncio.sleep(0.05)
            assert channel.read(peer, 5) == []  # the partial message stays inside
            assert not channel.waiting()
            assert collector.got == []
        finally:
            raw.close()


class _OutOfDescriptors:
    """The channel's listener, whose accept fails as it does without free descriptors."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.accepts = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        self.accepts += 1
        raise OSError(24, "Too many open files")

    def close(self) -> None:
        self.real.close()


async def test_an_accept_that_fails_pauses_instead_of_spinning(tmp_path: Path) -> None:
    # The pending connection keeps the listener readable: without the pause the loop
    # would call accept (and log) on every turn until a descriptor frees.
    channel = EventChannel(f"ipc://{tmp_path}/events")
    failing = _OutOfDescriptors(channel._listener.sock)
    channel._listener.sock = failing  # type: ignore[assignment]
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        channel.watch(asyncio.get_running_loop(), lambda peer: None)
        waiting.connect(f"{tmp_path}/events")
        await asyncio.sleep(0.35)
        assert 1 <= failing.accepts <= 6, failing.accepts  # once per 0.1 s pause
        assert turns > 10 * failing.accepts  # the loop went on serving everyone else
    finally:
        counter.cancel()
        waiting.close()
        channel.close()
