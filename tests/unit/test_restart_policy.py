"""The worker restart policy, on an injected clock."""

from __future__ import annotations

import random

from cluster.restart_policy import (
    RestartAction,
    RestartPolicy,
    RestartTracker,
)
from protocol.exitcodes import ExitCode

POLICY = RestartPolicy(base_delay_s=1.0, max_delay_s=8.0, stable_after_s=60.0, max_quick_deaths=5)


def test_first_death_after_a_stable_run_restarts_at_once() -> None:
    tracker = RestartTracker(POLICY, random.Random(1))
    decision = tracker.on_exit(-9, started_at=0.0, now=1000.0)
    assert decision.action is RestartAction.RESTART and decision.delay_s == 0.0


def test_quick_deaths_back_off_exponentially_with_a_cap_then_give_up() -> None:
    tracker = RestartTracker(POLICY, random.Random(1))
    now = 0.0
    delays = []
    for _ in range(5):
        decision = tracker.on_exit(1, started_at=now, now=now + 1.0)
        assert decision.action is RestartAction.RESTART
        delays.append(decision.delay_s)
        now += 2.0 + decision.delay_s
    assert delays[0] == 0.0
    for delay, ceiling in zip(delays[1:], [1.0, 2.0, 4.0, 8.0], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert tracker.on_exit(1, started_at=now, now=now + 1.0).action is RestartAction.GIVE_UP


def test_a_stable_run_resets_the_quick_death_count() -> None:
    tracker = RestartTracker(POLICY, random.Random(1))
    for i in range(4):
        tracker.on_exit(1, started_at=float(i), now=float(i) + 0.5)
    decision = tracker.on_exit(1, started_at=10.0, now=10.0 + POLICY.stable_after_s)
    assert decision == decision.__class__(RestartAction.RESTART, 0.0)
    assert tracker.restarts == 5


def test_fatal_exit_code_is_never_restarted() -> None:
    tracker = RestartTracker(POLICY)
    assert tracker.on_exit(ExitCode.FATAL, 0.0, 100.0).action is RestartAction.FATAL
    assert tracker.restarts == 0
