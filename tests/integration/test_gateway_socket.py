"""The shard's websocket (worker/websocket.py) against a raw server that writes chosen bytes.

The server is a plain TCP listener on 127.0.0.1 that answers the upgrade and
then writes frames built here byte by byte, cut where the test says: a message
in the same write as the upgrade response, fragments, a frame over the limit
behind a good one, a bad opcode, a close, a cut stream. What the socket hands
over and how it says it ended are the assertions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.websocket import Ending, EndKind, GatewaySocket

pytestmark = pytest.mark.timeout(30)

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server's (unmasked) frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def close_frame(code: int) -> bytes:
    return frame(CLOSE, struct.pack("!H", code))


def read_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The client's (masked) whole frames in ``data``: (opcode, payload)."""
    out = []
    i = 0
    while i + 2 <= len(data):
        opcode = data[i] & 0x0F
        n = data[i + 1] & 0x7F
        at = i + 2
        if n == 126:
            if at + 2 > len(data):
                break
            (n,) = struct.unpack_from("!H", data, at)
            at += 2
        elif n == 127:
            if at + 8 > len(data):
                break
            (n,) = struct.unpack_from("!Q", data, at)
            at += 8
        if at + 4 + n > len(data):
            break
        mask = data[at : at + 4]
        at += 4
        out.append((opcode, bytes(b ^ mask[j % 4] for j, b in enumerate(data[at : at + n]))))
        i = at + n
    return out


@dataclass
class Peer:
    """The server's side of one connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_until_eof(self, timeout_s: float = 5.0) -> list[tuple[int, bytes]]:
        """What the client sends until it closes; its close frame is answered with its code."""
        async with asyncio.timeout(timeout_s):
            while chunk := await self.reader.read(65536):
                self.received += chunk
                frames = read_frames(bytes(self.received))
                if frames and frames[-1][0] == CLOSE:
                    await self.write(frame(CLOSE, frames[-1][1]))
                    self.writer.close()
                    break
        return read_frames(bytes(self.received))

    async def read_frame(self, timeout_s: float = 5.0) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout_s):
            while not read_frames(bytes(self.received)):
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError
                self.received += chunk
        return read_frames(bytes(self.received))[0]


Script = Callable[[Peer], Awaitable[None]]


class RawServer:
    """Answers each upgrade, writes ``first`` with the response, then runs ``script``."""

    def __init__(self) -> None:
        self.url = ""
        self.first = b""
        self.script: Script | None = None
        self.peers: list[Peer] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/?v=10&encoding=json"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n" + self.first
        )
        peer = Peer(reader, writer)
        self.peers.append(peer)
        try:
            if self.script is not None:
                await self.script(peer)
        finally:
            writer.close()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    srv = RawServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@dataclass
class Consumer:
    messages: list[tuple[bytes, bool]] = field(default_factory=list)
    endings: list[Ending] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, payload: bytes, binary: bool) -> None:
        self.messages.append((payload, binary))
        self.changed.set()

    def on_end(self, ending: Ending) -> None:
        self.endings.append(ending)
        self.ended.set()

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()

    async def wait_ended(self, timeout_s: float = 5.0) -> Ending:
        async with asyncio.timeout(timeout_s):
            await self.ended.wait()
        assert len(self.endings) == 1
        return self.endings[0]


@contextlib.asynccontextmanager
async def opened(server: RawServer, max_size: int = 1 << 20) -> AsyncIterator[GatewaySocket]:
    sock = await GatewaySocket.connect(server.url, max_size, 5.0)
    try:
        yield sock
    finally:
        await sock.close(4000, 1.0)


async def started(server: RawServer, max_size: int = 1 << 20) -> tuple[GatewaySocket, Consumer]:
    sock = await GatewaySocket.connect(server.url, max_size, 5.0)
    consumer = Consumer()
    sock.start(consumer.on_message, consumer.on_end)
    return sock, consumer


HELLO = b'{"op":10,"d":{"heartbeat_interval":45000}}'


async def test_a_message_in_the_upgrade_response_waits_for_start(server: RawServer) -> None:
    server.first = frame(TEXT, HELLO) + frame(BINARY, b"\x01\x02")
    gate = asyncio.Event()

    async def later(peer: Peer) -> None:
        await gate.wait()
        await peer.write(frame(TEXT, b"third"))
        await peer.read_until_eof()

    server.script = later
    async with opened(server) as sock:
        await asyncio.sleep(0.05)  # both are read with the upgrade, before anybody listens
        consumer = Consumer()
        sock.start(consumer.on_message, consumer.on_end)
        assert consumer.messages == [(HELLO, False), (b"\x01\x02", True)]
        gate.set()
        await consumer.wait_for(3)
        assert consumer.messages[2] == (b"third", False)
        assert not consumer.endings


async def test_fragments_are_one_message_and_pings_between_them_are_answered(
    server: RawServer,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.write(
            frame(TEXT, b'{"op":', fin=False)
            + frame(PING, b"p1")
            + frame(CONTINUATION, b"0,", fin=False)
            + frame(CONTINUATION, b'"d":1}')
            + frame(BINARY, b"ab", fin=False)
            + frame(CONTINUATION, b"cd")
        )
        assert await peer.read_frame() == (PONG, b"p1")
        await peer.read_until_eof()

    server.script = script
    sock, consumer = await started(server)
    try:
        await consumer.wait_for(2)
        assert consumer.messages == [(b'{"op":0,"d":1}', False), (b"abcd", True)]
    finally:
        await sock.close(4000, 1.0)


async def test_fragments_over_the_limit_end_the_socket_as_too_big(server: RawServer) -> None:
    async def script(peer: Peer) -> None:
        await peer.write(frame(TEXT, b"x" * 600, fin=False) + frame(CONTINUATION, b"y" * 600))
        await peer.read_until_eof()

    server.script = script
    sock, consumer = await started(server, max_size=1000)
    try:
        ending = await consumer.wait_ended()
        assert ending.kind is EndKind.TOO_BIG and ending.code == 1009
        assert consumer.messages == []
    finally:
        await sock.close(4000, 1.0)


@pytest.mark.parametrize("whole_later", [False, True])
async def test_a_frame_over_the_limit_ends_the_socket_after_the_good_one_before_it(
    server: RawServer, whole_later: bool
) -> None:
    """picows rejects the frame at its header, but its parser goes on reading the
    payload and would hand the frame over once whole; it never is."""
    big = frame(TEXT, b"z" * 5000)

    async def script(peer: Peer) -> None:
        await peer.write(frame(TEXT, b"good") + big[:200])
        if whole_later:
            await peer.write(big[200:] + frame(TEXT, b"after"))
        with contextlib.suppress(Exception):
            await peer.read_until_eof()

    server.script = script
    sock, consumer = await started(server, max_size=1000)
    try:
        ending = await consumer.wait_ended()
        assert ending.kind is EndKind.TOO_BIG and ending.code == 1009
        assert consumer.messages == [(b"good", False)]
    finally:
        await sock.close(4000, 1.0)


@pytest.mark.parametrize(
    "bad",
    [
        bytes([0x83, 0x00]),  # opcode 3 is reserved
        frame(CONTINUATION, b"no message to continue"),
        frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),  # a new message inside one
    ],
    ids=["reserved-opcode", "lone-continuation", "message-inside-message"],
)
async def test_a_broken_frame_ends_the_socket_as_a_protocol_error(
    server: RawServer, bad: bytes
) -> None:
    async def script(peer: Peer) -> None:
        await peer.write(frame(TEXT, b"before") + bad)
        with contextlib.suppress(Exception):
            await peer.read_until_eof()

    server.script = script
    sock, consumer = await started(server)
    try:
        ending = await consumer.wait_ended()
        assert ending.kind is EndKind.PROTOCOL_ERROR and ending.code == 1002
        assert consumer.messages == [(b"before", False)]
    finally:
        await sock.close(4000, 1.0)


async def test_the_servers_close_is_told_and_answered_with_our_code(server: RawServer) -> None:
    done = asyncio.Event()
    answer: list[list[tuple[int, bytes]]] = []

    async def script(peer: Peer) -> None:
        await peer.write(frame(TEXT, b"last") + close_frame(4004))
        answer.append(await peer.read_until_eof())
        done.set()

    server.script = script
    sock, consumer = await started(server)
    ending = await consumer.wait_ended()
    assert ending == Ending(EndKind.SERVER_CLOSE, 4004)
    assert consumer.messages == [(b"last", False)]
    await sock.close(4000, 2.0)
    async with asyncio.timeout(5):
        await done.wait()
    assert answer[0] == [(CLOSE, struct.pack("!H", 4000))]


async def test_a_cut_stream_is_lost(server: RawServer) -> None:
    async def script(peer: Peer) -> None:
        await peer.write(frame(TEXT, b"one"))

    server.script = script  # the server closes the TCP connection after writing
    sock, consumer = await started(server)
    try:
        assert await consumer.wait_ended() == Ending(EndKind.LOST)
        assert consumer.messages == [(b"one", False)]
    finally:
        await sock.close(4000, 1.0)


async def test_our_close_sends_the_code_and_waits_for_the_answer(server: RawServer) -> None:
    got: list[tuple[int, bytes]] = []

    async def script(peer: Peer) -> None:
        got.append(await peer.read_frame())
        await peer.write(close_frame(4000))
        await peer.read_until_eof()

    server.script = script
    sock, consumer = await started(server)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await sock.close(4000, 10.0)
    assert loop.time() - began < 5.0  # the answer ended it, not the timeout
    assert got == [(CLOSE, struct.pack("!H", 4000))]
    assert sock.closed and consumer.endings == []
    with pytest.raises(ConnectionResetError):
        sock.send_text(b"too late")


async def test_nothing_is_handed_over_while_paused(server: RawServer) -> None:
    go = asyncio.Event()

    async def script(peer: Peer) -> None:
        await go.wait()
        await peer.write(frame(TEXT, b"while paused"))
        await peer.read_until_eof()

    server.script = script
    sock, consumer = await started(server)
    try:
        sock.pause()
        go.set()
        await asyncio.sleep(0.1)
        assert consumer.messages == []
        sock.resume()
        await consumer.wait_for(1)
        assert consumer.messages == [(b"while paused", False)]
    finally:
        await sock.close(4000, 1.0)


async def test_text_we_send_arrives_as_one_text_frame(server: RawServer) -> None:
    got: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def script(peer: Peer) -> None:
        got.set_result(await peer.read_frame())
        await peer.read_until_eof()

    server.script = script
    sock, _ = await started(server)
    try:
        sock.send_text(b'{"op":1,"d":null}')
        async with asyncio.timeout(5):
            assert await got == (TEXT, b'{"op":1,"d":null}')
    finally:
        await sock.close(4000, 1.0)


_MESSAGES = st.lists(
    st.tuples(st.binary(max_size=300), st.booleans(), st.integers(1, 4)), min_size=1, max_size=6
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(messages=_MESSAGES, cuts=st.lists(st.integers(1, 64), max_size=20))
async def test_any_fragmenting_and_any_cutting_hand_over_the_same_messages(
    server: RawServer, messages: list[tuple[bytes, bool, int]], cuts: list[int]
) -> None:
    stream = bytearray()
    for payload, binary, pieces in messages:
        size = -(-len(payload) // pieces) or 1
        parts = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for index, part in enumerate(parts):
            opcode = (BINARY if binary else TEXT) if index == 0 else CONTINUATION
            stream += frame(opcode, part, fin=index == len(parts) - 1)
            if index == 0 and len(parts) > 1:
                stream += frame(PING, b"between")

    async def script(peer: Peer) -> None:
        at = 0
        for cut in cuts:
            await peer.write(bytes(stream[at : at + cut]))
            at += cut
            await asyncio.sleep(0)
        await peer.write(bytes(stream[at:]))
        await peer.read_until_eof()

    server.script = script
    sock, consumer = await started(server)
    try:
        await consumer.wait_for(len(messages))
        assert consumer.messages == [(payload, binary) for payload, binary, _ in messages]
        assert consumer.endings == []
    finally:
        await sock.close(4000, 1.0)
