"""The reconnect loop of one gateway shard, and what survives its connections.

One :class:`Shard` holds a session (or none), its seq and epoch, its counters,
presence and queued commands, and loops: wait -> (an identify slot) -> connect
-> run a :class:`worker.connection.Connection` until something ends it -> apply
what :mod:`worker.state` decided -> wait -> connect again, until a fatal close
code or a stop. The per-connection half (reader, heartbeats, handshake, command
sender, the close) is :mod:`worker.connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import picows
from yarl import URL

from protocol.compression import DEFAULT_MAX_MESSAGE_SIZE, Compression
from protocol.gateway import API_VERSION, CLIENT_PAYLOAD_LIMIT, SEND_WINDOW_S
from protocol.ipc import ShardReport, session_epoch
from protocol.session import Session, ShardPhase
from worker import state as sm
from worker.backoff import Backoff, BackoffPolicy
from worker.connection import Connection
from worker.permits import PermitSource
from worker.ratelimit import DEFAULT_SLACK_S
from worker.state import ConnectMode, GatewayUrl, Wait
from worker.websocket import GatewaySocket

log = logging.getLogger("worker.shard")

#: Commands waiting for a connection, per shard; more are refused.
MAX_PENDING_COMMANDS: Final = 1000


class ShardOutput(Protocol):
    """Where a shard's events and reports go (the worker's channel to the supervisor)."""

    def event(self, shard_id: int, epoch: int, seq: int, topic: bytes, payload: bytes) -> bool:
        """Queue one dispatch without blocking; False means full: await ``drain`` and retry."""
        ...

    def name_session(self, shard_id: int, session_id: str | None) -> None:
        """``shard_id``'s events from now on are of ``session_id`` (their PUB headers say it)."""
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
        permits: PermitSource,
        output: ShardOutput,
        saved: Session | None = None,
        rng: Callable[[], float] = random.random,
        identify_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.config = config
        self.permits = permits
        self.output = output
        self.rng = rng
        self.counters = ShardCounters()
        self.latency_ms: float | None = None
        self.fatal_code: int | None = None
        #: The last relayed dispatch's seq and its session's epoch; the reader sets
        #: them per event, so they sit here rather than in the state record.
        self.seq = saved.seq if saved else 0
        self.name_session(saved.session_id if saved else None)
        #: Identify's ``presence``: an op 3 sent on a connection replaces it for later IDENTIFYs.
        self.presence: Mapping[str, Any] | None = config.presence
        #: Gateway payloads waiting for a ready connection's command sender.
        self.commands: deque[bytes] = deque()
        self.command_ready = asyncio.Event()
        #: Topic frames by event name, so the hot path encodes each name once.
        self.topics: dict[str, bytes] = {}
        #: Shared by a group's shards: a connection that will IDENTIFY takes one
        #: before connecting and gives it back at READY (or when it ends).
        self._identify_slots = identify_slots
        self._holding_slot = False
        self._state = sm.initial_state(saved)
        self._backoff = Backoff(config.backoff, rng)
        self._stopped = asyncio.Event()
        #: stop() with end_session: the close is 1000 (the session ends, Discord stops
        #: keeping events for it); otherwise 4000 (resumable)
        self._end_session = False
        self._connection: Connection | None = None
        self._url = gateway_url(config.gateway_url, config.api_version, config.compression)

    # -- the view from outside ------------------------------------------------

    @property
    def shard_id(self) -> int:
        return self.config.shard_id

    @property
    def phase(self) -> ShardPhase:
        return self._state.phase

    @property
    def state(self) -> sm.ShardState:
        """The state record as last set; its session's seq may lag :attr:`seq`."""
        return self._state

    @property
    def ends_session(self) -> bool:
        """Stopped with ``end_session``: the connection closes with 1000."""
        return self._end_session

    def session(self) -> Session | None:
        """The current session with the last sequence number seen (what a RESUME needs)."""
        s = self._state.session
        return s.with_seq(self.seq) if s is not None else None

    def snapshot(self, session_started: bool = False, reason: str | None = None) -> ShardReport:
        s = self._state.session
        c = self.counters
        return ShardReport(
            shard_id=self.config.shard_id,
            phase=self._state.phase.value,
            seq=self.seq,
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
        self._stopped.set()
        if self._connection is not None:
            self._connection.settle(sm.on_stop(self.current()))

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
        if len(self.commands) >= MAX_PENDING_COMMANDS:
            self.counters.commands_refused += 1
            log.warning(
                "shard %d: refused a command: %d already pending",
                self.shard_id,
                len(self.commands),
            )
            return False
        self.commands.append(payload)
        self.command_ready.set()
        return True

    # -- what a connection calls back into -------------------------------------

    def name_session(self, session_id: str | None) -> None:
        """The shard's events from now on are of ``session_id`` (None: no session yet):
        its epoch, and the session the output writes into their PUB headers."""
        self.epoch = session_epoch(session_id)
        self.output.name_session(self.shard_id, session_id)

    def current(self) -> sm.ShardState:
        """The state record with the session's seq brought up to :attr:`seq`."""
        s = self._state.session
        if s is not None and s.seq != self.seq:
            return sm.ShardState(
                self._state.phase, s.with_seq(self.seq), self._state.connect_failures
            )
        return self._state

    async def set_state(
        self, state: sm.ShardState, *, session_started: bool = False, reason: str | None = None
    ) -> None:
        """Take ``state``; report it when the phase changed, a session started or with a reason."""
        changed = state.phase is not self._state.phase
        self._state = state
        if changed or session_started or reason:
            await self.output.report(self.snapshot(session_started, reason))

    def give_back_identify_slot(self) -> None:
        if self._holding_slot:
            self._holding_slot = False
            assert self._identify_slots is not None
            self._identify_slots.release()

    # -- the outer loop --------------------------------------------------------

    async def run(self) -> None:
        plan = sm.first_connect(self._state)
        loop = asyncio.get_running_loop()
        stopped = self._stopped
        try:
            while not stopped.is_set():
                await self._wait(plan.wait)
                if stopped.is_set():
                    break
                if plan.mode is ConnectMode.IDENTIFY and not await self._take_identify_slot():
                    break  # stopped while waiting for a slot
                url = self._choose_url(plan)
                await self.set_state(sm.on_connecting(self._state))
                try:
                    socket = await GatewaySocket.connect(
                        str(url), self.config.max_message_size, self.config.connect_timeout_s
                    )
                except (TimeoutError, OSError, picows.WSError) as exc:
                    log.info(
                        "shard %d: connect to %s failed: %s",
                        self.shard_id,
                        url.with_query(None),
                        exc or type(exc).__name__,
                    )
                    decision = sm.on_connect_failed(self.current(), plan.url)
                else:
                    self._backoff.connected(loop.time())
                    connection = Connection(self, socket, plan.mode)
                    self._connection = connection
                    if stopped.is_set():  # stopped while connecting
                        connection.settle(sm.on_stop(self.current()))
                    try:
                        decision = await connection.run()
                    finally:
                        self._connection = None
                        self._backoff.disconnected(loop.time())
                self.give_back_identify_slot()
                if decision.session is None:
                    self.seq = 0  # heartbeats of the next connection carry null until READY
                    self.name_session(None)
                if decision.phase is ShardPhase.FATAL:
                    self.fatal_code = decision.fatal_code
                    await self.set_state(decision.state, reason="fatal close code")
                    raise FatalCloseError(self.shard_id, decision.fatal_code)
                await self.set_state(decision.state)
                if decision.reconnect is None:
                    break
                self.counters.reconnects += 1
                plan = decision.reconnect
        finally:
            self.give_back_identify_slot()
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
        if self._stopped.is_set():
            self.give_back_identify_slot()
            return False
        return self._holding_slot

    async def _finish_stop(self) -> None:
        if self._state.phase is not ShardPhase.FATAL:
            self._state = sm.on_stop(self._state).state
        with contextlib.suppress(Exception):
            await self.output.report(self.snapshot())

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
            delay = low + (high - low) * self.rng()
        else:
            delay = self._backoff.next_delay()
        if delay <= 0:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), delay)


__all__ = [
    "FatalCloseError",
    "Shard",
    "ShardConfig",
    "ShardOutput",
    "gateway_url",
]
