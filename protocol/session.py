"""The one session record and the one shard phase enum, shared by every package.

A gateway session is what a RESUME needs: the session id from READY, the last
sequence number the resumer has *handled* (for the supervisor: published), and
the ``resume_gateway_url``. The worker's state machine, the relay's book, the
state-dir and Redis checkpoints, the worker spec and the status view all use
:class:`Session`; the phases a shard goes through are :class:`ShardPhase`
(STYLE.md practice 1). Pure data: no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class ShardPhase(enum.Enum):
    """Where a shard's connection stands; the values are what /status shows."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    AWAITING_HELLO = "awaiting_hello"
    AWAITING_PERMIT = "awaiting_permit"
    IDENTIFYING = "identifying"
    RESUMING = "resuming"
    READY = "ready"
    FATAL = "fatal"
    STOPPED = "stopped"

    @classmethod
    def parse(cls, value: str) -> ShardPhase:
        """A phase from its wire value; anything unknown reads as DISCONNECTED."""
        try:
            return cls(value)
        except ValueError:
            return cls.DISCONNECTED


@dataclass(frozen=True, slots=True)
class Session:
    """What a RESUME needs: the session, the last sequence number handled, where to go."""

    session_id: str
    seq: int
    resume_url: str

    def with_seq(self, seq: int) -> Session:
        return replace(self, seq=seq)

    def to_json(self) -> dict[str, str | int]:
        return {"session_id": self.session_id, "seq": self.seq, "resume_url": self.resume_url}

    @classmethod
    def from_json(cls, raw: object) -> Session:
        """The inverse of :meth:`to_json`; raises ValueError on anything else."""
        if not isinstance(raw, dict):
            raise ValueError("a session must be a JSON object")
        session_id, seq, resume_url = raw.get("session_id"), raw.get("seq"), raw.get("resume_url")
        if (
            not isinstance(session_id, str)
            or not session_id
            or isinstance(seq, bool)
            or not isinstance(seq, int)
            or seq < 0
            or not isinstance(resume_url, str)
            or not resume_url
        ):
            raise ValueError("a session needs session_id, seq >= 0 and resume_url")
        return cls(session_id, seq, resume_url)
