"""Subscribe to a cluster's PUB socket (the fast tap; DESIGN.md 4.2, :mod:`protocol.pubframe`).

One ZeroMQ SUB socket connects to every endpoint given (one per host of a
multi-host cluster: ZeroMQ fair-queues between them), subscribes to the event
name prefixes, and decodes the three frames (topic, JSON header with
``shard_id``, ``seq`` and, from newer clusters, ``session_id``, raw payload).

What a slow handler costs: nothing here grows. Events wait in the SUB socket's
receive queue, at most ``hwm`` of them (plus the kernel's TCP buffers); beyond
that the cluster's PUB socket drops events for this subscriber and counts them
(``titanium_relay_dropped_total``). The drop shows up here as a gap when gap
detection is on. A tap never redelivers; for every event with acknowledgement
use the Redis Streams sink (:mod:`titanium_client.streams`).

ZeroMQ reconnects by itself (``reconnect_ivl`` doubling to ``reconnect_ivl_max``)
and ZMTP heartbeats notice a dead peer behind a silent TCP connection.

A cluster off loopback speaks CURVE (``cluster up --curve-secret``): give the
server's public key and this client's key pair, as Z85 text (40 characters) or
raw bytes; the public key is derived from the secret one when left out::

    subscribe("tcp://10.0.0.5:5555",
              curve_server_key=read_key_file("keys/server.key"),
              curve_secret_key=read_key_file("keys/bot1.key_secret"))

(``cluster keys --out keys --name bot1`` makes a client pair; the server lets
it in once ``keys/bot1.key`` is in its ``--curve-clients``.) A key the server
does not know gets nothing: no event, no error (ZeroMQ retries in silence).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import zmq
import zmq.asyncio

from protocol.curvezmq import CurveKeyError, decode_key, parse_key_lines, public_key_of
from protocol.errors import WireFormatError
from protocol.pubframe import decode_event
from titanium_client.events import Event
from titanium_client.sequence import DEFAULT_WINDOW
from titanium_client.subscription import GapCallback, Subscription

log = logging.getLogger(__name__)

#: Events the SUB socket queues before the cluster's PUB starts dropping for us.
DEFAULT_HWM: Final = 10_000
#: ZMTP heartbeat: a ping every 5 s, the connection dropped (and redialled) after 15 s of silence.
HEARTBEAT_IVL_MS: Final = 5_000
HEARTBEAT_TIMEOUT_MS: Final = 15_000

_PUB_SCHEMES: Final = ("tcp://", "ipc://", "inproc://")


def is_pub_endpoint(url: str) -> bool:
    """True for a ZeroMQ endpoint (``tcp://``, ``ipc://``, ``inproc://``)."""
    return url.startswith(_PUB_SCHEMES)


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The one key of a key file written by ``cluster keys`` (``NAME.key`` or ``NAME.key_secret``)."""
    with open(path, encoding="ascii") as file:
        text = file.read(1024 * 1024)
    try:
        keys = parse_key_lines(text)
    except CurveKeyError as exc:
        raise CurveKeyError(f"{os.fspath(path)}: {exc}") from None
    if len(keys) != 1:
        raise CurveKeyError(f"{os.fspath(path)} must hold exactly one key, it holds {len(keys)}")
    return keys[0]


@dataclass(frozen=True, slots=True)
class CurveClient:
    """CURVE for a client socket: the server's public key and this client's key pair (raw bytes)."""

    server_key: bytes
    public_key: bytes
    secret_key: bytes = field(repr=False)

    @classmethod
    def from_options(
        cls,
        server_key: str | bytes | None,
        secret_key: str | bytes | None,
        public_key: str | bytes | None = None,
    ) -> CurveClient | None:
        """The ``curve_*_key=`` arguments -> the keys (None: no CURVE); ValueError if incomplete."""
        if server_key is None and secret_key is None and public_key is None:
            return None
        if server_key is None or secret_key is None:
            raise ValueError(
                "CURVE needs curve_server_key= (the cluster's public key) and curve_secret_key= "
                "(this client's secret key; curve_public_key= is derived from it)"
            )
        secret = decode_key(secret_key)
        public = public_key_of(secret)
        if public_key is not None and decode_key(public_key) != public:
            raise ValueError("curve_public_key= is not the public half of curve_secret_key=")
        return cls(decode_key(server_key), public, secret)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Set the socket's CURVE client options (before connect)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


class PubSubscription(Subscription):
    """A SUB socket on one or more PUB endpoints, as an async iterator of :class:`Event`.

    ``events`` are topic prefixes (``["MESSAGE_"]`` takes every message event;
    ``None`` takes all). Gap detection is on by default only without a filter
    (with one, the skipped seqs are other event types). Duplicates (a seq
    already seen in the shard's session) are dropped unless
    ``drop_duplicates=False``; both are counted in :attr:`stats`. With a cluster
    that speaks CURVE, ``curve_server_key`` and ``curve_secret_key`` (Z85 text
    or raw bytes; see the module's docstring).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        events: Sequence[str] | None = None,
        hwm: int = DEFAULT_HWM,
        detect_gaps: bool | None = None,
        drop_duplicates: bool = True,
        on_gap: GapCallback | None = None,
        window: int = DEFAULT_WINDOW,
        reconnect_ivl: float = 0.1,
        reconnect_ivl_max: float = 5.0,
        context: zmq.asyncio.Context | None = None,
        curve_server_key: str | bytes | None = None,
        curve_secret_key: str | bytes | None = None,
        curve_public_key: str | bytes | None = None,
    ) -> None:
        self._curve = CurveClient.from_options(curve_server_key, curve_secret_key, curve_public_key)
        self.endpoints: tuple[str, ...] = (
            (endpoints,) if isinstance(endpoints, str) else tuple(endpoints)
        )
        if not self.endpoints:
            raise ValueError("give at least one PUB endpoint")
        for endpoint in self.endpoints:
            if not is_pub_endpoint(endpoint):
                raise ValueError(
                    f"{endpoint!r} is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)"
                )
        prefixes = [""] if not events else list(events)
        for prefix in prefixes:
            if not isinstance(prefix, str) or not prefix.isascii():
                raise ValueError(f"an event prefix must be an ASCII string, got {prefix!r}")
        unfiltered = "" in prefixes
        #: The topic prefixes subscribed to ("" is everything).
        self.prefixes: tuple[str, ...] = ("",) if unfiltered else tuple(prefixes)
        if hwm < 0:
            raise ValueError(f"hwm must not be negative, got {hwm}")
        super().__init__(
            detect_gaps=unfiltered if detect_gaps is None else detect_gaps,
            drop_duplicates=drop_duplicates,
            on_gap=on_gap,
            window=window,
        )
        self._hwm = hwm
        self._reconnect_ms = max(1, int(reconnect_ivl * 1000))
        self._reconnect_max_ms = max(self._reconnect_ms, int(reconnect_ivl_max * 1000))
        self._context = context
        self._own_context = context is None
        self._sock: zmq.asyncio.Socket | None = None
        self._sync: zmq.Socket[bytes] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Create the SUB socket, subscribe and connect to every endpoint (idempotent)."""
        if self._sock is not None or self._closed:
            return
        if self._context is None:
            self._context = zmq.asyncio.Context()
        sock = self._context.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self._hwm)
            sock.setsockopt(zmq.RECONNECT_IVL, self._reconnect_ms)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, self._reconnect_max_ms)
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            if self._curve is not None:
                self._curve.apply(sock)
            for prefix in self.prefixes:
                sock.setsockopt(zmq.SUBSCRIBE, prefix.encode("ascii"))
            for endpoint in self.endpoints:
                sock.connect(endpoint)
        except BaseException:
            sock.close(0)
            raise
        self._sock = sock
        self._sync = zmq.Socket.shadow(sock.underlying)
        self._stopped = asyncio.get_running_loop().create_future()

    def stop(self) -> None:
        """End the loop: a waiting or the next ``__anext__`` raises StopAsyncIteration."""
        self._closed = True
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def close(self) -> None:
        """Stop, close the socket (linger 0) and the context if this subscription made it."""
        self.stop()
        sock, self._sock = self._sock, None
        self._sync = None  # a shadow: closing the socket closes it
        if sock is not None:
            sock.close(0)
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    async def __anext__(self) -> Event:
        if self._sock is None:
            if self._closed:
                raise StopAsyncIteration
            await self.start()
        sock = self._sock
        sync = self._sync
        stopped = self._stopped
        assert sock is not None and sync is not None and stopped is not None
        while True:
            if stopped.done():
                raise StopAsyncIteration
            try:
                # The fast path: a plain non-blocking read on a sync shadow of the socket
                # (pyzmq's awaitable recv costs several times more per message).
                frames = sync.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                readable = cast("asyncio.Future[int]", sock.poll())  # POLLIN, no timeout
                try:
                    await asyncio.wait((readable, stopped), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not readable.done():
                        readable.cancel()
                continue
            try:
                pub_event = decode_event(frames)
            except WireFormatError as exc:
                self.stats.malformed += 1
                if self.stats.malformed == 1:
                    log.warning(
                        "skipping a malformed PUB message (%s); later ones only counted", exc
                    )
                continue
            session = pub_event.header.get("session_id")
            event = Event(
                pub_event.topic,
                pub_event.shard_id,
                pub_event.seq,
                session if isinstance(session, str) else None,
                raw=pub_event.payload,
            )
            self.stats.received += 1
            if self._check_sequence(event):
                self.stats.delivered += 1
                return event
