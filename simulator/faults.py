"""Fault kinds the simulator can inject into a live gateway connection.

On demand (``Simulator.inject`` or ``POST /_sim/fault``) any kind can be
injected; the seeded chaos mode draws only from :data:`CHAOS_SAFE`, the
faults a correct client survives by reconnecting and resuming (or, for
``invalid_session`` with ``d=false``, by identifying again).

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
from typing import Final


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
