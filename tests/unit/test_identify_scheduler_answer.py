"""The identify scheduler opening a bucket on the server's answer (its READY), on a fake clock.

The server takes an IDENTIFY somewhere between its arrival and its answer, so a
bucket that opens one interval after the answer reached us is spaced on the
server's side whatever the delays were; without an answer it falls back to the
write plus the interval plus the answer wait. Two answers for one IDENTIFY (the
worker's stamped read, the READY's report) reach it in either order: each bounds
the server's count from above, so the earliest not before the write counts.
"""

from __future__ import annotations

import heapq
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.identify_scheduler import (
    Grant,
    IdentifyScheduler,
    SchedulerConfigError,
    default_answer_wait,
    default_grant_lead,
    default_safety_margin,
)

INTERVAL = 0.05  # the benchmark's scaled interval, where the answer rule matters
WAIT = 1.0  # the default answer wait at that interval


def make(
    *,
    margin: float | None = None,
    answer_opens: bool = True,
    wait: float | None = None,
    mc: int = 1,
) -> IdentifyScheduler[str]:
    return IdentifyScheduler(
        mc,
        INTERVAL,
        margin,
        session_total=10_000,
        session_remaining=10_000,
        reset_at=1e9,
        sent_hold_s=1.0,
        lead_s=default_grant_lead(INTERVAL),
        answer_opens=answer_opens,
        answer_wait_s=wait,
    )


def first_two(s: IdentifyScheduler[str]) -> Grant[str]:
    s.request(0, "w", 0.0)
    s.request(1, "w", 0.0)
    [grant] = s.poll(0.0)
    return grant


def test_the_default_wait_is_1_s_below_a_1_s_interval_and_only_the_margin_above() -> None:
    assert default_answer_wait(0.05) == pytest.approx(1.0)
    assert default_answer_wait(0.5) == pytest.approx(1.0)
    assert default_answer_wait(1.0) == pytest.approx(default_safety_margin(1.0))
    assert default_answer_wait(5.0) == pytest.approx(default_safety_margin(5.0))
    assert make().answer_wait_s == pytest.approx(WAIT)
    assert make(wait=0.0).answer_wait_s == pytest.approx(default_safety_margin(INTERVAL))


def test_a_quick_answer_opens_the_bucket_one_interval_after_it() -> None:
    s = make()
    grant = first_two(s)
    assert s.sent(grant, 0.002, written_at=0.001)
    # no answer yet: the fallback, write + interval + wait
    assert s.next_deadline(0.002) == pytest.approx(0.001 + INTERVAL + WAIT - s.lead_s)
    assert s.answered(grant, 0.004)
    assert not s.answered(grant, 0.005), "one answer per grant"
    opens = 0.004 + INTERVAL
    assert s.next_deadline(0.004) == pytest.approx(opens - s.lead_s)
    assert s.poll(opens - s.lead_s - 1e-6) == []
    [second] = s.poll(opens - s.lead_s)
    assert second.not_before == pytest.approx(opens)


def test_an_answer_before_the_sent_report_waits_for_it() -> None:
    s = make()
    grant = first_two(s)
    assert s.answered(grant, 0.003)
    held = s.next_deadline(0.003)
    assert held is not None and held > 1.0, "no report yet: the bucket is held"
    assert s.sent(grant, 0.004, written_at=0.001)
    assert s.next_deadline(0.004) == pytest.approx(0.003 + INTERVAL - s.lead_s)
    [second] = s.poll(0.003 + INTERVAL - s.lead_s)
    assert second.not_before == pytest.approx(0.003 + INTERVAL)


def test_an_answer_that_precedes_the_write_is_not_this_identifys() -> None:
    s = make()
    grant = first_two(s)
    assert s.answered(grant, 0.001)
    assert s.sent(grant, 0.010, written_at=0.005)
    assert s.next_deadline(0.010) == pytest.approx(0.005 + INTERVAL + WAIT - s.lead_s)


def test_a_late_answer_never_delays_the_bucket_past_the_fallback() -> None:
    s = make()
    grant = first_two(s)
    assert s.sent(grant, 0.001, written_at=0.001)
    assert s.answered(grant, 2.0)
    assert s.next_deadline(2.0) == pytest.approx(2.0), "the fallback's time has passed: due now"
    [second] = s.poll(2.0)
    assert second.not_before == pytest.approx(2.0)


def test_an_explicit_margin_is_honoured_exactly() -> None:
    s = make(margin=0.02)
    assert not s.answer_opens
    grant = first_two(s)
    assert s.sent(grant, 0.001, written_at=0.001)
    assert not s.answered(grant, 0.002)
    assert s.next_deadline(0.002) == pytest.approx(0.001 + INTERVAL + 0.02 - s.lead_s)


def test_without_answer_opens_an_answer_changes_nothing() -> None:
    s = make(answer_opens=False)
    grant = first_two(s)
    assert s.sent(grant, 0.001, written_at=0.001)
    assert not s.answered(grant, 0.002)
    opens = 0.001 + INTERVAL + default_safety_margin(INTERVAL)
    assert s.next_deadline(0.002) == pytest.approx(opens - s.lead_s)


def test_only_the_buckets_latest_grant_takes_an_answer() -> None:
    s = make()
    grant = first_two(s)
    s.request(2, "w", 0.0)
    assert s.sent(grant, 0.001, written_at=0.001)
    assert s.answered(grant, 0.002)
    [second] = s.poll(1.0)
    assert s.sent(second, 1.0, written_at=1.0)
    assert not s.answered(grant, 1.001), "an older grant's answer changes nothing"
    assert s.next_deadline(1.001) == pytest.approx(1.0 + INTERVAL + WAIT - s.lead_s)


@pytest.mark.parametrize("wait", [-0.1, math.inf, math.nan])
def test_a_bad_answer_wait_is_refused(wait: float) -> None:
    with pytest.raises(SchedulerConfigError):
        make(wait=wait)


def simulate(
    s: IdentifyScheduler[str],
    shard_count: int,
    delays: list[tuple[float, float, float, float, bool]],
) -> list[float]:
    """Run ``shard_count`` IDENTIFYs of one bucket through ``s`` against a server.

    Per grant: written ``late`` after the later of its grant and its not_before,
    reported sent ``report`` after the write, taken by the server ``there``
    after the write, answered ``back`` after that (unless ``lost``: refused or
    never answered). Returns when the server took each IDENTIFY.
    """
    for shard in range(shard_count):
        s.request(shard, "w", 0.0)
    params = itertools.cycle(delays)
    events: list[tuple[float, int, str, Grant[str], float]] = []
    order = itertools.count()
    taken: list[float] = []
    now = 0.0
    while True:
        for grant in s.poll(now):
            late, report, there, back, lost = next(params)
            wrote = max(now, grant.not_before) + late
            heapq.heappush(events, (wrote + report, next(order), "sent", grant, wrote))
            taken.append(wrote + there)
            if not lost:
                heapq.heappush(events, (wrote + there + back, next(order), "answer", grant, 0.0))
        deadline = s.next_deadline(now)
        upcoming = min(
            events[0][0] if events else math.inf, math.inf if deadline is None else deadline
        )
        if upcoming == math.inf:
            return taken
        now = max(now, upcoming)
        while events and events[0][0] <= now:
            at, _, kind, grant, wrote = heapq.heappop(events)
            if kind == "sent":
                s.sent(grant, at, written_at=wrote)
            else:
                s.answered(grant, at)


delay = st.floats(0.0, 0.2)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(delay, delay, delay, delay, st.booleans()), min_size=1, max_size=12),
    st.integers(2, 12),
)
def test_opening_on_answers_spaces_the_servers_side_whatever_the_delays(
    delays: list[tuple[float, float, float, float, bool]], shard_count: int
) -> None:
    """With no fallback within reach, the server takes two IDENTIFYs of a bucket at least an
    interval apart however long each one took to reach it (no margin assumed)."""
    s = make(wait=1e3)
    taken = sorted(simulate(s, shard_count, delays))
    assert len(taken) == shard_count
    assert all(b - a >= INTERVAL - 1e-9 for a, b in itertools.pairwise(taken))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(delay, delay, st.floats(0.0, WAIT), st.floats(0.0, WAIT), st.just(False)),
        min_size=1,
        max_size=12,
    ),
    st.integers(2, 12),
)
def test_with_the_default_wait_answers_within_it_keep_the_servers_side_spaced(
    delays: list[tuple[float, float, float, float, bool]], shard_count: int
) -> None:
    """Every answer comes within the default wait of its write, however the delay splits
    between the way there and back: the fallback never fires too soon."""
    s = make()
    delays = [
        (late, rep, there, min(back, WAIT - there), lost) for late, rep, there, back, lost in delays
    ]
    taken = sorted(simulate(s, shard_count, delays))
    assert all(b - a >= INTERVAL - 1e-9 for a, b in itertools.pairwise(taken))


def opens(s: IdentifyScheduler[str], now: float) -> float:
    deadline = s.next_deadline(now)
    assert deadline is not None
    return deadline + s.lead_s


def test_an_earlier_stamp_after_the_report_opens_the_bucket_sooner() -> None:
    s = make()
    grant = first_two(s)
    assert s.sent(grant, 0.002, written_at=0.001)
    assert s.answered(grant, 0.009)  # the READY's report reached the supervisor
    assert opens(s, 0.009) == pytest.approx(0.009 + INTERVAL)
    assert s.answered(grant, 0.006)  # the worker read it at 0.006: its message came later
    assert opens(s, 0.010) == pytest.approx(0.006 + INTERVAL)
    assert not s.answered(grant, 0.007), "not earlier than the answer taken"
    assert not s.answered(grant, 0.0005), "before the write: not this IDENTIFY's"
    assert opens(s, 0.010) == pytest.approx(0.006 + INTERVAL)


def test_a_stale_first_answer_does_not_block_a_real_one() -> None:
    s = make()
    grant = first_two(s)
    assert s.answered(grant, 0.001)  # before the write, as the report will say
    assert s.sent(grant, 0.010, written_at=0.005)
    assert opens(s, 0.010) == pytest.approx(0.005 + INTERVAL + WAIT)
    assert s.answered(grant, 0.008)
    assert opens(s, 0.010) == pytest.approx(0.008 + INTERVAL)


@given(
    st.floats(0.0, 0.2),
    st.lists(st.floats(0.0, 0.5), min_size=1, max_size=4),
    st.booleans(),
)
def test_the_bucket_opens_an_interval_after_the_earliest_answer_not_before_the_write(
    written_at: float, answers: list[float], sent_first: bool
) -> None:
    s = make()
    grant = first_two(s)
    if sent_first:
        s.sent(grant, written_at, written_at=written_at)
    for at in answers:
        s.answered(grant, at)
    if not sent_first:
        s.sent(grant, written_at, written_at=written_at)
    fallback = written_at + INTERVAL + WAIT
    valid = [at for at in answers if at >= written_at]
    if sent_first:
        expected = min([fallback] + [at + INTERVAL for at in valid])
        assert opens(s, 0.0) == pytest.approx(expected)
    else:
        # Before the write is known the earliest answer is kept; after it, that one or none.
        earliest = min(answers)
        expected = fallback if earliest < written_at else min(fallback, earliest + INTERVAL)
        assert opens(s, 0.0) == pytest.approx(expected)
