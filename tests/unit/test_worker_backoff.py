"""Reconnect backoff: full jitter, exponential ceiling, cap, reset after a stable connection."""

from __future__ import annotations

from worker.backoff import Backoff, BackoffPolicy


def test_ceiling_grows_exponentially_to_the_cap() -> None:
    b = Backoff(BackoffPolicy(base_s=1.0, cap_s=10.0, stable_after_s=30.0), rng=lambda: 1.0)
    delays = [b.next_delay() for _ in range(7)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.attempts == 7


def test_full_jitter_scales_the_ceiling() -> None:
    b = Backoff(BackoffPolicy(base_s=2.0, cap_s=100.0), rng=lambda: 0.25)
    assert [b.next_delay() for _ in range(4)] == [0.0, 0.5, 1.0, 2.0]


def test_stable_connection_resets_short_one_does_not() -> None:
    b = Backoff(BackoffPolicy(base_s=1.0, cap_s=10.0, stable_after_s=30.0), rng=lambda: 1.0)
    for _ in range(3):
        b.next_delay()
    b.connected(100.0)
    b.disconnected(110.0)  # lived 10 s: not stable
    assert b.attempts == 3
    assert b.next_delay() == 4.0
    b.connected(200.0)
    b.disconnected(230.0)  # lived 30 s: stable
    assert b.attempts == 0
    assert b.next_delay() == 0.0


def test_huge_attempt_counts_stay_at_the_cap() -> None:
    b = Backoff(BackoffPolicy(base_s=1.0, cap_s=5.0), rng=lambda: 1.0)
    for _ in range(500):
        d = b.next_delay()
    assert d == 5.0
