"""Faults the simulator injects into live gateway connections: kinds, targets, effects, chaos.

On demand (``Simulator.inject`` or ``POST /_sim/fault``) any kind can be
injected into the connections :func:`targets` picks (every one, a shard's,
one shard set's, or one connection); the seeded chaos mode
(:class:`ChaosPicker`, driven by the gateway's ticker) draws only from
:data:`CHAOS_SAFE`, the faults a correct client survives by reconnecting and
resuming (or, for ``invalid_session`` with ``d=false``, by identifying
again). :func:`apply_fault` is the one place that knows what each does.

What each fault does on the wire:

- ``reconnect``: op 7; the connection stays open (``close_after_s`` closes it
  with 4000 later, as Discord does a few seconds after op 7).
- ``invalid_session``: op 9 with ``d`` (``resumable``); ``d=false`` also ends
  the session, so a later RESUME gets op 9 ``false``.
- ``close``: a close frame with ``code`` (default 4000) and ``reason``.
- ``drop``: abort the TCP transport, no close frame.
- ``zombie``: the connection keeps reading but stops ACKing heartbeats and
  stops sending dispatches (they still go to the session's replay buffer).
- ``malformed_json``: a text/compressed message that is not JSON.
- ``truncated_frame``: the first half of a compressed message (the
  client's inflate context is ruined; without compression: half a JSON text).
- ``unknown_opcode``: ``{"op": 42}``, which a client should ignore.
- ``heartbeat_request``: server op 1; the client must heartbeat at once.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Iterable
from typing import Any, Final

from protocol.gateway import CloseCode, Opcode
from simulator.connection import Connection, control
from simulator.record import FaultRecord, Record


class FaultKind(enum.Enum):
    RECONNECT = "reconnect"
    INVALID_SESSION = "invalid_session"
    CLOSE = "close"
    DROP = "drop"
    ZOMBIE = "zombie"
    MALFORMED_JSON = "malformed_json"
    TRUNCATED_FRAME = "truncated_frame"
    UNKNOWN_OPCODE = "unknown_opcode"
    HEARTBEAT_REQUEST = "heartbeat_request"

    @classmethod
    def parse(cls, value: str | FaultKind) -> FaultKind:
        if isinstance(value, FaultKind):
            return value
        aliases = {
            "op7": cls.RECONNECT,
            "op9": cls.INVALID_SESSION,
            "heartbeat": cls.HEARTBEAT_REQUEST,
        }
        try:
            return aliases.get(value) or cls(value)
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown fault kind {value!r}; known: {known}") from None


#: Faults a correct client survives; the chaos mode draws from these.
CHAOS_SAFE: Final = (
    FaultKind.RECONNECT,
    FaultKind.INVALID_SESSION,
    FaultKind.CLOSE,
    FaultKind.DROP,
    FaultKind.ZOMBIE,
    FaultKind.MALFORMED_JSON,
    FaultKind.TRUNCATED_FRAME,
    FaultKind.UNKNOWN_OPCODE,
    FaultKind.HEARTBEAT_REQUEST,
)

#: Server close codes chaos may use: all tell the client to resume.
CHAOS_CLOSE_CODES: Final = (1000, 1001, 4000, 4001, 4002, 4008)


class ChaosPicker:
    """Seeded choice of the next fault and its parameters (pure, no I/O)."""

    __slots__ = ("_kinds", "_rng")

    def __init__(self, seed: int, kinds: tuple[str, ...] | None) -> None:
        self._rng = random.Random(seed)
        self._kinds = tuple(FaultKind.parse(k) for k in kinds) if kinds else CHAOS_SAFE

    def hits(self, probability: float) -> bool:
        return self._rng.random() < probability

    def pick(self) -> tuple[FaultKind, dict[str, object]]:
        kind = self._rng.choice(self._kinds)
        params: dict[str, object] = {}
        if kind is FaultKind.CLOSE:
            params["code"] = self._rng.choice(CHAOS_CLOSE_CODES)
        elif kind is FaultKind.INVALID_SESSION:
            # Mostly resumable: d=false costs the client an identify.
            params["resumable"] = self._rng.random() < 0.75
        elif kind is FaultKind.RECONNECT:
            params["close_after_s"] = 1.0
        return kind, params


# -- applying faults --------------------------------------------------------------------


def targets(
    connections: Iterable[Connection],
    shard_id: int | str | None,
    conn_id: int | None = None,
    num_shards: int | None = None,
) -> list[Connection]:
    """The open connections a fault goes to.

    ``conn_id`` picks one connection; else ``shard_id`` None or ``"all"``
    every one, or those of a shard (under ``num_shards``, or of every shard
    set when it is None; ``shard_id="all"`` with ``num_shards`` is one whole set).
    """
    conns = [c for c in connections if c.open]
    if conn_id is not None:
        return [c for c in conns if c.conn_id == conn_id]
    return [
        c
        for c in conns
        if (shard_id in (None, "all") and num_shards is None)
        or (
            c.session is not None
            and (shard_id in (None, "all") or c.session.shard_id == shard_id)
            and (num_shards is None or c.session.num_shards == num_shards)
        )
    ]


def inject(
    connections: Iterable[Connection],
    record: Record,
    shard_id: int | str | None,
    fault: FaultKind | str,
    conn_id: int | None = None,
    num_shards: int | None = None,
    **params: Any,
) -> list[int]:
    """Apply ``fault`` (with its ``params``) to :func:`targets`; returns their conn ids."""
    kind = FaultKind.parse(fault)
    check_params(kind, params)
    hit = targets(connections, shard_id, conn_id, num_shards)
    for conn in hit:
        apply_fault(conn, kind, params, chaos=False, record=record)
    return [c.conn_id for c in hit]


def apply_fault(
    conn: Connection, kind: FaultKind, params: dict[str, Any], chaos: bool, record: Record
) -> None:
    session = conn.session
    record.add(
        FaultRecord(
            conn.conn_id,
            session.shard_id if session else None,
            kind.value,
            dict(params),
            time.monotonic(),
            chaos,
            session.num_shards if session else None,
        )
    )
    if kind is FaultKind.RECONNECT:
        conn.send_op(Opcode.RECONNECT, None)
        after = params.get("close_after_s")
        if after is not None:
            conn.close_after(float(after), CloseCode.UNKNOWN_ERROR, "reconnect")
    elif kind is FaultKind.INVALID_SESSION:
        resumable = bool(params.get("resumable", params.get("d", False)))
        if not resumable and session is not None:
            session.invalidate()
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


def check_params(kind: FaultKind, params: dict[str, Any]) -> None:
    """ValueError for a parameter ``kind`` does not take, or a bad value."""
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
