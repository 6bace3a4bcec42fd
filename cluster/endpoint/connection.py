"""One client websocket of the endpoint: Discord's rules for what it sends, and its writer.

The checks are pure functions (:func:`parse_query`, :func:`check_identify`,
:func:`check_resume`, :func:`check_payload`), each returning what was asked or
a :class:`Refusal` (the close code and reason a client gets, as Discord would
answer; shared/PROTOCOL.md section 2). :class:`Connection` applies them to
what it reads and hands the outcome to the endpoint (:mod:`cluster.endpoint.server`),
which owns the sessions.

Writing: a connection writes whole frames with one ``transport.write`` each
round (control frames at once, dispatches from its session's replay buffer
when the endpoint flushes), compressed with the connection's own zlib-stream
or zstd-stream context, so frames go out in order without a writer task.
While more than ``high_water`` bytes wait in the socket the connection writes
nothing more; dispatches wait in the session's bounded buffer, and a client
that lets one fall out is cut off (the endpoint decides; see
:mod:`cluster.endpoint.session`). Closing writes a close frame and closes the
transport, or aborts it when the client does not read.

Bad input costs one close: over 4096 bytes 4002, not JSON 4002, an unknown
opcode 4001, a command before IDENTIFY 4003, a second IDENTIFY 4005, more than
120 payloads per 60 s 4008, a bad token 4004, a bad shard 4010/4011, bad
intents 4013/4014. A frame over :data:`MAX_FRAME_BYTES` is refused by aiohttp
with 1009.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import WSMsgType, web

from cluster.endpoint.filters import IntentFilter
from cluster.endpoint.session import ClientSession, SendWindow
from protocol.compression import Compression, Compressor, ZlibStreamCompressor, ZstdStreamCompressor
from protocol.gateway import (
    CLIENT_OPCODES,
    CLIENT_PAYLOAD_LIMIT,
    SEND_LIMIT,
    SEND_WINDOW_S,
    SUPPORTED_API_VERSIONS,
    CloseCode,
    Opcode,
)
from protocol.intents import ALL_INTENTS, PRIVILEGED_INTENTS, intent_names
from protocol.wsframe import server_frame_header

if TYPE_CHECKING:
    from cluster.endpoint.server import GatewayEndpoint

log = logging.getLogger("cluster.gateway")

#: aiohttp refuses (1009) frames larger than this before we see them.
MAX_FRAME_BYTES: Final = 64 * 1024
#: A close frame's reason is at most 123 bytes (RFC 6455 5.5: 125 with the code).
_MAX_REASON: Final = 123
#: A client that does not take a close frame within this long is aborted.
_CLOSE_GRACE_S: Final = 2.0
_ACK: Final = b'{"t":null,"s":null,"op":11,"d":null}'
_FRAME: Final = b'{"t":"%s","s":%d,"op":0,"d":%s}'


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a client is closed: the close code and the reason it reads."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class IdentifyRequest:
    shard_id: int
    num_shards: int
    intents: int


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    session_id: str
    seq: int


# -- the rules (pure) ---------------------------------------------------------------------------


def parse_query(query: Mapping[str, str]) -> Compression | Refusal:
    """``?v=10&encoding=json&compress=zlib-stream`` -> the transport compression."""
    version = query.get("v", "10")
    if not (version.isascii() and version.isdigit()) or int(version) not in SUPPORTED_API_VERSIONS:
        return Refusal(CloseCode.INVALID_API_VERSION, "Invalid API version.")
    encoding = query.get("encoding", "json")
    if encoding != "json":
        return Refusal(CloseCode.DECODE_ERROR, "Only encoding=json is supported by this endpoint.")
    compress = query.get("compress")
    if compress is None or compress in ("", "none"):
        return Compression.NONE
    try:
        compression = Compression(compress)
    except ValueError:
        return Refusal(CloseCode.DECODE_ERROR, "Unknown compress value.")
    return compression


def token_matches(given: object, token: str) -> bool:
    """The bot token, compared in constant time (a ``Bot `` prefix is accepted)."""
    if not isinstance(given, str):
        return False
    if given.startswith("Bot "):
        given = given[4:]
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


def _describe(shards: Collection[int]) -> str:
    ordered = sorted(shards)
    if ordered and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(str(s) for s in ordered[:6]) + ("..." if len(ordered) > 6 else "")


def check_identify(
    d: Any,
    token: str,
    total_shards: int,
    local_shards: Collection[int] | None,
    cluster_intents: int,
) -> IdentifyRequest | Refusal:
    """An IDENTIFY's ``d`` -> what it asks for, or why it is refused.

    ``local_shards``: the shards this supervisor runs (None: not known yet, any
    shard of the cluster is taken and waits).
    """
    if not isinstance(d, dict) or not isinstance(d.get("token"), str):
        return Refusal(CloseCode.UNKNOWN_OPCODE, "Invalid identify payload.")
    if not token_matches(d["token"], token):
        return Refusal(CloseCode.AUTHENTICATION_FAILED, "Authentication failed.")
    intents = d.get("intents")
    if (
        not isinstance(intents, int)
        or isinstance(intents, bool)
        or intents < 0
        or intents & ~ALL_INTENTS
    ):
        return Refusal(CloseCode.INVALID_INTENTS, "Invalid intent(s).")
    missing = intents & PRIVILEGED_INTENTS & ~cluster_intents
    if missing:
        names = ",".join(intent_names(missing))
        return Refusal(
            CloseCode.DISALLOWED_INTENTS,
            f"Disallowed intent(s): the cluster runs without {names}"[:_MAX_REASON],
        )
    shard = d.get("shard")
    if shard is None:
        if total_shards != 1:
            return Refusal(
                CloseCode.SHARDING_REQUIRED,
                f"Sharding is required: the cluster runs {total_shards} shards, "
                f"IDENTIFY with shard [i, {total_shards}].",
            )
        shard = [0, 1]
    if (
        not isinstance(shard, list)
        or len(shard) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
    ):
        return Refusal(CloseCode.INVALID_SHARD, "Invalid shard.")
    shard_id, num_shards = shard
    if num_shards != total_shards:
        return Refusal(
            CloseCode.INVALID_SHARD,
            f"Invalid shard: the cluster runs {total_shards} shards, not {num_shards}.",
        )
    if not 0 <= shard_id < num_shards:
        return Refusal(CloseCode.INVALID_SHARD, "Invalid shard.")
    if local_shards is not None and shard_id not in local_shards:
        return Refusal(
            CloseCode.INVALID_SHARD,
            f"Invalid shard: shard {shard_id} runs on another host; this one runs "
            f"{_describe(local_shards)}."[:_MAX_REASON],
        )
    return IdentifyRequest(shard_id, num_shards, intents)


def check_resume(d: Any, token: str) -> ResumeRequest | Refusal:
    if not isinstance(d, dict) or not isinstance(d.get("token"), str):
        return Refusal(CloseCode.UNKNOWN_OPCODE, "Invalid resume payload.")
    if not token_matches(d["token"], token):
        return Refusal(CloseCode.AUTHENTICATION_FAILED, "Authentication failed.")
    session_id, seq = d.get("session_id"), d.get("seq")
    if not isinstance(session_id, str) or (
        seq is not None and (not isinstance(seq, int) or isinstance(seq, bool))
    ):
        return Refusal(CloseCode.UNKNOWN_OPCODE, "Invalid resume payload.")
    return ResumeRequest(session_id, 0 if seq is None else seq)


def check_payload(data: bytes) -> tuple[int, Any] | Refusal:
    """A client payload -> ``(op, d)``, or why it is refused (size, JSON, opcode)."""
    if len(data) > CLIENT_PAYLOAD_LIMIT:
        return Refusal(CloseCode.DECODE_ERROR, "Payload too large.")
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Refusal(CloseCode.DECODE_ERROR, "Error while decoding payload.")
    op = payload.get("op") if isinstance(payload, dict) else None
    if not isinstance(op, int) or isinstance(op, bool):
        return Refusal(CloseCode.DECODE_ERROR, "Error while decoding payload.")
    if op not in CLIENT_OPCODES:
        return Refusal(CloseCode.UNKNOWN_OPCODE, "Unknown opcode.")
    return op, payload.get("d")


def control(op: int, d: Any) -> bytes:
    """A non-dispatch payload in Discord's key order."""
    return orjson.dumps({"t": None, "s": None, "op": op, "d": d})


def _compressor(compression: Compression) -> Compressor | None:
    # Level 1: the endpoint compresses every dispatch once per client; on loopback
    # the bytes matter less than the CPU.
    if compression is Compression.ZLIB_STREAM:
        return ZlibStreamCompressor(1)
    if compression is Compression.ZSTD_STREAM:
        return ZstdStreamCompressor(1)
    return None


# -- one websocket ------------------------------------------------------------------------------


class Connection:
    """One client websocket: reads and checks payloads, writes frames; the endpoint holds sessions."""

    def __init__(
        self,
        endpoint: GatewayEndpoint,
        conn_id: int,
        ws: web.WebSocketResponse,
        request: web.Request,
        compression: Compression,
        resume_url: str,
        high_water: int,
    ) -> None:
        self.endpoint = endpoint
        self.conn_id = conn_id
        self.ws = ws
        self.transport = request.transport
        self.peer = str(request.remote or "?")
        self.compressor = _compressor(compression)
        self.compression = compression
        self._first_byte = 0x81 if self.compressor is None else 0x82  # FIN + text / binary
        self.resume_url = resume_url
        self.high_water = high_water
        self.session: ClientSession | None = None
        self.filter: IntentFilter | None = None
        self.open = True
        #: monotonic time of the last heartbeat (or of Hello): zombie detection
        self.last_beat = time.monotonic()
        self.window = SendWindow(SEND_LIMIT, SEND_WINDOW_S)
        #: the close code the server sent, or the client's (None: the TCP connection was lost)
        self.close_code: int | None = None
        self.closed_by_client = False
        self.bytes_written = 0
        self._abort_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"Connection({self.conn_id}, {self.peer}, {self.session!r})"

    # -- writing --------------------------------------------------------------------------

    def _write(self, frames: list[bytes]) -> None:
        transport = self.transport
        if not self.open or transport is None or transport.is_closing():
            return
        compressor = self.compressor
        parts: list[bytes] = []
        for frame in frames:
            data = frame if compressor is None else compressor.compress(frame)
            parts.append(server_frame_header(self._first_byte, len(data)))
            parts.append(data)
        out = b"".join(parts)
        self.bytes_written += len(out)
        transport.write(out)

    def send_control(self, payload: bytes) -> None:
        self._write([payload])

    def send_op(self, op: int, d: Any) -> None:
        self._write([control(op, d)])

    def flush(self) -> int:
        """Write the session's unsent dispatches, up to the high water; how many were written."""
        session = self.session
        transport = self.transport
        if session is None or not self.open or transport is None or transport.is_closing():
            return 0
        room = self.high_water - transport.get_write_buffer_size()
        if room <= 0 or session.sent >= session.seq:
            return 0
        compressor = self.compressor
        first_byte = self._first_byte
        parts: list[bytes] = []
        size = 0
        last = session.sent
        for seq, t, d in session.unsent():
            frame = _FRAME % (t, seq, d)
            data = frame if compressor is None else compressor.compress(frame)
            parts.append(server_frame_header(first_byte, len(data)))
            parts.append(data)
            size += len(data)
            last = seq
            if size >= room:
                break
        if not parts:
            return 0
        written = last - session.sent
        transport.write(b"".join(parts))
        self.bytes_written += size
        session.mark_sent(last)
        return written

    @property
    def write_buffer(self) -> int:
        transport = self.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        """Close from our side: a close frame, then the TCP connection (aborted if it does not drain)."""
        if not self.open:
            return
        self.open = False
        self.close_code = code
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        payload = int(code).to_bytes(2, "big") + reason.encode("utf-8")[:_MAX_REASON]
        transport.write(bytes((0x88, len(payload))) + payload)
        if transport.get_write_buffer_size() > 64 * 1024:
            transport.abort()  # it does not read: the close frame would never reach it
            return
        transport.close()
        self._abort_timer = asyncio.get_running_loop().call_later(
            _CLOSE_GRACE_S, self._abort_if_open
        )

    def _abort_if_open(self) -> None:
        # close() waits for the peer to read what is buffered; do not wait forever
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (the client does not read)."""
        self.open = False
        if self.transport is not None:
            self.transport.abort()

    def refuse(self, refusal: Refusal) -> None:
        log.warning(
            "gateway client %s (%s) closed with %d: %s",
            self.conn_id,
            self.peer,
            refusal.code,
            refusal.reason,
            extra={
                "fields": {
                    "event": "gateway_refused",
                    "code": refusal.code,
                    "reason": refusal.reason,
                    "shard_id": None if self.session is None else self.session.shard_id,
                }
            },
        )
        self.endpoint.counted_close(refusal.code)
        self.close(refusal.code, refusal.reason)

    # -- reading --------------------------------------------------------------------------

    async def run(self) -> None:
        self.send_op(
            Opcode.HELLO, {"heartbeat_interval": self.endpoint.settings.heartbeat_interval_ms}
        )
        try:
            await self._read_loop()
        finally:
            self.open = False
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            self.endpoint.connection_closed(self)

    async def _read_loop(self) -> None:
        ws = self.ws
        while self.open:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                await self._on_payload(msg.data.encode("utf-8"))
            elif msg.type is WSMsgType.BINARY:
                await self._on_payload(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                self.closed_by_client = True
                self.close_code = ws.close_code
                return
            elif msg.type is WSMsgType.ERROR:
                # aiohttp refused a frame (too large: 1009, or not a websocket frame)
                if self.open:
                    self.endpoint.counted_close(CloseCode.DECODE_ERROR)
                    log.warning(
                        "gateway client %s (%s): bad frame (%s); closed",
                        self.conn_id,
                        self.peer,
                        type(ws.exception()).__name__,
                    )
                return
            else:  # CLOSING, CLOSED
                return

    async def _on_payload(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.window.hit(now):
            self.refuse(Refusal(CloseCode.RATE_LIMITED, "You are being rate limited."))
            return
        checked = check_payload(data)
        if isinstance(checked, Refusal):
            self.refuse(checked)
            return
        op, d = checked
        endpoint = self.endpoint
        if op == Opcode.HEARTBEAT:
            self.last_beat = now
            if self.session is not None:
                self.session.acknowledge(d)
            self.send_control(_ACK)
            return
        if self.session is None:
            if op == Opcode.IDENTIFY:
                endpoint.identify(self, d)
            elif op == Opcode.RESUME:
                endpoint.resume(self, d)
            else:
                self.refuse(Refusal(CloseCode.NOT_AUTHENTICATED, "Not authenticated."))
            return
        if op in (Opcode.IDENTIFY, Opcode.RESUME):
            self.refuse(Refusal(CloseCode.ALREADY_AUTHENTICATED, "Already authenticated."))
            return
        await endpoint.command(self, op, d)
