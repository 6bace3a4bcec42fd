"""The PUB side of the relay: one bounded queue per subscriber, every drop counted per event.

Subscribers are plain ZeroMQ SUB sockets (DESIGN.md 4.2). The socket bound to
``--pub`` is a ZMQ_STREAM socket, and this module speaks ZMTP 3.0 on it as an
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

What a subscriber experiences:

- it gets every event whose topic starts with one of its subscriptions, in
  order, until it falls ``hwm`` events behind (``--pub-hwm``): events wait in
  its own queue here, then in ZeroMQ (at most :data:`ZMQ_CHUNKS` chunks of at
  most :data:`CHUNK_EVENTS` events) and the kernel's socket buffers;
- when its queue here holds ``hwm`` events, each further event for it is
  dropped and counted, one by one (:attr:`Publisher.dropped`, the metric
  ``titanium_relay_dropped_total{reason="pub_hwm"}``); it sees the same events
  missing as gaps in the header's per-session ``seq``. As soon as it has read
  enough for its queue to take events again, it gets them again;
- other subscribers are not affected: each has its own queue, and the shards
  never wait for any subscriber;
- events still queued here when a subscriber disconnects are counted apart
  (:attr:`Publisher.lost_at_disconnect`); what ZeroMQ or the kernel held for
  it is gone with the connection, as with any PUB socket.

Memory stays bounded: per subscriber ``hwm`` events here plus
``ZMQ_CHUNKS * CHUNK_BYTES`` (plus one oversized event) in ZeroMQ, a capped
input buffer, and nothing for a connection that never subscribes.

Cost (the relay's hot path): per event and matching subscriber, six
references appended to that subscriber's chunk; per chunk, one join (the one
copy of the event's bytes for that subscriber) and one ZeroMQ send, where an
XPUB took three ZeroMQ sends per event and shared one copy among subscribers.
Measured on the 2-core bench machine (the supervisor process, ZeroMQ's
threads included, EVENT_RUNS of 16 shards in, ~1 KB events): 5.4 -> 3.8 us
per event with one SUB, 5.9 -> 5.8 with three, 1.9 with none.

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
sends garbage, is disconnected.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from typing import Final

import zmq
import zmq.backend

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

log = logging.getLogger(__name__)

#: Events per chunk: a subscriber's queued events leave in chunks of at most this many.
CHUNK_EVENTS: Final = 128
#: Bytes per chunk (an event bigger than this is a chunk of its own).
CHUNK_BYTES: Final = 128 * 1024
#: Chunks ZeroMQ holds per subscriber before a send meets its high-water mark.
ZMQ_CHUNKS: Final = 16
#: How often queued chunks are offered to ZeroMQ again while the relay is idle.
RETRY_S: Final = 0.002
#: Largest frame a subscriber may send us (subscriptions and commands are small).
MAX_INBOUND_FRAME: Final = 64 * 1024
#: Largest unparsed input kept per peer.
MAX_INBOUND_BUFFER: Final = 256 * 1024
#: Distinct topics whose match is remembered per subscriber.
_MATCH_CACHE_MAX: Final = 1024
#: A refused peer is logged as a warning at most this often (a keyless SUB retries every 100 ms).
REFUSAL_LOG_S: Final = 10.0

_MORE: Final = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST: Final = int(zmq.NOBLOCK)
_NOBLOCK: Final = int(zmq.NOBLOCK)

# -- ZMTP 3.0 (rfc.zeromq.org/spec/23), the parts an XPUB speaks -----------------------

#: signature (0xFF, 8 bytes padding, 0x7F), version 3.0, mechanism NULL, as-server 0, filler
GREETING: Final = (
    b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)
)
GREETING_SIZE: Final = 64
_FLAG_MORE: Final = 0x01
_FLAG_LONG: Final = 0x02
_FLAG_COMMAND: Final = 0x04
_PEER_TYPES: Final = frozenset((b"SUB", b"XSUB"))


def _command(name: bytes, data: bytes) -> bytes:
    body = bytes((len(name),)) + name + data
    if len(body) < 256:
        return bytes((_FLAG_COMMAND, len(body))) + body
    return bytes((_FLAG_COMMAND | _FLAG_LONG,)) + len(body).to_bytes(8, "big") + body


def _property(name: bytes, value: bytes) -> bytes:
    return bytes((len(name),)) + name + len(value).to_bytes(4, "big") + value


#: What we send as soon as a peer connects: our greeting and our READY.
HANDSHAKE: Final = GREETING + _command(b"READY", _property(b"Socket-Type", b"XPUB"))
#: With CURVE: the greeting names CURVE, as-server 1; READY waits for the client's INITIATE.
CURVE_GREETING: Final = (
    b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\x00") + b"\x01" + bytes(31)
)
#: The metadata of our READY under CURVE (boxed inside it).
_CURVE_METADATA: Final = metadata_property(b"Socket-Type", b"XPUB")

#: Frame heads of short frames by size: ``_SHORT_MORE[n]`` (more follows), ``_SHORT_LAST[n]``.
_SHORT_MORE: Final = tuple(bytes((_FLAG_MORE, n)) for n in range(256))
_SHORT_LAST: Final = tuple(bytes((0, n)) for n in range(256))


def _head_more(size: int) -> bytes:
    if size < 256:
        return _SHORT_MORE[size]
    return bytes((_FLAG_MORE | _FLAG_LONG,)) + size.to_bytes(8, "big")


def _head_last(size: int) -> bytes:
    if size < 256:
        return _SHORT_LAST[size]
    return bytes((_FLAG_LONG,)) + size.to_bytes(8, "big")


class ProtocolError(Exception):
    """A peer broke ZMTP; it is disconnected."""


class _Peer:
    """One connection on the STREAM socket: its handshake, subscriptions and queue."""

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
        "prefixes",
        "queued",
        "ready",
        "rid",
    )

    def __init__(self, rid: bytes, handshake: ServerHandshake | None = None) -> None:
        self.rid = rid
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
        #: joined chunks ZeroMQ refused so far, oldest first, with their event counts
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
    ZeroMQ; ``drain_subscriptions`` reads the socket (connections, handshakes,
    subscriptions, heartbeats) and runs whenever it is readable once
    :meth:`start` has registered it with the loop.
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        hwm: int,
        curve: CurveServerKeys | None = None,
    ) -> None:
        if hwm < 1:
            raise ValueError("the high-water mark is at least one event")
        #: CURVE keys (None: the NULL mechanism)
        self.curve = curve
        sock: zmq.Socket[bytes] = context.socket(zmq.STREAM)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, ZMQ_CHUNKS)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self.socket = sock
        self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.hwm = hwm
        self._send = functools.partial(zmq.backend.Socket.send, sock)
        self._recv = functools.partial(zmq.backend.Socket.recv, sock)
        self._peers: dict[bytes, _Peer] = {}
        #: peers with at least one subscription: the ones ``publish`` looks at
        self._targets: list[_Peer] = []
        #: peers with events waiting here
        self._waiting: set[_Peer] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._retry: asyncio.TimerHandle | None = None
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
        """Events waiting here for slow subscribers (not yet handed to ZeroMQ)."""
        return sum(peer.queued for peer in self._waiting)

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
        """Read the socket whenever it is readable; retry queued chunks on a timer.

        Started once by whoever owns the socket (the supervisor, for the process's
        life: handshakes and heartbeats are answered here, also while no range is
        owned); a second call is a no-op.
        """
        if self._loop is not None:
            return
        fd = self.socket.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self._loop = loop
        self._fd = fd
        loop.add_reader(fd, self.drain_subscriptions)
        # Edge-triggered: whatever is queued already would never signal.
        self.drain_subscriptions()

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._fd is not None and not loop.is_closed():
            loop.remove_reader(self._fd)
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._fd = None
        self._loop = None

    # -- events (the hot path) ----------------------------------------------------------

    def publish(
        self, topic: bytes | memoryview, header: bytes, payload: bytes | memoryview
    ) -> None:
        """Queue one event (three frames) for every subscriber whose subscription matches."""
        targets = self._targets
        if not targets:
            return
        size = len(payload)
        head_payload = _SHORT_LAST[size] if size < 256 else _head_last(size)
        n = len(topic)
        head_topic = _SHORT_MORE[n] if n < 256 else _head_more(n)
        n = len(header)
        head_header = _SHORT_MORE[n] if n < 256 else _head_more(n)
        hwm = self.hwm
        for peer in targets:
            if not peer.everything:
                matched = peer.matches.get(topic)
                if matched is None:
                    matched = peer.match(topic)
                if not matched:
                    continue
            if peer.queued >= hwm:
                peer.dropped += 1
                self.dropped += 1
                continue
            peer.chunk += (head_topic, topic, head_header, header, head_payload, payload)
            peer.queued += 1
            peer.chunk_bytes += size
            peer.chunk_events += 1
            if peer.chunk_events == 1:
                self._waiting.add(peer)
            if peer.chunk_events >= CHUNK_EVENTS or peer.chunk_bytes >= CHUNK_BYTES:
                self._cut(peer)

    def flush(self) -> None:
        """Hand every queued chunk to ZeroMQ that it takes now; retry the rest soon."""
        waiting = self._waiting
        if not waiting:
            return
        for peer in list(waiting):
            if peer.chunk_events:
                self._cut(peer)
            elif peer.backlog:
                self._offer(peer)
        if waiting and self._retry is None and self._loop is not None:
            self._retry = self._loop.call_later(RETRY_S, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.flush()
        self.drain_subscriptions()

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
        self._offer(peer)

    def _offer(self, peer: _Peer) -> None:
        """Hand the peer's chunks to ZeroMQ, oldest first, until its queue there is full."""
        backlog = peer.backlog
        send = self._send
        while backlog:
            try:
                send(peer.rid, _MORE)
            except zmq.Again:
                return
            except zmq.ZMQError:
                # EHOSTUNREACH: the connection is gone (its notice is on the way)
                self._gone(peer)
                return
            chunk, events = backlog.popleft()
            send(chunk, _LAST)
            peer.queued -= events
        if not peer.queued:
            self._waiting.discard(peer)

    def _send_now(self, peer: _Peer, data: bytes) -> None:
        """A message that is worth nothing late (a PONG): sent now or never."""
        try:
            self._send(peer.rid, _MORE)
        except zmq.ZMQError:
            return
        self._send(data, _LAST)

    # -- connections, handshakes and subscriptions ---------------------------------------

    def drain_subscriptions(self) -> None:
        """Read everything pending on the socket: connections, ZMTP input, disconnections."""
        recv = self._recv
        peers = self._peers
        while True:
            try:
                rid = recv(_NOBLOCK)
            except zmq.Again:
                return
            data = recv(_NOBLOCK)
            peer = peers.get(rid)
            if not data:
                # STREAM: an empty frame announces a connection, then its end.
                if peer is None:
                    self._connected(rid)
                else:
                    self._gone(peer)
                continue
            if peer is None:
                continue
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
        self._disconnect(peer)

    def _connected(self, rid: bytes) -> None:
        curve = self.curve
        if curve is None:
            peer = _Peer(rid)
            greeting = HANDSHAKE
        else:
            peer = _Peer(rid, ServerHandshake(curve, _CURVE_METADATA))
            greeting = CURVE_GREETING
        self._peers[rid] = peer
        try:
            self._send(rid, _MORE)
            self._send(greeting, _LAST)
        except zmq.ZMQError:
            self._gone(peer)

    def _disconnect(self, peer: _Peer) -> None:
        self._gone(peer)
        try:
            self._send(peer.rid, _MORE)
            self._send(b"", _LAST)  # STREAM: an empty message closes the connection
        except zmq.ZMQError:
            pass

    def _gone(self, peer: _Peer) -> None:
        if self._peers.pop(peer.rid, None) is None:
            return
        self.lost_at_disconnect += peer.queued
        peer.queued = 0
        peer.chunk = []
        peer.backlog.clear()
        self._waiting.discard(peer)
        self.subscriptions -= len(peer.prefixes)
        if peer in self._targets:
            self._targets.remove(peer)

    def _read(self, peer: _Peer) -> None:
        inbox = peer.inbox
        if len(inbox) > MAX_INBOUND_BUFFER:
            raise ProtocolError("too much input")
        if not peer.greeted:
            if inbox[:1] != b"\xff" or (len(inbox) >= 10 and inbox[9] != 0x7F):
                raise ProtocolError("not a ZMTP 3 greeting")
            if len(inbox) < GREETING_SIZE:
                return
            if inbox[10] < 3:
                raise ProtocolError(f"ZMTP {inbox[10]}.{inbox[11]} (3.0 or later needed)")
            mechanism = bytes(inbox[12:32]).rstrip(b"\x00")
            expected = b"NULL" if self.curve is None else b"CURVE"
            if mechanism != expected:
                raise ProtocolError(
                    f"security mechanism {mechanism.decode('ascii', 'replace')!r} "
                    f"(this socket takes {expected.decode()} only)"
                )
            if inbox[32] and self.curve is not None:
                raise ProtocolError("a CURVE peer that says it is a server")
            del inbox[:GREETING_SIZE]
            peer.greeted = True
        at = 0
        end = len(inbox)
        while end - at >= 2:
            flags = inbox[at]
            if flags & _FLAG_LONG:
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
            if flags & _FLAG_COMMAND:
                self._command(peer, body)
            else:
                first = not peer.more_in
                peer.more_in = bool(flags & _FLAG_MORE)
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
            (_FLAG_MORE if flags & MESSAGE_MORE else 0)
            | (_FLAG_COMMAND if flags & MESSAGE_COMMAND else 0)
        ), frame

    def _handshake(self, peer: _Peer, flags: int, body: bytes) -> None:
        """CURVE: HELLO -> WELCOME, INITIATE (an allowed key, a SUB or XSUB) -> READY."""
        handshake = peer.handshake
        assert handshake is not None
        if not flags & _FLAG_COMMAND:
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
            socket_type = _ready_socket_type(data)
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
                    self._send_now(peer, _command(b"PONG", context))
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
        self.stop()
        self.socket.close(linger=0)


def _ready_socket_type(data: bytes) -> bytes | None:
    """The Socket-Type property of a READY command's metadata (None when absent or garbled)."""
    at = 0
    while at < len(data):
        name_size = data[at]
        name = data[at + 1 : at + 1 + name_size]
        at += 1 + name_size
        if at + 4 > len(data):
            return None
        value_size = int.from_bytes(data[at : at + 4], "big")
        value = data[at + 4 : at + 4 + value_size]
        at += 4 + value_size
        if at > len(data):
            return None
        if name.lower() == b"socket-type":
            return value
    return None
