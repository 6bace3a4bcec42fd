"""Two answers for one IDENTIFY (the worker's stamped read, the READY's report): the earliest counts.

Pure scheduler, fake clock: the worker's ``answered`` message and the
supervisor's report of the same READY reach the coordinator in either order;
each time bounds the server's count from above, so the bucket opens one
interval after the earliest that is not before the write.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.identify_scheduler import Grant, IdentifyScheduler

INTERVAL = 0.05
WAIT = 1.0


def make() -> IdentifyScheduler[str]:
    return IdentifyScheduler(
        1,
        INTERVAL,
        session_total=100,
        session_remaining=100,
        reset_at=1e9,
        sent_hold_s=1.0,
        lead_s=INTERVAL / 2,
        answer_opens=True,
        answer_wait_s=WAIT,
    )


def first_two(s: IdentifyScheduler[str]) -> Grant[str]:
    s.request(0, "w", 0.0)
    s.request(1, "w", 0.0)
    [grant] = s.poll(0.0)
    return grant


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
