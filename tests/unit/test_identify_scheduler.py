"""The pure identify scheduler on a fake clock: bucket spacing, budget, FIFO, refunds."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.identify_scheduler import (
    Grant,
    IdentifyScheduler,
    SchedulerConfigError,
    default_safety_margin,
)

INTERVAL = 5.0


def make(
    mc: int = 1,
    remaining: int = 1000,
    total: int = 1000,
    reset_at: float = 1e9,
    margin: float | None = 0.0,
) -> IdentifyScheduler[str]:
    return IdentifyScheduler(
        mc,
        INTERVAL,
        margin,
        session_total=total,
        session_remaining=remaining,
        reset_at=reset_at,
    )


def shards(grants: list[Grant[str]]) -> list[int]:
    return [g.shard_id for g in grants]


def test_all_buckets_grant_at_the_same_instant_then_wait_one_interval() -> None:
    s = make(mc=4)
    for shard in range(8):
        s.request(shard, "w", 0.0)
    assert sorted(shards(s.poll(0.0))) == [0, 1, 2, 3]
    assert s.poll(INTERVAL - 1e-6) == []
    assert s.next_deadline(1.0) == INTERVAL
    assert sorted(shards(s.poll(INTERVAL))) == [4, 5, 6, 7]
    assert s.next_deadline(INTERVAL) is None


def test_default_margin_is_one_percent_at_least_10_ms_and_is_added_to_the_spacing() -> None:
    assert default_safety_margin(5.0) == pytest.approx(0.05)
    assert default_safety_margin(0.2) == pytest.approx(0.02)
    s = make(margin=None)
    assert s.spacing_s == pytest.approx(5.05)
    s.request(0, "a", 0.0)
    s.request(1, "a", 0.0)
    assert shards(s.poll(0.0)) == [0]
    assert s.poll(5.0) == []
    assert shards(s.poll(5.05)) == [1]


def test_a_new_request_for_the_same_shard_replaces_the_old_one_in_place() -> None:
    s = make()
    s.request(0, "dead", 0.0)
    s.request(1, "dead", 0.0)
    s.request(2, "other", 0.0)
    s.request(1, "replacement", 0.5)
    (first,) = s.poll(1.0)
    assert (first.shard_id, first.requester) == (0, "dead")
    (second,) = s.poll(1.0 + INTERVAL)
    assert (second.shard_id, second.requester) == (1, "replacement")


def test_cancel_only_removes_the_requesters_own_request() -> None:
    s = make()
    s.request(3, "old", 0.0)
    s.request(3, "new", 0.0)
    assert s.cancel(3, "old") is False
    assert s.is_queued(3)
    assert s.cancel(3, "new") is True
    assert not s.is_queued(3)
    assert s.poll(0.0) == []
    assert s.next_deadline(0.0) is None


def test_budget_is_never_overspent_and_comes_back_at_reset() -> None:
    s = make(mc=4, remaining=3, total=1000, reset_at=100.0)
    for shard in range(5):
        s.request(shard, "w", 0.0)
    granted = s.poll(0.0)
    assert shards(granted) == [0, 1, 2]
    assert s.snapshot().exhausted
    assert s.poll(50.0) == []
    # Nothing may happen before the reset, and the loop may sleep exactly until it.
    assert s.next_deadline(50.0) == 100.0
    assert s.poll(99.999) == []
    assert shards(s.poll(100.0)) == [3, 4]
    snap = s.snapshot()
    assert snap.remaining == 998 and not snap.exhausted
    assert snap.reset_at == 100.0 + 86400.0


def test_a_short_budget_is_spent_on_the_oldest_requests_first() -> None:
    s = make(mc=4, remaining=2)
    s.request(3, "w", 0.0)
    s.request(1, "w", 0.1)
    s.request(0, "w", 0.2)
    s.request(2, "w", 0.3)
    assert shards(s.poll(1.0)) == [3, 1]


def test_an_undelivered_grant_is_refunded_and_frees_its_bucket() -> None:
    s = make(mc=2, remaining=10)
    s.request(0, "dead", 0.0)
    s.request(2, "live", 0.0)
    (grant,) = s.poll(0.0)
    assert grant.requester == "dead" and s.remaining == 9
    assert s.undelivered(grant, 0.001) is True
    assert s.remaining == 10
    # The slot was never used, so the next shard of the bucket goes at once.
    assert s.next_deadline(0.001) == 0.001
    (nxt,) = s.poll(0.001)
    assert nxt.shard_id == 2
    # Giving the same grant back twice refunds nothing more.
    assert s.undelivered(grant, 0.002) is False
    assert s.remaining == 9
    assert s.snapshot().refunded == 1


def test_giving_back_an_older_grant_keeps_the_later_slot() -> None:
    s = make()
    for shard in range(3):
        s.request(shard, "w", 0.0)
    (g0,) = s.poll(0.0)
    (g1,) = s.poll(INTERVAL)
    assert s.undelivered(g0, INTERVAL + 0.1)
    # g1 still holds the bucket: the next grant waits a full interval after g1.
    assert s.poll(INTERVAL + 0.2) == []
    assert s.next_deadline(INTERVAL + 0.2) == 2 * INTERVAL
    assert g1.shard_id == 1


def test_a_grant_from_before_the_reset_is_not_refunded() -> None:
    s = make(remaining=1, total=5, reset_at=10.0)
    s.request(0, "w", 0.0)
    (grant,) = s.poll(0.0)
    assert s.poll(10.0) == []  # rolls over: 5 left
    assert s.remaining == 5
    assert s.undelivered(grant, 10.0) is False
    assert s.remaining == 5


def test_update_limit_keeps_the_smaller_count_within_a_window_and_takes_a_new_window() -> None:
    s = make(remaining=100, total=1000, reset_at=3600.0)
    s.request(0, "w", 0.0)
    s.poll(0.0)
    assert s.remaining == 99
    # Discord has not seen our IDENTIFY yet and says 100: we keep 99.
    s.update_limit(100, 3599.0, 1.0)
    assert s.remaining == 99 and s.reset_at == 3600.0
    s.update_limit(40, 3598.0, 2.0)
    assert s.remaining == 40
    # A reset far later than ours: Discord started a new window.
    s.update_limit(1000, 86400.0, 3.0)
    assert s.remaining == 1000 and s.reset_at == 86403.0
    s.update_limit(5, 86000.0, 4.0, total=2000)
    assert (s.remaining, s.total) == (5, 2000)


def test_snapshot_json_has_what_health_reads() -> None:
    s = make(mc=2, remaining=0, total=1000, reset_at=50.0)
    s.request(1, "w", 0.0)
    body = s.snapshot().to_json(now=20.0)
    assert body["remaining"] == 0 and body["total"] == 1000
    assert body["exhausted"] is True
    assert body["reset_after_s"] == 30.0
    assert body["queued_per_bucket"] == [0, 1] and body["queued"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrency": 0},
        {"interval_s": 0.0},
        {"interval_s": math.nan},
        {"safety_margin_s": -0.1},
        {"session_remaining": -1},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {
        "max_concurrency": 1,
        "interval_s": 5.0,
        "session_total": 10,
        "session_remaining": 10,
        "reset_at": 0.0,
    }
    args.update(kwargs)
    with pytest.raises(SchedulerConfigError):
        IdentifyScheduler(**args)  # type: ignore[arg-type]


# -- property tests: random request / cancel / poll / give-back sequences on a fake clock ------


@dataclass
class Model:
    """What the scheduler must do, written the slow obvious way."""

    mc: int
    queues: dict[int, list[int]] = field(default_factory=dict)
    owners: dict[int, str] = field(default_factory=dict)

    def request(self, shard: int, requester: str) -> None:
        queue = self.queues.setdefault(shard % self.mc, [])
        if shard not in queue:
            queue.append(shard)
        self.owners[shard] = requester

    def cancel(self, shard: int, requester: str) -> None:
        queue = self.queues.setdefault(shard % self.mc, [])
        if shard in queue and self.owners[shard] == requester:
            queue.remove(shard)

    def granted(self, grant: Grant[str]) -> None:
        queue = self.queues[grant.bucket]
        assert queue and queue[0] == grant.shard_id, "FIFO order within a bucket"
        assert self.owners[grant.shard_id] == grant.requester, "the latest requester gets the grant"
        queue.pop(0)

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())


operation = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 11), st.sampled_from("abc")),
    st.tuples(st.just("cancel"), st.integers(0, 11), st.sampled_from("abc")),
    st.tuples(st.just("poll"), st.just(0), st.just("")),
    st.tuples(st.just("give_back"), st.just(0), st.just("")),
)
steps = st.floats(min_value=0.0, max_value=3.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    mc=st.integers(1, 4),
    budget=st.integers(0, 12),
    sequence=st.lists(st.tuples(operation, steps), max_size=60),
    margin=st.sampled_from([0.0, 0.05]),
)
def test_random_sequences_keep_every_rule(
    mc: int,
    budget: int,
    sequence: list[tuple[tuple[str, int, str], float]],
    margin: float,
) -> None:
    s: IdentifyScheduler[str] = IdentifyScheduler(
        mc, INTERVAL, margin, session_total=1000, session_remaining=budget, reset_at=1e12
    )
    model = Model(mc)
    now = 0.0
    live: list[Grant[str]] = []  # grants that stand (not given back)
    last: Grant[str] | None = None

    def poll_and_check(at: float) -> None:
        nonlocal last
        deadline = s.next_deadline(at)
        grants = s.poll(at)
        if deadline is None or deadline > at:
            assert grants == [], "poll granted before next_deadline said it could"
        for grant in grants:
            model.granted(grant)
            live.append(grant)
            last = grant
        if deadline is not None and deadline <= at and len(live) < budget:
            assert grants, "next_deadline said a grant was due, yet poll granted nothing"

    for (op, shard, who), dt in sequence:
        now += dt
        if op == "request":
            s.request(shard, who, now)
            model.request(shard, who)
        elif op == "cancel":
            s.cancel(shard, who)
            model.cancel(shard, who)
        elif op == "poll":
            poll_and_check(now)
        elif last is not None:
            assert s.undelivered(last, now)
            live.remove(last)
            # A given-back grant is simply gone: its request left the queue when it was granted.
            last = None
        assert s.remaining == budget - len(live), "the budget counts exactly the standing grants"
        assert sum(s.snapshot().queued) == model.pending()

    # Liveness: sleeping exactly until each deadline grants everything the budget allows.
    for _ in range(200):
        deadline = s.next_deadline(now)
        if deadline is None or (s.remaining == 0 and deadline >= 1e12):
            break
        now = max(now, deadline)
        poll_and_check(now)
    assert len(live) <= budget, "never more grants than session starts remained"
    if len(live) < budget:
        assert model.pending() == 0, "every request is granted while the budget allows"
    else:
        assert s.snapshot().exhausted

    by_bucket: dict[int, list[float]] = {}
    for grant in live:
        assert grant.bucket == grant.shard_id % mc
        by_bucket.setdefault(grant.bucket, []).append(grant.granted_at)
    for times in by_bucket.values():
        for earlier, later in itertools.pairwise(times):
            assert later - earlier >= INTERVAL + margin - 1e-9, "two grants in one bucket too close"


@settings(max_examples=100, deadline=None)
@given(mc=st.integers(1, 16), per_bucket=st.integers(1, 5), start=st.floats(0, 1e6))
def test_buckets_are_independent_and_a_full_queue_takes_exactly_its_windows(
    mc: int, per_bucket: int, start: float
) -> None:
    s = make(mc=mc, remaining=10_000)
    for shard in reversed(range(mc * per_bucket)):
        s.request(shard, "w", start)
    now = start
    windows: list[list[int]] = []
    while (deadline := s.next_deadline(now)) is not None:
        now = deadline
        windows.append(sorted(shards(s.poll(now))))
    # Each window grants one shard in every bucket, all at the same instant.
    assert len(windows) == per_bucket
    assert all(len(w) == mc and {x % mc for x in w} == set(range(mc)) for w in windows)
    assert now - start == pytest.approx((per_bucket - 1) * INTERVAL)


def held(mc: int = 1, hold: float = 2.0, lead: float = 0.0) -> IdentifyScheduler[str]:
    return IdentifyScheduler(
        mc,
        INTERVAL,
        0.0,
        session_total=1000,
        session_remaining=1000,
        reset_at=1e9,
        sent_hold_s=hold,
        lead_s=lead,
    )


def test_an_early_grant_carries_the_time_its_bucket_opens_and_spacing_counts_from_the_write() -> (
    None
):
    s = held(lead=1.0)
    for shard in range(3):
        s.request(shard, "w", 0.0)
    [first] = s.poll(0.0)
    assert first.not_before == 0.0  # the bucket was open: at once
    assert s.poll(INTERVAL - 1.0) == [], "no early grant before the report"
    # written at 0.2 (the report arrives at 0.5): the bucket opens at 0.2 + the interval
    assert s.sent(first, 0.5, written_at=0.2)
    assert s.next_deadline(1.0) == INTERVAL + 0.2 - 1.0
    assert s.poll(INTERVAL + 0.2 - 1.0 - 1e-6) == []
    [second] = s.poll(INTERVAL + 0.2 - 1.0)
    assert second.not_before == INTERVAL + 0.2, "early: written no sooner than the bucket opens"
    # a write claimed before the grant's slot counts from the slot
    assert s.sent(second, INTERVAL + 0.3, written_at=0.0)
    [third] = s.poll(2 * INTERVAL + 0.2 - 1.0)
    assert third.not_before == 2 * INTERVAL + 0.2


def test_without_a_sent_hold_there_is_no_early_grant() -> None:
    s = IdentifyScheduler(
        1, INTERVAL, 0.0, session_total=10, session_remaining=10, reset_at=1e9, lead_s=1.0
    )
    s.request(0, "w", 0.0)
    s.request(1, "w", 0.0)
    assert shards(s.poll(0.0)) == [0]
    assert s.poll(INTERVAL - 0.5) == []


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 1.5), st.floats(0.0, 0.5)),
        min_size=1,
        max_size=30,
    )
)
def test_writes_at_their_grants_not_before_are_always_an_interval_apart(
    steps: list[tuple[float, float, float]],
) -> None:
    """Early grants: each IDENTIFY is written at or after its not_before (``late`` after it,
    reported ``delay`` after the write); two writes of a bucket are never closer than the spacing."""
    s = held(hold=1.0, lead=2.0)
    for shard in range(len(steps)):
        s.request(shard, "w", 0.0)
    now = 0.0
    writes: list[float] = []
    for advance, delay, late in steps:
        now += advance
        for grant in s.poll(now):
            wrote = max(now, grant.not_before) + late
            writes.append(wrote)
            s.sent(grant, wrote + delay, written_at=wrote)
            now = max(now, wrote + delay)
        deadline = s.next_deadline(now)
        if deadline is not None:
            now = max(now, deadline)
    assert all(b - a >= INTERVAL - 1e-9 for a, b in itertools.pairwise(sorted(writes)))


def test_with_a_sent_hold_the_spacing_counts_from_the_sent_report() -> None:
    s = held(mc=2)
    for shard in range(6):
        s.request(shard, "w", 0.0)
    first = s.poll(0.0)
    assert sorted(shards(first)) == [0, 1]
    # bucket 0's IDENTIFY went out late; bucket 1 never reports
    grant0 = next(g for g in first if g.bucket == 0)
    assert s.poll(INTERVAL) == [], "no bucket opens before its report (or the hold) comes"
    assert s.next_deadline(INTERVAL) == INTERVAL + 2.0
    assert s.sent(grant0, 0.8)
    assert not s.sent(grant0, 3.0), "a repeated report changes nothing"
    assert s.next_deadline(INTERVAL) == INTERVAL + 0.8
    assert s.poll(INTERVAL + 0.8 - 1e-6) == []
    assert shards(s.poll(INTERVAL + 0.8)) == [2]
    # bucket 1: no report, so it opens when the hold ends
    assert shards(s.poll(INTERVAL + 2.0)) == [3]


def test_a_report_never_opens_a_bucket_earlier_and_a_given_back_grant_releases_the_hold() -> None:
    s = held()
    for shard in range(3):
        s.request(shard, "w", 0.0)
    [grant] = s.poll(0.0)
    assert s.sent(grant, 0.0)
    assert s.poll(INTERVAL - 1e-6) == []
    [second] = s.poll(INTERVAL)
    assert not s.sent(grant, INTERVAL), "only the bucket's latest grant counts"
    assert s.undelivered(second, INTERVAL + 0.1)
    # given back: the bucket is as free as before the grant, no hold
    assert shards(s.poll(INTERVAL + 0.1)) == [2]


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 1.5), st.booleans()), min_size=1, max_size=30
    )
)
def test_reported_sends_of_a_bucket_are_always_an_interval_apart(
    steps: list[tuple[float, float, bool]],
) -> None:
    """Whenever the reports come (or do not), two reported sends are never closer than the spacing."""
    s = held(hold=1.0)
    for shard in range(len(steps)):
        s.request(shard, "w", 0.0)
    now = 0.0
    sends: list[float] = []
    for advance, delay, reports in steps:
        now += advance
        for grant in s.poll(now):
            if reports:
                # the IDENTIFY goes out ``delay`` after its grant; the report comes right after
                sends.append(now + delay)
                s.sent(grant, now + delay)
        deadline = s.next_deadline(now)
        if deadline is not None:
            now = max(now, deadline)
    assert all(b - a >= INTERVAL - 1e-9 for a, b in itertools.pairwise(sorted(sends)))


def test_a_deferred_grant_goes_back_to_the_head_and_its_bucket_waits() -> None:
    """An arbiter above (Redis) refused: the shard keeps its place, the start is refunded."""
    s = make(mc=2, remaining=10)
    for shard in (0, 2, 4, 1):
        s.request(shard, "w", 0.0)
    first = s.poll(0.0)
    assert sorted(shards(first)) == [0, 1]
    refused = next(g for g in first if g.shard_id == 0)
    assert s.deferred(refused, until=3.0)
    assert not s.deferred(refused, until=3.0)  # once only
    assert s.remaining == 9 and s.snapshot().granted == 1
    assert s.poll(2.999) == []
    assert s.next_deadline(1.0) == 3.0
    assert shards(s.poll(3.0)) == [0]  # the head again, before 2 and 4
    assert shards(s.poll(3.0 + INTERVAL)) == [2]


def test_deferring_a_grant_never_opens_its_bucket_before_its_previous_slot() -> None:
    s = make(mc=1, remaining=10)
    s.request(0, "w", 0.0)
    s.request(1, "w", 0.0)
    (g0,) = s.poll(0.0)
    (g1,) = s.poll(INTERVAL)
    assert s.deferred(g1, until=INTERVAL + 0.5)
    # g0's slot still spaces the bucket; the deferral only adds to it
    assert s.next_deadline(INTERVAL) == INTERVAL + 0.5
    assert shards(s.poll(INTERVAL + 0.5)) == [1]
    assert g0.shard_id == 0
