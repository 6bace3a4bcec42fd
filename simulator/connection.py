"""One gateway websocket: the rules applied to what its client sends, and its writer.

:class:`Connection` is a reader (the rules: limits, decoding, opcodes,
IDENTIFY and RESUME) and a writer task, the only place that writes frames,
so frames go out in the order of :meth:`Connection.enqueue`. Everything
shared between connections (sessions, limiters, the budget, load, the
record) belongs to :class:`simulator.gateway.Gateway`, which the connection
calls back into.

IDENTIFY's shard (simulator.routing): ``[shard_id, num_shards]`` may use
any valid count, also one that differs from other live sessions (Discord
allows that while a bot reshards); 4010 for an invalid one, 4011 when the
shard would hold more than ``max_guilds_per_shard`` guilds or the count is
below the bot's minimum. The session's READY and GUILD_CREATEs list the
guilds of its shard under its own ``num_shards``.

Undocumented client payload rules: ``d`` of Identify/Resume that is not an
object, or lacks the token, gets 4001 (invalid payload for an opcode);
missing intents get 4013.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import WSMsgType, web

from protocol.compression import (
    Compression,
    Compressor,
    ZlibStreamCompressor,
    ZstdStreamCompressor,
)
from protocol.gateway import CLIENT_OPCODES, CloseCode, Opcode
from protocol.intents import ALL_INTENTS, PRIVILEGED_INTENTS
from protocol.wsframe import server_frame_header
from simulator.config import SimulatorConfig
from simulator.record import (
    ClosedBy,
    CommandRecord,
    ConnectionRecord,
    HeartbeatRecord,
    IdentifyOutcome,
    IdentifyRecord,
    ResumeOutcome,
    ResumeRecord,
    ViolationKind,
)
from simulator.routing import min_shard_count, parse_shard, sharding_required
from simulator.sessions import SendLimiter, Session, Sink

if TYPE_CHECKING:
    from simulator.gateway import Gateway

_HEARTBEAT_ACK: Final = b'{"t":null,"s":null,"op":11,"d":null}'
_TRACE: Final = ['["gateway-prd-sim-1",{"micros":0.0}]']


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
                    parts.append(server_frame_header(first_byte, len(data)))
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
        session = self.session
        gw.record.add(CommandRecord(self.conn_id, session.shard_id, op, d, now, session.num_shards))
        if op == Opcode.REQUEST_GUILD_MEMBERS:
            gw.answer_request_members(session, d, now)

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

    def _credentials_ok(self, d: Any, what: str, rejected: Callable[[int], None]) -> bool:
        """The prelude IDENTIFY and RESUME share: an object with the right token.

        On failure ``rejected(code)`` records the outcome and the connection is closed.
        """
        if not isinstance(d, dict) or not isinstance(d.get("token"), str):
            rejected(CloseCode.UNKNOWN_OPCODE)
            self._reject(
                ViolationKind.INVALID_PAYLOAD, CloseCode.UNKNOWN_OPCODE, f"Invalid {what} payload."
            )
            return False
        if not self.gateway.token_ok(d["token"]):
            rejected(CloseCode.AUTHENTICATION_FAILED)
            self._reject(
                ViolationKind.AUTH_FAILED, CloseCode.AUTHENTICATION_FAILED, "Authentication failed."
            )
            return False
        return True

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

        def rejected(code: int) -> None:
            outcome(IdentifyOutcome.REJECTED, code)

        if not self._credentials_ok(d, "identify", rejected):
            return
        raw_shard = d.get("shard")
        shard = parse_shard([0, 1] if raw_shard is None else raw_shard, cfg.max_concurrency)
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
        if sharding_required(shard[1], len(guilds), cfg.guild_count, cfg.max_guilds_per_shard):
            outcome(IdentifyOutcome.REJECTED, CloseCode.SHARDING_REQUIRED, shard)
            least = min_shard_count(cfg.guild_count, cfg.max_guilds_per_shard)
            gw.violation(
                self,
                ViolationKind.SHARDING_REQUIRED,
                CloseCode.SHARDING_REQUIRED,
                f"shard {list(shard)} would hold {len(guilds)} guilds (at most "
                f"{cfg.max_guilds_per_shard}); {cfg.guild_count} guilds need at least {least} shards",
                shard_id=shard[0],
            )
            self.close(CloseCode.SHARDING_REQUIRED, "Sharding is required.")
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
        self._bind(session)
        outcome(IdentifyOutcome.ACCEPTED, None, shard)
        session.attach(self)
        gw.send_ready(session, shard, guilds)

    def _bind(self, session: Session) -> None:
        self.session = session
        self.info.shard_id = session.shard_id
        self.info.num_shards = session.num_shards
        self.info.session_id = session.session_id

    def _on_resume(self, d: Any, now: float) -> None:
        gw = self.gateway
        kind = self.info.url_kind
        session: Session | None = None

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
                    session.num_shards if session else None,
                )
            )

        def rejected(code: int) -> None:
            outcome(ResumeOutcome.REJECTED, code)

        if not self._credentials_ok(d, "resume", rejected):
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
        self._bind(session)
        for frame in frames:
            self.enqueue(frame)
        session.attach(self)
        outcome(ResumeOutcome.ACCEPTED, None, len(frames))
        gw.dispatch(session, b"RESUMED", orjson.dumps({"_trace": _TRACE}), None)
