"""The identify scheduler: who may send an IDENTIFY, and when (pure; the clock is passed in).

Discord allows one IDENTIFY per rate-limit bucket (``shard_id % max_concurrency``)
per 5 s, and a daily budget of session starts (``session_start_limit``); see
shared/PROTOCOL.md section 5, "Max Concurrency" and "Session Start Limit". This
module is the one place that decides: one FIFO per bucket, at most one grant
per bucket per ``interval_s + safety_margin_s``, never more grants than
session starts remain, and at zero nothing until the limit resets.

With ``sent_hold_s`` set, the spacing is counted from when the IDENTIFY was
*sent*, not from the grant: after a grant the bucket stays closed until the
client reports ``sent`` (then it opens ``interval_s + safety_margin_s`` after
that report), gives the grant back, or ``sent_hold_s`` passes (a client that
died, or one that never reports). A busy worker may send an IDENTIFY tens of
milliseconds after its grant; counted from the grant, the next IDENTIFY of
the bucket could arrive at Discord less than an interval after it (measured:
93 of 1,024 IDENTIFYs refused at a 0.05 s interval on 2 cores).

With ``lead_s`` (only with ``sent_hold_s``) a bucket's next grant goes out up to
``lead_s`` *before* the bucket opens, carrying ``not_before``: the time the
bucket opens, on the host's monotonic clock (the coordinator and its workers
share it). The worker writes the IDENTIFY at that time, not when the grant
arrives, so the grant's trip to the worker is off the schedule's critical
path; and its ``sent`` report says when it wrote (``written_at``), so the
report's trip back is off it too. The bucket is spaced from the write, never
from before the grant's ``not_before``.

With ``answer_opens`` the server's answer to an IDENTIFY (its READY) may open
the bucket sooner: whatever moment the server counts an IDENTIFY at, it lies
between the IDENTIFY's arrival and the server's answer, so an answer that
reached us at ``r`` bounds it from above, and an IDENTIFY written at or after
``r + interval_s`` arrives at least ``interval_s`` after it, whatever the
network and the server's loop did meanwhile. The bucket then opens at the
earlier of ``r + interval_s`` and ``write + interval_s + answer_wait_s`` (the
fallback when no answer comes: a refused or lost IDENTIFY; at least the
margin; see :func:`default_answer_wait`). A server that stalls before it takes
an IDENTIFY answers late, which is exactly when a fixed margin is too short.
Off when the margin is given explicitly (it is then honoured exactly).
The answer's time ``r`` need not be when the coordinator heard of it: the
worker that read the READY stamps the read (``time.monotonic()``, the clock
the coordinator shares) and reports it directly. The server counted the
IDENTIFY before it sent the READY, and the worker read the READY after the
server sent it, so the worker's read time bounds the server's count time
from above just as well, without the report's trip to the supervisor.

No asyncio, no sockets, no ``time`` calls: every method takes ``now`` (seconds
on any monotonic clock), so the whole policy is testable with a fake clock.
The ZeroMQ server around it is :mod:`cluster.coordinator`.

Requesters are opaque hashable values (the coordinator uses the peer identity
plus the client's request nonce). A shard has at most one outstanding request:
a new request for the same shard replaces the older one in place (a replacement
worker takes over the dead worker's place in the queue), and a cancel only
removes the request if it comes from the requester that made it.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

#: Discord's session start limit window (``reset_after`` counts down from 24 h).
DEFAULT_RESET_PERIOD_S: Final = 24 * 60 * 60.0
#: A fresh ``reset_after`` that moves the reset later than this past our own
#: estimate means Discord started a new window we had not seen; anything closer
#: is the same window seen through network delay and clock drift.
_SAME_WINDOW_SLACK_S: Final = 60.0

#: The smallest default safety margin (see :func:`default_safety_margin`).
MIN_SAFETY_MARGIN_S: Final = 0.02

R = TypeVar("R", bound=Hashable)


def default_safety_margin(interval_s: float) -> float:
    """The extra spacing added to every bucket's interval: 1 % of it, at least 20 ms.

    Discord measures the spacing between IDENTIFYs on its own side, when they
    arrive, not when we granted them. Two grants exactly ``interval_s`` apart
    arrive closer than that whenever the first IDENTIFY is delayed more than
    the second on its way (a busy worker loop, the ZeroMQ hop, TCP, the
    server's own loop). 1 % (50 ms at Discord's 5 s) absorbs network jitter
    and costs 1 % of the startup time; the 20 ms floor covers an event-loop
    hiccup on either end when a short interval is used against the simulator
    (0.2 s: 7 windows cost 140 ms more). On a loaded 2-core machine, grant to
    arrival varied by more than 10 ms, which produced a bucket violation. Pass an explicit margin to tune it.
    """
    return max(0.01 * interval_s, MIN_SAFETY_MARGIN_S)


def default_sent_hold(interval_s: float) -> float:
    """How long past the spacing a bucket waits for a grant's ``sent`` report: one interval, at least 1 s.

    Only a client that died between its grant and its IDENTIFY (or one that
    never reports) makes the bucket wait this long.
    """
    return max(interval_s, 1.0)


def default_grant_lead(interval_s: float) -> float:
    """How early a bucket's next grant may go out (with ``not_before``): half an interval,
    at most 0.5 s: the grant reaches a busy worker in well under that."""
    return min(interval_s / 2, 0.5)


def default_answer_wait(interval_s: float) -> float:
    """With ``answer_opens``: how long past ``interval_s`` a bucket waits for the server's
    answer before it opens anyway: 1 s below a 1 s interval, else only the margin.

    At a scaled interval (the simulator: 0.05 s) the fixed margin is 40 % of it,
    and the server's own delays do not scale down with it: measured on 2 loaded
    cores, IDENTIFYs written 70 ms apart reached the simulator up to 57 ms
    closer (0-40 of 1,024 refused per startup), while the READY reached the
    supervisor 3-28 ms (p10-p90, up to 87 ms) after the write. Waiting for the
    answer is then both faster and safe; a wait of one interval (opening 100 ms
    after the write without an answer) still let 4-16 of 1,024 through refused
    at a load of 6, a wait of 1 s none in 10 startups. Only an IDENTIFY that gets no READY (a
    refused one) costs the whole wait. At Discord's 5 s the 1 % margin exceeds
    network jitter and a READY may take longer than it, so the bucket opens at
    the sooner of the two rules and never later than without answers.
    """
    margin = default_safety_margin(interval_s)
    return max(margin, 1.0) if interval_s < 1.0 else margin


class SchedulerConfigError(ValueError):
    """The scheduler was configured with numbers that make no sense."""


@dataclass(frozen=True, slots=True)
class Grant(Generic[R]):
    """Permission for ``shard_id`` to send one IDENTIFY, issued to ``requester`` at ``granted_at``."""

    shard_id: int
    requester: R
    bucket: int
    granted_at: float
    #: Identifies this grant; used to give it back exactly once.
    serial: int
    #: Write the IDENTIFY no earlier than this (the bucket opens then); ``granted_at``
    #: when the bucket is open already
    not_before: float = -math.inf


@dataclass(frozen=True, slots=True)
class SchedulerSnapshot:
    """The scheduler's budget and queues, for /health, /status and /metrics."""

    remaining: int
    total: int
    reset_at: float
    max_concurrency: int
    interval_s: float
    #: Requests waiting, per bucket (index = bucket).
    queued: tuple[int, ...]
    granted: int
    refunded: int

    @property
    def exhausted(self) -> bool:
        """No session starts left until the reset: nothing will be granted."""
        return self.remaining <= 0

    def to_json(self, now: float) -> dict[str, Any]:
        """The JSON shape /status and /health read (``reset_after_s`` relative to ``now``)."""
        return {
            "remaining": self.remaining,
            "total": self.total,
            "exhausted": self.exhausted,
            "reset_after_s": round(max(0.0, self.reset_at - now), 3),
            "max_concurrency": self.max_concurrency,
            "interval_s": self.interval_s,
            "queued": sum(self.queued),
            "queued_per_bucket": list(self.queued),
            "granted": self.granted,
            "refunded": self.refunded,
        }


@dataclass(slots=True)
class _Pending(Generic[R]):
    requester: R
    #: Arrival order across all buckets, so a short budget is spent oldest first.
    order: int


@dataclass(slots=True)
class _Issued:
    """What must be undone if a grant is given back."""

    bucket: int
    previous_free_at: float
    epoch: int


class _Bucket(Generic[R]):
    __slots__ = (
        "answered_at",
        "answered_serial",
        "awaiting",
        "free_at",
        "hold_until",
        "last_serial",
        "queue",
        "sent_serial",
        "wrote_at",
    )

    def __init__(self) -> None:
        # shard_id -> pending request; insertion order is the FIFO order.
        self.queue: OrderedDict[int, _Pending[R]] = OrderedDict()
        #: The earliest time this bucket may grant again.
        self.free_at = -math.inf
        #: The serial of the bucket's latest grant (0: none yet).
        self.last_serial = 0
        #: The serial of a grant whose ``sent`` report is awaited (0: none).
        self.awaiting = 0
        #: While ``awaiting``: when to stop waiting for the report.
        self.hold_until = -math.inf
        #: The serial of the latest grant reported ``sent`` (0: none).
        self.sent_serial = 0
        #: When that grant's IDENTIFY was written (as :meth:`IdentifyScheduler.sent` took it).
        self.wrote_at = -math.inf
        #: The serial of the latest grant whose IDENTIFY the server answered (0: none).
        self.answered_serial = 0
        #: When that answer reached us (kept until the grant's ``sent`` report, if it came first).
        self.answered_at = math.inf

    def opens_at(self) -> float:
        """The earliest time this bucket may grant again, a pending ``sent`` report included."""
        if self.awaiting:
            return max(self.free_at, self.hold_until)
        return self.free_at


class IdentifyScheduler(Generic[R]):
    """One FIFO per bucket, one grant per bucket per interval, the session budget tracked."""

    def __init__(
        self,
        max_concurrency: int,
        interval_s: float,
        safety_margin_s: float | None = None,
        *,
        session_total: int,
        session_remaining: int,
        reset_at: float,
        reset_period_s: float = DEFAULT_RESET_PERIOD_S,
        sent_hold_s: float | None = None,
        lead_s: float = 0.0,
        answer_opens: bool = False,
        answer_wait_s: float | None = None,
    ) -> None:
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise SchedulerConfigError(
                f"max_concurrency must be an int >= 1, got {max_concurrency!r}"
            )
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise SchedulerConfigError(f"identify interval must be > 0 s, got {interval_s!r}")
        margin = default_safety_margin(interval_s) if safety_margin_s is None else safety_margin_s
        if not (math.isfinite(margin) and margin >= 0):
            raise SchedulerConfigError(f"safety margin must be >= 0 s, got {margin!r}")
        if session_total < 0 or session_remaining < 0:
            raise SchedulerConfigError("session start numbers must not be negative")
        if not (math.isfinite(reset_period_s) and reset_period_s > 0):
            raise SchedulerConfigError(f"reset period must be > 0 s, got {reset_period_s!r}")
        if sent_hold_s is not None and not (math.isfinite(sent_hold_s) and sent_hold_s >= 0):
            raise SchedulerConfigError(f"sent hold must be >= 0 s, got {sent_hold_s!r}")
        if not (math.isfinite(lead_s) and lead_s >= 0):
            raise SchedulerConfigError(f"grant lead must be >= 0 s, got {lead_s!r}")
        if answer_wait_s is not None and not (math.isfinite(answer_wait_s) and answer_wait_s >= 0):
            raise SchedulerConfigError(f"answer wait must be >= 0 s, got {answer_wait_s!r}")
        #: How long a bucket waits for a grant's ``sent`` report (None: it does not wait).
        self.sent_hold_s = sent_hold_s
        #: How long before a bucket opens its next grant may go out (with ``not_before``).
        self.lead_s = float(lead_s) if sent_hold_s is not None else 0.0
        #: Whether a server's answer may open a bucket before the margin has passed
        #: (:meth:`answered`); never with an explicit margin, which is honoured exactly.
        self.answer_opens = answer_opens and safety_margin_s is None
        #: With ``answer_opens``: how long past ``interval_s`` after a write the bucket
        #: waits for the server's answer before it opens anyway (at least the margin).
        wait = default_answer_wait(interval_s) if answer_wait_s is None else answer_wait_s
        self.answer_wait_s = max(float(margin), wait)
        self.max_concurrency = max_concurrency
        self.interval_s = float(interval_s)
        self.safety_margin_s = float(margin)
        self.reset_period_s = float(reset_period_s)
        self._total = session_total
        self._remaining = min(session_remaining, session_total)
        self._reset_at = float(reset_at)
        # Bumped whenever the budget is replaced, so a grant from an older window is not refunded.
        self._epoch = 0
        self._buckets: tuple[_Bucket[R], ...] = tuple(_Bucket() for _ in range(max_concurrency))
        self._order = itertools.count()
        self._serials = itertools.count(1)
        self._issued: dict[int, _Issued] = {}
        self._granted = 0
        self._refunded = 0

    # -- requests -------------------------------------------------------------------------

    @property
    def spacing_s(self) -> float:
        """The minimum time between two grants in one bucket."""
        return self.interval_s + self.safety_margin_s

    def bucket_of(self, shard_id: int) -> int:
        return shard_id % self.max_concurrency

    def request(self, shard_id: int, requester: R, now: float) -> None:
        """Queue ``shard_id`` for a grant; a request for a shard already queued takes its place."""
        if isinstance(shard_id, bool) or not isinstance(shard_id, int) or shard_id < 0:
            raise ValueError(f"shard_id must be an int >= 0, got {shard_id!r}")
        queue = self._buckets[self.bucket_of(shard_id)].queue
        pending = queue.get(shard_id)
        if pending is None:
            queue[shard_id] = _Pending(requester, next(self._order))
        else:
            # Same shard again (a resend, or a replacement worker): keep the place in line.
            pending.requester = requester

    def cancel(self, shard_id: int, requester: R) -> bool:
        """Drop ``shard_id``'s request if ``requester`` made it; True when something was dropped."""
        queue = self._buckets[self.bucket_of(shard_id)].queue
        pending = queue.get(shard_id)
        if pending is None or pending.requester != requester:
            return False
        del queue[shard_id]
        return True

    def is_queued(self, shard_id: int) -> bool:
        return shard_id in self._buckets[self.bucket_of(shard_id)].queue

    # -- granting -------------------------------------------------------------------------

    def _roll_over(self, now: float) -> None:
        if now < self._reset_at:
            return
        # Discord's window reset: the whole budget is back. If we slept through
        # several windows, the next reset is one period after the latest one passed.
        periods = math.floor((now - self._reset_at) / self.reset_period_s) + 1
        self._reset_at += periods * self.reset_period_s
        self._remaining = self._total
        self._epoch += 1
        self._issued.clear()

    def poll(self, now: float) -> list[Grant[R]]:
        """Every grant due at ``now``: the head of each free bucket, oldest first, within budget."""
        self._roll_over(now)
        if self._remaining <= 0:
            return []
        lead = self.lead_s
        ready = [
            (next(iter(bucket.queue.values())).order, index)
            for index, bucket in enumerate(self._buckets)
            if bucket.queue and bucket.opens_at() - lead <= now
        ]
        if not ready:
            return []
        ready.sort()
        grants: list[Grant[R]] = []
        for _, index in ready[: self._remaining]:
            bucket = self._buckets[index]
            shard_id, pending = bucket.queue.popitem(last=False)
            serial = next(self._serials)
            self._issued[serial] = _Issued(index, bucket.free_at, self._epoch)
            not_before = max(now, bucket.free_at)
            bucket.free_at = not_before + self.spacing_s
            bucket.last_serial = serial
            if self.sent_hold_s is not None:
                bucket.awaiting = serial
                bucket.hold_until = bucket.free_at + self.sent_hold_s
            grants.append(Grant(shard_id, pending.requester, index, now, serial, not_before))
        self._remaining -= len(grants)
        self._granted += len(grants)
        return grants

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`poll` could next grant (``now`` if it could grant now); None if nothing is queued."""
        waiting = [bucket.opens_at() - self.lead_s for bucket in self._buckets if bucket.queue]
        if not waiting:
            return None
        earliest = min(waiting)
        if self._remaining <= 0 and now < self._reset_at:
            return max(earliest, self._reset_at)
        return max(earliest, now)

    def undelivered(self, grant: Grant[R], now: float) -> bool:
        """Give back a grant that never reached its requester (or that it will not use).

        The session start is refunded and, if no later grant was issued in the
        bucket, the bucket's slot is freed: no IDENTIFY was sent under it, so
        a dying worker costs nothing extra. Returns False when the grant was
        already given back or belongs to a budget window that has since reset.
        """
        issued = self._issued.pop(grant.serial, None)
        if issued is None:
            return False
        if issued.epoch == self._epoch:
            self._remaining = min(self._total, self._remaining + 1)
            self._refunded += 1
        bucket = self._buckets[issued.bucket]
        if bucket.last_serial == grant.serial:
            bucket.free_at = issued.previous_free_at
            bucket.awaiting = 0
        return True

    def sent(self, grant: Grant[R], now: float, written_at: float | None = None) -> bool:
        """The IDENTIFY under ``grant`` was sent (reported at ``now``): space the bucket from it.

        The bucket opens ``spacing_s`` after the write: ``written_at`` when the
        client said (taken within [the grant's ``not_before``, ``now``]), else
        ``now``; never earlier than the grant's own slot. A report for anything
        but the bucket's latest grant, or a repeated one, changes nothing and
        returns False.
        """
        bucket = self._buckets[grant.bucket]
        if bucket.last_serial != grant.serial or bucket.sent_serial == grant.serial:
            return False
        bucket.sent_serial = grant.serial
        bucket.awaiting = 0
        wrote = now if written_at is None else min(now, written_at)
        wrote = max(wrote, grant.not_before, grant.granted_at)
        bucket.wrote_at = wrote
        wait = self.answer_wait_s if self.answer_opens else self.safety_margin_s
        bucket.free_at = max(bucket.free_at, wrote + self.interval_s + wait)
        if bucket.answered_serial == grant.serial:
            # The server's answer reached us before this report did.
            self._open_on_answer(bucket)
        return True

    def answered(self, grant: Grant[R], now: float) -> bool:
        """The server answered the IDENTIFY under ``grant``: its READY was read at ``now``.

        ``now`` is the earliest moment known to follow the server's count: when
        the worker read the READY (its stamp, never later than the caller's
        clock), or when the READY's report reached us. The server took the
        IDENTIFY no later than ``now``, so the bucket may
        open ``interval_s`` after ``now`` if that is sooner than the fallback
        (the write plus ``interval_s`` plus ``answer_wait_s``; see the module
        docstring). An answer that comes before the
        grant's ``sent`` report is kept until the report says when the
        IDENTIFY was written; one that seems to precede the write (a stale
        answer) is ignored. A second answer for the grant (the worker's stamp
        and the READY's report reach the coordinator in either order) counts
        only if it is earlier: every answer's time bounds the server's count
        from above, so the earliest does too. False when nothing may change:
        ``answer_opens`` is off, the grant is not the bucket's latest, or it
        was answered as early already.
        """
        if not self.answer_opens:
            return False
        bucket = self._buckets[grant.bucket]
        if bucket.last_serial != grant.serial:
            return False
        if bucket.answered_serial == grant.serial:
            if bucket.sent_serial == grant.serial:
                if now < bucket.wrote_at:
                    return False  # before the write: not this IDENTIFY's
                if bucket.wrote_at <= bucket.answered_at <= now:
                    return False  # no earlier than the answer taken
            elif now >= bucket.answered_at:
                return False
        bucket.answered_serial = grant.serial
        bucket.answered_at = now
        if bucket.sent_serial == grant.serial:
            self._open_on_answer(bucket)
        return True

    def _open_on_answer(self, bucket: _Bucket[R]) -> None:
        """The bucket's latest IDENTIFY was both written and answered: open on the answer if sooner."""
        answered_at = bucket.answered_at
        if answered_at < bucket.wrote_at:
            return  # an answer cannot precede its IDENTIFY: not this one's
        bucket.free_at = min(bucket.free_at, answered_at + self.interval_s)

    def deferred(self, grant: Grant[R], until: float) -> bool:
        """An arbiter above this scheduler (Redis, shared by several hosts) refused ``grant``.

        The request goes back to the head of its bucket's queue with its
        place in line, the session start is refunded and the bucket stays
        closed until ``until`` (when the arbiter said to ask again). False
        when the grant was already given back (nothing changes then).
        """
        issued = self._issued.pop(grant.serial, None)
        if issued is None:
            return False
        if issued.epoch == self._epoch:
            self._remaining = min(self._total, self._remaining + 1)
        self._granted -= 1
        bucket = self._buckets[issued.bucket]
        if grant.shard_id not in bucket.queue:
            bucket.queue[grant.shard_id] = _Pending(grant.requester, -1)
            bucket.queue.move_to_end(grant.shard_id, last=False)
        if bucket.last_serial == grant.serial:
            bucket.awaiting = 0
            bucket.free_at = max(issued.previous_free_at, until)
        return True

    def confirm(self, grant: Grant[R]) -> None:
        """Forget what is needed to give ``grant`` back: it was used (or can no longer be refunded)."""
        self._issued.pop(grant.serial, None)

    # -- budget ---------------------------------------------------------------------------

    def update_limit(
        self, remaining: int, reset_after_s: float, now: float, total: int | None = None
    ) -> None:
        """Take fresh ``session_start_limit`` numbers from ``GET /gateway/bot``.

        Within the same window we keep the smaller of our count and Discord's:
        grants we issued may not have reached Discord as IDENTIFYs yet, and
        overspending costs the bot its token. A reset later than ours (beyond
        network slack) means Discord started a new window: its numbers win.
        """
        if remaining < 0 or reset_after_s < 0:
            raise ValueError("session start numbers must not be negative")
        if total is not None:
            if total < 0:
                raise ValueError("session start total must not be negative")
            self._total = total
        new_reset_at = now + reset_after_s
        if new_reset_at > self._reset_at + _SAME_WINDOW_SLACK_S or now >= self._reset_at:
            self._remaining = remaining
            self._epoch += 1
            self._issued.clear()
        else:
            self._remaining = min(self._remaining, remaining)
        self._remaining = min(self._remaining, self._total)
        self._reset_at = new_reset_at

    @property
    def remaining(self) -> int:
        return self._remaining

    @property
    def total(self) -> int:
        return self._total

    @property
    def reset_at(self) -> float:
        return self._reset_at

    def snapshot(self) -> SchedulerSnapshot:
        return SchedulerSnapshot(
            remaining=self._remaining,
            total=self._total,
            reset_at=self._reset_at,
            max_concurrency=self.max_concurrency,
            interval_s=self.interval_s,
            queued=tuple(len(bucket.queue) for bucket in self._buckets),
            granted=self._granted,
            refunded=self._refunded,
        )
