"""The pure shard planner: every shard once, contiguous balanced workers, clear refusals."""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cluster.identify_scheduler import IdentifyScheduler
from cluster.planner import (
    ClusterPlan,
    PlanError,
    default_worker_count,
    identify_duration,
    identify_windows,
    parse_shard_count,
    parse_shard_range,
    plan_cluster,
    startup_order,
)


@st.composite
def plans(draw: st.DrawFn) -> tuple[ClusterPlan, tuple[int, int]]:
    mc = draw(st.sampled_from([1, 1, 2, 4, 16]))
    total = mc * draw(st.integers(1, 40)) if mc > 1 else draw(st.integers(1, 200))
    first = draw(st.integers(0, total - 1))
    last = draw(st.integers(first, total - 1))
    explicit = draw(st.none() | st.integers(1, last - first + 1))
    cpus = draw(st.integers(1, 64))
    whole = first == 0 and last == total - 1 and draw(st.booleans())
    plan = plan_cluster(total, None if whole else (first, last), explicit, mc, cpus)
    return plan, (first, last)


@given(plans())
def test_every_shard_exactly_once_in_contiguous_balanced_workers(
    drawn: tuple[ClusterPlan, tuple[int, int]],
) -> None:
    plan, (first, last) = drawn
    assert plan.shard_ids == tuple(range(first, last + 1)), (
        "every shard of the range, once, in order"
    )
    sizes = [len(w.shard_ids) for w in plan.workers]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert [w.worker_id for w in plan.workers] == list(range(len(plan.workers)))
    for worker in plan.workers:
        ids = worker.shard_ids
        assert ids == tuple(range(ids[0], ids[-1] + 1)), "a worker's shards are contiguous"


def test_the_documented_example() -> None:
    plan = plan_cluster(32, None, None, 1, 8)
    assert [(w.worker_id, w.shard_ids) for w in plan.workers] == [
        (0, tuple(range(16))),
        (1, tuple(range(16, 32))),
    ]
    assert plan_cluster(10, (3, 9), 3, 1, 4).workers == plan_cluster(10, (3, 9), 3, 1, 4).workers
    assert [w.shard_ids for w in plan_cluster(10, (3, 9), 3, 1, 4).workers] == [
        (3, 4, 5),
        (6, 7),
        (8, 9),
    ]
    assert plan_cluster(10, None, 1, 1, 4).worker_of(7) == 0


@pytest.mark.parametrize(
    ("shards", "cpus", "expected"),
    [(1, 8, 1), (16, 8, 1), (17, 8, 2), (32, 2, 2), (1000, 2, 2), (1000, 64, 63), (5, 0, 1)],
)
def test_default_worker_count(shards: int, cpus: int, expected: int) -> None:
    assert default_worker_count(shards, cpus) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, None, None, 1, 2), "at least 1"),
        ((-5, None, None, 1, 2), "at least 1"),
        ((10, None, None, 4, 2), "not a multiple of max_concurrency 4"),
        ((3, None, None, 16, 2), "use 16 shards"),
        ((16, (5, 3), None, 16, 2), "empty"),
        ((16, (0, 16), None, 16, 2), "outside 0-15"),
        ((16, (-1, 3), None, 16, 2), "outside 0-15"),
        ((16, None, 0, 16, 2), "worker count must be at least 1"),
        ((16, (0, 3), 5, 16, 2), "5 workers for 4 shards"),
        ((16, None, None, 0, 2), "max_concurrency must be at least 1"),
        ((16.0, None, None, 1, 2), "must be an integer"),
        ((True, None, None, 1, 2), "must be an integer"),
    ],
)
def test_bad_plans_are_refused_in_one_line(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(PlanError, match=message) as info:
        plan_cluster(*args)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_the_multiple_error_suggests_the_nearest_counts() -> None:
    with pytest.raises(PlanError, match="use 32 or 48 shards"):
        plan_cluster(40, None, None, 16, 2)


@given(total=st.integers(1, 10_000), mc=st.integers(2, 64))
def test_a_total_not_a_multiple_of_max_concurrency_is_always_refused(total: int, mc: int) -> None:
    if total % mc:
        with pytest.raises(PlanError):
            plan_cluster(total, None, None, mc, 4)
    else:
        assert len(plan_cluster(total, None, None, mc, 4).shard_ids) == total


# -- startup order -------------------------------------------------------------------------------


@given(plans())
def test_the_first_max_concurrency_requests_cover_every_bucket(
    drawn: tuple[ClusterPlan, tuple[int, int]],
) -> None:
    plan, _ = drawn
    order = startup_order(plan)
    mc = plan.max_concurrency
    assert sorted(order) == sorted(plan.shard_ids)
    assert {s % mc for s in order[:mc]} == {s % mc for s in plan.shard_ids}
    # Within each worker, its own first requests are in distinct buckets too.
    for worker in plan.workers:
        own = [s for s in order if s in set(worker.shard_ids)]
        head = own[: min(mc, len(own))]
        assert len({s % mc for s in head}) == len(head)


@given(plans(), st.randoms(use_true_random=False))
def test_any_interleaving_of_the_workers_identifies_every_bucket_in_the_first_window(
    drawn: tuple[ClusterPlan, tuple[int, int]], rng: random.Random
) -> None:
    """Workers ask at once, each in startup order, arriving interleaved in any way."""
    plan, _ = drawn
    assume(len(plan.shard_ids) <= 300)
    order = startup_order(plan)
    queues = [[s for s in order if s in set(w.shard_ids)] for w in plan.workers]
    arrivals: list[int] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        arrivals.append(queue.pop(0))

    interval = 1.0
    sched: IdentifyScheduler[int] = IdentifyScheduler(
        plan.max_concurrency,
        interval,
        0.0,
        session_total=10_000,
        session_remaining=10_000,
        reset_at=1e9,
    )
    for shard in arrivals:
        sched.request(shard, 0, 0.0)
    granted_at: dict[int, float] = {}
    now = 0.0
    while (deadline := sched.next_deadline(now)) is not None:
        now = deadline
        for grant in sched.poll(now):
            granted_at[grant.shard_id] = now
    buckets = {s % plan.max_concurrency for s in plan.shard_ids}
    assert {s % plan.max_concurrency for s, t in granted_at.items() if t == 0.0} == buckets
    assert max(granted_at.values()) == identify_duration(plan, interval)


def test_identify_windows_and_duration_of_the_done_when_case() -> None:
    plan = plan_cluster(32, None, None, 4, 2)
    assert identify_duration(plan, 0.2) == pytest.approx(7 * 0.2)
    assert startup_order(plan) == tuple(range(32))
    windows = identify_windows(plan)
    assert [windows[s] for s in (0, 3, 4, 31)] == [0, 0, 1, 7]
    # A subset that starts mid-window: its own windows count from 0.
    sub = plan_cluster(32, (6, 13), None, 4, 2)
    assert startup_order(sub) == tuple(range(6, 14))
    assert identify_duration(sub, 1.0) == 1.0


# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0-15", (0, 15)), (" 16 - 31 ", (16, 31)), ("7", (7, 7)), ("0-0", (0, 0))],
)
def test_parse_shard_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard_range(text) == expected


@pytest.mark.parametrize(
    "text", ["", "-", "a-b", "1-", "-3", "3-1", "1-2-3", "1.5-2", "٣-٤", "0x1-2"]
)
def test_parse_shard_range_refuses(text: str) -> None:
    with pytest.raises(PlanError):
        parse_shard_range(text)


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_parse_shard_range_round_trips(a: int, b: int) -> None:
    first, last = min(a, b), max(a, b)
    assert parse_shard_range(f"{first}-{last}") == (first, last)


@given(st.text(max_size=12))
def test_parse_shard_range_returns_or_raises_plan_error(text: str) -> None:
    try:
        first, last = parse_shard_range(text)
    except PlanError:
        return
    assert 0 <= first <= last


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", None), ("AUTO", None), ("12", 12), (3, 3), (" 4 ", 4)]
)
def test_parse_shard_count(value: str | int, expected: int | None) -> None:
    assert parse_shard_count(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "", "many", "1.5", 0, -3, True, "²"])
def test_parse_shard_count_refuses(value: str | int) -> None:
    with pytest.raises(PlanError):
        parse_shard_count(value)


@given(st.integers(1, 4096), st.integers(1, 64))
def test_host_ranges_cover_every_shard_once_in_near_equal_contiguous_ranges(
    total: int, hosts: int
) -> None:
    from cluster.planner import host_ranges

    if hosts > total:
        with pytest.raises(PlanError):
            host_ranges(total, hosts)
        return
    ranges = host_ranges(total, hosts)
    assert len(ranges) == hosts
    covered = [s for first, last in ranges for s in range(first, last + 1)]
    assert covered == list(range(total))
    sizes = [last - first + 1 for first, last in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
