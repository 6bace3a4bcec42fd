"""The shard state machine: every decision, pure.

A shard is in one :class:`protocol.session.ShardPhase` and may hold a
:class:`protocol.session.Session` (both records are shared with the
supervisor, so they live in ``protocol``). What survives a disconnect (the
session, the resume URL), whether the next connection RESUMEs or IDENTIFYs,
how long it waits, which close code the shard sends, and when it stops for
good are decided here and only here, by one pure function per kind of event
(twilight's ``disconnect(initiator)`` and ``process()``). The async runners,
:mod:`worker.shard` (the reconnect loop) and :mod:`worker.connection` (one
websocket), do the I/O and apply the :class:`Decision`.

Rules (shared/PROTOCOL.md sections 2-4):

- A server close is looked up in ``protocol.gateway.close_action``: RESUME
  keeps the session, NEW_SESSION (4003, 4007, 4009) drops it and waits a
  random 1-5 s before the permit and IDENTIFY, FATAL (4004, 4010-4014) stops.
- op 7 and op 9 ``d=true`` resume; op 9 ``d=false`` is a new session after
  the same 1-5 s wait.
- A missed heartbeat ACK (zombie), a dropped transport and bad input from the
  server (malformed JSON, unknown opcode, corrupt compressed data, an
  oversized frame) resume: they cost one connection, never the session.
- When the shard closes a socket itself it sends 4000 (``RESUMABLE_CLOSE_CODE``),
  never 1000/1001, which would end the session on Discord's side.
- A connection attempt to the resume URL that fails ``resume_url_attempts``
  times in a row falls back to the main gateway URL (still RESUME: resume
  does not cost a session start, and the server answers op 9 if it cannot).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Final

from protocol.gateway import RESUMABLE_CLOSE_CODE, CloseAction, close_action
from protocol.session import Session, ShardPhase

#: Consecutive failed connects to the resume URL before trying the main URL.
RESUME_URL_ATTEMPTS: Final = 3


class ConnectMode(enum.Enum):
    RESUME = "resume"
    IDENTIFY = "identify"


class GatewayUrl(enum.Enum):
    RESUME = "resume"  #: the session's ``resume_gateway_url``
    MAIN = "main"  #: the cached ``/gateway/bot`` URL


class Wait(enum.Enum):
    NONE = "none"  #: reconnect at once
    BACKOFF = "backoff"  #: the shard's exponential backoff
    NEW_SESSION = "new_session"  #: a random 1-5 s before a new session


@dataclass(frozen=True, slots=True)
class Reconnect:
    mode: ConnectMode
    url: GatewayUrl
    wait: Wait


@dataclass(frozen=True, slots=True)
class ShardState:
    """The part of a shard the decisions read: its phase, session and failed connects."""

    phase: ShardPhase
    session: Session | None = None
    connect_failures: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """What the runner does next."""

    state: ShardState
    #: The code to close the socket with if it is still open (never 1000/1001).
    close_code: int | None
    #: How to connect next; None when the shard stops (fatal or stopped).
    reconnect: Reconnect | None
    #: The server close code that made the shard fatal.
    fatal_code: int | None = None

    @property
    def phase(self) -> ShardPhase:
        return self.state.phase

    @property
    def session(self) -> Session | None:
        return self.state.session


def initial_state(saved: Session | None) -> ShardState:
    return ShardState(ShardPhase.DISCONNECTED, saved, 0)


def first_connect(state: ShardState) -> Reconnect:
    """The first connection: RESUME a saved session on its URL, else IDENTIFY."""
    if state.session is not None:
        return Reconnect(ConnectMode.RESUME, GatewayUrl.RESUME, Wait.NONE)
    return Reconnect(ConnectMode.IDENTIFY, GatewayUrl.MAIN, Wait.NONE)


def _resume_or_identify(state: ShardState, wait: Wait, close_code: int | None) -> Decision:
    """Keep the session if there is one and resume it; without one, identify."""
    if state.session is not None:
        plan = Reconnect(ConnectMode.RESUME, GatewayUrl.RESUME, wait)
    else:
        plan = Reconnect(ConnectMode.IDENTIFY, GatewayUrl.MAIN, wait)
    return Decision(ShardState(ShardPhase.DISCONNECTED, state.session, 0), close_code, plan)


def _new_session(close_code: int | None) -> Decision:
    plan = Reconnect(ConnectMode.IDENTIFY, GatewayUrl.MAIN, Wait.NEW_SESSION)
    return Decision(ShardState(ShardPhase.DISCONNECTED, None, 0), close_code, plan)


def on_server_close(state: ShardState, code: int | None) -> Decision:
    """The server closed the connection with ``code`` (None: no close frame, TCP gone)."""
    action = close_action(code)
    if action is CloseAction.FATAL:
        return Decision(ShardState(ShardPhase.FATAL, None, 0), None, None, fatal_code=code)
    if action is CloseAction.NEW_SESSION:
        return _new_session(None)
    return _resume_or_identify(state, Wait.BACKOFF, None)


def on_reconnect_request(state: ShardState) -> Decision:
    """op 7 Reconnect: close with 4000 and resume at once."""
    return _resume_or_identify(state, Wait.NONE, RESUMABLE_CLOSE_CODE)


def on_invalid_session(state: ShardState, resumable: bool) -> Decision:
    """op 9: ``d=true`` resume (with backoff: it may repeat); ``d=false`` new session."""
    if resumable:
        return _resume_or_identify(state, Wait.BACKOFF, RESUMABLE_CLOSE_CODE)
    return _new_session(RESUMABLE_CLOSE_CODE)


def on_missed_ack(state: ShardState) -> Decision:
    """No heartbeat ACK between two heartbeats: a zombie connection; close 4000, resume."""
    return _resume_or_identify(state, Wait.NONE, RESUMABLE_CLOSE_CODE)


def on_transport_error(state: ShardState) -> Decision:
    """The socket broke while connected (reset, EOF without a close frame)."""
    return on_server_close(state, None)


def on_bad_input(state: ShardState) -> Decision:
    """The server sent something we cannot read; this connection is done, the session is not."""
    return _resume_or_identify(state, Wait.BACKOFF, RESUMABLE_CLOSE_CODE)


def on_connect_failed(state: ShardState, url: GatewayUrl) -> Decision:
    """A connection attempt to ``url`` failed (refused, timeout, bad handshake)."""
    failures = state.connect_failures + 1
    session = state.session
    if session is None:
        plan = Reconnect(ConnectMode.IDENTIFY, GatewayUrl.MAIN, Wait.BACKOFF)
    elif url is GatewayUrl.RESUME and failures < RESUME_URL_ATTEMPTS:
        plan = Reconnect(ConnectMode.RESUME, GatewayUrl.RESUME, Wait.BACKOFF)
    else:
        plan = Reconnect(ConnectMode.RESUME, GatewayUrl.MAIN, Wait.BACKOFF)
    return Decision(ShardState(ShardPhase.DISCONNECTED, session, failures), None, plan)


def on_connecting(state: ShardState) -> ShardState:
    """A connection attempt starts; the session and the count of failed connects stay."""
    return ShardState(ShardPhase.CONNECTING, state.session, state.connect_failures)


def on_connected(state: ShardState, mode: ConnectMode) -> ShardState:
    """The websocket handshake succeeded; failed connects are forgotten."""
    return ShardState(ShardPhase.AWAITING_HELLO, state.session, 0)


def on_hello(state: ShardState, mode: ConnectMode) -> ShardState:
    """Hello arrived: a RESUME is sent at once, an IDENTIFY waits for its permit."""
    if mode is ConnectMode.RESUME and state.session is not None:
        return replace(state, phase=ShardPhase.RESUMING)
    return ShardState(ShardPhase.AWAITING_PERMIT, None, state.connect_failures)


def on_permit(state: ShardState) -> ShardState:
    return replace(state, phase=ShardPhase.IDENTIFYING)


def on_ready(state: ShardState, session: Session) -> ShardState:
    """READY: a new session."""
    return ShardState(ShardPhase.READY, session, 0)


def on_resumed(state: ShardState) -> ShardState:
    """RESUMED: the replay is over, the session goes on."""
    return replace(state, phase=ShardPhase.READY)


def on_stop(state: ShardState) -> Decision:
    """A stop/drain command: close with 4000 so the session can be resumed later."""
    return Decision(ShardState(ShardPhase.STOPPED, state.session, 0), RESUMABLE_CLOSE_CODE, None)
