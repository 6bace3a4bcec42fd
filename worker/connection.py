"""One websocket of a shard: its messages, its tasks, its verdict, its send limiter and heartbeat timing.

A :class:`Connection` lives from the websocket handshake to the close. Its
socket (:class:`worker.websocket.GatewaySocket`, picows) calls
:meth:`Connection._on_message` once per message, in the read; after Hello it
runs a heartbeater and a handshake (RESUME at once, or the identify permit then
IDENTIFY while heartbeats go on, PROTOCOL.md 11), and once the session is ready
a command sender. Whoever sees the end of the connection first (the socket's
ending, a message, a zombie heartbeat, a stop) settles its verdict, a
:class:`worker.state.Decision`; the connection then cancels its tasks and
closes the socket itself with the verdict's code (4000 unless the server
already closed it; 1000 would end the session).

What outlives a connection (the session state, seq and epoch, counters,
presence, queued commands) belongs to its :class:`worker.shard.Shard`, which
the connection calls back into.

The hot path is :meth:`Connection._on_message`, a plain call with no await:
decompress -> ``peek`` (op, t, s without a JSON parse) -> ``output.event``.
Only a dispatch the output takes at once and a heartbeat ACK finish there.
Anything else (Hello, READY, RESUMED, op 1/7/9, an event the output refuses,
the socket's ending) goes to the backlog: reading pauses, and one task handles
the backlog in order with the awaits it needs, then reading resumes. Nothing is
logged per event. A dispatch is relayed only when its ``s`` is above the last
one relayed in its session; any other (a replay, ``s`` 0 or null, no ``t``) is
dropped and counted per reason (``ShardReport.dropped``,
:class:`protocol.ipc.DispatchDrop`), the first of each reason logged once per
connection: see :meth:`Connection._drop` for why such events are not relayed.
The shard's seq moves to an event's ``s`` once the output has taken it, so a
connection that ends while an event waits resumes from before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, NamedTuple, NoReturn

import orjson

from protocol import payloads
from protocol.envelope import peek
from protocol.errors import DecompressionError, MalformedPayloadError
from protocol.gateway import RESUMABLE_CLOSE_CODE, Opcode
from protocol.ipc import MAX_TOPIC_BYTES, DispatchDrop
from protocol.session import Session, ShardPhase
from worker import state as sm
from worker.inflate import make_worker_decompressor
from worker.ratelimit import SendLimiter, SendWindow
from worker.state import ConnectMode, Decision
from worker.websocket import Ending, EndKind, GatewaySocket

if TYPE_CHECKING:
    from worker.shard import Shard

log = logging.getLogger("worker.shard")

_DISPATCH: Final = int(Opcode.DISPATCH)
_HEARTBEAT: Final = int(Opcode.HEARTBEAT)
_RECONNECT: Final = int(Opcode.RECONNECT)
_INVALID_SESSION: Final = int(Opcode.INVALID_SESSION)
_HELLO: Final = int(Opcode.HELLO)
_HEARTBEAT_ACK: Final = int(Opcode.HEARTBEAT_ACK)
_READY: Final = "READY"
_RESUMED: Final = "RESUMED"
#: Topic frames by event name are cached per shard, up to this many names.
_TOPIC_CACHE_MAX: Final = 512
#: The close that ends a session (Discord then drops it; a RESUME would fail).
SESSION_ENDING_CLOSE_CODE: Final = 1000
#: How an op 3 payload from the control socket or gateway_send begins (encode_client_payload).
_PRESENCE_PREFIX: Final = b'{"op":3,'
#: The dispatches that change the session: handled in the backlog, in order.
_SESSION_EVENTS: Final = (_READY, _RESUMED)


class _Refused(NamedTuple):
    """A dispatch the output refused: it is emitted (and the seq moves) once it drains."""

    t: str
    s: int
    topic: bytes
    data: bytes


class _Unread(NamedTuple):
    """A message read while the backlog works: kept as it came (compressed), so what
    waits is no larger than the read it came in."""

    payload: bytes
    binary: bool


#: What waits in the backlog, in the order it came: a message (decompressed, or as it came
#: in), a refused dispatch, the end.
_Waiting = bytes | _Unread | _Refused | Ending


class Connection:
    """One websocket of ``shard``; :meth:`run` returns the verdict once the socket is closed."""

    def __init__(self, shard: Shard, socket: GatewaySocket, mode: ConnectMode) -> None:
        loop = asyncio.get_running_loop()
        config = shard.config
        self._shard = shard
        self._socket = socket
        self._mode = mode
        self._loop = loop
        self._verdict: asyncio.Future[Decision] = loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self._limiter = SendLimiter(SendWindow(window_s=config.send_window_s), loop.time)
        #: None until Hello: no heartbeat, handshake or command goes out before it.
        self._heartbeat_interval: float | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._ack_pending = False
        self._beat_sent_at = 0.0
        self._unknown_op_logged = False
        self._drops_logged: set[DispatchDrop] = set()
        #: Not None while a task works through what could not be done in the read.
        self._backlog: deque[_Waiting] | None = None
        # the hot path's lookups, once
        self._decompress = make_worker_decompressor(
            config.compression, config.max_message_size
        ).feed
        self._emit = shard.output.event
        self._shard_id = config.shard_id
        self._counters = shard.counters
        self._topics = shard.topics

    def settle(self, decision: Decision) -> None:
        """Decide how the connection ends, unless something already did."""
        if not self._verdict.done():
            self._verdict.set_result(decision)
            self._socket.stop_messages()

    async def run(self) -> Decision:
        shard = self._shard
        verdict = self._verdict
        try:
            await shard.set_state(sm.on_connected(shard.state, self._mode))
            if not verdict.done():
                timeout = shard.config.hello_timeout_s
                self._hello_timer = self._loop.call_later(timeout, self._no_hello, timeout)
                self._socket.start(self._on_message, self._on_end)
            try:
                decision = await verdict
            except asyncio.CancelledError:
                self.settle(sm.on_stop(shard.current()))
                raise
        finally:
            await self._end()
        return decision

    async def _end(self) -> None:
        """Cancel the tasks, give an unused permit back, close the socket with the verdict's code."""
        shard = self._shard
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if shard.phase is ShardPhase.AWAITING_PERMIT:
            with contextlib.suppress(Exception):
                await shard.permits.cancel(shard.shard_id)
        verdict = self._verdict
        code = verdict.result().close_code if verdict.done() and not verdict.cancelled() else None
        if shard.ends_session:
            code = SESSION_ENDING_CLOSE_CODE  # asked for: nobody will RESUME it
        # 1000 only when the session is to end: after a reshard.
        await self._socket.close(
            code if code is not None else RESUMABLE_CLOSE_CODE, shard.config.close_timeout_s
        )

    def _spawn(self, coro: Coroutine[Any, Any, Decision | None], *, reader: bool = False) -> None:
        task = asyncio.create_task(self._guard(coro, reader))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, Decision | None], reader: bool) -> None:
        """Run a connection task; its decision (or a crash, as bad input) settles the verdict.

        A send that fails because the socket is gone settles nothing: the socket's
        ending says what it means.
        """
        shard = self._shard
        try:
            decision = await coro
        except asyncio.CancelledError:
            raise
        except ConnectionError:
            if not reader:
                return
            decision = sm.on_transport_error(shard.current())
        except Exception:
            log.exception("shard %d: connection task failed; reconnecting", shard.shard_id)
            decision = sm.on_bad_input(shard.current())
        if decision is not None:
            self.settle(decision)

    def _send(self, data: bytes) -> None:
        self._socket.send_text(data)

    def _bad_input(self, what: str) -> Decision:
        shard = self._shard
        log.warning("shard %d: %s; reconnecting to resume", shard.shard_id, what)
        return sm.on_bad_input(shard.current())

    def _undecodable(self, exc: DecompressionError) -> Decision:
        return self._bad_input(f"undecodable compressed frame ({exc})")

    def _no_hello(self, timeout: float) -> None:
        if self._heartbeat_interval is None:
            self.settle(self._bad_input(f"no Hello within {timeout} s"))

    # -- reading ---------------------------------------------------------------

    def _on_message(self, payload: bytes, binary: bool) -> None:
        """One whole message from the socket: a dispatch is relayed here, the rest waits."""
        if self._backlog is not None:
            self._backlog.append(_Unread(payload, binary))  # after what waits already
            return
        try:
            if binary:
                data = self._decompress(payload)
                if data is None:
                    return  # a zlib-stream message continues in the next frame
            else:
                data = payload
            op, t, s = peek(data)
            if op == _DISPATCH:
                shard = self._shard
                if s is not None and t is not None and s > shard.seq and t not in _SESSION_EVENTS:
                    topic = self._topics.get(t)
                    if topic is not None:
                        if self._emit(self._shard_id, shard.epoch, s, topic, data):
                            shard.seq = s
                            counters = self._counters
                            counters.events += 1
                            by_type = counters.events_by_type
                            by_type[t] = by_type.get(t, 0) + 1
                        else:
                            self._later(_Refused(t, s, topic, data))
                        return
            elif op == _HEARTBEAT_ACK:
                self._on_ack()
                return
            self._later(data)
        except DecompressionError as exc:
            self.settle(self._undecodable(exc))
        except MalformedPayloadError as exc:
            self.settle(self._bad_input(f"malformed gateway payload ({exc})"))
        except Exception:
            log.exception("shard %d: reading a message failed; reconnecting", self._shard_id)
            self.settle(sm.on_bad_input(self._shard.current()))

    def _on_end(self, ending: Ending) -> None:
        if self._backlog is not None:
            self._backlog.append(ending)  # what was read before it is handled first
        else:
            self.settle(self._ended(ending))

    def _later(self, item: _Waiting) -> None:
        """Leave ``item`` to the backlog's task; reading pauses until the backlog is empty."""
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
            self._socket.pause()
            self._spawn(self._work_backlog(backlog), reader=True)
        backlog.append(item)

    async def _work_backlog(self, backlog: deque[_Waiting]) -> Decision | None:
        while backlog:
            item = backlog.popleft()
            if type(item) is _Unread:
                try:
                    data = self._decompress(item.payload) if item.binary else item.payload
                except DecompressionError as exc:
                    return self._undecodable(exc)
                decision = None if data is None else await self._handle(data)
            elif type(item) is bytes:
                decision = await self._handle(item)
            elif type(item) is _Refused:
                await self._emit_waiting(item)
                decision = None
            else:
                assert isinstance(item, Ending)
                decision = self._ended(item)
            if decision is not None:
                return decision
        self._backlog = None
        self._socket.resume()
        return None

    async def _emit_waiting(self, event: _Refused) -> None:
        """Emit once the output takes it; then the seq moves and the event counts."""
        shard = self._shard
        output = shard.output
        while not output.event(self._shard_id, shard.epoch, event.s, event.topic, event.data):
            await output.drain()
        shard.seq = event.s
        counters = self._counters
        counters.events += 1
        counters.events_by_type[event.t] = counters.events_by_type.get(event.t, 0) + 1

    async def _handle(self, data: bytes) -> Decision | None:
        """A message the read left to the backlog: what it asks, with the waits it needs."""
        shard = self._shard
        try:
            op, t, s = peek(data)
        except MalformedPayloadError as exc:
            return self._bad_input(f"malformed gateway payload ({exc})")
        if op == _DISPATCH:
            if t in _SESSION_EVENTS:
                try:
                    await self._on_session_event(t, s, data)
                except MalformedPayloadError as exc:
                    return self._bad_input(str(exc))
            if s is None or t is None or s <= shard.seq:
                self._drop(t, s)
                return None
            topic = self._topics.get(t)
            if topic is None:
                topic = self._topic(t)
                if len(topic) > MAX_TOPIC_BYTES:
                    shard.seq = s
                    self._drop(t, s, DispatchDrop.T_INVALID)
                    return None
            await self._emit_waiting(_Refused(t, s, topic, data))
        elif op == _HEARTBEAT_ACK:
            self._on_ack()
        elif op == _HEARTBEAT:
            if self._heartbeat_interval is not None:
                await self._heartbeat()
        elif op == _HELLO:
            if self._heartbeat_interval is not None:
                return self._bad_input("a second Hello")
            interval = _hello_interval(data)
            if interval is None:
                return self._bad_input("a Hello without a valid heartbeat_interval")
            if self._hello_timer is not None:
                self._hello_timer.cancel()
            self._heartbeat_interval = interval
            self._limiter.window.set_heartbeat_interval(interval)
            await shard.set_state(sm.on_hello(shard.state, self._mode))
            self._spawn(self._heartbeater(interval))
            self._spawn(self._handshake())
        elif op == _RECONNECT:
            return sm.on_reconnect_request(shard.current())
        elif op == _INVALID_SESSION:
            return sm.on_invalid_session(shard.current(), _invalid_session_d(data))
        elif not self._unknown_op_logged:
            # Discord adds opcodes over time: an unknown one is ignored, not worth a reconnect.
            self._unknown_op_logged = True
            log.warning("shard %d: ignoring unknown opcode %r", shard.shard_id, op)
        return None

    def _on_ack(self) -> None:
        if self._ack_pending:
            self._ack_pending = False
            self._shard.latency_ms = (self._loop.time() - self._beat_sent_at) * 1000.0

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
        shard = self._shard
        dropped = shard.counters.dropped
        dropped[reason.value] = dropped.get(reason.value, 0) + 1  # plain str keys for orjson
        if reason not in self._drops_logged:
            self._drops_logged.add(reason)
            log.warning(
                "shard %d: dropped dispatch %s with s=%s (%s; last relayed seq %d); "
                "further %s drops on this connection are only counted",
                shard.shard_id,
                t if t is None or len(t) <= 64 else f"{t[:64]}... ({len(t)} characters)",
                "null" if s is None else s,
                reason.value,
                shard.seq,
                reason.value,
            )

    def _topic(self, t: str) -> bytes:
        topic = t.encode("ascii", "replace")
        topics = self._shard.topics
        if len(topics) < _TOPIC_CACHE_MAX and len(topic) <= MAX_TOPIC_BYTES:
            topics[t] = topic
        return topic

    def _ended(self, ending: Ending) -> Decision:
        """The verdict for how the socket ended."""
        shard = self._shard
        kind = ending.kind
        if kind is EndKind.SERVER_CLOSE:
            code = ending.code
            decision = sm.on_server_close(shard.current(), code)
            if decision.phase is ShardPhase.FATAL:
                log.error("shard %d: gateway closed with fatal code %s", shard.shard_id, code)
            else:
                log.info("shard %d: gateway closed with %s", shard.shard_id, code)
            return decision
        if kind is EndKind.TOO_BIG:
            return self._bad_input(f"oversized frame ({ending.detail})")
        if kind is EndKind.PROTOCOL_ERROR:
            return self._bad_input(f"websocket protocol error ({ending.detail})")
        log.info("shard %d: connection lost", shard.shard_id)
        return sm.on_transport_error(shard.current())

    async def _on_session_event(self, t: str, s: int | None, data: bytes) -> None:
        shard = self._shard
        if t == _READY:
            # When we read the server's answer to our IDENTIFY: it counted the IDENTIFY
            # before it sent this, so the bucket may open an interval after now. Told to
            # the permit source straight away, not through the report to the supervisor.
            answered_at = time.monotonic()
            try:
                d = orjson.loads(data)["d"]
                seq = s if s is not None and s > 0 else 0
                session = Session(str(d["session_id"]), seq, str(d["resume_gateway_url"]))
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise MalformedPayloadError(
                    f"READY without session_id/resume_gateway_url: {exc}"
                ) from None
            shard.permits.answered(shard.shard_id, answered_at)
            shard.seq = 0  # a new session numbers from 1 again
            shard.name_session(session.session_id)
            shard.give_back_identify_slot()
            # The session-started report goes out before the READY event itself.
            await shard.set_state(sm.on_ready(shard.state, session), session_started=True)
        else:
            await shard.set_state(sm.on_resumed(shard.state))
        if self._heartbeat_interval is not None:
            self._spawn(self._command_sender())

    async def _heartbeat(self) -> None:
        await self._limiter.acquire_priority()
        seq = self._shard.seq or None  # d = the last sequence number received, null before any
        self._beat_sent_at = self._loop.time()
        self._ack_pending = True
        self._send(payloads.encode_client_payload(payloads.heartbeat(seq)))

    async def _heartbeater(self, interval: float) -> Decision:
        shard = self._shard
        # First beat after interval * jitter (Discord: "Heartbeat Interval"), then every interval.
        await asyncio.sleep(interval * shard.rng())
        while True:
            if self._ack_pending:
                log.warning(
                    "shard %d: no heartbeat ACK since the last heartbeat; zombie connection, resuming",
                    shard.shard_id,
                )
                return sm.on_missed_ack(shard.current())
            await self._heartbeat()
            await asyncio.sleep(interval)

    async def _handshake(self) -> None:
        """RESUME at once, or wait for the identify permit and IDENTIFY; decides nothing."""
        shard = self._shard
        cfg = shard.config
        session = shard.session()
        limiter = self._limiter
        if self._mode is ConnectMode.RESUME and session is not None:
            payload = payloads.resume(cfg.token, session.session_id, session.seq)
            await limiter.acquire_priority()
            self._send(payloads.encode_client_payload(payload))
            shard.counters.resumes += 1
            return
        # awaiting_permit: heartbeats keep running in their own task meanwhile
        data = payloads.encode_client_payload(
            payloads.identify(
                cfg.token,
                cfg.shard_id,
                cfg.total_shards,
                cfg.intents,
                large_threshold=cfg.large_threshold,
                presence=shard.presence,
            )
        )
        not_before = await shard.permits.acquire(cfg.shard_id)
        # The server measures identify spacing when the IDENTIFY arrives, so it
        # goes out right after the grant (or at its not_before: an early grant),
        # and the bucket's spacing counts from the write (``sent``); the phase
        # report can wait.
        if not_before is not None:
            await _until(not_before)
        await limiter.acquire_priority()
        self._send(data)
        shard.permits.sent(cfg.shard_id)
        shard.counters.identifies += 1
        await shard.set_state(sm.on_permit(shard.state))

    async def _command_sender(self) -> NoReturn:
        shard = self._shard
        commands = shard.commands
        command_ready = shard.command_ready
        limiter = self._limiter
        while True:
            if not commands:
                command_ready.clear()
                await command_ready.wait()
                continue
            await limiter.acquire()
            payload = commands[0]
            self._send(payload)
            commands.popleft()
            shard.counters.commands_sent += 1
            if payload.startswith(_PRESENCE_PREFIX):
                # The shard's presence now: a new session (op 9, a resume refused) keeps it.
                shard.presence = orjson.loads(payload)["d"]


def _hello_interval(data: bytes) -> float | None:
    """Hello's ``heartbeat_interval`` in seconds; None if it is missing or not positive."""
    try:
        interval = orjson.loads(data)["d"]["heartbeat_interval"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        return None
    return float(interval) / 1000.0


def _invalid_session_d(data: bytes) -> bool:
    try:
        return orjson.loads(data).get("d") is True
    except (orjson.JSONDecodeError, AttributeError):
        return False


async def _until(at: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``at`` (not the loop's clock: uvloop caches
    it per iteration, and it lags after a long one); at most 1 s (a bad value).

    The loop's timers fire on whole milliseconds (libuv): slept on alone, an IDENTIFY
    went out a median 0.85 ms after its grant's slot, and every round of the identify
    schedule waited that much longer. So the timer wakes this up to
    :data:`_TIMER_RESOLUTION_S` early, and the rest is waited a lap of the loop at a
    time (other work goes on between the laps); never returns before ``at``.
    """
    deadline = min(at, time.monotonic() + 1.0)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(left - _TIMER_RESOLUTION_S if left > _TIMER_RESOLUTION_S else 0)


#: How late the loop's timers may fire (whole milliseconds): :func:`_until` wakes this
#: much early and waits the rest a lap at a time.
_TIMER_RESOLUTION_S: Final = 0.001

__all__ = ["SESSION_ENDING_CLOSE_CODE", "Connection"]
