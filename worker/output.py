"""The worker's end of its channel to the supervisor: one ZMTP 3.0 PUSH connection,
written from the worker's event loop, events batched.

The supervisor's end (cluster/channel.py) listens on ``event_endpoint``
(``ipc://PATH`` or loopback ``tcp://HOST:PORT``) and speaks ZMTP as a PULL; this
module connects, greets as a PUSH (NULL mechanism) and writes each message's
frames with one ``sendmsg``, straight into the kernel. What the kernel does not
take waits here, in order, and leaves when the socket is writable again.

Why not libzmq's PUSH (what the worker used before): libzmq writes a PUSH's
connection from its I/O thread, so every message signalled that thread (an
eventfd write, its epoll wake-up, its write) before its bytes left: one more
thread wake-up per message, on a core the shards share, and one more copy.
Any ZMTP 3 PULL still reads this channel (the tests use libzmq's).

Batching: every event queued in one burst of reads, of every shard, leaves as
one EVENT_RUNS message (protocol/ipc.py: two frames, whatever the number of
events). A burst ends when a lap of the event loop (``loop.call_soon``: one
poll of the sockets) adds nothing to it, or :data:`COALESCE_S` after its first
event, whichever comes first: a gateway that writes to many shards' sockets
one after the other is read over several laps, and was one message per lap
(each waking the supervisor); an event alone waits one lap. The message is
built by the one EVENT_RUNS encoder,
:class:`protocol.ipc.EventRunsEncoder`: each shard's consecutive events form a
run, cut at :data:`protocol.ipc.MAX_RUN_EVENTS` events, at a gap in the
sequence or at a new session. It is this class's base, not a member, so
``event`` is the encoder's ``add`` itself: no second call per event. A report
first flushes the events queued before it, so the channel keeps the order the
shards produced per shard.

Memory is bounded in bytes: one batch can take thousands of events (every
shard's socket buffer, read flat out), and the runs cut in it are sent as soon
as they hold :data:`FLUSH_BYTES`, mid-batch; what is left when it goes is the
shards' open runs (at most ``MAX_RUN_EVENTS - 1`` events each). Unsent bytes
wait here up to :data:`QUEUE_BYTES` (plus the message that crossed it).

Back-pressure: a flush that finds :data:`QUEUE_BYTES` waiting keeps its runs,
``event`` then refuses (False) until ``drain`` has flushed them; ``drain``
waits for the socket to take the waiting bytes (``add_writer``), so the
shards stop reading their gateway sockets instead of anything being dropped.
A connection the supervisor closed (it is gone) abandons the channel: what is
queued and what comes next is dropped, so no shard and no report waits.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import itertools
import socket
import time
from collections.abc import Callable
from typing import Any, Final

from protocol import ipc
from protocol.ipc import ShardReport
from protocol.zmtp import (
    FLAG_LONG,
    FLAG_MORE,
    ProtocolError,
    handshake,
    head_last,
    head_more,
    long_head,
    read_handshake,
)

#: Bytes of cut runs (full or broken runs) a batch queues before they are sent at
#: once, without waiting for the batch to end.
FLUSH_BYTES: Final = 1 << 20
#: The longest a batch waits for more of the burst it came in before it is sent.
COALESCE_S: Final = 100e-6
#: Bytes waiting here for the kernel before the shards wait (event refuses).
QUEUE_BYTES: Final = 8 << 20
#: How long connecting and the ZMTP handshake may take.
CONNECT_TIMEOUT_S: Final = 10.0
#: Buffers per sendmsg (Linux's IOV_MAX is 1024).
_IOV_MAX: Final = 512
_HANDSHAKE: Final = handshake(b"PUSH")
_PEER_TYPE: Final = b"PULL"
#: The frame heads of an EVENT_RUNS message: the run header (short, more follows),
#: then the body's (long).
_RUNS_HEAD: Final = bytes((FLAG_MORE, ipc.HEADER_SIZE))
#: A peer gone mid-write is an error, not a signal.
_NOSIGNAL: Final = socket.MSG_NOSIGNAL


class ChannelClosedError(ConnectionError):
    """The supervisor closed the channel, or it could not be opened."""


def connect(endpoint: str, timeout_s: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """A non-blocking socket connected to the supervisor's channel at ``endpoint``, its
    ZMTP handshake done (the supervisor is a PULL). Blocks for at most ``timeout_s``."""
    transport, _, address = endpoint.partition("://")
    if transport == "ipc":
        path = "\0" + address[1:] if address.startswith("@") else address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = path
    elif transport == "tcp":
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = (host, int(port))
    else:
        raise ChannelClosedError(f"the channel takes ipc:// or tcp://, not {endpoint!r}")
    try:
        deadline = time.monotonic() + timeout_s
        sock.settimeout(timeout_s)
        sock.connect(target)
        sock.sendall(_HANDSHAKE)
        inbox = bytearray()
        while not read_handshake(inbox, _PEER_TYPE):
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(4096)
            if not data:
                raise ChannelClosedError("the supervisor closed the channel during the handshake")
            inbox += data
        sock.setblocking(False)
    except (OSError, ProtocolError) as exc:
        sock.close()
        if isinstance(exc, ChannelClosedError):
            raise
        raise ChannelClosedError(f"cannot open the channel {endpoint}: {exc}") from None
    return sock


def encode_frames(frames: list[bytes]) -> list[bytes]:
    """A message of any frames as ZMTP buffers (each frame's head, then the frame)."""
    out: list[bytes] = []
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        out.append(head_more(len(frame)) if i < last else head_last(len(frame)))
        out.append(frame)
    return out


class _CutRuns(list[Any]):
    """The encoder's closed runs, as a list that sends them once they reach FLUSH_BYTES.

    :meth:`protocol.ipc.EventRunsEncoder.add` appends a run here when it cuts it (at
    :data:`protocol.ipc.MAX_RUN_EVENTS` events, a gap or a new session): once per cut
    run, not per event (gaps and new sessions are rare), so the count costs the hot path
    nothing per event.
    """

    __slots__ = ("_output", "bytes")

    def __init__(self, output: ChannelOutput) -> None:
        super().__init__()
        self._output = output
        #: bytes of the runs cut since the last send
        self.bytes = 0

    def append(self, run: Any) -> None:
        list.append(self, run)
        self.bytes += sum(map(len, run.parts))
        if self.bytes >= FLUSH_BYTES:
            self._output.flush_cut()


class ChannelOutput(ipc.EventRunsEncoder):
    """The worker's ordered channel to the supervisor, events batched (see the module)."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        #: True once the supervisor is gone: everything is dropped (:meth:`abandon`)
        self.abandoned = False
        self._scheduled = False
        #: loop time of the batch's first event, and what it held at the last lap
        self._since = 0.0
        self._queued_at_lap = -1
        #: flushes refused because QUEUE_BYTES waited
        self.send_blocked = 0
        self.messages = 0
        self._cut = self._closed = _CutRuns(self)
        #: buffers the kernel has not taken yet, oldest first, and their bytes
        self._waiting: collections.deque[bytes | memoryview] = collections.deque()
        self.waiting_bytes = 0
        #: resolved when the waiting bytes are below QUEUE_BYTES (shared by every waiting shard)
        self._writable: asyncio.Future[None] | None = None
        self._watching = False
        #: called once the connection broke (the group stops: a worker that cannot
        #: report must end, so that its replacement resumes its shards)
        self.on_lost: Callable[[], None] | None = None

    #: Queue one dispatch (:class:`worker.shard.ShardOutput`): the encoder's ``add``.
    event = ipc.EventRunsEncoder.add

    def _first_event(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._since = time.monotonic()
            self._queued_at_lap = -1
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        """Send the batch once a lap of the loop added nothing to it (the burst of reads
        it came in is over) or it is :data:`COALESCE_S` old, whichever comes first."""
        queued = sum(run.count for run in self._closed) + sum(
            run.count for run in self._open.values()
        )
        if queued != self._queued_at_lap and time.monotonic() - self._since < COALESCE_S:
            self._queued_at_lap = queued
            self._loop.call_soon(self._flush_soon)
            return
        self._scheduled = False
        self.flush()

    def flush(self) -> bool:
        """Send every queued run; False (runs kept) while QUEUE_BYTES wait for the kernel."""
        while (head := self.next_head()) is not None:
            if self.waiting_bytes >= QUEUE_BYTES:
                self.send_blocked += 1
                self.refusing = True
                self._watch()
                return False
            body = self.next_body()
            self._write([_RUNS_HEAD, head, long_head(FLAG_LONG, len(body)), body])
            self.messages += 1
        self._cut.bytes = 0
        self.refusing = False
        return True

    def flush_cut(self) -> None:
        """Send the cut runs now, the open ones stay (called from inside ``add``).

        Every shard's cut runs precede its open run, so the order per shard holds.
        A refusal keeps them (``add`` then refuses, as after any refused flush).
        """
        open_runs = self._open
        self._open = {}  # next_head closes every open run: none here
        try:
            self.flush()
        finally:
            self._open = open_runs

    def _write(self, buffers: list[bytes]) -> None:
        """One message's buffers to the kernel, behind whatever waits; the rest waits."""
        if self.abandoned:
            return
        if self._waiting:
            self._waiting.extend(buffers)
            self.waiting_bytes += sum(map(len, buffers))
            return
        try:
            sent = self._sock.sendmsg(buffers, (), _NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._lost()
            return
        for buffer in buffers:
            size = len(buffer)
            if sent >= size:
                sent -= size
                continue
            rest = memoryview(buffer)[sent:] if sent else buffer
            sent = 0
            self._waiting.append(rest)
            self.waiting_bytes += len(rest)
        if self._waiting:
            self._watch()

    def _watch(self) -> None:
        if not self._watching and not self.abandoned:
            self._watching = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        """The kernel takes more: write what waits, then wake the waiting shards."""
        waiting = self._waiting
        while waiting:
            try:
                self._send_waiting()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._lost()
                return
        if not waiting:
            self._unwatch()
        if self.waiting_bytes < QUEUE_BYTES:
            self._wake()
            if self.refusing:  # runs a refused flush kept: nobody may be waiting to send them
                self._first_event()

    def _send_waiting(self) -> None:
        """One ``sendmsg`` of what waits (raising as it does); what the kernel took leaves."""
        waiting = self._waiting
        sent = self._sock.sendmsg(itertools.islice(waiting, _IOV_MAX), (), _NOSIGNAL)
        self.waiting_bytes -= sent
        while sent:
            first = waiting[0]
            if sent >= len(first):
                sent -= len(first)
                waiting.popleft()
            else:
                waiting[0] = memoryview(first)[sent:]
                sent = 0

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            if not self._loop.is_closed():
                self._loop.remove_writer(self._fd)

    def _wake(self) -> None:
        waiter = self._writable
        self._writable = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _lost(self) -> None:
        """The connection broke (the supervisor closed it, or is gone)."""
        self.abandon()
        if self.on_lost is not None:
            self._loop.call_soon(self.on_lost)  # not from inside a shard's event

    def abandon(self) -> None:
        """Nobody reads the channel any more (the supervisor is gone): what is queued and
        what comes next is dropped, so no shard and no report waits for a reader."""
        self.abandoned = True
        self._waiting.clear()
        self.waiting_bytes = 0
        self._unwatch()
        self._open.clear()
        self._closed.clear()
        self.refusing = False
        self._wake()

    async def drain(self) -> None:
        """Return once every queued run is sent (the shard may queue again)."""
        while True:
            if self.abandoned:
                self.flush()
                await asyncio.sleep(0)  # a stopping shard's cancellation gets in
                return
            if self.waiting_bytes < QUEUE_BYTES and self.flush():
                return
            # Shielded: one shard cancelled while waiting must not cancel the others' wait.
            await asyncio.shield(self._until_writable())

    def _until_writable(self) -> asyncio.Future[None]:
        waiter = self._writable
        if waiter is None or waiter.done():
            waiter = self._writable = self._loop.create_future()
            self._watch()
        return waiter

    async def send(self, frames: list[bytes]) -> None:
        """Send a non-event message after every event queued before it."""
        while not self.abandoned:
            if self.flush() and self.waiting_bytes < QUEUE_BYTES:
                self._write(encode_frames(frames))
                return
            await self.drain()

    async def report(self, report: ShardReport) -> None:
        await self.send(ipc.encode_shard_report(report))

    def close(self, linger_s: float = 0.0) -> None:
        """Write what waits within ``linger_s`` (blocking), then close the connection.

        Waiting drains wake; with 0 (the supervisor is gone) nothing more is written.
        """
        self._unwatch()
        self._wake()
        if linger_s > 0 and self._waiting and not self.abandoned:
            deadline = time.monotonic() + linger_s
            try:
                while self._waiting and (left := deadline - time.monotonic()) > 0:
                    self._sock.settimeout(left)
                    self._send_waiting()
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET, None):
                    raise
        self._sock.close()
