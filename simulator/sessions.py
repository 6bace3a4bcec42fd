"""Gateway sessions, their replay buffers, and the server-side rate limits.

A :class:`Session` outlives its connections: it is created by an accepted
IDENTIFY, keeps a bounded buffer of its last dispatches for RESUME, keeps
receiving generated events while no connection is attached (those reach
the client only by replay), and expires ``resume_timeout_s`` after its last
connection went away, or at once when it is invalidated (op 9 ``false``, a
client close with 1000/1001, the session-start budget running out).

The limiters are pure and take ``now`` so they are tested without a clock.
"""

from __future__ import annotations

import collections
import enum
import secrets

from simulator.config import SESSION_START_WINDOW_MS


class SessionState(enum.Enum):
    ATTACHED = "attached"  # a live connection receives its dispatches
    DETACHED = "detached"  # no connection; resumable until expires_at
    INVALID = "invalid"  # ended; never resumable again


class Sink:
    """Where an attached session sends frames (a gateway connection)."""

    conn_id: int

    def enqueue(self, frame: bytes) -> None:
        raise NotImplementedError

    @property
    def delivers(self) -> bool:
        """False for a zombie connection: frames are kept for replay only."""
        return True


class Session:
    __slots__ = (
        "buffer",
        "event_table",
        "expires_at",
        "guild_indices",
        "intents",
        "num_shards",
        "seq",
        "session_id",
        "shard_id",
        "sink",
        "state",
    )

    def __init__(
        self,
        shard_id: int,
        num_shards: int,
        intents: int,
        guild_indices: range,
        event_table: list[str],
        replay_buffer: int,
    ) -> None:
        self.session_id = secrets.token_hex(16)
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.intents = intents
        self.guild_indices = guild_indices
        self.event_table = event_table
        self.seq = 0
        #: (seq, frame) of the last dispatches, oldest first.
        self.buffer: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=replay_buffer)
        self.sink: Sink | None = None
        self.state = SessionState.DETACHED
        self.expires_at = 0.0

    @property
    def resumable(self) -> bool:
        return self.state is not SessionState.INVALID

    def live(self, now: float) -> bool:
        """Whether events are still produced into it: attached, or detached and not expired."""
        state = self.state
        return state is SessionState.ATTACHED or (
            state is SessionState.DETACHED and now < self.expires_at
        )

    def dispatch(self, t: bytes, d: bytes) -> tuple[int, int | None]:
        """Give the next seq to a dispatch, keep it for replay, send it if attached.

        Returns (seq, conn_id it was sent on or None). Serialized as
        ``{"t":..,"s":..,"op":0,"d":..}`` (Discord's key order).
        """
        self.seq += 1
        seq = self.seq
        frame = b'{"t":"%s","s":%d,"op":0,"d":%s}' % (t, seq, d)
        self.buffer.append((seq, frame))
        sink = self.sink
        if sink is not None and sink.delivers:
            sink.enqueue(frame)
            return seq, sink.conn_id
        return seq, None

    def replay_after(self, seq: int) -> list[bytes] | None:
        """Frames after ``seq``, or None when the buffer no longer holds all of them."""
        if seq == self.seq:
            return []
        if not self.buffer or self.buffer[0][0] > seq + 1:
            return None
        first = self.buffer[0][0]
        return [frame for s, frame in list(self.buffer)[seq + 1 - first :]]

    def attach(self, sink: Sink) -> None:
        self.sink = sink
        self.state = SessionState.ATTACHED

    def detach(self, sink: Sink | None, now: float, resume_timeout_s: float) -> None:
        if sink is not None and self.sink is not sink:
            return  # a newer connection already took the session over
        self.sink = None
        if self.state is SessionState.ATTACHED:
            self.state = SessionState.DETACHED
            self.expires_at = now + resume_timeout_s

    def invalidate(self) -> None:
        self.sink = None
        self.state = SessionState.INVALID


class SessionStore:
    """Live sessions by id; expired and invalid ones are dropped by :meth:`sweep`.

    ``version`` changes whenever a session is added or dropped, so an index
    over the sessions (simulator.routing.ShardRouter) knows when to rebuild.
    """

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.version = 0

    def add(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self.version += 1

    def get_resumable(self, session_id: object, now: float) -> Session | None:
        if not isinstance(session_id, str):
            return None
        session = self.sessions.get(session_id)
        if session is None or not session.resumable:
            return None
        if session.state is SessionState.DETACHED and now >= session.expires_at:
            session.invalidate()
            return None
        return session

    def live(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.resumable]

    def sweep(self, now: float) -> None:
        dead = [
            sid
            for sid, s in self.sessions.items()
            if s.state is SessionState.INVALID
            or (s.state is SessionState.DETACHED and now >= s.expires_at)
        ]
        for sid in dead:
            self.sessions[sid].invalidate()
            del self.sessions[sid]
        if dead:
            self.version += 1


class IdentifyLimiter:
    """One IDENTIFY per bucket ``shard_id % max_concurrency`` per window (PROTOCOL.md 5)."""

    def __init__(self, max_concurrency: int, window_s: float) -> None:
        self.max_concurrency = max_concurrency
        self.window_s = window_s
        self._last: dict[int, float] = {}

    def bucket(self, shard_id: int) -> int:
        return shard_id % self.max_concurrency

    def allowed(self, shard_id: int, now: float) -> bool:
        last = self._last.get(self.bucket(shard_id))
        return last is None or now - last >= self.window_s

    def spend(self, shard_id: int, now: float) -> None:
        self._last[self.bucket(shard_id)] = now


class SessionStartBudget:
    """The daily session-start limit: ``remaining`` of ``total``, reset after ``reset_after``."""

    def __init__(self, total: int, remaining: int, reset_after_ms: int, now: float) -> None:
        self.total = total
        self.remaining = remaining
        self._reset_at = now + reset_after_ms / 1000.0

    def _refresh(self, now: float) -> None:
        if now >= self._reset_at:
            self.remaining = self.total
            while self._reset_at <= now:
                self._reset_at += SESSION_START_WINDOW_MS / 1000.0

    def reset_after_ms(self, now: float) -> int:
        self._refresh(now)
        return max(0, round((self._reset_at - now) * 1000))

    def available(self, now: float) -> int:
        self._refresh(now)
        return self.remaining

    def spend(self, now: float) -> None:
        self._refresh(now)
        self.remaining -= 1

    def set_limit(
        self,
        now: float,
        total: int | None = None,
        remaining: int | None = None,
        reset_after_ms: int | None = None,
    ) -> None:
        """Change the limit as Discord does when it raises a bot's daily starts.

        A new ``total`` keeps the starts already spent in this window
        (``remaining = total - spent``, at least 0) unless ``remaining`` is
        given too; ``remaining`` is capped at ``total``.
        """
        self._refresh(now)
        if total is not None:
            spent = max(0, self.total - self.remaining)
            self.total = total
            self.remaining = max(0, total - spent)
        if remaining is not None:
            self.remaining = remaining
        self.remaining = min(self.remaining, self.total)
        if reset_after_ms is not None:
            self._reset_at = now + reset_after_ms / 1000.0

    def to_json(self, now: float, max_concurrency: int) -> dict[str, int]:
        """The ``session_start_limit`` object of ``GET /gateway/bot``."""
        return {
            "total": self.total,
            "remaining": self.available(now),
            "reset_after": self.reset_after_ms(now),
            "max_concurrency": max_concurrency,
        }


class SendLimiter:
    """Client payloads per connection: at most ``limit`` per sliding ``window_s`` (4008)."""

    __slots__ = ("_limit", "_times", "_window")

    def __init__(self, limit: int, window_s: float) -> None:
        self._limit = limit
        self._window = window_s
        self._times: collections.deque[float] = collections.deque()

    def hit(self, now: float) -> bool:
        """Count one payload; False when it is over the limit."""
        times = self._times
        cutoff = now - self._window
        while times and times[0] <= cutoff:
            times.popleft()
        times.append(now)
        return len(times) <= self._limit
