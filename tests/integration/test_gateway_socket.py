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
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.websocket import RECEIVE_BUFFER_BYTES, Ending, EndKind, GatewaySocket

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


def writes(data: bytes, after: asyncio.Event | None = None) -> Script:
    """A script: write ``data`` (once ``after`` is set), then read what the client
    sends until it closes or drops the connection."""

    async def script(peer: Peer) -> None:
        if after is not None:
            await after.wait()
        await peer.write(data)
        with contextlib.suppress(Exception):
            await peer.read_until_eof()

    return script


class RawServer:
    """Answers each upgrade, writes ``first`` with the response, then runs ``script``.

    With ``answer`` False it closes the connection instead of answering; with
    ``answer_after`` set it answers once that event is set.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.url = ""
        self.first = b""
        self.script: Script | None = None
        self.answer = True
        self.answer_after: asyncio.Event | None = None
        self.peers: list[Peer] = []
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        port = self._server.sockets[0].getsockname()[1]
        scheme = "wss" if self._tls is not None else "ws"
        self.url = f"{scheme}://127.0.0.1:{port}/?v=10&encoding=json"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        peer = Peer(reader, writer)
        self.peers.append(peer)
        request = await reader.readuntil(b"\r\n\r\n")
        if not self.answer:
            writer.close()
            return
        if self.answer_after is not None:
            await self.answer_after.wait()
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


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl's command line)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
async def tls_server(certificate: tuple[Path, Path]) -> AsyncIterator[RawServer]:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    srv = RawServer(tls=context)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


@contextlib.asynccontextmanager
async def opened(server: RawServer, max_size: int = 1 << 20) -> AsyncIterator[GatewaySocket]:
    sock = await GatewaySocket.connect(server.url, max_size, 5.0)
    try:
        yield sock
    finally:
        await sock.close(4000, 1.0)


async def started(
    server: RawServer, max_size: int = 1 << 20, tls: ssl.SSLContext | None = None
) -> tuple[GatewaySocket, Consumer]:
    sock = await GatewaySocket.connect(server.url, max_size, 5.0, tls)
    consumer = Consumer()
    sock.start(consumer.on_message, consumer.on_end)
    return sock, consumer


HELLO = b'{"op":10,"d":{"heartbeat_interval":45000}}'


async def test_a_message_in_the_upgrade_response_waits_for_start(server: RawServer) -> None:
    server.first = frame(TEXT, HELLO) + frame(BINARY, b"\x01\x02")
    gate = asyncio.Event()
    server.script = writes(frame(TEXT, b"third"), after=gate)
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
    server.script = writes(frame(TEXT, b"x" * 600, fin=False) + frame(CONTINUATION, b"y" * 600))
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
    server.script = writes(frame(TEXT, b"before") + bad)
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
    server.script = writes(frame(TEXT, b"while paused"), after=go)
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


async def test_a_connection_closed_before_the_upgrade_is_a_connection_error(
    server: RawServer,
) -> None:
    server.answer = False
    with pytest.raises(ConnectionResetError):
        await GatewaySocket.connect(server.url, 1 << 20, 5.0)


async def test_an_upgrade_answered_after_the_timeout_is_dropped(server: RawServer) -> None:
    server.answer_after = asyncio.Event()
    server.first = frame(TEXT, HELLO)
    with pytest.raises(TimeoutError):
        await GatewaySocket.connect(server.url, 1 << 20, 0.2)
    server.answer_after.set()  # the 101 comes after connect() gave up
    (peer,) = server.peers
    async with asyncio.timeout(5):
        while await peer.reader.read(65536):
            pass  # the client end is closed: EOF


async def test_over_tls_a_close_the_server_began_ends_without_waiting(
    tls_server: RawServer, certificate: tuple[Path, Path]
) -> None:
    done = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.write(frame(TEXT, b"last") + close_frame(4009))
        await peer.read_until_eof()
        done.set()

    tls_server.script = script
    sock, consumer = await started(tls_server, tls=client_tls(certificate))
    assert await consumer.wait_ended() == Ending(EndKind.SERVER_CLOSE, 4009)
    assert consumer.messages == [(b"last", False)]
    loop = asyncio.get_running_loop()
    began = loop.time()
    await sock.close(4000, 20.0)
    assert loop.time() - began < 10.0  # the server's answer ended it, not the timeout
    async with asyncio.timeout(5):
        await done.wait()


async def test_over_tls_a_frame_over_the_limit_while_paused_still_ends_the_socket(
    tls_server: RawServer, certificate: tuple[Path, Path]
) -> None:
    """The consumer pauses on its first message (as a shard with a backlog does);
    picows then refuses the next frame and closes: the ending still comes."""

    async def script(peer: Peer) -> None:
        await peer.write(frame(TEXT, b"first"))
        await asyncio.sleep(0.1)
        await peer.write(frame(TEXT, b"z" * 5000))
        with contextlib.suppress(Exception):
            await peer.read_until_eof()

    tls_server.script = script
    sock = await GatewaySocket.connect(tls_server.url, 1000, 5.0, client_tls(certificate))
    consumer = Consumer()

    def pause_on_first(payload: bytes, binary: bool) -> None:
        consumer.on_message(payload, binary)
        sock.pause()

    sock.start(pause_on_first, consumer.on_end)
    try:
        await consumer.wait_for(1)
        await asyncio.sleep(0.3)
        sock.resume()
        ending = await consumer.wait_ended(timeout_s=10)
        assert ending.kind is EndKind.TOO_BIG
        assert consumer.messages == [(b"first", False)]
    finally:
        await sock.close(4000, 1.0)


async def test_a_pause_from_a_message_read_before_start_holds(server: RawServer) -> None:
    """start() hands the early messages over after reading resumes, so a consumer
    that pauses on one of them (a shard's backlog) stays paused."""
    server.first = frame(TEXT, HELLO)
    more = asyncio.Event()
    server.script = writes(frame(TEXT, b"later"), after=more)
    sock = await GatewaySocket.connect(server.url, 1 << 20, 5.0)
    consumer = Consumer()

    def pause_on_hello(payload: bytes, binary: bool) -> None:
        consumer.on_message(payload, binary)
        if payload == HELLO:
            sock.pause()

    await asyncio.sleep(0.05)  # Hello is read with the upgrade response
    sock.start(pause_on_hello, consumer.on_end)
    try:
        more.set()
        await asyncio.sleep(0.2)
        assert consumer.messages == [(HELLO, False)]
        sock.resume()
        await consumer.wait_for(2)
        assert consumer.messages[1] == (b"later", False)
    finally:
        await sock.close(4000, 1.0)


def _rmem_max() -> int:
    """What SO_RCVBUF may be set to at most (net.core.rmem_max)."""
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


async def test_the_kernel_buffers_at_most_the_receive_buffer_per_connection(
    server: RawServer,
) -> None:
    """Linux would grow a fast connection's receive buffer to tcp_rmem's maximum, and
    picows's read buffer after it; the socket's SO_RCVBUF is set instead."""
    server.script = lambda peer: peer.read_until_eof()
    sock, _ = await started(server)
    try:
        assert sock._transport is not None
        raw = sock._transport.underlying_transport.get_extra_info("socket")
        # set (which also stops the kernel's autotuning): Linux doubles what is set, for
        # its bookkeeping, up to net.core.rmem_max
        expected = 2 * min(RECEIVE_BUFFER_BYTES, _rmem_max())
        assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == expected
    finally:
        await sock.close(4000, 1.0)
