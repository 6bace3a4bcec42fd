"""The progress line says what the shards that are not ready wait for (issue 12, item 6)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import pytest

from cluster.identify_scheduler import SchedulerSnapshot
from cluster.progress import (
    Budget,
    Progress,
    Waiting,
    WaitReason,
    format_duration,
    progress_line,
    wait_reason,
    waiting_from,
)
from cluster.status import ShardStatus
from protocol.session import ShardPhase


@dataclass
class Shard:
    state: ShardPhase
    identifies: int = 0
    reconnects: int = 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def snapshot(
    remaining: int, total: int = 1000, reset_at: float = 1000.0 + 3600
) -> SchedulerSnapshot:
    return SchedulerSnapshot(
        remaining=remaining,
        total=total,
        reset_at=reset_at,
        max_concurrency=1,
        interval_s=5.0,
        queued=(0,),
        granted=0,
        refunded=0,
    )


@pytest.mark.parametrize(
    ("shard", "reason"),
    [
        (Shard(ShardPhase.READY), None),
        (Shard(ShardPhase.READY, identifies=3, reconnects=2), None),
        (Shard(ShardPhase.AWAITING_PERMIT), WaitReason.PERMIT),
        (Shard(ShardPhase.AWAITING_PERMIT, reconnects=1), WaitReason.PERMIT),
        (Shard(ShardPhase.AWAITING_PERMIT, identifies=1), WaitReason.PERMIT_AGAIN),
        (Shard(ShardPhase.IDENTIFYING, identifies=1), WaitReason.READY),
        (Shard(ShardPhase.RESUMING), WaitReason.RESUMING),
        (Shard(ShardPhase.DISCONNECTED), WaitReason.CONNECTING),
        (Shard(ShardPhase.CONNECTING), WaitReason.CONNECTING),
        (Shard(ShardPhase.AWAITING_HELLO), WaitReason.CONNECTING),
        (Shard(ShardPhase.DISCONNECTED, identifies=1), WaitReason.RECONNECTING),
        (Shard(ShardPhase.AWAITING_HELLO, reconnects=1), WaitReason.RECONNECTING),
        (Shard(ShardPhase.FATAL), WaitReason.FATAL),
        (Shard(ShardPhase.STOPPED), WaitReason.STOPPED),
    ],
)
def test_every_phase_has_a_reason(shard: Shard, reason: WaitReason | None) -> None:
    assert wait_reason(shard) is reason


def test_the_status_records_are_what_progress_reads() -> None:
    shard = ShardStatus(0, 0, state=ShardPhase.AWAITING_PERMIT, identifies=1)
    waiting = waiting_from([shard, ShardStatus(1, 0, state=ShardPhase.READY)], None, 0.0)
    assert dict(waiting.counts) == {WaitReason.PERMIT_AGAIN: 1}


def test_an_exhausted_budget_is_named_instead_of_the_countdown() -> None:
    # the issue: 992 ready of 4096, "about 0.0 s left by the identify schedule"
    shards = [Shard(ShardPhase.READY)] * 992 + [Shard(ShardPhase.AWAITING_PERMIT)] * 3104
    waiting = waiting_from(shards, snapshot(0, reset_at=1000.0 + 3 * 3600 + 300), 1000.0)
    assert waiting.exhausted
    line = progress_line(992, 4096, 0.0, waiting)
    assert line == (
        "shards ready 992/4096, identify budget exhausted: 0 of 1000 session starts left, "
        "the limit resets in 3 h 05 min; not ready: 3104 waiting for an identify permit"
    )
    # the same while the schedule would still run: the budget wins
    assert progress_line(992, 4096, 120.0, waiting) == line
    assert "s left by the identify schedule" not in line


def test_a_budget_too_small_for_the_schedule_is_said_early() -> None:
    shards = [Shard(ShardPhase.AWAITING_PERMIT)] * 4096
    line = progress_line(0, 4096, 800.0, waiting_from(shards, snapshot(1000), 1000.0))
    assert line == (
        "shards ready 0/4096, about 800.0 s left by the identify schedule; only 1000 of 1000 "
        "session starts left for 4096 shards (the limit resets in 60 min)"
    )


def test_while_the_schedule_runs_only_unusual_waits_are_added() -> None:
    shards = [
        Shard(ShardPhase.READY),
        Shard(ShardPhase.AWAITING_PERMIT),
        Shard(ShardPhase.IDENTIFYING),
        Shard(ShardPhase.AWAITING_HELLO),
    ]
    assert (
        progress_line(1, 4, 12.34, waiting_from(shards, snapshot(900), 1000.0))
        == "shards ready 1/4, about 12.3 s left by the identify schedule"
    )
    shards += [
        Shard(ShardPhase.AWAITING_PERMIT, identifies=1),
        Shard(ShardPhase.DISCONNECTED, reconnects=1),
    ]
    assert progress_line(1, 6, 12.34, waiting_from(shards, None, 1000.0)) == (
        "shards ready 1/6, about 12.3 s left by the identify schedule; also "
        "1 waiting to identify again (after op 9 or a lost session), 1 reconnecting"
    )


def test_after_the_schedule_every_wait_is_named() -> None:
    shards = [
        Shard(ShardPhase.READY),
        Shard(ShardPhase.AWAITING_PERMIT, identifies=2),
        Shard(ShardPhase.AWAITING_PERMIT, identifies=1),
        Shard(ShardPhase.IDENTIFYING),
        Shard(ShardPhase.RESUMING),
        Shard(ShardPhase.FATAL),
    ]
    line = progress_line(1, 6, 0.0, waiting_from(shards, snapshot(500), 1000.0))
    assert line == (
        "shards ready 1/6, identify schedule done; not ready: "
        "2 waiting to identify again (after op 9 or a lost session), "
        "1 identified, waiting for READY, 1 resuming, 1 stopped on a fatal close code"
    )
    assert "0.0 s" not in line
    low = progress_line(1, 6, 0.0, waiting_from(shards, snapshot(1), 1000.0))
    assert low.endswith("(only 1 session starts left)")


def test_without_watching_the_line_still_stops_counting_down() -> None:
    assert progress_line(3, 32, 0.0, Waiting(unknown=True)) == (
        "shards ready 3/32, identify schedule done; 29 not ready yet"
    )
    assert progress_line(3, 32, 2.0, Waiting(unknown=True)) == (
        "shards ready 3/32, about 2.0 s left by the identify schedule"
    )
    assert progress_line(32, 32, 0.0, Waiting(unknown=True)) == "shards ready 32/32"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-1.0, "0 s"),
        (0.2, "1 s"),
        (42.0, "42 s"),
        (89.5, "90 s"),
        (600.0, "10 min"),
        (5340.0, "89 min"),
        (5400.0, "1 h 30 min"),
        (86_400.0, "24 h 00 min"),
    ],
)
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_budget_of_a_scheduler_snapshot() -> None:
    assert Budget.of(snapshot(3, 10, reset_at=1010.0), 1000.0) == Budget(3, 10, 10.0)
    assert Budget.of(snapshot(3, 10, reset_at=990.0), 1000.0).reset_in_s == 0.0


def test_progress_watches_shards_and_budget_and_samples_at_most_every_interval() -> None:
    clock = Clock()
    shards = [Shard(ShardPhase.READY), Shard(ShardPhase.AWAITING_PERMIT)]
    budget = snapshot(5)
    calls: list[int] = []

    def read_shards() -> list[Shard]:
        calls.append(1)
        return shards

    out = io.StringIO()
    progress = Progress(2, 10.0, stream=out, interactive=True, clock=clock, sample_every_s=0.5)
    progress.watch(read_shards, lambda: budget)
    progress.schedule_started()
    progress.update(1)
    assert out.getvalue().endswith("shards ready 1/2, about 10.0 s left by the identify schedule")
    progress.update(1)
    assert len(calls) == 1  # sampled once in the interval
    clock.now += 11.0
    budget = snapshot(0, reset_at=clock.now + 120)
    progress.update(1)
    assert len(calls) == 2
    assert out.getvalue().endswith(
        "shards ready 1/2, identify budget exhausted: 0 of 1000 session starts left, the limit "
        "resets in 2 min; not ready: 1 waiting for an identify permit"
    )
    progress.update(2)
    assert out.getvalue().endswith("shards ready 2/2 in 11.0 s\n")


def test_progress_without_watch_says_when_the_schedule_is_over() -> None:
    clock = Clock()
    out = io.StringIO()
    progress = Progress(4, 5.0, stream=out, interactive=True, clock=clock)
    progress.update(0)
    assert out.getvalue().endswith("about 5.0 s left by the identify schedule")
    progress.schedule_started()
    clock.now += 6.0
    progress.update(3)
    assert out.getvalue().endswith("shards ready 3/4, identify schedule done; 1 not ready yet")


def test_off_a_terminal_a_new_kind_of_wait_is_logged_even_if_the_count_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "cluster.progress")
    clock = Clock()
    shards = [Shard(ShardPhase.READY), Shard(ShardPhase.AWAITING_PERMIT)]
    budget = snapshot(10)
    progress = Progress(
        2,
        0.0,
        stream=io.StringIO(),
        interactive=False,
        log_every_s=1.0,
        clock=clock,
        sample_every_s=0.0,
    )
    progress.watch(lambda: shards, lambda: budget)
    progress.schedule_started()
    progress.update(1)
    clock.now += 2.0
    progress.update(1)  # nothing new: no line
    budget = snapshot(0)
    progress.update(1)  # exhausted now: a line, though still 1 ready
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].endswith("not ready: 1 waiting for an identify permit")
    assert "identify budget exhausted" in messages[1]
