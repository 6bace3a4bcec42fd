"""The simulated gateway's shared state: sessions, limits, load, and the websocket handler.

:class:`Gateway` owns what connections share (the connections themselves,
sessions, the identify limiter, the session-start budget, the application's
settings) and one ticker task that generates load events, injects chaos
faults (simulator.faults) and expires sessions. One websocket and its rules
is a :class:`~simulator.connection.Connection`.

Load: events happen in guilds. Each generated event has one identity
(``d._sim_event_id``, the record's ``event_id``) and is produced into every
live session whose ``(shard_id, num_shards)`` covers its guild, so two shard
sets of different sizes (a bot resharding) both receive it
(simulator.routing). ``event_rate`` is per shard: each ``(shard_id,
num_shards)`` with a live session generates that many per second for the
guilds it is the source of (all of its own while one shard count is live).

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
- ``/gateway/bot``'s recommended shard count (``recommended_shards``) can
  change at run time (``set_recommended_shards``), as Discord raises it when
  a bot grows; the gateway accepts any valid count whatever it recommends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson
from aiohttp import web

from protocol.compression import Compression
from protocol.gateway import (
    SUPPORTED_API_VERSIONS,
    CloseAction,
    CloseCode,
    Opcode,
    close_action,
)
from protocol.intents import PRIVILEGED_INTENTS, Intent
from protocol.sharding import parse_snowflake
from simulator import faults
from simulator.config import EVENT_INTENTS, SESSION_START_WINDOW_MS, SimulatorConfig
from simulator.connection import Connection
from simulator.events import GUILD_BASE, EventFactory
from simulator.faults import ChaosPicker, FaultKind
from simulator.record import (
    ClosedBy,
    ConnectionRecord,
    DispatchRecord,
    Record,
    UrlKind,
    Violation,
    ViolationKind,
)
from simulator.routing import ShardRouter, Slot, check_shard_count
from simulator.sessions import (
    IdentifyLimiter,
    Session,
    SessionStartBudget,
    SessionState,
    SessionStore,
)

_EVENT_NAMES: Final = {name: name.encode() for name in EVENT_INTENTS}
_MESSAGE_CONTENT: Final = int(Intent.MESSAGE_CONTENT)
#: Messages larger than this are not even read (the limit check needs only the size).
_MAX_READ: Final = 1 << 20
#: A generation burst after a stall is capped at this many seconds of events.
_MAX_BURST_S: Final = 1.0


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
        #: What ``GET /gateway/bot`` recommends now (``set_recommended_shards``).
        self.recommended_shards = config.shards
        self._router = ShardRouter(config.guild_count, factory.allowed_types)
        self._guild_event_n = 0
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
        v = (
            int(v_raw)
            if v_raw is not None and v_raw.isascii() and v_raw.isdigit() and len(v_raw) < 4
            else None
        )
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
                    session.num_shards,
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
            if not isinstance(gid, str | int) or not (str(gid).isascii() and str(gid).isdigit()):
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

    def router(self, now: float | None = None) -> ShardRouter:
        """The live sessions by ``(shard_id, num_shards)``, rebuilt when sessions changed."""
        return self._router.sync(self.sessions, time.monotonic() if now is None else now)

    def generate(
        self,
        guilds: Sequence[int],
        count: int,
        t: str | None,
        table: Sequence[str],
        first_n: int,
        now: float,
        slot: Slot | None = None,
    ) -> list[int]:
        """Produce ``count`` events, each into every live session that covers its guild.

        Event ``n`` (from ``first_n``) happens in guild ``guilds[n % len]``
        and is of type ``t``, or ``table[n % len]`` when ``t`` is None; a
        session receives a table event only with its intents, an explicit
        ``t`` always (as ``emit`` always did). ``slot``: the events' source,
        whose sessions are the only ones covering its guilds while a single
        shard count is live (the fast path). Sent live, or buffered for
        replay; returns the ids of the events that reached a session.
        """
        if (t is None and not table) or not guilds:
            return []
        router = self.router(now)
        # one shard count live: the source slot's sessions are all that cover its guilds
        own = (
            [s for s in slot.sessions if s.live(now)]
            if slot is not None and len(router.counts) == 1
            else None
        )
        factory = self.factory
        render = factory.render
        dispatch = self.dispatch
        ids: list[int] = []
        for n in range(first_n, first_n + count):
            kind = t if t is not None else table[n % len(table)]
            index = guilds[n % len(guilds)]
            need = EVENT_INTENTS[kind] if t is None else 0
            name = _EVENT_NAMES[kind]
            event_id = factory.next_event_id()
            values: dict[str, bytes] | None = None
            full = empty = b""  # d with and without MESSAGE_CONTENT, rendered once each
            for session in own if own is not None else router.covering(index):
                intents = session.intents
                if (need and not intents & need) or (own is None and not session.live(now)):
                    continue
                if values is None:
                    values = factory.event_values(index, n, event_id)
                if intents & _MESSAGE_CONTENT:
                    body = full = full or render(kind, values, True)
                else:
                    body = empty = empty or render(kind, values, False)
                dispatch(session, name, body, event_id)
            if values is not None:
                ids.append(event_id)
        return ids

    def _generate_for(
        self, slot: Slot, count: int, t: str | None, now: float, guilds: Sequence[int]
    ) -> list[int]:
        n = slot.event_n
        slot.event_n = n + count
        return self.generate(guilds, count, t, slot.event_table, n, now, slot)

    def emit(
        self, shard_id: int, count: int, t: str | None = None, num_shards: int | None = None
    ) -> list[int]:
        """``count`` events now in the guilds of ``shard_id``, for each live shard set (or ``num_shards``'s)."""
        _check_event_type(t)
        now = time.monotonic()
        ids: list[int] = []
        for slot in self.router(now).slots_of(shard_id, num_shards):
            ids.extend(self._generate_for(slot, count, t, now, slot.guilds))
        return ids

    def emit_guild(self, guild_id: int | str, count: int, t: str | None = None) -> list[int]:
        """``count`` events now in one guild of the bot, into every live session covering it."""
        _check_event_type(t)
        gid = parse_snowflake(guild_id, "guild_id")
        index = (gid >> 22) - GUILD_BASE
        if not 0 <= index < self.config.guild_count or self.factory.guild(index).id != gid:
            raise ValueError(f"guild_id {gid} is not a guild of the bot")
        now = time.monotonic()
        source = self.router(now).source(index)
        if source is None:
            return []
        n = self._guild_event_n
        self._guild_event_n = n + count
        return self.generate((index,), count, t, source.event_table, n, now)

    def set_event_rate(self, rate: float) -> None:
        self.event_rate = rate
        self._wake.set()

    def set_chaos_rate(self, rate: float) -> None:
        self.chaos_rate = rate
        self._wake.set()

    def set_recommended_shards(self, value: int) -> None:
        """The shard count ``GET /gateway/bot`` recommends from now on (Discord raising it).

        A valid count: 1 to 2**20, a multiple of ``max_concurrency`` when that
        is above 1. Sessions already running are not touched, and IDENTIFY
        accepts any valid count whatever is recommended.
        """
        self.recommended_shards = check_shard_count(
            value, self.config.max_concurrency, "recommended_shards"
        )

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
            for slot in list(self.router(now).slots.values()):
                if not slot.sources or not slot.live(now):
                    continue
                credit = min(slot.event_credit + rate * slot.share * dt, cap)
                n = int(credit)
                slot.event_credit = credit - n
                if n:
                    self._generate_for(slot, n, None, now, slot.sources)
        if self.chaos_rate > 0:
            p = self.chaos_rate * dt
            for conn in list(self.connections.values()):
                if conn.open and conn.session is not None and self.chaos.hits(p):
                    kind, params = self.chaos.pick()
                    faults.apply_fault(conn, kind, params, chaos=True, record=self.record)
        self.sessions.sweep(now)

    # -- faults (simulator.faults) ------------------------------------------------------

    def inject(
        self,
        shard_id: int | str | None,
        fault: FaultKind | str,
        conn_id: int | None = None,
        num_shards: int | None = None,
        **params: Any,
    ) -> list[int]:
        return faults.inject(
            self.connections.values(), self.record, shard_id, fault, conn_id, num_shards, **params
        )

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


def _check_event_type(t: str | None) -> None:
    if t is not None and t not in EVENT_INTENTS:
        raise ValueError(f"event_type must be one of {', '.join(EVENT_INTENTS)}, got {t!r}")
