"""The simulated gateway: websocket connections, Discord's rules, sessions, load and faults.

:class:`Gateway` owns all gateway state (connections, sessions, the
identify limiter, the session-start budget) and one ticker task that
generates load events, injects chaos faults and expires sessions.
:class:`Connection` is one websocket: a reader (the rules) and a writer task
(the only place that writes frames, so ordering is the order of
:meth:`Connection.enqueue`).

Decisions where Discord's behaviour is undocumented (shared/PROTOCOL.md 10):

- ``v`` other than 9 or 10 (or missing): close 4012. ``encoding=etf``: close
  4002 "etf encoding is not supported by the simulator" (Discord serves ETF;
  the simulator speaks JSON only). An unknown ``compress`` value: close 4002.
- A connection that sends no heartbeat for ``heartbeat_interval *
  heartbeat_grace`` (1.5 by default; the first beat may come up to one
  interval after Hello because of the jitter) is closed with 4000
  "heartbeat timeout"; the session stays resumable (Discord: "you will be
  forced to Resume").
- RESUME is accepted on both the main and the resume URL (as Discord does;
  the record says which one was used). A RESUME for a session still attached
  to another connection takes it over; the old connection is closed 4000.
- A rate-limited IDENTIFY (one per bucket per window) gets op 9 ``false``
  and the connection stays open. When no session starts remain, the IDENTIFY
  gets op 9 ``false`` and every session is terminated: its connection is
  closed with 4004 (Discord resets the token) and it cannot be resumed.
- A client close with 1000/1001 ends the session; any other close, or a lost
  TCP connection, keeps it resumable for ``resume_timeout_s``. A server close
  keeps it when ``protocol.gateway.close_action`` of the code says RESUME.
- Identify's payload compression (``compress: true``) is ignored: without
  transport compression every payload is a text frame. Dispatches follow the
  session's intents (simulator.config.EVENT_INTENTS); without MESSAGE_CONTENT,
  MESSAGE_CREATE has an empty ``content``.
- A zombie connection (fault) reads and records heartbeats but answers
  nothing: no ACKs, no dispatches (they stay in the replay buffer).
- Undocumented client payload rules: ``d`` of Identify/Resume that is not an
  object, or lacks the token, gets 4001 (invalid payload for an opcode);
  missing intents get 4013.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson
from aiohttp import WSMsgType, web

from protocol.compression import (
    Compression,
    Compressor,
    ZlibStreamCompressor,
    ZstdStreamCompressor,
)
from protocol.gateway import (
    CLIENT_OPCODES,
    SUPPORTED_API_VERSIONS,
    CloseAction,
    CloseCode,
    Opcode,
    close_action,
)
from protocol.intents import ALL_INTENTS, PRIVILEGED_INTENTS, Intent
from simulator.config import EVENT_INTENTS, SESSION_START_WINDOW_MS, SimulatorConfig
from simulator.events import GUILD_BASE, EventFactory
from simulator.faults import ChaosPicker, FaultKind
from simulator.record import (
    ClosedBy,
    CommandRecord,
    ConnectionRecord,
    DispatchRecord,
    FaultRecord,
    HeartbeatRecord,
    IdentifyOutcome,
    IdentifyRecord,
    Record,
    ResumeOutcome,
    ResumeRecord,
    UrlKind,
    Violation,
    ViolationKind,
)
from simulator.sessions import (
    IdentifyLimiter,
    SendLimiter,
    Session,
    SessionStartBudget,
    SessionState,
    SessionStore,
    Sink,
)

_EVENT_NAMES: Final = {name: name.encode() for name in EVENT_INTENTS}
_HEARTBEAT_ACK: Final = b'{"t":null,"s":null,"op":11,"d":null}'
_TRACE: Final = ['["gateway-prd-sim-1",{"micros":0.0}]']
#: Messages larger than this are not even read (the limit check needs only the size).
_MAX_READ: Final = 1 << 20
#: A generation burst after a stall is capped at this many seconds of events.
_MAX_BURST_S: Final = 1.0


def _frame_header(first_byte: int, length: int) -> bytes:
    """An unmasked server websocket frame header (RFC 6455 section 5.2)."""
    if length < 126:
        return bytes((first_byte, length))
    if length < 65536:
        return bytes((first_byte, 126)) + length.to_bytes(2, "big")
    return bytes((first_byte, 127)) + length.to_bytes(8, "big")


def _compressor(compression: Compression, config: SimulatorConfig) -> Compressor | None:
    if compression is Compression.ZLIB_STREAM:
        return ZlibStreamCompressor(config.zlib_level)
    if compression is Compression.ZSTD_STREAM:
        return ZstdStreamCompressor(config.zstd_level)
    return None


def control(op: int, d: Any) -> bytes:
    """A non-dispatch payload in Discord's key order."""
    return orjson.dumps({"t": None, "s": None, "op": op, "d": d})


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class _Raw:
    """Bytes written as they are (already compressed, or deliberately broken)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


_Item = bytes | _Close | _Raw
#: Frames queued together are written at once up to this many payload bytes.
_BATCH_BYTES: Final = 256 * 1024
#: Above this many unsent bytes the writer waits for the client to read.
_WRITE_HIGH_WATER: Final = 4 * 1024 * 1024
_DRAIN_POLL_S: Final = 0.002
#: How long a server close waits for queued frames to be written.
_CLOSE_FLUSH_S: Final = 5.0


class Connection(Sink):
    """One gateway websocket and the rules applied to what its client sends."""

    def __init__(
        self,
        gateway: Gateway,
        conn_id: int,
        ws: web.WebSocketResponse,
        request: web.Request,
        info: ConnectionRecord,
        compression: Compression,
    ) -> None:
        self.gateway = gateway
        self.conn_id = conn_id
        self.ws = ws
        self.request = request
        self.info = info
        self.compressor = _compressor(compression, gateway.config)
        self.session: Session | None = None
        self.zombie = False
        self.open = True
        #: frames for the writer, and the event that wakes it (a deque is cheaper than
        #: asyncio.Queue at benchmark rates)
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._send_limiter = SendLimiter(gateway.config.send_limit, gateway.config.send_window_s)
        self._writer: asyncio.Task[None] | None = None
        self._hb_timer: asyncio.TimerHandle | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._closing = False

    # -- Sink ----------------------------------------------------------------------

    def enqueue(self, frame: bytes) -> None:
        if self.open:
            self._put(frame)

    def _put(self, item: _Item) -> None:
        self._queue.append(item)
        if not self._wakeup.is_set():
            self._wakeup.set()

    @property
    def delivers(self) -> bool:
        return self.open and not self.zombie

    def enqueue_raw(self, data: bytes) -> None:
        """Bytes written as one frame as they are (no compression)."""
        if self.open:
            self._put(_Raw(data))

    def send_op(self, op: int, d: Any) -> None:
        self.enqueue(control(op, d))

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"sim-writer-{self.conn_id}")
        cfg = self.gateway.config
        self.send_op(
            Opcode.HELLO, {"heartbeat_interval": cfg.heartbeat_interval_ms, "_trace": _TRACE}
        )
        self._arm_heartbeat_timer()
        try:
            await self._read_loop()
        finally:
            await self._finish()

    async def _read_loop(self) -> None:
        ws = self.ws
        while not self._closing:
            msg = await ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                self._on_payload(data)
            elif msg.type is WSMsgType.CLOSE:
                if self.info.closed_by is None:
                    self.info.closed_by = ClosedBy.CLIENT
                    self.info.close_code = ws.close_code
                return
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                if self.info.closed_by is None:
                    self.info.closed_by = ClosedBy.LOST
                return

    async def _finish(self) -> None:
        """After the reader stopped: flush a pending server close, then release everything."""
        self.open = False
        if self._hb_timer is not None:
            self._hb_timer.cancel()
        for timer in self._timers:
            timer.cancel()
        writer = self._writer
        if writer is not None:
            if self.info.closed_by is ClosedBy.SERVER and not writer.done():
                # the writer sends what was queued before the close, then the close frame
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(writer), _CLOSE_FLUSH_S)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if not self.ws.closed and self.info.closed_by in (None, ClosedBy.LOST):
            with contextlib.suppress(Exception):
                await self.ws.close(code=CloseCode.UNKNOWN_ERROR, message=b"server shutting down")
        if self.info.closed_at is None:
            self.info.closed_at = time.monotonic()
        self.gateway.connection_closed(self)

    async def _write_loop(self) -> None:
        """The only writer of frames: payloads in queue order, then at most one close.

        Frames queued together are written with one ``transport.write`` (the
        simulator is the load source of the benchmarks: one syscall per event
        would dominate its cost). Server frames are unmasked and the
        connection never negotiates permessage-deflate, so a frame is a 2-10
        byte header and the payload. Control frames (pong, close) still go
        through aiohttp's writer; whole frames never interleave.
        """
        queue = self._queue
        wakeup = self._wakeup
        compressor = self.compressor
        first_byte = 0x81 if compressor is None else 0x82  # FIN + text / binary
        transport = self.request.transport
        try:
            while True:
                if not queue:
                    wakeup.clear()
                    await wakeup.wait()
                    continue
                item = queue.popleft()
                parts: list[bytes] = []
                size = 0
                close: _Close | None = None
                while True:
                    if isinstance(item, _Close):
                        close = item
                        break
                    if isinstance(item, bytes):
                        data = item if compressor is None else compressor.compress(item)
                    else:
                        data = item.data
                    parts.append(_frame_header(first_byte, len(data)))
                    parts.append(data)
                    size += len(data)
                    if size >= _BATCH_BYTES or not queue:
                        break
                    item = queue.popleft()
                if parts:
                    if transport is None or transport.is_closing():
                        raise ConnectionResetError("connection lost")
                    transport.write(b"".join(parts))
                    while transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
                        if transport.is_closing():
                            raise ConnectionResetError("connection lost")
                        await asyncio.sleep(_DRAIN_POLL_S)  # a slow client: let it read
                if close is not None:
                    with contextlib.suppress(Exception):
                        await self.ws.close(code=close.code, message=close.reason.encode()[:120])
                    return
        except (ConnectionError, RuntimeError):
            if self.info.closed_by is None:
                self.info.closed_by = ClosedBy.LOST
            self.abort(record=False)

    def close(self, code: int, reason: str) -> None:
        """Close from the server side: frames already queued go out first, then the close frame.

        The session's fate is decided now (``Gateway.server_closed``); nothing
        more is read from the client.
        """
        if self._closing:
            return
        self._closing = True
        self.open = False
        self.info.closed_by = ClosedBy.SERVER
        self.info.close_code = code
        self.info.closed_at = time.monotonic()
        self.gateway.server_closed(self, code)
        self._put(_Close(code, reason))

    def close_if_open(self, code: int, reason: str) -> None:
        if self.open:
            self.close(code, reason)

    def close_after(self, delay_s: float, code: int, reason: str) -> None:
        """Close later unless the connection ended before (the timer dies with it)."""
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(delay_s, self.close_if_open, code, reason))

    def abort(self, record: bool = True) -> None:
        """Drop the TCP connection at once, without a close frame (queued frames are lost)."""
        if record and not self._closing:
            self.info.closed_by = ClosedBy.ABORT
            self.info.closed_at = time.monotonic()
        self._closing = True
        self.open = False
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    # -- heartbeats ------------------------------------------------------------------

    def _arm_heartbeat_timer(self) -> None:
        if self._hb_timer is not None:
            self._hb_timer.cancel()
        cfg = self.gateway.config
        delay = cfg.heartbeat_interval_ms / 1000.0 * cfg.heartbeat_grace
        self._hb_timer = asyncio.get_running_loop().call_later(delay, self._heartbeat_missed)

    def _heartbeat_missed(self) -> None:
        if not self.open:
            return
        self.gateway.violation(self, ViolationKind.HEARTBEAT_TIMEOUT, CloseCode.UNKNOWN_ERROR)
        self.close(CloseCode.UNKNOWN_ERROR, "heartbeat timeout")

    # -- rules -------------------------------------------------------------------------

    def _reject(self, kind: ViolationKind, code: int, reason: str) -> None:
        self.gateway.violation(self, kind, code, reason)
        self.close(code, reason)

    def _on_payload(self, data: bytes) -> None:
        gw = self.gateway
        cfg = gw.config
        self.info.payloads += 1
        now = time.monotonic()
        if not self._send_limiter.hit(now):
            self._reject(
                ViolationKind.SEND_RATE_LIMIT,
                CloseCode.RATE_LIMITED,
                "You are being rate limited.",
            )
            return
        if len(data) > cfg.payload_limit:
            self._reject(
                ViolationKind.PAYLOAD_TOO_LARGE, CloseCode.DECODE_ERROR, "Payload too large."
            )
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._reject(
                ViolationKind.DECODE_ERROR, CloseCode.DECODE_ERROR, "Error while decoding payload."
            )
            return
        op = payload.get("op") if isinstance(payload, dict) else None
        if not isinstance(op, int) or isinstance(op, bool):
            self._reject(
                ViolationKind.DECODE_ERROR, CloseCode.DECODE_ERROR, "Error while decoding payload."
            )
            return
        d = payload.get("d")
        if op not in CLIENT_OPCODES:
            self._reject(ViolationKind.UNKNOWN_OPCODE, CloseCode.UNKNOWN_OPCODE, "Unknown opcode.")
            return
        if op == Opcode.HEARTBEAT:
            self._on_heartbeat(d, now)
            return
        if self.session is None:
            if op == Opcode.IDENTIFY:
                self._on_identify(d, now)
            elif op == Opcode.RESUME:
                self._on_resume(d, now)
            else:
                self._reject(
                    ViolationKind.NOT_AUTHENTICATED,
                    CloseCode.NOT_AUTHENTICATED,
                    "Not authenticated.",
                )
            return
        if op in (Opcode.IDENTIFY, Opcode.RESUME):
            self._reject(
                ViolationKind.ALREADY_AUTHENTICATED,
                CloseCode.ALREADY_AUTHENTICATED,
                "Already authenticated.",
            )
            return
        gw.record.add(CommandRecord(self.conn_id, self.session.shard_id, op, d, now))
        if op == Opcode.REQUEST_GUILD_MEMBERS:
            gw.answer_request_members(self.session, d, now)

    def _on_heartbeat(self, d: Any, now: float) -> None:
        self.info.heartbeats += 1
        self._arm_heartbeat_timer()
        acked = not self.zombie
        if acked:
            self.info.acks += 1
            self.enqueue(_HEARTBEAT_ACK)
        self.gateway.record.add(
            HeartbeatRecord(self.conn_id, now, d if isinstance(d, int) else None, acked)
        )

    def _on_identify(self, d: Any, now: float) -> None:
        gw = self.gateway
        cfg = gw.config

        def outcome(result: IdentifyOutcome, code: int | None = None, shard: Any = None) -> None:
            shard_id, num = shard if shard else (None, None)
            intents = d.get("intents") if isinstance(d, dict) else None
            gw.record.add(
                IdentifyRecord(
                    self.conn_id,
                    shard_id,
                    num,
                    intents if isinstance(intents, int) else None,
                    now,
                    result,
                    code,
                    self.session.session_id if self.session else None,
                    d.get("presence") if isinstance(d, dict) else None,
                    d.get("large_threshold") if isinstance(d, dict) else None,
                )
            )

        if not isinstance(d, dict) or not isinstance(d.get("token"), str):
            outcome(IdentifyOutcome.REJECTED, CloseCode.UNKNOWN_OPCODE)
            self._reject(
                ViolationKind.INVALID_PAYLOAD, CloseCode.UNKNOWN_OPCODE, "Invalid identify payload."
            )
            return
        if not gw.token_ok(d["token"]):
            outcome(IdentifyOutcome.REJECTED, CloseCode.AUTHENTICATION_FAILED)
            self._reject(
                ViolationKind.AUTH_FAILED, CloseCode.AUTHENTICATION_FAILED, "Authentication failed."
            )
            return
        raw_shard = d.get("shard")
        shard = _parse_shard([0, 1] if raw_shard is None else raw_shard, cfg.max_concurrency)
        if shard is None:
            outcome(IdentifyOutcome.REJECTED, CloseCode.INVALID_SHARD)
            self._reject(ViolationKind.INVALID_SHARD, CloseCode.INVALID_SHARD, "Invalid shard.")
            return
        intents = d.get("intents")
        if (
            not isinstance(intents, int)
            or isinstance(intents, bool)
            or intents < 0
            or intents & ~ALL_INTENTS
        ):
            outcome(IdentifyOutcome.REJECTED, CloseCode.INVALID_INTENTS, shard)
            self._reject(
                ViolationKind.INVALID_INTENTS, CloseCode.INVALID_INTENTS, "Invalid intent(s)."
            )
            return
        if intents & PRIVILEGED_INTENTS & ~gw.privileged_intents:
            outcome(IdentifyOutcome.REJECTED, CloseCode.DISALLOWED_INTENTS, shard)
            self._reject(
                ViolationKind.DISALLOWED_INTENTS,
                CloseCode.DISALLOWED_INTENTS,
                "Disallowed intent(s).",
            )
            return
        guilds = gw.factory.guild_indices(*shard)
        if len(guilds) > cfg.max_guilds_per_shard:
            outcome(IdentifyOutcome.REJECTED, CloseCode.SHARDING_REQUIRED, shard)
            self._reject(
                ViolationKind.SHARDING_REQUIRED,
                CloseCode.SHARDING_REQUIRED,
                "Sharding is required.",
            )
            return
        if gw.budget.available(now) <= 0:
            outcome(IdentifyOutcome.EXHAUSTED, None, shard)
            gw.violation(self, ViolationKind.SESSION_START_EXHAUSTED, None, shard_id=shard[0])
            self.send_op(Opcode.INVALID_SESSION, False)
            gw.terminate_all_sessions()
            return
        if not gw.limiter.allowed(shard[0], now):
            outcome(IdentifyOutcome.RATE_LIMITED, None, shard)
            gw.violation(
                self,
                ViolationKind.IDENTIFY_RATE_LIMIT,
                None,
                f"bucket {gw.limiter.bucket(shard[0])} already identified within {cfg.identify_window_s} s",
                shard_id=shard[0],
            )
            self.send_op(Opcode.INVALID_SESSION, False)
            return
        gw.limiter.spend(shard[0], now)
        gw.budget.spend(now)
        session = gw.new_session(shard, intents, guilds)
        self.session = session
        self.info.shard_id = shard[0]
        self.info.session_id = session.session_id
        outcome(IdentifyOutcome.ACCEPTED, None, shard)
        session.attach(self)
        gw.send_ready(session, shard, guilds)

    def _on_resume(self, d: Any, now: float) -> None:
        gw = self.gateway
        kind = self.info.url_kind

        def outcome(result: ResumeOutcome, code: int | None = None, replayed: int = 0) -> None:
            sid = d.get("session_id") if isinstance(d, dict) else None
            seq = d.get("seq") if isinstance(d, dict) else None
            gw.record.add(
                ResumeRecord(
                    self.conn_id,
                    sid if isinstance(sid, str) else None,
                    seq if isinstance(seq, int) else None,
                    now,
                    result,
                    kind,
                    session.shard_id if session else None,
                    code,
                    replayed,
                )
            )

        session: Session | None = None
        if not isinstance(d, dict) or not isinstance(d.get("token"), str):
            outcome(ResumeOutcome.REJECTED, CloseCode.UNKNOWN_OPCODE)
            self._reject(
                ViolationKind.INVALID_PAYLOAD, CloseCode.UNKNOWN_OPCODE, "Invalid resume payload."
            )
            return
        if not gw.token_ok(d["token"]):
            outcome(ResumeOutcome.REJECTED, CloseCode.AUTHENTICATION_FAILED)
            self._reject(
                ViolationKind.AUTH_FAILED, CloseCode.AUTHENTICATION_FAILED, "Authentication failed."
            )
            return
        session = gw.sessions.get_resumable(d.get("session_id"), now)
        if session is None:
            outcome(ResumeOutcome.INVALID_SESSION)
            self.send_op(Opcode.INVALID_SESSION, False)
            return
        seq = d.get("seq")
        frames = None
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= session.seq:
            frames = session.replay_after(seq)
        if frames is None:
            outcome(ResumeOutcome.REJECTED, CloseCode.INVALID_SEQ)
            gw.violation(
                self,
                ViolationKind.INVALID_SEQ,
                CloseCode.INVALID_SEQ,
                f"seq {seq!r}, session at {session.seq}",
                shard_id=session.shard_id,
            )
            session.invalidate()
            self.close(CloseCode.INVALID_SEQ, "Invalid seq.")
            return
        previous = session.sink
        if isinstance(previous, Connection) and previous is not self:
            session.detach(previous, now, gw.config.resume_timeout_s)
            previous.close(CloseCode.UNKNOWN_ERROR, "session resumed elsewhere")
        self.session = session
        self.info.shard_id = session.shard_id
        self.info.session_id = session.session_id
        for frame in frames:
            self.enqueue(frame)
        session.attach(self)
        outcome(ResumeOutcome.ACCEPTED, None, len(frames))
        gw.dispatch(session, b"RESUMED", orjson.dumps({"_trace": _TRACE}), None)


def _parse_shard(value: Any, max_concurrency: int) -> tuple[int, int] | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    shard_id, total = value
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (shard_id, total)):
        return None
    if total < 1 or not 0 <= shard_id < total:
        return None
    if max_concurrency > 1 and total % max_concurrency:
        return None
    return shard_id, total


class Gateway:
    """All gateway state of one simulator, and the aiohttp handler of its websocket URLs."""

    def __init__(
        self,
        config: SimulatorConfig,
        record: Record,
        factory: EventFactory,
        resume_url: Callable[[], str],
    ) -> None:
        self.config = config
        self.record = record
        self.factory = factory
        self._resume_url = resume_url
        now = time.monotonic()
        self.sessions = SessionStore()
        self.limiter = IdentifyLimiter(config.max_concurrency, config.identify_window_s)
        self.budget = SessionStartBudget(
            config.session_start_total,
            config.session_start_initial,
            config.session_reset_after_ms,
            now,
        )
        self.connections: dict[int, Connection] = {}
        self.event_rate = config.event_rate
        self.chaos_rate = config.chaos_rate
        #: The Developer Portal toggles as they are now (``set_privileged_intents``).
        self.privileged_intents = config.privileged_intents
        self.chaos = ChaosPicker(config.chaos_seed, config.chaos_kinds)
        self._next_conn_id = 1
        self._ticker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._all_members_requests: dict[int, float] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_loop(), name="sim-ticker")

    async def stop(self) -> None:
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for conn in list(self.connections.values()):
            conn.abort()
        # handlers finish quickly once their transport is gone
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)

    # -- aiohttp handler -----------------------------------------------------------------

    async def handle(self, request: web.Request, url_kind: UrlKind) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            timeout=2.0, autoping=True, compress=False, max_msg_size=_MAX_READ, decode_text=False
        )
        await ws.prepare(request)
        if self._stopping:
            await ws.close(code=CloseCode.UNKNOWN_ERROR, message=b"server shutting down")
            return ws
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(request, ws, url_kind)
        finally:
            if task is not None:
                self._handlers.discard(task)
        return ws

    async def _serve(
        self, request: web.Request, ws: web.WebSocketResponse, url_kind: UrlKind
    ) -> None:
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        query = request.query
        v_raw = query.get("v")
        v = int(v_raw) if v_raw is not None and v_raw.isdigit() and len(v_raw) < 4 else None
        encoding = query.get("encoding", "json")
        compress = query.get("compress", "none")
        info = ConnectionRecord(conn_id, url_kind, v, encoding, compress, time.monotonic())
        self.record.connections[conn_id] = info
        self.record.changed()

        async def refuse(kind: ViolationKind, code: int, reason: str) -> None:
            self.record.add(Violation(kind, conn_id, time.monotonic(), code, None, reason))
            info.closed_by, info.close_code, info.closed_at = (
                ClosedBy.SERVER,
                code,
                time.monotonic(),
            )
            await ws.close(code=code, message=reason.encode())

        if v not in SUPPORTED_API_VERSIONS:
            await refuse(
                ViolationKind.INVALID_API_VERSION,
                CloseCode.INVALID_API_VERSION,
                "Invalid API version.",
            )
            return
        if encoding != "json":
            await refuse(
                ViolationKind.UNSUPPORTED_ENCODING,
                CloseCode.DECODE_ERROR,
                f"encoding={encoding[:20]} is not supported by the simulator; use encoding=json",
            )
            return
        try:
            compression = Compression(compress)
        except ValueError:
            await refuse(
                ViolationKind.UNSUPPORTED_ENCODING,
                CloseCode.DECODE_ERROR,
                f"compress={compress[:20]} is not supported; use zlib-stream or zstd-stream",
            )
            return
        conn = Connection(self, conn_id, ws, request, info, compression)
        self.connections[conn_id] = conn
        await conn.run()

    # -- called by connections -------------------------------------------------------------

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.config.token.encode())

    def violation(
        self,
        conn: Connection,
        kind: ViolationKind,
        code: int | None,
        detail: str = "",
        shard_id: int | None = None,
    ) -> None:
        if shard_id is None and conn.session is not None:
            shard_id = conn.session.shard_id
        self.record.add(Violation(kind, conn.conn_id, time.monotonic(), code, shard_id, detail))

    def new_session(self, shard: tuple[int, int], intents: int, guilds: range) -> Session:
        session = Session(
            shard[0],
            shard[1],
            intents,
            guilds,
            self.factory.allowed_types(intents),
            self.config.replay_buffer,
        )
        self.sessions.add(session)
        return session

    def send_ready(self, session: Session, shard: tuple[int, int], guilds: range) -> None:
        ready = self.factory.ready(session.session_id, self._resume_url(), shard, guilds)
        self.dispatch(session, b"READY", orjson.dumps(ready), None)
        for index in guilds:
            self.dispatch(
                session, b"GUILD_CREATE", orjson.dumps(self.factory.guild_create(index)), None
            )

    def dispatch(self, session: Session, t: bytes, d: bytes, event_id: int | None) -> int:
        seq, conn_id = session.dispatch(t, d)
        if self.config.record_dispatches:
            self.record.dispatches.append(
                DispatchRecord(
                    session.shard_id,
                    session.session_id,
                    seq,
                    t.decode(),
                    event_id,
                    conn_id,
                    time.monotonic(),
                )
            )
            self.record.changed()
        return seq

    def connection_closed(self, conn: Connection) -> None:
        self.connections.pop(conn.conn_id, None)
        session = conn.session
        if session is None or session.sink is not conn:
            return
        info = conn.info
        if info.closed_by is ClosedBy.CLIENT and info.close_code in (
            CloseCode.NORMAL,
            CloseCode.GOING_AWAY,
        ):
            session.invalidate()  # Discord ends the session on a client close with 1000/1001
        elif session.state is not SessionState.INVALID:
            session.detach(conn, time.monotonic(), self.config.resume_timeout_s)
        self.record.changed()

    def server_closed(self, conn: Connection, code: int) -> None:
        session = conn.session
        if session is None or session.sink is not conn:
            return
        if close_action(code) is CloseAction.RESUME:
            session.detach(conn, time.monotonic(), self.config.resume_timeout_s)
        else:
            session.invalidate()

    def terminate_all_sessions(self) -> None:
        """The session-start budget ran out: Discord ends every session and resets the token."""
        for session in list(self.sessions.sessions.values()):
            sink = session.sink
            session.invalidate()
            if isinstance(sink, Connection):
                sink.close(
                    CloseCode.AUTHENTICATION_FAILED,
                    "session start limit exhausted: sessions terminated",
                )

    def answer_request_members(self, session: Session, d: Any, now: float) -> None:
        """Op 8: one GUILD_MEMBERS_CHUNK per requested guild of this session.

        Requesting *all* members (``query: ""``, ``limit: 0``) of a guild is
        limited to once per ``member_request_window_s`` per guild (Discord:
        30 s since 2025-08-14); a request over the limit gets a
        ``RATE_LIMITED`` dispatch instead (shared/PROTOCOL.md section 1).
        """
        if not isinstance(d, dict):
            return
        raw = d.get("guild_id")
        ids = raw if isinstance(raw, list) else [raw]
        request_all = d.get("query") == "" and d.get("limit") == 0
        window = self.config.member_request_window_s
        for gid in ids:
            if not isinstance(gid, str | int) or not str(gid).isdigit():
                continue
            index = (int(gid) >> 22) - GUILD_BASE
            if index not in session.guild_indices or self.factory.guild(index).id != int(gid):
                continue
            if request_all:
                last = self._all_members_requests.get(index)
                if last is not None and now - last < window:
                    meta: dict[str, Any] = {"guild_id": str(gid)}
                    if "nonce" in d:
                        meta["nonce"] = d["nonce"]
                    limited = {
                        "opcode": int(Opcode.REQUEST_GUILD_MEMBERS),
                        "retry_after": round(window - (now - last), 3),
                        "meta": meta,
                    }
                    self.dispatch(session, b"RATE_LIMITED", orjson.dumps(limited), None)
                    continue
                self._all_members_requests[index] = now
            members = self.factory.guild_create(index)["members"]
            chunk: dict[str, Any] = {
                "guild_id": str(gid),
                "members": members,
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
            }
            if "nonce" in d:
                chunk["nonce"] = d["nonce"]
            self.dispatch(session, b"GUILD_MEMBERS_CHUNK", orjson.dumps(chunk), None)

    # -- load -----------------------------------------------------------------------

    def generate(self, session: Session, count: int, t: str | None = None) -> list[int]:
        """Produce ``count`` events into ``session`` (sent live, or buffered for replay)."""
        table = session.event_table
        if t is None and not table:
            return []
        guilds = session.guild_indices
        if len(guilds):
            n_guilds = len(guilds)
        else:
            phantom = (session.shard_id - guilds.start) % session.num_shards + guilds.start
            guilds = range(phantom, phantom + 1)
            n_guilds = 1
        factory = self.factory
        content = bool(session.intents & Intent.MESSAGE_CONTENT)
        ids: list[int] = []
        for _ in range(count):
            n = session.event_n
            session.event_n = n + 1
            kind = t if t is not None else table[n % len(table)]
            d, event_id = factory.event(kind, guilds[n % n_guilds], n, content)
            self.dispatch(session, _EVENT_NAMES[kind], d, event_id)
            ids.append(event_id)
        return ids

    def emit(self, shard_id: int, count: int, t: str | None = None) -> list[int]:
        if t is not None and t not in EVENT_INTENTS:
            raise ValueError(f"event_type must be one of {', '.join(EVENT_INTENTS)}, got {t!r}")
        ids: list[int] = []
        for session in self.sessions.for_shard(shard_id):
            ids.extend(self.generate(session, count, t))
        return ids

    def set_event_rate(self, rate: float) -> None:
        self.event_rate = rate
        self._wake.set()

    def set_chaos_rate(self, rate: float) -> None:
        self.chaos_rate = rate
        self._wake.set()

    def set_privileged_intents(self, value: int) -> None:
        """Flip the Developer Portal toggles: later IDENTIFYs are checked against ``value``.

        Sessions already running keep their intents, and the application's
        ``flags`` (``GET /oauth2/applications/@me``) follow at once.
        """
        if value & ~PRIVILEGED_INTENTS or value < 0:
            raise ValueError(
                f"privileged intents may only contain GUILD_MEMBERS, GUILD_PRESENCES and "
                f"MESSAGE_CONTENT (mask {PRIVILEGED_INTENTS}), got {value}"
            )
        self.privileged_intents = value
        self.factory.bot.privileged_intents = value

    def set_session_start_limit(
        self,
        total: int | None = None,
        remaining: int | None = None,
        reset_after_ms: int | None = None,
    ) -> None:
        """Change the daily session-start limit (``SessionStartBudget.set_limit``)."""
        if total is not None and not 1 <= total <= 1 << 31:
            raise ValueError(f"total must be between 1 and {1 << 31}, got {total}")
        if remaining is not None and not 0 <= remaining <= (total or self.budget.total):
            raise ValueError(
                f"remaining must be between 0 and total ({total or self.budget.total}), got {remaining}"
            )
        if reset_after_ms is not None and not 0 <= reset_after_ms <= SESSION_START_WINDOW_MS:
            raise ValueError(
                f"reset_after must be between 0 and {SESSION_START_WINDOW_MS} ms, got {reset_after_ms}"
            )
        self.budget.set_limit(time.monotonic(), total, remaining, reset_after_ms)

    async def _tick_loop(self) -> None:
        last = time.monotonic()
        while True:
            busy = self.event_rate > 0 or self.chaos_rate > 0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.01 if busy else 0.25)
            now = time.monotonic()
            dt, last = now - last, now
            self.tick(now, dt)

    def tick(self, now: float, dt: float) -> None:
        rate = self.event_rate
        if rate > 0:
            cap = rate * _MAX_BURST_S + 1
            for session in self.sessions.live():
                if session.state is SessionState.DETACHED and now >= session.expires_at:
                    continue
                credit = min(session.event_credit + rate * dt, cap)
                n = int(credit)
                session.event_credit = credit - n
                if n:
                    self.generate(session, n)
        if self.chaos_rate > 0:
            p = self.chaos_rate * dt
            for conn in list(self.connections.values()):
                if conn.open and conn.session is not None and self.chaos.hits(p):
                    kind, params = self.chaos.pick()
                    self.apply_fault(conn, kind, params, chaos=True)
        self.sessions.sweep(now)

    # -- faults -------------------------------------------------------------------------

    def targets(self, shard_id: int | str | None, conn_id: int | None = None) -> list[Connection]:
        conns = [c for c in self.connections.values() if c.open]
        if conn_id is not None:
            return [c for c in conns if c.conn_id == conn_id]
        if shard_id in (None, "all"):
            return conns
        return [c for c in conns if c.session is not None and c.session.shard_id == shard_id]

    def inject(
        self,
        shard_id: int | str | None,
        fault: FaultKind | str,
        conn_id: int | None = None,
        **params: Any,
    ) -> list[int]:
        kind = FaultKind.parse(fault)
        _check_params(kind, params)
        hit = self.targets(shard_id, conn_id)
        for conn in hit:
            self.apply_fault(conn, kind, params, chaos=False)
        return [c.conn_id for c in hit]

    def apply_fault(
        self, conn: Connection, kind: FaultKind, params: dict[str, Any], chaos: bool
    ) -> None:
        shard_id = conn.session.shard_id if conn.session else None
        self.record.add(
            FaultRecord(conn.conn_id, shard_id, kind.value, dict(params), time.monotonic(), chaos)
        )
        if kind is FaultKind.RECONNECT:
            conn.send_op(Opcode.RECONNECT, None)
            after = params.get("close_after_s")
            if after is not None:
                conn.close_after(float(after), CloseCode.UNKNOWN_ERROR, "reconnect")
        elif kind is FaultKind.INVALID_SESSION:
            resumable = bool(params.get("resumable", params.get("d", False)))
            if not resumable and conn.session is not None:
                conn.session.invalidate()
            conn.send_op(Opcode.INVALID_SESSION, resumable)
        elif kind is FaultKind.CLOSE:
            code = int(params.get("code") or CloseCode.UNKNOWN_ERROR)
            conn.close(code, str(params.get("reason", "injected close")))
        elif kind is FaultKind.DROP:
            conn.abort()
        elif kind is FaultKind.ZOMBIE:
            conn.zombie = True
        elif kind is FaultKind.MALFORMED_JSON:
            conn.enqueue(b'{"t":"MESSAGE_CREATE","s":,"op":0,"d":{not json')
        elif kind is FaultKind.TRUNCATED_FRAME:
            body = control(Opcode.HEARTBEAT_ACK, {"padding": "x" * 64})
            data = conn.compressor.compress(body) if conn.compressor is not None else body
            conn.enqueue_raw(data[: max(1, len(data) // 2)])
        elif kind is FaultKind.UNKNOWN_OPCODE:
            conn.send_op(42, None)
        elif kind is FaultKind.HEARTBEAT_REQUEST:
            conn.send_op(Opcode.HEARTBEAT, None)

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        out = []
        for s in self.sessions.sessions.values():
            out.append(
                {
                    "session_id": s.session_id,
                    "shard": [s.shard_id, s.num_shards],
                    "state": s.state.value,
                    "seq": s.seq,
                    "buffered": len(s.buffer),
                    "conn_id": s.sink.conn_id if s.sink is not None else None,
                    "expires_in_s": max(0.0, s.expires_at - now)
                    if s.state is SessionState.DETACHED
                    else None,
                    "guilds": len(s.guild_indices),
                }
            )
        return out


def _check_params(kind: FaultKind, params: dict[str, Any]) -> None:
    allowed: dict[FaultKind, Iterable[str]] = {
        FaultKind.RECONNECT: ("close_after_s",),
        FaultKind.INVALID_SESSION: ("resumable", "d"),
        FaultKind.CLOSE: ("code", "reason"),
    }
    extra = set(params) - set(allowed.get(kind, ()))
    if extra:
        raise ValueError(f"fault {kind.value} takes no parameter(s) {sorted(extra)}")
    code = params.get("code")
    if code is not None and (
        not isinstance(code, int) or isinstance(code, bool) or not (1000 <= code <= 4999)
    ):
        raise ValueError(f"close code must be an integer 1000-4999, got {code!r}")
    after = params.get("close_after_s")
    if after is not None and (not isinstance(after, int | float) or after < 0):
        raise ValueError(f"close_after_s must be a number >= 0, got {after!r}")
