"""One client session of the endpoint: its own seq numbering and its bounded replay buffer (pure).

A client IDENTIFYs for one shard and gets a session of the endpoint's own
(never the shard's): every dispatch it is sent, its READY and GUILD_CREATEs
included, gets the next number of the session's own ``seq`` (1, 2, 3, ...),
whatever the shard's seq was. The dispatches are kept in a replay buffer so
the client can RESUME after a disconnect and get what it missed, as Discord
does (shared/PROTOCOL.md section 4).

The buffer holds ``(seq, t, d)``; ``d`` is the bytes object every client of
the shard shares, so a dispatch costs each session a tuple, not a copy. It is
bounded by ``max_events`` and ``max_bytes`` (plus the size of the READY and
GUILD_CREATE snapshot, which must survive until the client has it); what falls
out is gone. A client's heartbeat carries the last seq it received: what is at
or below it can never be asked for again and is released at once (so the
snapshot is released by the first heartbeat after it was read).

The writer sends from the buffer (``sent`` is the last seq written to the
socket): a client that does not read leaves its dispatches unsent in the
buffer, and once one of them falls out (:attr:`ClientSession.overflowed`) the
client is cut off; its RESUME then finds the gap and gets op 9 (start over
from the cache). Memory per session stays bounded whatever the client does.

:class:`SendWindow` is Discord's limit on what a client sends: 120 payloads
per 60 s per connection, heartbeats included (close 4008 beyond it).
"""

from __future__ import annotations

import collections
import enum
import secrets
from typing import Any, Final

#: Default bounds of a session's replay buffer beyond its snapshot.
DEFAULT_REPLAY_EVENTS: Final = 20_000
DEFAULT_REPLAY_BYTES: Final = 8 * 1024 * 1024
#: What one buffered dispatch costs besides its d (the tuple, the seq, the deque slot).
_ENTRY_OVERHEAD: Final = 100

Entry = tuple[int, bytes, bytes]


class SessionState(enum.Enum):
    #: identified; the READY waits until the shard has one (it is still connecting)
    WAITING = "waiting"
    #: a client connection reads it
    ATTACHED = "attached"
    #: no connection; resumable until it expires or its buffer lost what the client lacks
    DETACHED = "detached"
    #: ended (op 9 sent, expired, replaced): never resumable again
    ENDED = "ended"


class ClientSession:
    """A client's session: seq numbering, replay buffer, what was written and acknowledged."""

    __slots__ = (
        "_base_bytes",
        "_buffer",
        "_bytes",
        "_max_events",
        "_snapshot_bytes",
        "_snapshot_end",
        "detached_at",
        "intents",
        "num_shards",
        "replayed",
        "resumes",
        "sent",
        "seq",
        "session_id",
        "shard_id",
        "state",
    )

    def __init__(
        self,
        shard_id: int,
        num_shards: int,
        intents: int,
        max_events: int = DEFAULT_REPLAY_EVENTS,
        max_bytes: int = DEFAULT_REPLAY_BYTES,
        session_id: str | None = None,
    ) -> None:
        self.session_id = session_id or secrets.token_hex(16)
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.intents = intents
        self.state = SessionState.WAITING
        #: the last seq given out, and the last one written to the client's socket
        self.seq = 0
        self.sent = 0
        self.resumes = 0
        #: dispatches sent again by RESUMEs
        self.replayed = 0
        self.detached_at: float | None = None
        self._buffer: collections.deque[Entry] = collections.deque()
        self._bytes = 0
        self._max_events = max_events
        self._base_bytes = max_bytes
        #: the last seq of the READY + GUILD_CREATE snapshot (its bytes are allowed on top)
        self._snapshot_end = 0
        #: the bytes of the snapshot's entries still buffered
        self._snapshot_bytes = 0

    def __repr__(self) -> str:  # no payloads, no token: safe to log
        return (
            f"ClientSession(shard={self.shard_id}, state={self.state.value}, seq={self.seq}, "
            f"sent={self.sent}, buffered={len(self._buffer)})"
        )

    # -- what the pump and the writer call --------------------------------------------------

    def push(self, t: bytes, d: bytes) -> int:
        """Number one dispatch and buffer it; returns its seq."""
        self.seq += 1
        seq = self.seq
        self._buffer.append((seq, t, d))
        self._bytes += len(d) + _ENTRY_OVERHEAD
        if (
            self._bytes > self._base_bytes + self._snapshot_bytes
            or len(self._buffer) > self._max_events
        ):
            self._evict()
        return seq

    def snapshot(self, entries: list[tuple[bytes, bytes]]) -> None:
        """Push READY and the GUILD_CREATEs; their bytes are allowed on top of the bound."""
        for t, d in entries:
            self.seq += 1
            self._buffer.append((self.seq, t, d))
            self._bytes += len(d) + _ENTRY_OVERHEAD
            self._snapshot_bytes += len(d) + _ENTRY_OVERHEAD
        self._snapshot_end = self.seq

    def unsent(self) -> list[Entry]:
        """What was buffered but not yet written, in order."""
        buffer = self._buffer
        if not buffer or buffer[-1][0] <= self.sent:
            return []
        start = max(0, self.sent + 1 - buffer[0][0])
        return [buffer[i] for i in range(start, len(buffer))]

    def mark_sent(self, seq: int) -> None:
        self.sent = max(self.sent, seq)

    @property
    def backlog(self) -> int:
        """Dispatches buffered and not yet written (the client's lag, in events)."""
        return self.seq - self.sent

    @property
    def overflowed(self) -> bool:
        """True when a dispatch was dropped before it was written: the client cannot catch up."""
        return bool(self._buffer) and self._buffer[0][0] > self.sent + 1

    def acknowledge(self, seq: object) -> None:
        """The client's heartbeat says it has everything up to ``seq``: release that."""
        if not isinstance(seq, int) or isinstance(seq, bool) or seq > self.sent:
            return
        buffer = self._buffer
        while buffer and buffer[0][0] <= seq:
            self._pop()

    def replay_after(self, seq: int) -> list[Entry] | None:
        """The dispatches after ``seq`` for a RESUME, or None when the buffer lost some of them.

        ``seq`` above what was written is as bad as one too old (4007 on Discord; the
        endpoint answers op 9, the client starts over either way).
        """
        if seq < 0 or seq > self.sent:
            return None
        buffer = self._buffer
        if seq == self.seq:
            return []
        if not buffer or buffer[0][0] > seq + 1:
            return None
        start = seq + 1 - buffer[0][0]
        return [buffer[i] for i in range(start, len(buffer))]

    def rewind(self, seq: int) -> None:
        """A RESUME from ``seq``: everything after it is to be written again."""
        self.sent = seq

    def dump(self) -> list[Any]:
        """Plain values for :mod:`cluster.endpoint.persist` (a graceful supervisor stop)."""
        return [
            self.session_id,
            self.shard_id,
            self.num_shards,
            self.intents,
            self.seq,
            self.sent,
            self._snapshot_end,
            self.resumes,
            [list(entry) for entry in self._buffer],
        ]

    @classmethod
    def load(cls, data: list[Any], max_events: int, max_bytes: int) -> ClientSession:
        """A session :meth:`dump` saved, detached (its client may RESUME it)."""
        session_id, shard_id, num_shards, intents, seq, sent, snapshot_end, resumes, buffer = data
        session = cls(int(shard_id), int(num_shards), int(intents), max_events, max_bytes)
        session.session_id = str(session_id)
        session.seq, session.sent = int(seq), int(sent)
        session.resumes = int(resumes)
        session._snapshot_end = int(snapshot_end)
        for entry_seq, t, d in buffer:
            entry = (int(entry_seq), bytes(t), bytes(d))
            session._buffer.append(entry)
            size = len(entry[2]) + _ENTRY_OVERHEAD
            session._bytes += size
            if entry[0] <= session._snapshot_end:
                session._snapshot_bytes += size
        session.state = SessionState.DETACHED
        return session

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    def _pop(self) -> None:
        seq, _, d = self._buffer.popleft()
        size = len(d) + _ENTRY_OVERHEAD
        self._bytes -= size
        if seq <= self._snapshot_end:
            self._snapshot_bytes -= size

    def _evict(self) -> None:
        buffer = self._buffer
        while buffer and (
            self._bytes > self._base_bytes + self._snapshot_bytes or len(buffer) > self._max_events
        ):
            self._pop()


class SendWindow:
    """At most ``limit`` payloads in any ``window_s`` (Discord: 120 per 60 s per connection)."""

    __slots__ = ("_limit", "_times", "_window_s")

    def __init__(self, limit: int = 120, window_s: float = 60.0) -> None:
        self._limit = limit
        self._window_s = window_s
        self._times: collections.deque[float] = collections.deque()

    def hit(self, now: float) -> bool:
        """Count one payload at ``now``; False when it is over the limit."""
        times = self._times
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if len(times) >= self._limit:
            return False
        times.append(now)
        return True
