"""The startup progress display of ``cluster up``: shards ready / total, and what the rest wait for.

The time left comes from the identify schedule (:func:`cluster.planner.identify_duration`):
the last shard can be ready no earlier than ``(windows - 1) * interval`` after the
first IDENTIFY; the clock starts when identifies may begin (:meth:`Progress.schedule_started`).

That countdown says nothing once shards wait for something else: an exhausted
session-start budget, a new permit after op 9, a reconnect, a fatal close. With
:meth:`Progress.watch` the line reads the shards' phases and the identify
budget (sampled at most every ``sample_every_s``: it costs a pass over the shards)
and says what the shards that are not ready wait for; :func:`waiting_from` and
:func:`progress_line` are the pure part. On a terminal one line is rewritten in
place; otherwise (a pipe, a log collector) a plain log line is written when the
count or the kind of wait changes, at most once per ``log_every_s``, and once when
every shard is ready.
"""

from __future__ import annotations

import enum
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from cluster.identify_scheduler import SchedulerSnapshot
from protocol.session import ShardPhase

log = logging.getLogger("cluster.progress")

Clock = Callable[[], float]


class ShardView(Protocol):
    """What the progress line reads of a shard (``cluster.status.ShardStatus`` has it)."""

    @property
    def state(self) -> ShardPhase: ...

    @property
    def identifies(self) -> int: ...

    @property
    def reconnects(self) -> int: ...


class WaitReason(enum.Enum):
    """Why a shard is not ready; the values are the words of the progress line."""

    PERMIT = "waiting for an identify permit"
    PERMIT_AGAIN = "waiting to identify again (after op 9 or a lost session)"
    READY = "identified, waiting for READY"
    RESUMING = "resuming"
    CONNECTING = "connecting"
    RECONNECTING = "reconnecting"
    FATAL = "stopped on a fatal close code"
    STOPPED = "stopped"


#: Normal while the identify schedule runs: not worth a word before it is over.
_SCHEDULED: frozenset[WaitReason] = frozenset(
    {WaitReason.PERMIT, WaitReason.READY, WaitReason.CONNECTING}
)
_NEEDS_PERMIT: frozenset[WaitReason] = frozenset({WaitReason.PERMIT, WaitReason.PERMIT_AGAIN})


def wait_reason(shard: ShardView) -> WaitReason | None:
    """What ``shard`` waits for (None: it is ready)."""
    phase = shard.state
    again = shard.identifies > 0 or shard.reconnects > 0
    if phase is ShardPhase.READY:
        return None
    if phase is ShardPhase.AWAITING_PERMIT:
        return WaitReason.PERMIT_AGAIN if shard.identifies > 0 else WaitReason.PERMIT
    if phase is ShardPhase.IDENTIFYING:
        return WaitReason.READY
    if phase is ShardPhase.RESUMING:
        return WaitReason.RESUMING
    if phase is ShardPhase.FATAL:
        return WaitReason.FATAL
    if phase is ShardPhase.STOPPED:
        return WaitReason.STOPPED
    # DISCONNECTED, CONNECTING, AWAITING_HELLO
    return WaitReason.RECONNECTING if again else WaitReason.CONNECTING


@dataclass(frozen=True, slots=True)
class Budget:
    """The identify budget as the progress line shows it."""

    remaining: int
    total: int
    #: Seconds until the session-start limit resets.
    reset_in_s: float

    @classmethod
    def of(cls, snapshot: SchedulerSnapshot, now: float) -> Budget:
        return cls(snapshot.remaining, snapshot.total, max(0.0, snapshot.reset_at - now))


@dataclass(frozen=True, slots=True)
class Waiting:
    """What the shards that are not ready wait for: a count per reason, and the budget."""

    counts: Mapping[WaitReason, int] = field(default_factory=dict)
    budget: Budget | None = None
    #: The shards are not known (nothing watched): only the count of those not ready.
    unknown: bool = False

    @property
    def needing_permit(self) -> int:
        return sum(n for r, n in self.counts.items() if r in _NEEDS_PERMIT)

    @property
    def exhausted(self) -> bool:
        """No session start left while shards still need one: nothing will identify."""
        return self.budget is not None and self.budget.remaining <= 0 and self.needing_permit > 0

    def key(self) -> tuple[object, ...]:
        """What changes the kind of wait (not the countdowns): a new log line off a terminal."""
        return (tuple(sorted(r.name for r, n in self.counts.items() if n)), self.exhausted)


def waiting_from(
    shards: Iterable[ShardView], budget: SchedulerSnapshot | None, now: float
) -> Waiting:
    counts: dict[WaitReason, int] = {}
    for shard in shards:
        reason = wait_reason(shard)
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
    return Waiting(counts, None if budget is None else Budget.of(budget, now))


def format_duration(seconds: float) -> str:
    """``42 s``, ``17 min``, ``3 h 05 min``: a reset time at a glance."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _reasons(counts: Mapping[WaitReason, int], skip: frozenset[WaitReason]) -> str:
    return ", ".join(
        f"{counts[r]} {r.value}" for r in WaitReason if counts.get(r) and r not in skip
    )


def progress_line(
    ready: int, total: int, seconds_left: float, waiting: Waiting | None = None
) -> str:
    """The line for ``ready`` of ``total``; without ``waiting``, the schedule's countdown only."""
    head = f"shards ready {ready}/{total}"
    if ready >= total:
        return head
    schedule = f"about {max(0.0, seconds_left):.1f} s left by the identify schedule"
    if waiting is None:
        return f"{head}, {schedule}"
    if waiting.unknown:
        if seconds_left > 0:
            return f"{head}, {schedule}"
        return f"{head}, identify schedule done; {total - ready} not ready yet"
    budget = waiting.budget
    if waiting.exhausted:
        assert budget is not None
        line = (
            f"{head}, identify budget exhausted: 0 of {budget.total} session starts left, "
            f"the limit resets in {format_duration(budget.reset_in_s)}"
        )
        rest = _reasons(waiting.counts, frozenset())
        return f"{line}; not ready: {rest}" if rest else line
    if seconds_left > 0:
        line = f"{head}, {schedule}"
        short = budget is not None and budget.remaining < waiting.needing_permit
        if short:
            assert budget is not None
            line += (
                f"; only {budget.remaining} of {budget.total} session starts left for "
                f"{waiting.needing_permit} shards (the limit resets in "
                f"{format_duration(budget.reset_in_s)})"
            )
        rest = _reasons(waiting.counts, _SCHEDULED)
        return f"{line}; also {rest}" if rest else line
    rest = _reasons(waiting.counts, frozenset())
    line = f"{head}, identify schedule done; not ready: {rest or f'{total - ready} shards'}"
    if budget is not None and 0 < budget.remaining < waiting.needing_permit:
        line += f" (only {budget.remaining} session starts left)"
    return line


class Progress:
    """Call :meth:`update` whenever the ready count may have changed (cheap when it did not)."""

    def __init__(
        self,
        total: int,
        schedule_s: float,
        stream: TextIO | None = None,
        log_every_s: float = 1.0,
        interactive: bool | None = None,
        clock: Clock = time.monotonic,
        sample_every_s: float = 0.5,
    ) -> None:
        self.total = total
        self._stream = stream or sys.stderr
        self._interactive = self._stream.isatty() if interactive is None else interactive
        self._clock = clock
        self._started = clock()
        self._schedule_s = schedule_s
        self._deadline: float | None = None
        self._log_every_s = log_every_s
        self._last_ready = -1
        self._last_key: tuple[object, ...] | None = None
        self._last_line = ""
        self._last_logged = 0.0
        self._done = False
        self._shards: Callable[[], Iterable[ShardView]] | None = None
        self._budget: Callable[[], SchedulerSnapshot | None] | None = None
        self._sample_every_s = sample_every_s
        self._sampled: Waiting | None = None
        self._sampled_at = -math.inf

    def watch(
        self,
        shards: Callable[[], Iterable[ShardView]],
        budget: Callable[[], SchedulerSnapshot | None] | None = None,
    ) -> None:
        """Read the shards (and the identify budget) to say what the shards not ready wait for.

        Both are called when the line is drawn, at most once per ``sample_every_s``.
        """
        self._shards = shards
        self._budget = budget
        self._sampled_at = -math.inf

    def schedule_started(self) -> None:
        """Identifies may begin now (the coordinator is serving)."""
        if self._deadline is None:
            self._deadline = self._clock() + self._schedule_s

    def seconds_left(self, now: float) -> float:
        if self._deadline is None:
            return self._schedule_s
        return max(0.0, self._deadline - now)

    def waiting(self, now: float) -> Waiting | None:
        """What the shards wait for (None: the schedule's countdown says it all)."""
        if self._shards is None:
            if self._deadline is None or now < self._deadline:
                return None
            return Waiting(unknown=True)
        if self._sampled is None or now - self._sampled_at >= self._sample_every_s:
            budget = self._budget() if self._budget is not None else None
            self._sampled = waiting_from(self._shards(), budget, now)
            self._sampled_at = now
        return self._sampled

    def update(self, ready: int) -> None:
        if self._done:
            return
        now = self._clock()
        if ready >= self.total:
            line = progress_line(ready, self.total, 0.0)
            self._done = True
            elapsed = now - self._started
            if self._interactive:
                self._stream.write(f"\r\x1b[K{line} in {elapsed:.1f} s\n")
                self._stream.flush()
            else:
                log.info("all %d shards ready in %.1f s", self.total, elapsed)
            return
        waiting = self.waiting(now)
        line = progress_line(ready, self.total, self.seconds_left(now), waiting)
        key = None if waiting is None else waiting.key()
        if self._interactive:
            if line != self._last_line:
                self._last_line = line
                self._stream.write(f"\r\x1b[K{line}")
                self._stream.flush()
        elif (
            ready != self._last_ready or key != self._last_key
        ) and now - self._last_logged >= self._log_every_s:
            self._last_logged = now
            self._last_key = key
            log.info("%s", line)
        self._last_ready = ready

    def finish(self) -> None:
        """Leave the terminal line clean (a stop before every shard was ready)."""
        if self._interactive and not self._done:
            self._stream.write("\n")
            self._stream.flush()
        self._done = True
