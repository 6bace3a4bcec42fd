"""The async runner of one gateway shard: it does the I/O, :mod:`worker.state` decides.

One :class:`Shard` owns one connection at a time (aiohttp websocket client)
and loops: connect -> Hello -> heartbeat + (RESUME | permit then IDENTIFY) ->
read until something ends the connection -> ask :mod:`worker.state` what that
means -> wait -> connect again, until a fatal close code or a stop.

Per connection it runs a reader, a heartbeater, a handshake task (which waits
for the identify permit while heartbeats go on, PROTOCOL.md 11) and, once the
session is ready, a command sender. Whoever sees the end of the connection
first (the reader, a zombie heartbeat, a stop) settles the connection's
verdict; the connection's owner then cancels the tasks and closes the socket
itself with the verdict's code (4000 unless the server already closed it), so
aiohttp never gets to send its default 1000, which would end the session.

The hot path is the reader: frame -> decompress -> ``peek`` (op, t, s without a
JSON parse) -> ``output.event``. Only READY, RESUMED, Hello and op 9 are
parsed; nothing is logged per event. A dispatch is relayed only when its ``s``
is above the last one relayed in its session; any other (a replay, ``s`` 0 or
null, no ``t``) is dropped and counted per reason (``ShardReport.dropped``,
:class:`protocol.ipc.DispatchDrop`), the first of each reason logged once per
connection: see :meth:`Shard._drop` for why such events are not relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import aiohttp
import orjson
from aiohttp.http import WSMessageNoDecodeText
from yarl import URL

from protocol import payloads
from protocol.compression import DEFAULT_MAX_MESSAGE_SIZE, Compression
from protocol.envelope import peek
from protocol.errors import (
    DecompressionError,
    MalformedPayloadError,
)
from protocol.gateway import API_VERSION, CLIENT_PAYLOAD_LIMIT, RESUMABLE_CLOSE_CODE, SEND_WINDOW_S
from protocol.ipc import MAX_TOPIC_BYTES, DispatchDrop, ShardReport, session_epoch
from protocol.session import Session, ShardPhase
from worker import state as sm
from worker.backoff import Backoff, BackoffPolicy
from worker.inflate import make_worker_decompressor
from worker.permits import PermitSource
from worker.ratelimit import DEFAULT_SLACK_S, SendLimiter, SendWindow
from worker.state import ConnectMode, Decision, GatewayUrl, Wait

log = logging.getLogger("worker.shard")

_WS = aiohttp.ClientWebSocketResponse[Literal[False]]


_READY: Final = "READY"
_RESUMED: Final = "RESUMED"
#: Topic frames by event name, so the hot path encodes each name once.
_TOPIC_CACHE_MAX: Final = 512
#: The close that ends a session (Discord then drops it; a RESUME would fail).
SESSION_ENDING_CLOSE_CODE: Final = 1000
#: How an op 3 payload from the control socket or gateway_send begins (encode_client_payload).
_PRESENCE_PREFIX: Final = b'{"op":3,'
#: Commands waiting for a connection, per shard; more are refused.
MAX_PENDING_COMMANDS: Final = 1000


class ShardOutput(Protocol):
    """Where a shard's events and reports go (the worker's channel to the supervisor)."""

    def event(self, shard_id: int, epoch: int, seq: int, topic: bytes, payload: bytes) -> bool:
        """Queue one dispatch without blocking; False means full: await ``drain`` and retry."""
        ...

    async def drain(self) -> None:
        """Wait until ``event`` can take more."""
        ...

    async def report(self, report: ShardReport) -> None:
        """Send a state report, ordered after every event queued before it."""
        ...


@dataclass(frozen=True, slots=True)
class ShardConfig:
    shard_id: int
    total_shards: int
    token: str = field(repr=False)
    intents: int
    gateway_url: str
    compression: Compression = Compression.ZLIB_STREAM
    api_version: int = API_VERSION
    large_threshold: int | None = None
    #: Identify's ``presence``; an op 3 the shard sends later replaces it for later IDENTIFYs.
    presence: Mapping[str, Any] | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    #: The random wait before a new session after op 9 false / 4003 / 4007 / 4009.
    new_session_delay_s: tuple[float, float] = (1.0, 5.0)
    connect_timeout_s: float = 10.0
    #: How long to wait for the server's close frame after we sent ours.
    close_timeout_s: float = 2.0
    #: A connection that does not say Hello within this time is abandoned.
    hello_timeout_s: float = 30.0
    #: Our side of the 120-per-60-s window, with slack for the server's receive times.
    send_window_s: float = SEND_WINDOW_S + DEFAULT_SLACK_S


class FatalCloseError(Exception):
    """The gateway closed with a code after which retrying cannot help."""

    def __init__(self, shard_id: int, code: int | None) -> None:
        super().__init__(f"shard {shard_id}: fatal close code {code}")
        self.shard_id = shard_id
        self.code = code


def gateway_url(base: str, api_version: int, compression: Compression) -> URL:
    """``base`` with ``v``, ``encoding`` and ``compress`` (same on every connection)."""
    query: dict[str, str] = {"v": str(api_version), "encoding": "json"}
    if compression.query_value is not None:
        query["compress"] = compression.query_value
    return URL(base).update_query(query)


@dataclass(slots=True)
class ShardCounters:
    identifies: int = 0
    resumes: int = 0
    reconnects: int = 0
    events: int = 0
    commands_sent: int = 0
    commands_refused: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    #: dispatches not relayed, per :class:`DispatchDrop` value
    dropped: dict[str, int] = field(default_factory=dict)


class Shard:
    """One gateway shard. ``run()`` returns on stop; raises :class:`FatalCloseError`."""

    def __init__(
        self,
        config: ShardConfig,
        http: aiohttp.ClientSession,
        permits: PermitSource,
        output: ShardOutput,
        saved: Session | None = None,
        rng: Callable[[], float] = random.random,
        identify_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.config = config
        #: Shared by a group's shards: a connection that will IDENTIFY takes one
        #: before connecting and gives it back at READY (or when it ends).
        self._identify_slots = identify_slots
        self._holding_slot = False
        self._stopped = asyncio.Event()
        self._http = http
        self._permits = permits
        self._output = output
        self._rng = rng
        self._state = sm.initial_state(saved)
        self._seq = saved.seq if saved else 0
        self._epoch = session_epoch(saved.session_id) if saved else 0
        self._backoff = Backoff(config.backoff, rng)
        self.counters = ShardCounters()
        self.latency_ms: float | None = None
        self.fatal_code: int | None = None
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._verdict: asyncio.Future[Decision] | None = None
        self._commands: deque[bytes] = deque()
        #: stop() with end_session: the close is 1000 (the session ends, Discord stops
        #: keeping events for it); otherwise 4000 (resumable)
        self._end_session = False
        self._presence: Mapping[str, Any] | None = config.presence
        self._command_ready = asyncio.Event()
        self._ack_pending = False
        self._beat_sent_at = 0.0
        self._unknown_ops_logged = False
        #: drop reasons already logged on the current connection (one line each)
        self._drops_logged: set[DispatchDrop] = set()
        self._topics: dict[str, bytes] = {}
        self._url = gateway_url(config.gateway_url, config.api_version, config.compression)

    # -- the view from outside ------------------------------------------------

    @property
    def shard_id(self) -> int:
        return self.config.shard_id

    @property
    def phase(self) -> ShardPhase:
        return self._state.phase

    @property
    def seq(self) -> int:
        return self._seq

    def session(self) -> Session | None:
        """The current session with the last sequence number seen (what a RESUME needs)."""
        s = self._state.session
        return s.with_seq(self._seq) if s is not None else None

    def snapshot(self, session_started: bool = False, reason: str | None = None) -> ShardReport:
        s = self._state.session
        c = self.counters
        return ShardReport(
            shard_id=self.config.shard_id,
            phase=self._state.phase.value,
            seq=self._seq,
            session_id=s.session_id if s else None,
            resume_url=s.resume_url if s else None,
            latency_ms=self.latency_ms,
            identifies=c.identifies,
            resumes=c.resumes,
            reconnects=c.reconnects,
            events=c.events,
            session_started=session_started,
            fatal_code=self.fatal_code,
            reason=reason,
            commands_sent=c.commands_sent,
            commands_refused=c.commands_refused,
            events_by_type=dict(c.events_by_type),
            dropped=dict(c.dropped),
        )

    def stop(self, *, end_session: bool = False) -> None:
        """Close with 4000 (the session stays resumable; 1000 with ``end_session``: it ends)."""
        self._end_session = end_session
        self._stopping = True
        self._wakeup.set()
        self._stopped.set()
        verdict = self._verdict
        if verdict is not None and not verdict.done():
            verdict.set_result(sm.on_stop(self._current()))

    def send_command(self, payload: bytes) -> bool:
        """Queue a gateway payload; it goes out through the send limiter once ready.

        Payloads over 4096 bytes are refused here, before they could cost a 4002.
        """
        if len(payload) > CLIENT_PAYLOAD_LIMIT:
            self.counters.commands_refused += 1
            log.warning(
                "shard %d: refused a %d-byte command: the gateway limit is %d bytes",
                self.config.shard_id,
                len(payload),
                CLIENT_PAYLOAD_LIMIT,
            )
            return False
        if len(self._commands) >= MAX_PENDING_COMMANDS:
            self.counters.commands_refused += 1
            log.warning(
                "shard %d: refused a command: %d already pending",
                self.shard_id,
                len(self._commands),
            )
            return False
        self._commands.append(payload)
        self._command_ready.set()
        return True

    # -- the outer loop --------------------------------------------------------

    def _current(self) -> sm.ShardState:
        s = self._state.session
        if s is not None and s.seq != self._seq:
            return sm.ShardState(
                self._state.phase, s.with_seq(self._seq), self._state.connect_failures
            )
        return self._state

    async def _set_phase(
        self, state: sm.ShardState, *, session_started: bool = False, reason: str | None = None
    ) -> None:
        changed = state.phase is not self._state.phase
        self._state = state
        if changed or session_started or reason:
            await self._output.report(self.snapshot(session_started, reason))

    async def run(self) -> None:
        plan = sm.first_connect(self._state)
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                await self._wait(plan.wait)
                if self._stopping:
                    break
                if plan.mode is ConnectMode.IDENTIFY and not await self._take_identify_slot():
                    break  # stopped while waiting for a slot
                url = self._choose_url(plan)
                await self._set_phase(
                    sm.ShardState(
                        ShardPhase.CONNECTING, self._state.session, self._state.connect_failures
                    )
                )
                try:
                    ws = await self._http.ws_connect(
                        url,
                        timeout=aiohttp.ClientWSTimeout(
                            ws_receive=None, ws_close=self.config.close_timeout_s
                        ),
                        autoclose=False,
                        autoping=True,
                        max_msg_size=self.config.max_message_size,
                        compress=0,
                        decode_text=False,
                    )
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    log.info(
                        "shard %d: connect to %s failed: %s",
                        self.shard_id,
                        url.with_query(None),
                        exc or type(exc).__name__,
                    )
                    decision = sm.on_connect_failed(self._current(), plan.url)
                else:
                    self._backoff.connected(loop.time())
                    try:
                        decision = await self._connection(ws, plan.mode)
                    finally:
                        self._backoff.disconnected(loop.time())
                self._give_back_identify_slot()
                if decision.session is None:
                    self._seq = 0  # heartbeats of the next connection carry null until READY
                    self._epoch = 0
                if decision.phase is ShardPhase.FATAL:
                    self.fatal_code = decision.fatal_code
                    await self._set_phase(decision.state, reason="fatal close code")
                    raise FatalCloseError(self.shard_id, decision.fatal_code)
                await self._set_phase(decision.state)
                if decision.reconnect is None:
                    break
                self.counters.reconnects += 1
                plan = decision.reconnect
        finally:
            self._give_back_identify_slot()
            await self._finish_stop()

    async def _take_identify_slot(self) -> bool:
        """Wait for one of the group's identify slots; False if the shard was stopped meanwhile.

        A group connects only as many shards ahead of their IDENTIFY as it has
        slots (two rounds of buckets): the first IDENTIFYs go out as soon as
        those few connections are up instead of after every handshake of the
        group, and the server is not flooded with connections that would sit
        waiting for their turn.
        """
        slots = self._identify_slots
        if slots is None or self._holding_slot:
            return True
        if not slots.locked():
            await slots.acquire()
            self._holding_slot = True
            return True
        taking = asyncio.ensure_future(slots.acquire())
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait((taking, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not taking.done():
                taking.cancel()
            # a slot granted while we were being stopped (or cancelled) still counts
            results = await asyncio.gather(taking, return_exceptions=True)
            if results[0] is True:
                self._holding_slot = True
        if self._stopping:
            self._give_back_identify_slot()
            return False
        return self._holding_slot

    def _give_back_identify_slot(self) -> None:
        if self._holding_slot:
            self._holding_slot = False
            assert self._identify_slots is not None
            self._identify_slots.release()

    async def _finish_stop(self) -> None:
        if self._state.phase is not ShardPhase.FATAL:
            self._state = sm.ShardState(ShardPhase.STOPPED, self._state.session, 0)
        with contextlib.suppress(Exception):
            await self._output.report(self.snapshot())

    def _choose_url(self, plan: sm.Reconnect) -> URL:
        session = self._state.session
        if (
            plan.mode is ConnectMode.RESUME
            and plan.url is GatewayUrl.RESUME
            and session is not None
        ):
            return gateway_url(session.resume_url, self.config.api_version, self.config.compression)
        return self._url

    async def _wait(self, wait: Wait) -> None:
        if wait is Wait.NONE:
            return
        if wait is Wait.NEW_SESSION:
            low, high = self.config.new_session_delay_s
            delay = low + (high - low) * self._rng()
        else:
            delay = self._backoff.next_delay()
        if delay <= 0:
            return
        self._wakeup.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), delay)

    # -- one connection ----------------------------------------------------------

    async def _connection(self, ws: _WS, mode: ConnectMode) -> Decision:
        loop = asyncio.get_running_loop()
        verdict: asyncio.Future[Decision] = loop.create_future()
        self._verdict = verdict
        self._ack_pending = False
        self._drops_logged.clear()
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._set_phase(sm.on_connected(self._state, mode))
            reader = asyncio.create_task(
                self._guard(self._read(ws, mode, tasks, verdict), verdict, reader=True)
            )
            tasks.append(reader)
            if self._stopping:
                self.stop()
            try:
                decision = await verdict
            except asyncio.CancelledError:
                if not verdict.done():
                    verdict.set_result(sm.on_stop(self._current()))
                raise
        finally:
            self._verdict = None
            for task in tasks:
                task.cancel()
            while tasks:
                task = tasks.pop()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._state.phase is ShardPhase.AWAITING_PERMIT:
                with contextlib.suppress(Exception):
                    await self._permits.cancel(self.shard_id)
            code = (
                verdict.result().close_code if verdict.done() and not verdict.cancelled() else None
            )
            if self._end_session and self._stopping:
                code = SESSION_ENDING_CLOSE_CODE  # asked for: nobody will RESUME it
            await self._close(ws, code if code is not None else RESUMABLE_CLOSE_CODE)
        return decision

    async def _close(self, ws: _WS, code: int) -> None:
        """Close with ``code`` (1000 only when the session is to end: after a reshard)."""
        if ws.closed:
            return
        with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
            await asyncio.wait_for(ws.close(code=code), self.config.close_timeout_s + 1.0)

    async def _guard(
        self,
        coro: Coroutine[Any, Any, Decision],
        verdict: asyncio.Future[Decision],
        reader: bool = False,
    ) -> None:
        """Run a connection task; its decision (or a crash, as bad input) settles the verdict.

        A send that fails because the socket is gone settles nothing: the reader
        sees the close frame or the end of the stream and decides what it means.
        """
        try:
            decision = await coro
        except asyncio.CancelledError:
            raise
        except (ConnectionError, aiohttp.ClientConnectionError):
            if not reader:
                return
            decision = sm.on_transport_error(self._current())
        except Exception:
            log.exception("shard %d: connection task failed; reconnecting", self.shard_id)
            decision = sm.on_bad_input(self._current())
        if not verdict.done():
            verdict.set_result(decision)

    def _spawn(
        self,
        tasks: list[asyncio.Task[None]],
        verdict: asyncio.Future[Decision],
        coro: Coroutine[Any, Any, Decision],
    ) -> None:
        tasks.append(asyncio.create_task(self._guard(coro, verdict)))

    async def _send(self, ws: _WS, data: bytes) -> None:
        await ws.send_frame(data, aiohttp.WSMsgType.TEXT)

    def _bad_input(self, what: str) -> Decision:
        log.warning("shard %d: %s; reconnecting to resume", self.shard_id, what)
        return sm.on_bad_input(self._current())

    async def _read(
        self,
        ws: _WS,
        mode: ConnectMode,
        tasks: list[asyncio.Task[None]],
        verdict: asyncio.Future[Decision],
    ) -> Decision:
        decompress = make_worker_decompressor(
            self.config.compression, self.config.max_message_size
        ).feed
        output = self._output
        emit = output.event
        shard_id = self.config.shard_id
        counters = self.counters
        by_type = counters.events_by_type
        receive = ws.receive
        binary = aiohttp.WSMsgType.BINARY
        text = aiohttp.WSMsgType.TEXT
        limiter: SendLimiter | None = None
        topics = self._topics
        hello_timeout: float | None = self.config.hello_timeout_s
        while True:
            try:
                msg = await receive(hello_timeout)
            except TimeoutError:
                return self._bad_input(f"no Hello within {hello_timeout} s")
            typ = msg.type
            if typ is binary:
                try:
                    data = decompress(msg.data)
                except DecompressionError as exc:
                    return self._bad_input(f"undecodable compressed frame ({exc})")
                if data is None:
                    continue
            elif typ is text:
                data = msg.data
            else:
                return self._end_of_stream(msg)
            try:
                op, t, s = peek(data)
            except MalformedPayloadError as exc:
                return self._bad_input(f"malformed gateway payload ({exc})")
            if op == 0:
                if t in (_READY, _RESUMED):
                    try:
                        await self._on_session_event(t, s, data, ws, tasks, verdict, limiter)
                    except MalformedPayloadError as exc:
                        return self._bad_input(str(exc))
                if s is None or t is None or s <= self._seq:
                    self._drop(t, s)
                    continue
                self._seq = s
                topic = topics.get(t)
                if topic is None:
                    topic = self._topic(t)
                    if len(topic) > MAX_TOPIC_BYTES:
                        self._drop(t, s, DispatchDrop.T_INVALID)
                        continue
                counters.events += 1
                by_type[t] = by_type.get(t, 0) + 1
                if not emit(shard_id, self._epoch, s, topic, data):
                    await output.drain()
                    while not emit(shard_id, self._epoch, s, topic, data):
                        await output.drain()
            elif op == 11:
                if self._ack_pending:
                    self._ack_pending = False
                    self.latency_ms = (
                        asyncio.get_running_loop().time() - self._beat_sent_at
                    ) * 1000.0
            elif op == 1:
                if limiter is not None:
                    await self._heartbeat(ws, limiter)
            elif op == 10:
                if limiter is not None:
                    return self._bad_input("a second Hello")
                interval = self._hello_interval(data)
                if interval is None:
                    return self._bad_input("a Hello without a valid heartbeat_interval")
                hello_timeout = None
                window = SendWindow(window_s=self.config.send_window_s)
                window.set_heartbeat_interval(interval)
                limiter = SendLimiter(window, asyncio.get_running_loop().time)
                await self._set_phase(sm.on_hello(self._state, mode))
                self._spawn(tasks, verdict, self._heartbeater(ws, limiter, interval))
                self._spawn(tasks, verdict, self._handshake(ws, limiter, mode))
            elif op == 7:
                return sm.on_reconnect_request(self._current())
            elif op == 9:
                return sm.on_invalid_session(self._current(), self._invalid_session_d(data))
            else:
                # An opcode we do not know: Discord adds opcodes over time, so it is
                # ignored rather than worth a reconnect. Logged once per connection.
                if not self._unknown_ops_logged:
                    self._unknown_ops_logged = True
                    log.warning("shard %d: ignoring unknown opcode %r", shard_id, op)

    def _drop(self, t: str | None, s: int | None, reason: DispatchDrop | None = None) -> None:
        """Count a dispatch that is not relayed; log the first of each reason per connection.

        What is right for a dispatch Discord would never send (``s`` null, 0 or
        not above the last one; ``t`` null): drop it and count it, never relay
        it under a made-up seq. The seq is what the supervisor dedupes by, what
        it checkpoints as published and what a RESUME asks the gateway to replay
        after; a synthetic one would be resumed from as if the gateway had sent
        it, and after a worker crash the replayed event would get a new one and
        be published twice, a silent duplicate instead of a counted drop. An
        event at or below the last seq of its session was relayed already, or
        the server reuses numbers: either way the number cannot name it. So a
        server that numbers dispatches 0 (READY, GUILD_CREATE, RESUMED all
        ``s: 0``) gets its sessions started and resumed as usual, and every one
        of those events shows up in ``dropped`` (reason ``seq_invalid``), in
        the log once per connection, in ``/status`` and in ``/metrics``. A
        dropped event leaves the shard's seq (heartbeats, RESUME) as it was.
        """
        if reason is not None:
            pass  # the caller knows (an event name too long to relay: its seq stands)
        elif t is None:
            reason = DispatchDrop.T_MISSING
        elif s is None:
            reason = DispatchDrop.SEQ_MISSING
        elif s < 1:
            reason = DispatchDrop.SEQ_INVALID
        else:
            reason = DispatchDrop.SEQ_NOT_INCREASING
        dropped = self.counters.dropped
        dropped[reason.value] = dropped.get(reason.value, 0) + 1  # plain str keys for orjson
        if reason not in self._drops_logged:
            self._drops_logged.add(reason)
            log.warning(
                "shard %d: dropped dispatch %s with s=%s (%s; last relayed seq %d); "
                "further %s drops on this connection are only counted",
                self.shard_id,
                t if t is None or len(t) <= 64 else f"{t[:64]}... ({len(t)} characters)",
                "null" if s is None else s,
                reason.value,
                self._seq,
                reason.value,
            )

    def _topic(self, t: str) -> bytes:
        topic = t.encode("ascii", "replace")
        if len(self._topics) < _TOPIC_CACHE_MAX and len(topic) <= MAX_TOPIC_BYTES:
            self._topics[t] = topic
        return topic

    def _end_of_stream(self, msg: WSMessageNoDecodeText) -> Decision:
        typ = msg.type
        if typ is aiohttp.WSMsgType.CLOSE:
            code = msg.data if isinstance(msg.data, int) else None
            decision = sm.on_server_close(self._current(), code)
            if decision.phase is ShardPhase.FATAL:
                log.error("shard %d: gateway closed with fatal code %s", self.shard_id, code)
            else:
                log.info("shard %d: gateway closed with %s", self.shard_id, code)
            return decision
        if typ is aiohttp.WSMsgType.ERROR:
            exc = msg.data
            if (
                isinstance(exc, aiohttp.WebSocketError)
                and exc.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            ):
                return self._bad_input(f"oversized frame ({exc})")
            if isinstance(exc, aiohttp.WebSocketError):
                return self._bad_input(f"websocket protocol error ({exc})")
            log.info("shard %d: connection lost: %r", self.shard_id, exc)
        else:
            log.info("shard %d: connection lost (%s)", self.shard_id, typ.name)
        return sm.on_transport_error(self._current())

    @staticmethod
    def _hello_interval(data: bytes) -> float | None:
        try:
            interval = orjson.loads(data)["d"]["heartbeat_interval"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            return None
        return float(interval) / 1000.0

    @staticmethod
    def _invalid_session_d(data: bytes) -> bool:
        try:
            return orjson.loads(data).get("d") is True
        except (orjson.JSONDecodeError, AttributeError):
            return False

    async def _on_session_event(
        self,
        t: str,
        s: int | None,
        data: bytes,
        ws: _WS,
        tasks: list[asyncio.Task[None]],
        verdict: asyncio.Future[Decision],
        limiter: SendLimiter | None,
    ) -> None:
        if t == _READY:
            try:
                d = orjson.loads(data)["d"]
                seq = s if s is not None and s > 0 else 0
                session = Session(str(d["session_id"]), seq, str(d["resume_gateway_url"]))
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise MalformedPayloadError(
                    f"READY without session_id/resume_gateway_url: {exc}"
                ) from None
            self._seq = 0  # a new session numbers from 1 again
            self._epoch = session_epoch(session.session_id)
            self._give_back_identify_slot()
            # The session-started report goes out before the READY event itself.
            await self._set_phase(sm.on_ready(self._state, session), session_started=True)
        else:
            await self._set_phase(sm.on_resumed(self._state))
        if limiter is not None:
            self._spawn(tasks, verdict, self._command_sender(ws, limiter))

    async def _heartbeat(self, ws: _WS, limiter: SendLimiter) -> None:
        await limiter.acquire_priority()
        seq = self._seq or None  # d = the last sequence number received, null before any
        self._beat_sent_at = asyncio.get_running_loop().time()
        self._ack_pending = True
        await self._send(ws, payloads.encode_client_payload(payloads.heartbeat(seq)))

    async def _heartbeater(self, ws: _WS, limiter: SendLimiter, interval: float) -> Decision:
        # First beat after interval * jitter (Discord: "Heartbeat Interval"), then every interval.
        await asyncio.sleep(interval * self._rng())
        while True:
            if self._ack_pending:
                log.warning(
                    "shard %d: no heartbeat ACK since the last heartbeat; zombie connection, resuming",
                    self.shard_id,
                )
                return sm.on_missed_ack(self._current())
            await self._heartbeat(ws, limiter)
            await asyncio.sleep(interval)

    async def _handshake(self, ws: _WS, limiter: SendLimiter, mode: ConnectMode) -> Decision:
        cfg = self.config
        session = self.session()
        if mode is ConnectMode.RESUME and session is not None:
            payload = payloads.resume(cfg.token, session.session_id, session.seq)
            await limiter.acquire_priority()
            await self._send(ws, payloads.encode_client_payload(payload))
            self.counters.resumes += 1
        else:
            # awaiting_permit: heartbeats keep running in their own task meanwhile
            data = payloads.encode_client_payload(
                payloads.identify(
                    cfg.token,
                    cfg.shard_id,
                    cfg.total_shards,
                    cfg.intents,
                    large_threshold=cfg.large_threshold,
                    presence=self._presence,
                )
            )
            not_before = await self._permits.acquire(cfg.shard_id)
            # The server measures identify spacing when the IDENTIFY arrives, so it
            # goes out right after the grant (or at its not_before: an early grant),
            # and the bucket's spacing counts from the write (``sent``); the phase
            # report can wait.
            if not_before is not None:
                await _until(not_before)
            await limiter.acquire_priority()
            await self._send(ws, data)
            self._permits.sent(cfg.shard_id)
            self.counters.identifies += 1
            await self._set_phase(sm.on_permit(self._state))
        # Nothing else to do; wait until the connection ends (the reader settles it).
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def _command_sender(self, ws: _WS, limiter: SendLimiter) -> Decision:
        commands = self._commands
        while True:
            if not commands:
                self._command_ready.clear()
                await self._command_ready.wait()
                continue
            await limiter.acquire()
            payload = commands[0]
            await self._send(ws, payload)
            commands.popleft()
            self.counters.commands_sent += 1
            if payload.startswith(_PRESENCE_PREFIX):
                # The shard's presence now: a new session (op 9, a resume refused) keeps it.
                self._presence = orjson.loads(payload)["d"]


async def _until(at: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``at`` (not the loop's clock: uvloop caches
    it per iteration, and it lags after a long one); at most 1 s (a bad value)."""
    deadline = min(at, time.monotonic() + 1.0)
    for _ in range(100):  # a timer may fire early by the loop's clock: look again
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(left)


__all__ = [
    "FatalCloseError",
    "Shard",
    "ShardConfig",
    "ShardOutput",
    "gateway_url",
]
