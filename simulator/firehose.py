"""A benchmark load source: a fixed, pre-generated dispatch stream served as fast as a client reads.

The full :class:`~simulator.Simulator` generates and compresses every event
live (about 35 us of CPU each), which would starve a receiver that needs
only 10 us per event. The firehose does the expensive part once, at start:

- ``events_per_shard`` dispatches (by default 70 % MESSAGE_CREATE of about
  1 KB with content, 30 % PRESENCE_UPDATE of about 0.5 KB, from the
  simulator's own :class:`~simulator.events.EventFactory`), sequence numbers
  ``2 .. events_per_shard + 1`` (READY is 1);
- deflated as one zlib-stream (each message ends with a Z_SYNC_FLUSH) and
  wrapped in unmasked websocket frames, joined into ~64 KB chunks.

Every connection gets the same bytes: Hello and READY (which names no shard
and has one session id for all) open the same zlib-stream on every
connection, so Hello, READY and the events are compressed once. Streaming a
shard is then a loop of ``transport.write(chunk)`` with flow control, so the
load source costs almost nothing and the receiver is the bottleneck. Nothing
can be put into a pre-generated stream, so with zlib-stream heartbeats are
not ACKed and RESUME is not answered: give clients a heartbeat interval
longer than the benchmark (the default is 10 minutes).

Paced mode (latency): ``rate`` events per second in total, evenly spaced
and dealt to the connected shards in turn. Each dispatch carries a key,
``d._k`` (the event's number in send order), and is compressed before the
stream starts (continuing each shard's stream from its state after READY),
so pacing costs one ``transport.write`` per shard per millisecond tick. The
firehose records ``time.monotonic_ns()`` (CLOCK_MONOTONIC, comparable across
processes on one host) right before each write; ``GET /_fh/sent`` returns
those send times, indexed by key, as little-endian int64s. A consumer that
notes when each key arrived has the latency of every event without the
source's own cost in it.

It speaks only what a client needs to log in: REST ``/gateway/bot``,
``/users/@me`` and ``/oauth2/applications/@me`` (the simulator's
:class:`~simulator.rest.Rest`), Hello, IDENTIFY -> READY (no guilds), and
(uncompressed only) heartbeat ACKs and op 9 for a RESUME. It enforces none of
Discord's rules: use :class:`~simulator.Simulator` for correctness. READY
names whatever ``[shard_id, num_shards]`` the IDENTIFY gave (any count, also
several side by side), but every shard streams the same events, so their
guild ids do not follow the shard formula (the Simulator's do, across shard
sets: simulator.routing).

Control (HTTP, on the same port):

- ``GET /_fh/status`` -> ``{"ready": n, "streaming": n, "finished": n}``
- ``POST /_fh/go`` ``{}`` streams the pre-generated events to every ready
  shard; ``{"rate": R, "count": C}`` sends ``C`` events per shard paced at
  ``R`` per second in total instead (at most ``events_per_shard``); it answers
  once the keyed frames are compressed, as the stream starts.
- ``GET /_fh/sent`` -> the send time of each key of the last paced stream
  (``array("q")`` bytes; 0 for a key not sent yet).

``python -m simulator.firehose --shards 16 --events 20000`` runs it alone and
prints ``PORT <n>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import WSMsgType, web

from protocol.intents import PRIVILEGED_INTENTS
from simulator.config import SimulatorConfig
from simulator.events import BotIdentity, EventFactory
from simulator.record import Record
from simulator.rest import Rest
from simulator.sessions import SessionStartBudget

#: Event mix of the stream: 7 of every 10 are MESSAGE_CREATE, 3 PRESENCE_UPDATE.
STREAM_PATTERN: Final = (
    "MESSAGE_CREATE",
    "MESSAGE_CREATE",
    "PRESENCE_UPDATE",
    "MESSAGE_CREATE",
    "MESSAGE_CREATE",
    "PRESENCE_UPDATE",
    "MESSAGE_CREATE",
    "MESSAGE_CREATE",
    "PRESENCE_UPDATE",
    "MESSAGE_CREATE",
)
_CHUNK: Final = 64 * 1024
_ALL_INTENTS: Final = PRIVILEGED_INTENTS
#: The key the paced mode puts first in ``d``: the event's number in send order.
KEY_FIELD: Final = b'"_k":'
#: How often the paced mode wakes to write what has come due.
_TICK_S: Final = 0.001


@dataclass(frozen=True, slots=True)
class FirehoseConfig:
    host: str = "127.0.0.1"
    port: int = 0
    token: str = field(default="simulated-token", repr=False)
    #: Recommended shard count answered by /gateway/bot.
    shards: int = 16
    max_concurrency: int = 16
    events_per_shard: int = 20_000
    heartbeat_interval_ms: int = 600_000
    zlib_level: int = 1
    guilds: int = 16


def _frame(payload: bytes, opcode: int) -> bytes:
    """An unmasked server websocket frame (RFC 6455 5.2) with FIN set."""
    first = 0x80 | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, n))
    elif n < 65536:
        head = bytes((first, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 127)) + n.to_bytes(8, "big")
    return head + payload


def dispatch_payloads(
    factory: EventFactory, count: int, first_seq: int = 2, guilds: int = 16
) -> list[bytes]:
    """``count`` dispatches in Discord's key order (t, s, op, d), mixed by STREAM_PATTERN."""
    out: list[bytes] = []
    for i in range(count):
        t = STREAM_PATTERN[i % len(STREAM_PATTERN)]
        d, _ = factory.event(t, i % guilds, i)
        out.append(b'{"t":"%s","s":%d,"op":0,"d":%s}' % (t.encode(), first_seq + i, d))
    return out


def compressed_stream(payloads: list[bytes], deflater: Any) -> list[bytes]:
    """The payloads, continuing ``deflater``'s zlib-stream, as binary frames in ~64 KB chunks."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for payload in payloads:
        body = deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH)
        frame = _frame(body, 0x2)
        current.append(frame)
        size += len(frame)
        if size >= _CHUNK:
            chunks.append(b"".join(current))
            current, size = [], 0
    if current:
        chunks.append(b"".join(current))
    return chunks


def _inflates_to(inflater: Any, chunks: list[bytes], payloads: list[bytes]) -> bool:
    """Whether the frames in ``chunks`` inflate (continuing ``inflater``) to ``payloads``."""
    out = bytearray()
    for chunk in chunks:
        at = 0
        while at < len(chunk):
            n = chunk[at + 1] & 0x7F
            head = 2
            if n == 126:
                n, head = int.from_bytes(chunk[at + 2 : at + 4], "big"), 4
            elif n == 127:
                n, head = int.from_bytes(chunk[at + 2 : at + 10], "big"), 10
            out += inflater.decompress(chunk[at + head : at + head + n])
            at += head + n
    return bytes(out) == b"".join(payloads)


def keyed(payload: bytes, key: int) -> bytes:
    """Put ``"_k":key`` first in ``d`` of a dispatch (Discord's key order)."""
    head, sep, rest = payload.partition(b'"d":{')
    return b"%s%s%s%d,%s" % (head, sep, KEY_FIELD, key, rest)


def read_key(payload: bytes) -> int | None:
    """The key a paced dispatch carries, or None."""
    at = payload.find(KEY_FIELD)
    if at < 0:
        return None
    start = at + len(KEY_FIELD)
    return int(payload[start : payload.index(b",", start)])


class _Conn:
    __slots__ = ("chunks", "compress", "deflater", "protocol", "shard", "transport", "ws")

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, compress: bool, shard: int
    ) -> None:
        self.ws = ws
        self.transport = request.transport
        self.protocol: Any = request.protocol
        self.compress = compress
        self.shard = shard
        self.deflater: Any = None
        self.chunks: list[bytes] = []


class Firehose:
    """The load source; ``async with Firehose(config) as fh: fh.base_url``."""

    def __init__(self, config: FirehoseConfig | None = None) -> None:
        self.config = config or FirehoseConfig()
        cfg = self.config
        self.port = cfg.port
        self.sim_config = SimulatorConfig(
            token=cfg.token,
            shards=cfg.shards,
            max_concurrency=cfg.max_concurrency,
            guilds=cfg.guilds,
            privileged_intents=_ALL_INTENTS,
        )
        self.bot = BotIdentity(cfg.token, _ALL_INTENTS)
        self.factory = EventFactory(self.sim_config, self.bot)
        self.payloads = dispatch_payloads(self.factory, cfg.events_per_shard, guilds=cfg.guilds)
        # One zlib-stream for every connection: Hello, READY, then the events.
        # READY must name the shard (discord.py reads it), so its shard id is
        # padded with a space to one width: READYs differ in one or two bytes,
        # and the events compressed after shard 0's READY inflate the same
        # after any shard's READY unless a back-reference covers those bytes;
        # :meth:`_verified` checks that per shard and compresses the shard's
        # own stream when it does not hold.
        hello = {"heartbeat_interval": cfg.heartbeat_interval_ms, "_trace": []}
        self.hello = orjson.dumps({"t": None, "s": None, "op": 10, "d": hello})
        ready = self.factory.ready("firehose-session", self.gateway_url + "resume/", (0, 0), [])
        template = orjson.dumps({"t": "READY", "s": 1, "op": 0, "d": ready})
        self._ready_template = template.replace(b'"shard":[0,0]', b'"shard":[%s,%d]')
        self._width = len(str(max(cfg.shards - 1, 0)))
        deflater = zlib.compressobj(cfg.zlib_level)
        self.z_hello = deflater.compress(self.hello) + deflater.flush(zlib.Z_SYNC_FLUSH)
        self._after_hello = deflater.copy()
        z_ready0 = deflater.compress(self.ready_payload(0, cfg.shards)) + deflater.flush(
            zlib.Z_SYNC_FLUSH
        )
        self.chunks = compressed_stream(self.payloads, deflater)
        #: per (shard, total): (compressed READY, the deflater after it, the event chunks)
        self._streams: dict[tuple[int, int], tuple[bytes, Any, list[bytes]]] = {}
        self._streams[(0, cfg.shards)] = (z_ready0, None, self.chunks)
        for shard in range(cfg.shards):
            self._verified(shard, cfg.shards)
        self.plain_chunks = [
            b"".join(_frame(p, 0x1) for p in self.payloads[i : i + 64])
            for i in range(0, len(self.payloads), 64)
        ]
        self.ready: list[_Conn] = []
        self.streaming = 0
        self.finished = 0
        self.sent_ns = array("q")
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None

    def ready_payload(self, shard: int, total: int) -> bytes:
        return self._ready_template % (str(shard).ljust(self._width).encode(), total)

    def _verified(self, shard: int, total: int) -> tuple[bytes, Any, list[bytes]]:
        """The compressed READY, the deflater state after it and the event chunks of a shard."""
        key = (shard, total)
        stream = self._streams.get(key)
        if stream is not None and stream[1] is not None:
            return stream
        deflater = self._after_hello.copy()
        ready = self.ready_payload(shard, total)
        z_ready = deflater.compress(ready) + deflater.flush(zlib.Z_SYNC_FLUSH)
        after = deflater.copy()
        chunks = self.chunks
        inflater = zlib.decompressobj()
        inflater.decompress(self.z_hello)
        if inflater.decompress(z_ready) != ready or not _inflates_to(
            inflater, chunks, self.payloads
        ):
            chunks = compressed_stream(self.payloads, deflater.copy())
        stream = self._streams[key] = (z_ready, after, chunks)
        return stream

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/"

    async def start(self) -> None:
        app = web.Application()
        budget = SessionStartBudget(1_000_000, 1_000_000, 86_400_000, time.monotonic())
        Rest(
            self.sim_config, Record(), self.bot, budget, lambda: self.gateway_url.rstrip("/")
        ).add_routes(app)
        app.router.add_get("/", self._ws)
        app.router.add_get("/resume/", self._ws)
        app.router.add_get("/_fh/status", self._status)
        app.router.add_post("/_fh/go", self._go)
        app.router.add_get("/_fh/sent", self._sent)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for conn in self.ready:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=4000), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Firehose:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- control -----------------------------------------------------------------

    async def _sent(self, request: web.Request) -> web.Response:
        return web.Response(body=self.sent_ns.tobytes(), content_type="application/octet-stream")

    async def _status(self, request: web.Request) -> web.Response:
        body = {"ready": len(self.ready), "streaming": self.streaming, "finished": self.finished}
        return web.json_response(body)

    async def _go(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        rate = float(body.get("rate", 0) or 0)
        # never more than were pre-generated: sequence numbers must keep growing
        count = min(int(body.get("count", self.config.events_per_shard)), len(self.payloads))
        conns = list(self.ready)
        if rate > 0:
            frames = [
                self._keyed_frames(conn, i, len(conns), count) for i, conn in enumerate(conns)
            ]
            self.sent_ns = array("q", bytes(8 * count * len(conns)))
            coros = [self._paced(conns, frames, rate)]
        else:
            coros = [self._flood(c) for c in conns]
        for coro in coros:
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"shards": len(conns)})

    # -- the gateway -----------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        compress = request.query.get("compress", "none")
        if compress not in ("none", "zlib-stream"):
            await ws.close(code=4000, message=b"the firehose speaks zlib-stream or none")
            return ws
        zlib_stream = compress == "zlib-stream"
        if zlib_stream:
            await ws.send_frame(self.z_hello, WSMsgType.BINARY)
        else:
            await ws.send_frame(self.hello, WSMsgType.TEXT)
        conn: _Conn | None = None
        try:
            async for msg in ws:
                if msg.type not in (web.WSMsgType.TEXT, web.WSMsgType.BINARY):
                    break
                try:
                    payload = orjson.loads(msg.data)
                    op = payload["op"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    await ws.close(code=4002, message=b"decode error")
                    break
                if op == 1:
                    # A zlib-stream is pre-generated: nothing can be put into it, so
                    # heartbeats are not ACKed there (run with a long interval).
                    if not zlib_stream:
                        await ws.send_str('{"t":null,"s":null,"op":11,"d":null}')
                elif op == 2 and conn is None:
                    shard_id, total = (payload.get("d") or {}).get("shard") or [0, 1]
                    z_ready, after, chunks = self._verified(int(shard_id), int(total))
                    if zlib_stream:
                        await ws.send_frame(z_ready, WSMsgType.BINARY)
                    else:
                        await ws.send_frame(self.ready_payload(shard_id, total), WSMsgType.TEXT)
                    conn = _Conn(ws, request, zlib_stream, int(shard_id))
                    conn.deflater = after.copy()
                    conn.chunks = chunks if zlib_stream else self.plain_chunks
                    self.ready.append(conn)
                elif op == 6 and not zlib_stream:
                    await ws.send_str('{"t":null,"s":null,"op":9,"d":false}')
        finally:
            if conn is not None and conn in self.ready:
                self.ready.remove(conn)
        return ws

    async def _write(self, conn: _Conn, data: bytes) -> bool:
        transport = conn.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        if conn.protocol.writing_paused:
            await conn.protocol._drain_helper()
        return True

    async def _flood(self, conn: _Conn) -> None:
        self.streaming += 1
        try:
            for chunk in conn.chunks:
                if not await self._write(conn, chunk):
                    return
        finally:
            self.streaming -= 1
            self.finished += 1

    def _keyed_frames(self, conn: _Conn, index: int, shards: int, count: int) -> list[bytes]:
        """The first ``count`` events of a shard as frames, keyed by their number in send order."""
        payloads = self.payloads
        frames = []
        for n in range(count):
            payload = keyed(payloads[n], n * shards + index)
            if conn.compress:
                body = conn.deflater.compress(payload) + conn.deflater.flush(zlib.Z_SYNC_FLUSH)
                frames.append(_frame(body, 0x2))
            else:
                frames.append(_frame(payload, 0x1))
        return frames

    async def _paced(self, conns: list[_Conn], frames: list[list[bytes]], rate: float) -> None:
        """Every frame at ``rate`` per second in total; event ``k`` goes to shard ``k % shards``."""
        shards = len(conns)
        total = len(self.sent_ns)
        sent_ns = self.sent_ns
        clock = time.monotonic_ns
        self.streaming += shards
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        try:
            while sent < total:
                due = min(total, int((loop.time() - start) * rate) + 1)
                first = sent
                for index in range(shards):
                    keys = range(first + (index - first) % shards, due, shards)
                    if not keys:
                        continue
                    shard_frames = frames[index]
                    data = b"".join([shard_frames[key // shards] for key in keys])
                    now = clock()
                    for key in keys:
                        sent_ns[key] = now
                    await self._write(conns[index], data)
                sent = due
                # A whole tick, never less: libuv's timers count milliseconds, and a
                # shorter sleep turns into a busy loop that takes a core from the receiver.
                await asyncio.sleep(_TICK_S)
        finally:
            self.streaming -= shards
            self.finished += shards


async def _main(config: FirehoseConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Firehose(config) as fh:
        print(f"PORT {fh.port}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulator.firehose")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="simulated-token")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=600_000)
    args = parser.parse_args(argv)
    config = FirehoseConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        shards=args.shards,
        max_concurrency=args.shards,
        events_per_shard=args.events,
        heartbeat_interval_ms=args.heartbeat_interval_ms,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_main(config))
    sys.exit(0)


if __name__ == "__main__":
    main()
