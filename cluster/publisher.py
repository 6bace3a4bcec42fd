"""The PUB side of the relay: one bounded queue per subscriber, every drop counted per event.

Subscribers are plain ZeroMQ SUB sockets (DESIGN.md 4.2). ``--pub`` is a
listening TCP (or unix, ``ipc://``) socket of this process, read and written
from the event loop, and this module speaks ZMTP 3.0 on each connection as an
XPUB would (greeting, NULL mechanism, READY with ``Socket-Type: XPUB``,
subscriptions in, events out), so that the supervisor sees each subscriber on
its own. Why not libzmq's XPUB: it hides which subscriber is full. With
``XPUB_NODROP=1`` a full subscriber makes the send fail for *every*
subscriber (one slow reader would throttle them all); with ``XPUB_NODROP=0`` a
failed write takes the full subscriber's pipe out of the eligible set until it
has read down to its low-water mark, and every message for it meanwhile
vanishes without an error, so only overflow *episodes* can be counted (libzmq
4.3, measured). A ROUTER would give per-peer control, but a SUB only connects
to a PUB or an XPUB (the ZMTP handshake checks the socket type).

Why not a ZMQ_STREAM socket (what this module spoke ZMTP on before): libzmq
writes a STREAM socket's connections from its I/O thread, so every flush
signalled that thread (an eventfd write, its epoll wake-up, two epoll_ctl
calls to watch the connection for writing) before the bytes left: a thread
hand-off on every event's way to a subscriber. A chunk is now one ``send``
from the loop, straight into the kernel; what the kernel does not take
waits here (see below). Measured with strace on a supervisor (Relay and
Publisher, one SUB, one EVENT_RUNS message per ms of one event each): 28.6
system calls per event before, 13.9 after; its I/O thread woke 2.8 times
per event before, once after (the PULL channel's read, which stays).

What a subscriber experiences:

- it gets every event whose topic starts with one of its subscriptions, in
  order, until it falls ``hwm`` events behind (``--pub-hwm``): events wait in
  its own queue here (chunks cut once they hold :data:`CHUNK_EVENTS` events or
  :data:`CHUNK_BYTES`: a run of a worker's message joins a chunk whole), then,
  once a chunk is handed to its connection, in the part of that one chunk the
  kernel has not taken yet and in the kernel's socket buffers;
- when its queue here holds ``hwm`` events, each further event for it is
  dropped and counted, one by one (:attr:`Publisher.dropped`, the metric
  ``titanium_relay_dropped_total{reason="pub_hwm"}``); it sees the same events
  missing as gaps in the header's per-session ``seq``. As soon as it has read
  enough for its queue to take events again, it gets them again;
- other subscribers are not affected: each has its own queue, and the shards
  never wait for any subscriber;
- events still queued here when a subscriber disconnects are counted apart
  (:attr:`Publisher.lost_at_disconnect`); the unsent rest of a chunk and what
  the kernel held for it are gone with the connection, as with any PUB socket.

Memory stays bounded: per subscriber ``hwm`` events here plus the unsent rest
of one chunk (:data:`CHUNK_BYTES` plus at most one run of a worker's message,
:data:`protocol.ipc.MAX_RUN_EVENTS` events, or one oversized event), a capped
input buffer, and nothing for a connection that never subscribes.

Cost (the relay's hot path): the workers write each event as its PUB message
(protocol/ipc.py's EVENT_RUNS), so a subscriber of everything with the NULL
mechanism takes the rest of a run as one slice of the worker's message
(:meth:`Publisher.publish_frames`: nothing per event); one that filters
topics, uses CURVE or is full gets six references per event and matching
subscriber appended to its chunk. Per chunk, one join (the one copy of the
events' bytes for that subscriber) and one ``send`` system call, where an
XPUB took three ZeroMQ sends per event and shared one copy among
subscribers. Measured on the 2-core bench machine (the supervisor process,
ZeroMQ's threads included, EVENT_RUNS of 16 shards in, ~1 KB events): 5.4 ->
3.8 us per event with one SUB, 5.9 -> 5.8 with three, 1.9 with none, when
the relay still framed every event itself.

Security: the NULL mechanism, or with ``curve`` (``--curve-secret``, required
off loopback) CURVE only (:mod:`protocol.curvezmq`): the greeting names CURVE
with as-server 1, HELLO is answered with WELCOME, an INITIATE whose client key
is in the allowed list (and whose Socket-Type is SUB or XSUB) with READY, any
other key with an ERROR "400" and a close. From then on every frame both ways
is a MESSAGE box. The NULL path pays nothing for this: ``publish`` is the same
for both, and a CURVE subscriber's chunk is boxed frame by frame when it is
cut (:meth:`Publisher._cut`), where a NULL subscriber's is joined: the frames
are copied once into one buffer and boxed there in place. Measured
(``python -m scripts.bench.curve_cost``, ~1 KB events, one subscriber, this
process's CPU, 2 shared cores): medians 2.3-2.8 us per event with NULL, 9.4-11.6
with CURVE; the boxing alone is 6.2 us per event and CURVE subscriber, 3.8 of
it libsodium's crypto_box for the three frames.

Limits, by design: NULL or CURVE (no PLAIN), and a peer must speak ZMTP 3.x
(libzmq 4.x and every maintained implementation; ZMTP 3.1 peers are answered
as 3.0, as libzmq does). A peer that announces anything but SUB or XSUB, or
sends garbage, is disconnected. ``--pub`` takes what libzmq's tcp and ipc
binds take: ``tcp://HOST:PORT`` (an IPv4 address, ``[IPv6]``, ``*``, a host
name or an interface name; port ``*`` or 0: any) and ``ipc://PATH``
(``ipc://@name``: Linux's abstract namespace); a bind that fails raises
:class:`zmq.ZMQError`, as libzmq's did.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import Final

import zmq

from cluster.listening import Listener, receive
from protocol import zmtp
from protocol.curvezmq import (
    MESSAGE_COMMAND,
    MESSAGE_MORE,
    CurveHandshakeError,
    CurveServerKeys,
    MessageBox,
    ServerHandshake,
    command_frame,
    encode_key,
    error_command,
    metadata_property,
)
from protocol.ipc import pub_events
from protocol.zmtp import (
    CURVE_GREETING,
    FLAG_COMMAND,
    FLAG_LONG,
    FLAG_MORE,
    GREETING_SIZE,
    ProtocolError,
    check_greeting,
    command,
    head_last,
    head_more,
    ready_socket_type,
)

log = logging.getLogger(__name__)

#: Events per chunk: a subscriber's chunk is cut once it holds this many (or more: a
#: run of a worker's message joins it whole).
CHUNK_EVENTS: Final = 128
#: Bytes per chunk (an event bigger than this is a chunk of its own).
CHUNK_BYTES: Final = 128 * 1024
#: Bytes read from a subscriber per wake-up (subscriptions and heartbeats are small).
READ_BYTES: Final = 64 * 1024
#: Largest frame a subscriber may send us (subscriptions and commands are small).
MAX_INBOUND_FRAME: Final = 64 * 1024
#: Largest unparsed input kept per peer.
MAX_INBOUND_BUFFER: Final = 256 * 1024
#: Distinct topics whose match is remembered per subscriber.
_MATCH_CACHE_MAX: Final = 1024
#: A refused peer is logged as a warning at most this often (a keyless SUB retries every 100 ms).
REFUSAL_LOG_S: Final = 10.0

_NOSIGNAL: Final = socket.MSG_NOSIGNAL

_PEER_TYPES: Final = frozenset((b"SUB", b"XSUB"))
#: What we send as soon as a peer connects: our greeting and our READY.
HANDSHAKE: Final = zmtp.handshake(b"XPUB")
#: The metadata of our READY under CURVE (boxed inside it).
_CURVE_METADATA: Final = metadata_property(b"Socket-Type", b"XPUB")


def _event_frames(
    topic: bytes | memoryview, header: bytes | memoryview, payload: bytes | memoryview
) -> tuple[bytes | memoryview, ...]:
    """One event's three PUB frames, each after its ZMTP frame head."""
    return (
        head_more(len(topic)),
        topic,
        head_more(len(header)),
        header,
        head_last(len(payload)),
        payload,
    )


class _Peer:
    """One connection to ``--pub``: its socket, handshake, subscriptions and queue."""

    __slots__ = (
        "backlog",
        "box",
        "chunk",
        "chunk_bytes",
        "chunk_events",
        "client_key",
        "dropped",
        "everything",
        "greeted",
        "handshake",
        "inbox",
        "matches",
        "more_in",
        "out",
        "prefixes",
        "queued",
        "ready",
        "sock",
    )

    def __init__(self, sock: socket.socket, handshake: ServerHandshake | None = None) -> None:
        self.sock = sock
        #: what the kernel has not taken yet of the last chunk (or handshake) sent: while
        #: it is there, the loop writes it when the socket is writable and nothing else goes
        self.out: memoryview | None = None
        self.inbox = bytearray()
        self.greeted = False
        #: CURVE: the handshake until READY is sent, then the box every frame goes through
        self.handshake = handshake
        self.box: MessageBox | None = None
        #: CURVE: the client's long-term public key (public, shown in /status)
        self.client_key: bytes | None = None
        #: the peer's READY came (it is a SUB or an XSUB)
        self.ready = False
        #: inside a multipart message from the peer (only first frames subscribe)
        self.more_in = False
        self.prefixes: set[bytes] = set()
        #: subscribed to b"": every topic matches, no lookup
        self.everything = False
        self.matches: dict[bytes | memoryview, bool] = {}
        #: the chunk being filled: frame heads and frames, ready for one join
        self.chunk: list[bytes | memoryview] = []
        self.chunk_events = 0
        self.chunk_bytes = 0
        #: joined chunks not handed to the connection yet, oldest first, with their event counts
        self.backlog: deque[tuple[bytes | bytearray, int]] = deque()
        #: events waiting here for this peer (chunk + backlog): at most the hwm
        self.queued = 0
        self.dropped = 0

    def match(self, topic: bytes | memoryview) -> bool:
        key = bytes(topic)
        matched = any(key.startswith(prefix) for prefix in self.prefixes)
        if len(self.matches) >= _MATCH_CACHE_MAX:
            self.matches.clear()
        self.matches[key] = matched
        return matched

    def subscribe(self, prefix: bytes, on: bool) -> bool:
        """Change a subscription; True when the set changed."""
        if on == (prefix in self.prefixes):
            return False
        if on:
            self.prefixes.add(prefix)
        else:
            self.prefixes.discard(prefix)
        self.everything = b"" in self.prefixes
        self.matches.clear()
        return True


class Publisher:
    """Owns the socket bound to ``--pub`` and one bounded queue per subscriber.

    ``publish`` queues an event for every matching subscriber; ``flush`` (after
    each batch, see :class:`cluster.relay.Relay`) hands the queued chunks to
    the subscribers' connections. Once :meth:`start` has registered the sockets
    with the loop, connections are accepted and read (handshakes,
    subscriptions, heartbeats) whenever they are readable, and a connection
    whose kernel buffer was full is written again when it is writable.
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]] | None,
        endpoint: str,
        hwm: int,
        curve: CurveServerKeys | None = None,
    ) -> None:
        """Bind ``endpoint`` now (:class:`zmq.ZMQError` when it cannot be bound).

        ``context`` is not used (the socket is the process's own, not ZeroMQ's);
        it is kept so the callers that passed one need no change.
        """
        del context
        if hwm < 1:
            raise ValueError("the high-water mark is at least one event")
        #: CURVE keys (None: the NULL mechanism)
        self.curve = curve
        self._listener = Listener(endpoint, self._connected, "PUB")
        self.endpoint = self._listener.endpoint
        self.hwm = hwm
        self._peers: dict[int, _Peer] = {}
        #: peers with at least one subscription: the ones ``publish`` looks at
        self._targets: list[_Peer] = []
        #: peers with an open chunk (what ``flush`` cuts)
        self._filling: list[_Peer] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: events a subscriber missed because its queue was full, summed over subscribers
        self.dropped = 0
        #: events still queued here for a subscriber when it disconnected
        self.lost_at_disconnect = 0
        #: subscriptions (prefixes) over all subscribers
        self.subscriptions = 0
        #: peers disconnected for breaking the protocol (or, with CURVE, for their key)
        self.refused = 0
        self._refusal_logged_at = -REFUSAL_LOG_S
        self._refusals_unlogged = 0

    # -- the view from outside ----------------------------------------------------------

    @property
    def subscribers(self) -> int:
        """Connected peers with at least one subscription."""
        return len(self._targets)

    @property
    def queued(self) -> int:
        """Events waiting here for slow subscribers (not yet handed to their connections)."""
        return sum(peer.queued for peer in self._peers.values())

    def subscriber_stats(self) -> list[dict[str, object]]:
        """Per subscriber: its subscriptions, events queued here and events it missed."""
        stats: list[dict[str, object]] = []
        for peer in self._targets:
            entry: dict[str, object] = {
                "subscriptions": sorted(p.decode("ascii", "replace") for p in peer.prefixes),
                "queued": peer.queued,
                "dropped": peer.dropped,
            }
            if peer.client_key is not None:
                entry["client_key"] = encode_key(peer.client_key)
            stats.append(entry)
        return stats

    # -- the event loop -----------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Accept and read connections on ``loop``.

        Started once by whoever owns the socket (the supervisor, for the process's
        life: handshakes and heartbeats are answered here, also while no range is
        owned); a second call is a no-op.
        """
        if self._loop is not None:
            return
        self._loop = loop
        self._listener.start(loop)

    def stop(self) -> None:
        """Stop accepting and reading (the connections stay open until :meth:`close`)."""
        self._listener.stop()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for fd in self._peers:
                loop.remove_reader(fd)
                loop.remove_writer(fd)
        self._loop = None

    # -- events (the hot path) ----------------------------------------------------------

    def publish(
        self, topic: bytes | memoryview, header: bytes, payload: bytes | memoryview
    ) -> None:
        """Queue one event (three frames) for every subscriber whose subscription matches."""
        targets = self._targets
        if not targets:
            return
        frames = _event_frames(topic, header, payload)
        size = len(payload)
        for peer in targets:
            self._queue(peer, topic, frames, size)

    def publish_frames(self, frames: memoryview, heads: memoryview, count: int) -> None:
        """Queue ``count`` consecutive events of one run for every subscriber whose
        subscription matches, given as they leave for a subscriber of everything:
        ``frames``, the ZMTP bytes of their PUB messages, and their event heads
        (protocol/ipc.py's EVENT_RUNS).

        A subscriber of everything with the NULL mechanism and room for them all
        takes ``frames`` whole (nothing per event); any other reads the events one
        by one (:func:`protocol.ipc.pub_events`).
        """
        targets = self._targets
        if not targets:
            return
        hwm = self.hwm
        size = len(frames)
        for peer in targets:
            if peer.everything and peer.box is None and peer.queued + count <= hwm:
                self._take(peer, (frames,), count, size)
                continue
            queue = self._queue
            for topic, header, payload in pub_events(frames, heads):
                queue(peer, topic, _event_frames(topic, header, payload), len(payload))

    def _queue(
        self,
        peer: _Peer,
        topic: bytes | memoryview,
        frames: tuple[bytes | memoryview, ...],
        size: int,
    ) -> None:
        """Queue one event's frames (heads included) for ``peer`` if it matches and has room."""
        if not peer.everything:
            matched = peer.matches.get(topic)
            if matched is None:
                matched = peer.match(topic)
            if not matched:
                return
        if peer.queued >= self.hwm:
            peer.dropped += 1
            self.dropped += 1
            return
        self._take(peer, frames, 1, size)

    def _take(
        self, peer: _Peer, items: tuple[bytes | memoryview, ...], events: int, size: int
    ) -> None:
        """``events`` events (``items``, heads included, ``size`` bytes) join ``peer``'s
        chunk; a full chunk is cut."""
        peer.chunk += items
        peer.queued += events
        peer.chunk_bytes += size
        if not peer.chunk_events:
            self._filling.append(peer)
        peer.chunk_events += events
        if peer.chunk_events >= CHUNK_EVENTS or peer.chunk_bytes >= CHUNK_BYTES:
            self._cut(peer)

    def flush(self) -> None:
        """Hand every open chunk to its connection, behind the chunks waiting there.

        A chunk the kernel does not take (all of it) waits here; the loop writes it
        when the connection is writable, then the chunks behind it.
        """
        filling = self._filling
        if not filling:
            return
        self._filling = []
        for peer in filling:
            if peer.chunk_events:
                self._cut(peer)

    def _cut(self, peer: _Peer) -> None:
        """Join the peer's chunk (CURVE: box its frames) and offer it, behind older chunks."""
        box = peer.box
        if box is None:
            peer.backlog.append((b"".join(peer.chunk), peer.chunk_events))
        else:
            # the frames without their plain heads: every MESSAGE box has a head of its own
            peer.backlog.append((box.seal_messages(peer.chunk[1::2], 3), peer.chunk_events))
        peer.chunk = []
        peer.chunk_events = 0
        peer.chunk_bytes = 0
        if peer.out is None:
            self._offer(peer)

    def _offer(self, peer: _Peer) -> None:
        """Write the peer's chunks, oldest first, until its kernel buffer is full.

        A chunk leaves the queue (``queued``) when it is handed to the connection;
        what the kernel did not take of it is written when the socket is writable.
        """
        backlog = peer.backlog
        send = peer.sock.send
        while backlog:
            chunk, events = backlog.popleft()
            peer.queued -= events
            try:
                sent = send(chunk, _NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._gone(peer)  # reset or closed by the peer
                return
            if sent < len(chunk):
                self._wait_writable(peer, memoryview(chunk)[sent:])
                return

    def _wait_writable(self, peer: _Peer, rest: memoryview) -> None:
        peer.out = rest
        if self._loop is not None:
            self._loop.add_writer(peer.sock.fileno(), self._writable, peer)

    def _writable(self, peer: _Peer) -> None:
        """The peer's connection takes bytes again: the rest of its chunk, then its backlog."""
        rest = peer.out
        if rest is None:
            return
        try:
            sent = peer.sock.send(rest, _NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._gone(peer)
            return
        if sent < len(rest):
            peer.out = rest[sent:]
            return
        peer.out = None
        assert self._loop is not None
        self._loop.remove_writer(peer.sock.fileno())
        self._offer(peer)

    def _send_now(self, peer: _Peer, data: bytes) -> None:
        """A handshake message or a PONG, between chunks (never inside one)."""
        if peer.out is not None:
            return  # only a PONG can meet this (a handshake goes before any event)
        try:
            sent = peer.sock.send(data, _NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._gone(peer)
            return
        if sent < len(data):
            self._wait_writable(peer, memoryview(data)[sent:])

    # -- connections, handshakes and subscriptions ---------------------------------------

    def _readable(self, peer: _Peer) -> None:
        """ZMTP input from a peer: greeting, handshake, subscriptions, heartbeats; or its end."""
        data = receive(peer.sock, READ_BYTES)
        if data is None:
            return
        if not data:
            self._gone(peer)
            return
        peer.inbox += data
        try:
            self._read(peer)
        except ProtocolError as exc:
            self._refuse(peer, str(exc))

    def _refuse(self, peer: _Peer, why: str) -> None:
        """Disconnect a peer that broke the protocol; a warning at most every REFUSAL_LOG_S."""
        self.refused += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_S:
            more = self._refusals_unlogged
            log.warning(
                "PUB: disconnected a peer: %s%s",
                why,
                f" ({more} more refused since the last warning)" if more else "",
            )
            self._refusal_logged_at = now
            self._refusals_unlogged = 0
        else:
            self._refusals_unlogged += 1
            log.debug("PUB: disconnected a peer: %s", why)
        self._gone(peer)

    def _connected(self, sock: socket.socket) -> None:
        curve = self.curve
        if curve is None:
            peer = _Peer(sock)
            greeting = HANDSHAKE
        else:
            peer = _Peer(sock, ServerHandshake(curve, _CURVE_METADATA))
            greeting = CURVE_GREETING
        fd = sock.fileno()
        self._peers[fd] = peer
        if self._loop is not None:
            self._loop.add_reader(fd, self._readable, peer)
        self._send_now(peer, greeting)

    def _gone(self, peer: _Peer) -> None:
        """The peer disconnected, or is disconnected now: its queue is counted, its socket closed."""
        sock = peer.sock
        fd = sock.fileno()
        if fd < 0 or self._peers.pop(fd, None) is None:
            return
        self.lost_at_disconnect += peer.queued
        peer.queued = 0
        peer.chunk = []
        peer.chunk_events = 0
        peer.chunk_bytes = 0
        peer.backlog.clear()
        peer.out = None
        self.subscriptions -= len(peer.prefixes)
        if peer in self._targets:
            self._targets.remove(peer)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        sock.close()

    def _read(self, peer: _Peer) -> None:
        inbox = peer.inbox
        if len(inbox) > MAX_INBOUND_BUFFER:
            raise ProtocolError("too much input")
        if not peer.greeted:
            mechanism = b"NULL" if self.curve is None else b"CURVE"
            if not check_greeting(inbox, mechanism):
                return
            del inbox[:GREETING_SIZE]
            peer.greeted = True
        at = 0
        end = len(inbox)
        while end - at >= 2:
            flags = inbox[at]
            if flags & FLAG_LONG:
                if end - at < 9:
                    break
                size = int.from_bytes(inbox[at + 1 : at + 9], "big")
                start = at + 9
            else:
                size = inbox[at + 1]
                start = at + 2
            if size > MAX_INBOUND_FRAME:
                raise ProtocolError(f"a {size}-byte frame")
            if end - start < size:
                break
            body = bytes(inbox[start : start + size])
            at = start + size
            if peer.box is not None:
                flags, body = self._open(peer, body)
            elif peer.handshake is not None:
                self._handshake(peer, flags, body)
                continue
            if flags & FLAG_COMMAND:
                self._command(peer, body)
            else:
                first = not peer.more_in
                peer.more_in = bool(flags & FLAG_MORE)
                if first and body and body[0] in (0, 1) and peer.ready:
                    self._subscribe(peer, body[1:], body[0] == 1)
        del inbox[:at]

    def _open(self, peer: _Peer, body: bytes) -> tuple[int, bytes]:
        """CURVE: a MESSAGE -> (ZMTP frame flags, the frame) as if it had come unboxed."""
        assert peer.box is not None
        try:
            flags, frame = peer.box.open(body)
        except CurveHandshakeError as exc:
            raise ProtocolError(str(exc)) from None
        return (
            (FLAG_MORE if flags & MESSAGE_MORE else 0)
            | (FLAG_COMMAND if flags & MESSAGE_COMMAND else 0)
        ), frame

    def _handshake(self, peer: _Peer, flags: int, body: bytes) -> None:
        """CURVE: HELLO -> WELCOME, INITIATE (an allowed key, a SUB or XSUB) -> READY."""
        handshake = peer.handshake
        assert handshake is not None
        if not flags & FLAG_COMMAND:
            raise ProtocolError("a message before the CURVE handshake finished")
        name = body[1 : 1 + body[0]] if body else b""
        try:
            if name == b"HELLO":
                self._send_now(peer, command_frame(handshake.hello(body)))
                return
            if name == b"ERROR":
                raise ProtocolError(
                    f"the peer reported an error: {body[7:].decode('ascii', 'replace')}"
                )
            if name != b"INITIATE":
                raise ProtocolError(f"{name!r} during the CURVE handshake")
            done = handshake.initiate(body)
        except CurveHandshakeError as exc:
            if exc.status_code is not None:
                # Unboxed, as libzmq's server does; the client reports it (HANDSHAKE_FAILED_AUTH).
                self._send_now(peer, command_frame(error_command(exc.status_code)))
            raise ProtocolError(f"CURVE: {exc}") from None
        socket_type = done.properties.get(b"socket-type")
        if socket_type not in _PEER_TYPES:
            raise ProtocolError(f"a {socket_type!r} peer (a PUB socket serves SUB and XSUB)")
        self._send_now(peer, command_frame(done.ready))
        peer.handshake = None
        peer.box = done.box
        peer.client_key = done.client_key
        peer.ready = True

    def _command(self, peer: _Peer, body: bytes) -> None:
        name_size = body[0] if body else 0
        name = body[1 : 1 + name_size]
        data = body[1 + name_size :]
        if name == b"READY":
            socket_type = ready_socket_type(data)
            if socket_type not in _PEER_TYPES:
                raise ProtocolError(f"a {socket_type!r} peer (a PUB socket serves SUB and XSUB)")
            peer.ready = True
        elif not peer.ready:
            raise ProtocolError(f"{name!r} before READY")
        elif name == b"PING":
            # PONG with the ping's context. A peer whose queue is full gets none:
            # it is receiving data, which keeps its heartbeat timeout at bay.
            context = data[2:18]
            if not peer.backlog:
                box = peer.box
                if box is None:
                    self._send_now(peer, command(b"PONG", context))
                else:
                    # boxed now, sent now: no older box waits (the backlog is empty)
                    self._send_now(peer, box.seal_command(b"\x04PONG" + context))
        elif name == b"SUBSCRIBE":  # ZMTP 3.1 spelling of a subscription
            self._subscribe(peer, data, True)
        elif name == b"CANCEL":
            self._subscribe(peer, data, False)
        elif name == b"ERROR":
            raise ProtocolError(
                f"the peer reported an error: {data[1:].decode('ascii', 'replace')}"
            )
        # anything else (PONG, unknown commands) is ignored, as libzmq does

    def _subscribe(self, peer: _Peer, prefix: bytes, on: bool) -> None:
        if not peer.subscribe(prefix, on):
            return
        self.subscriptions += 1 if on else -1
        targets = self._targets
        if peer.prefixes and peer not in targets:
            targets.append(peer)
        elif not peer.prefixes and peer in targets:
            targets.remove(peer)

    def close(self) -> None:
        """Stop, close every connection (what they had queued is dropped) and the listener."""
        self.stop()
        for peer in list(self._peers.values()):
            self._gone(peer)
        self._listener.close()
