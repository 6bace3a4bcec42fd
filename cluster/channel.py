"""The supervisor's end of the workers' channel: a PULL endpoint spoken on the event loop.

Each worker's PUSH socket (worker/group.py, libzmq) connects here over ``ipc://``
or loopback ``tcp://``; this module listens (cluster/listening.py) and speaks
ZMTP 3.0 with the NULL mechanism as a PULL would (greeting, READY with
``Socket-Type: PULL``, messages in), so the relay reads each worker's
connection straight from the kernel, from the loop's own thread.

Why not libzmq's PULL (what the relay read before): libzmq reads its
connections on its I/O thread and hands each message to the application's
thread through a pipe and an eventfd, so every wake-up of the relay was two
thread wake-ups (the I/O thread's, then the loop's), and each message was
copied twice (into a libzmq message, then into a Python bytes) and asked for
with two or three calls (recv, ZMQ_RCVMORE, ZMQ_EVENTS). Here a wake-up is the
loop's alone, one ``recv`` takes every message the kernel holds (up to
:data:`READ_BYTES`), and a message's frames are slices of that read's bytes,
not copies (a frame bigger than what one read brings is received straight into
a buffer of its size, then copied once into bytes: its slices are hashed, and a
memoryview hashes only when its buffer does). Measured: see
docs/BENCHMARKS.md's history.

Order and back pressure are libzmq's: one connection per worker, its messages
in the order it sent them (what the exactly-once relay needs is the order per
shard, and a shard is one worker's); while the relay does not read (a sink's
backlog, :meth:`EventChannel.pause`), the kernel's buffers fill, then the
worker's PUSH queue (its high-water mark), and the worker's shards wait.
Memory here is bounded: per connection one read's bytes, the unparsed tail of
a message, and, for a frame larger than a read, one buffer of that frame's
size (a worker's message is about 1 MiB at most, see worker/group.py
FLUSH_BYTES; :data:`MAX_FRAME` refuses anything absurd).

A peer that is not a ZMTP 3 PUSH with the NULL mechanism, or that sends what
ZMTP does not allow, is disconnected and counted (:attr:`EventChannel.refused`);
the channel is private (a runtime directory of mode 0700, or loopback).
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections.abc import Callable
from typing import Final

from cluster.listening import Listener, receive
from protocol.zmtp import (
    FLAG_COMMAND,
    FLAG_LONG,
    FLAG_MORE,
    ProtocolError,
    handshake,
    read_handshake,
)

log = logging.getLogger(__name__)

#: Bytes one read takes from a worker's connection at most.
READ_BYTES: Final = 256 * 1024
#: A frame at least this big that one read did not bring whole is received straight
#: into a buffer of its own size (smaller ones wait as the unparsed tail).
DIRECT_FRAME: Final = 64 * 1024
#: The largest frame taken from a worker (its messages are about 1 MiB at most).
MAX_FRAME: Final = 256 * 1024 * 1024
#: What we send a worker as soon as it connects.
HANDSHAKE: Final = handshake(b"PULL")
_PEER_TYPE: Final = b"PUSH"

#: A message: its frames, slices of what was read (bytes, or a frame's own buffer).
Frames = list[memoryview]
#: Told of a connection with input to read (the relay reads it with :meth:`EventChannel.read`).
OnReadable = Callable[["Peer"], None]


class Peer:
    """One worker's connection: its socket, the handshake, and what was read but not parsed."""

    __slots__ = (
        "frames",
        "full",
        "held",
        "inbox",
        "ready",
        "rest",
        "sock",
        "want",
        "want_got",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        #: the peer's READY came (it is a PUSH)
        self.ready = False
        #: handshake input until READY (small)
        self.inbox = bytearray()
        #: read after the handshake and not parsed yet (a partial frame, or messages
        #: left for the next call by its limit)
        self.rest: bytes | memoryview = b""
        #: the frames of the message being read
        self.frames: Frames = []
        #: a large frame being received into its own buffer (flags, buffer), with bytes got
        self.want: tuple[int, bytearray] | None = None
        self.want_got = 0
        #: the last read stopped at its limit: whole messages wait in ``rest``
        self.held = False
        #: the last read took READ_BYTES: the kernel may hold more
        self.full = False


class EventChannel:
    """Listens on the channel's endpoint; the workers' connections, read on the loop.

    :meth:`watch` registers the listener and, once a worker's handshake is done,
    its connection with the loop: ``on_readable(peer)`` is called whenever the
    connection has input, and the caller takes its messages with :meth:`read`.
    """

    def __init__(self, endpoint: str) -> None:
        """Bind ``endpoint`` now (``ipc://PATH`` or ``tcp://HOST:PORT``; :class:`zmq.ZMQError`)."""
        self._listener = Listener(endpoint, self._connected, "the workers' channel")
        self.endpoint = self._listener.endpoint
        self._peers: dict[int, Peer] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_readable: OnReadable | None = None
        #: established connections are not watched (the relay pauses for a sink's backlog)
        self._paused = False
        #: peers disconnected for breaking the protocol
        self.refused = 0

    @property
    def peers(self) -> list[Peer]:
        """The workers' connections whose handshake is done."""
        return [peer for peer in self._peers.values() if peer.ready]

    # -- the event loop -----------------------------------------------------------------

    def watch(self, loop: asyncio.AbstractEventLoop, on_readable: OnReadable) -> None:
        """Accept connections and tell ``on_readable`` of every worker's input."""
        self._loop = loop
        self._on_readable = on_readable
        self._listener.start(loop)
        for fd, peer in self._peers.items():
            if not peer.ready:
                loop.add_reader(fd, self._input, peer)
            elif not self._paused:
                loop.add_reader(fd, self._tell, peer)

    def unwatch(self) -> None:
        """Stop accepting and reading (connections stay open until :meth:`close`)."""
        self._listener.stop()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for fd in self._peers:
                loop.remove_reader(fd)
        self._loop = None
        self._on_readable = None  # a tell already scheduled finds nobody

    def pause(self) -> None:
        """Stop telling of the workers' input (handshakes go on); the kernel's buffers fill."""
        if self._paused:
            return
        self._paused = True
        loop = self._loop
        if loop is not None:
            for fd, peer in self._peers.items():
                if peer.ready:
                    loop.remove_reader(fd)

    def resume(self) -> None:
        """Tell of the workers' input again."""
        if not self._paused:
            return
        self._paused = False
        loop = self._loop
        if loop is not None:
            for fd, peer in self._peers.items():
                if peer.ready:
                    loop.add_reader(fd, self._tell, peer)
                    if peer.held:
                        loop.call_soon(self._tell, peer)

    def _tell(self, peer: Peer) -> None:
        on_readable = self._on_readable
        if on_readable is not None:
            on_readable(peer)

    def waiting(self) -> bool:
        """Whether input waits: whole messages held back by a read's limit, or a
        connection the kernel has data for (one poll, no read: the liveness check asks
        this a few times a second). A partial frame alone is not waiting input: a
        worker stuck in the middle of a message must still look silent."""
        poller = select.poll()
        for fd, peer in self._peers.items():
            if peer.ready:
                if peer.held:
                    return True
                poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    # -- messages (the hot path) --------------------------------------------------------

    def read(self, peer: Peer, limit: int) -> list[Frames]:
        """Up to ``limit`` whole messages of ``peer``: first those read earlier, then one
        read of the socket (none when ``limit`` messages were waiting already). A peer
        that disconnected or broke the protocol is closed (its partial message dropped).

        Afterwards ``peer.held`` says whether whole messages were left for the next
        call (the kernel will not say so), ``peer.full`` whether the read was full.
        """
        messages: list[Frames] = []
        peer.held = peer.full = False
        try:
            if peer.rest:
                data = peer.rest
                peer.rest = b""
                self._parse(peer, data, messages, limit)
                if len(messages) >= limit:
                    peer.held = bool(peer.rest)
                    return messages
            if peer.want is not None:
                self._read_large(peer, messages)
                return messages
            data = peer.sock.recv(READ_BYTES)
            if not data:
                self._gone(peer)
                return messages
            peer.full = len(data) == READ_BYTES
            if peer.rest:  # a frame the earlier data left incomplete
                data = bytes(peer.rest) + data
                peer.rest = b""
            self._parse(peer, data, messages, limit)
            peer.held = len(messages) >= limit and bool(peer.rest)
        except (BlockingIOError, InterruptedError):
            pass
        except ProtocolError as exc:
            self._refuse(peer, str(exc))
        except OSError:
            self._gone(peer)
        return messages

    def _read_large(self, peer: Peer, messages: list[Frames]) -> None:
        assert peer.want is not None
        flags, buffer = peer.want
        got = peer.sock.recv_into(memoryview(buffer)[peer.want_got :])
        if not got:
            self._gone(peer)
            return
        peer.want_got += got
        if peer.want_got < len(buffer):
            return
        peer.want = None
        peer.want_got = 0
        # as bytes (one copy): slices of a frame are hashed (topics), which a
        # memoryview allows only of a hashable buffer
        self._frame(peer, flags, memoryview(bytes(buffer)), messages)

    def _parse(
        self, peer: Peer, data: bytes | memoryview, messages: list[Frames], limit: int
    ) -> None:
        """Cut ``data`` into frames and whole messages; what is left waits in ``peer``."""
        view = memoryview(data)
        end = len(view)
        at = 0
        while end - at >= 2 and len(messages) < limit:
            flags = view[at]
            if flags & FLAG_LONG:
                if end - at < 9:
                    break
                size = int.from_bytes(view[at + 1 : at + 9], "big")
                start = at + 9
            else:
                size = view[at + 1]
                start = at + 2
            if end - start < size:
                if size > MAX_FRAME:
                    raise ProtocolError(f"a {size}-byte frame")
                if size >= DIRECT_FRAME:
                    buffer = bytearray(size)
                    have = end - start
                    buffer[:have] = view[start:end]
                    peer.want = (flags, buffer)
                    peer.want_got = have
                    at = end
                break
            at = start + size
            self._frame(peer, flags, view[start:at], messages)
        if at < end:
            peer.rest = view[at:]

    def _frame(self, peer: Peer, flags: int, frame: memoryview, messages: list[Frames]) -> None:
        if flags & FLAG_COMMAND:
            self._command(peer, frame)
            return
        peer.frames.append(frame)
        if not flags & FLAG_MORE:
            messages.append(peer.frames)
            peer.frames = []

    def _command(self, peer: Peer, body: memoryview) -> None:
        name = bytes(body[1 : 1 + body[0]]) if body else b""
        if name == b"ERROR":
            raise ProtocolError("the worker reported an error")
        if name == b"PING":
            context = bytes(body[1 + body[0] + 2 : 1 + body[0] + 18])
            self._send(peer, bytes((FLAG_COMMAND, 5 + len(context))) + b"\x04PONG" + context)
        # anything else (PONG, unknown commands) is ignored, as libzmq does

    def drain(self, peer: Peer) -> list[Frames]:
        """Every whole message of ``peer`` the kernel holds now, whatever the limit."""
        out: list[Frames] = []
        while peer.sock.fileno() >= 0:
            out += self.read(peer, 1 << 30)
            if peer.sock.fileno() < 0 or not self._readable_now(peer):
                break
        return out

    @staticmethod
    def _readable_now(peer: Peer) -> bool:
        poller = select.poll()
        poller.register(peer.sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    # -- connections and handshakes -----------------------------------------------------

    def settle(self) -> None:
        """Read the handshakes input waits for now (a worker's exit: its READY and first
        messages may still wait behind its greeting when the relay drains)."""
        for peer in list(self._peers.values()):
            if not peer.ready and peer.sock.fileno() >= 0 and self._readable_now(peer):
                self._input(peer)

    def _connected(self, sock: socket.socket) -> None:
        peer = Peer(sock)
        fd = sock.fileno()
        self._peers[fd] = peer
        if self._loop is not None:
            self._loop.add_reader(fd, self._input, peer)
        self._send(peer, HANDSHAKE)

    def _input(self, peer: Peer) -> None:
        """The handshake: the peer's greeting and READY (a PUSH); then its messages."""
        data = receive(peer.sock, READ_BYTES)
        if data is None:
            return
        if not data:
            self._gone(peer)
            return
        inbox = peer.inbox
        inbox += data
        try:
            used = read_handshake(inbox, _PEER_TYPE)
        except ProtocolError as exc:
            self._refuse(peer, str(exc))
            return
        if not used:
            return
        peer.ready = True
        peer.rest = bytes(inbox[used:])
        peer.held = bool(peer.rest)  # read with the handshake: told of below, not by the kernel
        peer.inbox = bytearray()
        loop = self._loop
        if loop is not None:
            fd = peer.sock.fileno()
            loop.remove_reader(fd)
            if not self._paused:
                loop.add_reader(fd, self._tell, peer)
                if peer.held:
                    loop.call_soon(self._tell, peer)

    def _send(self, peer: Peer, data: bytes) -> None:
        """A few bytes to the peer (the handshake, a PONG): its buffer is empty enough."""
        try:
            sent = peer.sock.send(data)
        except OSError:
            sent = -1
        if sent != len(data):
            self._gone(peer)

    def _refuse(self, peer: Peer, why: str) -> None:
        self.refused += 1
        log.warning("the workers' channel disconnected a peer: %s", why)
        self._gone(peer)

    def _gone(self, peer: Peer) -> None:
        sock = peer.sock
        fd = sock.fileno()
        if fd < 0 or self._peers.pop(fd, None) is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(fd)
        peer.rest = b""
        peer.frames = []
        peer.want = None
        sock.close()

    def close(self) -> None:
        """Close every connection and the listener."""
        self.unwatch()
        for peer in list(self._peers.values()):
            self._gone(peer)
        self._listener.close()
