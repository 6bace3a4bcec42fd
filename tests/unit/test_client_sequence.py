"""titanium_client.sequence: the gap and duplicate table, and properties over random streams."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from titanium_client.backoff import Backoff
from titanium_client.sequence import SESSIONS_KEPT, Gap, SequenceTracker, Verdict

NEW, LATE, DUP = Verdict.NEW, Verdict.LATE, Verdict.DUPLICATE


def run(
    tracker: SequenceTracker, events: list[tuple[int, str | None, int]]
) -> list[tuple[Verdict, Gap | None]]:
    out = []
    for shard_id, session_id, seq in events:
        seen = tracker.observe(shard_id, session_id, seq, starts_session=seq == 1)
        out.append((seen.verdict, seen.gap))
    return out


@pytest.mark.parametrize(
    ("seqs", "verdicts", "gaps"),
    [
        ([1, 2, 3], [NEW, NEW, NEW], []),
        ([5, 6], [NEW, NEW], []),  # joined mid-session: no gap before the first event
        ([1, 2, 5], [NEW, NEW, NEW], [(3, 5)]),
        ([1, 2, 2], [NEW, NEW, DUP], []),
        ([1, 3, 2], [NEW, NEW, LATE], [(2, 3)]),  # late fills the gap reported before
        ([1, 3, 2, 2], [NEW, NEW, LATE, DUP], [(2, 3)]),
        ([1, 2, 3, 1], [NEW, NEW, NEW, DUP], []),  # a replayed READY of a known session
    ],
)
def test_one_session_table(
    seqs: list[int], verdicts: list[Verdict], gaps: list[tuple[int, int]]
) -> None:
    results = run(SequenceTracker(), [(0, "s", q) for q in seqs])
    assert [v for v, _ in results] == verdicts
    assert [(g.expected, g.got) for _, g in results if g is not None] == gaps


def test_a_new_session_restarts_the_numbering_without_a_gap() -> None:
    tracker = SequenceTracker()
    results = run(tracker, [(0, "a", 1), (0, "a", 2), (0, "a", 3), (0, "b", 1), (0, "b", 2)])
    assert [v for v, _ in results] == [NEW] * 5 and all(g is None for _, g in results)


def test_a_new_session_that_misses_its_first_events_is_a_gap_from_one() -> None:
    tracker = SequenceTracker()
    run(tracker, [(0, "a", 1), (0, "a", 2)])
    seen = tracker.observe(0, "b", 4)
    assert seen.new_session and seen.gap == Gap(0, "b", 1, 4) and seen.gap.missing == 3


def test_a_ready_published_before_its_session_was_named_is_no_gap() -> None:
    tracker = SequenceTracker()
    run(tracker, [(0, None, 1)])  # the producer did not know the session id yet
    seen = tracker.observe(0, "b", 2)
    assert seen.new_session and seen.gap is None


def test_late_repeats_of_an_earlier_session_are_still_duplicates() -> None:
    tracker = SequenceTracker()
    run(tracker, [(0, "a", 1), (0, "a", 2), (0, "b", 1)])
    assert tracker.observe(0, "a", 2).verdict is DUP
    assert tracker.observe(0, "a", 3).verdict is NEW
    assert tracker.observe(0, "b", 2).verdict is NEW


def test_only_a_few_sessions_per_shard_are_kept() -> None:
    tracker = SequenceTracker()
    for n in range(SESSIONS_KEPT + 2):
        tracker.observe(0, f"s{n}", 1)
    assert tracker.highest(0, "s0") is None
    assert tracker.highest(0, f"s{SESSIONS_KEPT + 1}") == 1


def test_without_session_ids_ready_or_seq_one_begins_a_session() -> None:
    tracker = SequenceTracker()
    run(tracker, [(0, None, 1), (0, None, 2), (0, None, 3)])
    seen = tracker.observe(0, None, 1)
    assert seen.verdict is NEW and seen.new_session and seen.gap is None
    assert tracker.observe(0, None, 2).verdict is NEW
    assert tracker.observe(0, None, 2).verdict is DUP
    assert tracker.observe(0, None, 2, starts_session=True).verdict is DUP  # the same READY again
    run(tracker, [(0, None, 3), (0, None, 4)])
    assert tracker.observe(0, None, 3, starts_session=True).new_session  # READY below the highest


def test_shards_are_independent_and_gaps_can_be_switched_off() -> None:
    tracker = SequenceTracker(detect_gaps=False)
    results = run(tracker, [(0, "a", 1), (1, "b", 1), (0, "a", 9), (1, "b", 2)])
    assert [v for v, _ in results] == [NEW] * 4 and all(g is None for _, g in results)


def test_below_the_window_is_a_duplicate() -> None:
    tracker = SequenceTracker(window=8)
    run(tracker, [(0, "s", 100)])
    assert tracker.observe(0, "s", 93).verdict is LATE  # within 8 below 100
    assert tracker.observe(0, "s", 92).verdict is DUP  # older than remembered


@given(
    seqs=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=300),
)
@settings(max_examples=200, deadline=None)
def test_every_distinct_seq_passes_once_whatever_the_order(seqs: list[int]) -> None:
    tracker = SequenceTracker(window=256)
    passed: list[int] = []
    duplicates = 0
    for seq in seqs:
        verdict = tracker.observe(3, "s", seq).verdict
        if verdict is DUP:
            duplicates += 1
        else:
            passed.append(seq)
    assert sorted(passed) == sorted(set(seqs))
    assert duplicates == len(seqs) - len(set(seqs))


@given(
    present=st.lists(st.booleans(), min_size=1, max_size=300),
)
@settings(max_examples=100, deadline=None)
def test_gaps_in_order_add_up_to_the_missing_seqs(present: list[bool]) -> None:
    seqs = [1] + [n + 2 for n, keep in enumerate(present) if keep]
    tracker = SequenceTracker()
    missed = 0
    for seq in seqs:
        gap = tracker.observe(0, "s", seq).gap
        if gap is not None:
            missed += gap.missing
    assert missed == seqs[-1] - len(seqs)


def test_backoff_doubles_to_the_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(0.1, 1.0, uniform=lambda low, high: high)
    assert [round(backoff.next_delay(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)
    low = Backoff(0.1, 1.0, uniform=lambda low, high: low)
    assert low.next_delay() == pytest.approx(0.05)
    with pytest.raises(ValueError):
        Backoff(0, 1)
