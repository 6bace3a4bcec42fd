"""Gap and duplicate detection per shard and session (pure: no I/O, no clock).

The gateway numbers the dispatches of one session 1, 2, 3, ... (``s``); a new
session (after IDENTIFY) starts again at 1 with READY, a RESUME continues the
numbering. So per ``(shard_id, session_id)``:

==============================================  =============  ==========================
what arrives                                    verdict        reported
==============================================  =============  ==========================
the first event of a key                        ``NEW``        a gap from 1 if the shard
                                                               was seen in another named
                                                               session
a seq above the highest seen                    ``NEW``        a gap if it jumps by > 1
a seq below the highest, not seen before        ``LATE``       (reordered, or fills a gap)
a seq seen before (within the window)           ``DUPLICATE``
a seq below the window (older than remembered)  ``DUPLICATE``
==============================================  =============  ==========================

Delivery is at least once (a cluster RESUMEs from its last checkpoint and may
publish a seq again), so duplicates are expected; gaps mean lost events (a
subscriber slower than its high-water mark). The seen seqs are a bitmap of the
last ``window`` seqs below the highest, so a reordered event is told apart from
a repeated one; memory per shard is bounded (at most :data:`SESSIONS_KEPT`
sessions of ``window`` bits).

Without a session id (an older cluster's PUB header, the ``@discordjs/brokers``
sink layout) a new session is recognized by READY (``starts_session``) or by a
seq of 1 below the highest seen. A subscription that filters READY out and
sees no session ids cannot tell a new session's first events from repeats
until the seq passes the old session's highest; see the README.

Gap detection only makes sense when one consumer sees every event of a shard:
not with an event filter (the skipped seqs are other event types), not for one
member of a consumer group. The subscriptions switch it on only for an
unfiltered PUB tap unless told otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

#: Sessions remembered per shard (the current one and the ones before it, for late repeats).
SESSIONS_KEPT: Final = 3
#: Default number of seqs below the highest whose "seen" bit is kept.
DEFAULT_WINDOW: Final = 1024


class Verdict(enum.Enum):
    """What one observed seq is."""

    NEW = "new"  #: above everything seen in this session
    LATE = "late"  #: below the highest seen, but not seen before
    DUPLICATE = "duplicate"  #: seen before (or older than the window)


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs ``expected`` .. ``got - 1`` of a shard's session never arrived before ``got``."""

    shard_id: int
    session_id: str | None
    expected: int
    got: int

    @property
    def missing(self) -> int:
        """How many seqs were skipped."""
        return self.got - self.expected


@dataclass(frozen=True, slots=True)
class Observation:
    """The verdict on one seq, the gap it revealed (if any), whether it began a session."""

    verdict: Verdict
    gap: Gap | None = None
    new_session: bool = False


class _Track:
    __slots__ = ("floor", "high", "seen", "session_id")

    def __init__(self, session_id: str | None, seq: int, floor: int = 0) -> None:
        self.session_id = session_id
        self.high = seq
        self.seen = 1  # bit i: seq high - i was seen
        #: seqs below it are neither gaps nor repeats (a reshard's switch: see reshard())
        self.floor = floor


_NEW: Final = Observation(Verdict.NEW)
_LATE: Final = Observation(Verdict.LATE)
_DUPLICATE: Final = Observation(Verdict.DUPLICATE)


class SequenceTracker:
    """Remembers, per shard and session, the highest seq and which seqs below it were seen."""

    def __init__(self, *, detect_gaps: bool = True, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.detect_gaps = detect_gaps
        self.window = window
        self._mask = (1 << window) - 1
        self._shards: dict[int, list[_Track]] = {}

    def observe(
        self, shard_id: int, session_id: str | None, seq: int, *, starts_session: bool = False
    ) -> Observation:
        """Record one event's seq; ``starts_session`` is true for READY (a session's first event)."""
        tracks = self._shards.get(shard_id)
        if tracks is None:
            self._shards[shard_id] = [_Track(session_id, seq)]
            return Observation(Verdict.NEW, None, True)
        track = tracks[0]
        if track.session_id != session_id:
            for i in range(1, len(tracks)):
                if tracks[i].session_id == session_id:
                    track = tracks.pop(i)
                    tracks.insert(0, track)
                    break
            else:
                return self._new_session(tracks, shard_id, session_id, seq)
        elif session_id is None and seq < track.high and (starts_session or seq == 1):
            # No session ids: READY or seq 1 below the highest is a new session, not a repeat.
            tracks.pop(0)
            return self._new_session(tracks, shard_id, session_id, seq)
        high = track.high
        if seq < track.floor:
            return _LATE
        if seq > high:
            jump = seq - high
            track.seen = ((track.seen << jump) | 1) & self._mask
            track.high = seq
            if jump > 1 and self.detect_gaps:
                return Observation(Verdict.NEW, Gap(shard_id, session_id, high + 1, seq))
            return _NEW
        offset = high - seq
        if offset >= self.window:
            return _DUPLICATE
        bit = 1 << offset
        if track.seen & bit:
            return _DUPLICATE
        track.seen |= bit
        return _LATE

    def _new_session(
        self, tracks: list[_Track], shard_id: int, session_id: str | None, seq: int
    ) -> Observation:
        # We were listening to this shard's previous session, so we saw this one begin
        # (at 1). Not after a session-less event: a producer may publish READY before
        # it knows the session id and name the session from the next event on.
        previous_known = bool(tracks) and tracks[0].session_id is not None
        tracks.insert(0, _Track(session_id, seq))
        del tracks[SESSIONS_KEPT:]
        gap = None
        if seq > 1 and self.detect_gaps and previous_known:
            gap = Gap(shard_id, session_id, 1, seq)
        return Observation(Verdict.NEW, gap, True)

    def reshard(self, shards: Mapping[int, tuple[str | None, int]]) -> None:
        """The cluster switched shard sets (the ``TITANIUM_RESHARD`` marker): forget the old
        shards; each new shard's session counts from ``contiguous_from`` (seqs below it
        were deduplicated at the switch: neither gaps nor repeats)."""
        self._shards = {}
        for shard_id, (session_id, contiguous_from) in shards.items():
            track = _Track(session_id, contiguous_from - 1, floor=contiguous_from)
            track.seen = 0
            self._shards[shard_id] = [track]

    def highest(self, shard_id: int, session_id: str | None) -> int | None:
        """The highest seq seen for the shard's session, None if never seen."""
        for track in self._shards.get(shard_id, ()):
            if track.session_id == session_id:
                return track.high
        return None
