"""Shard planning: which shards this supervisor runs, in how many workers, in what order (pure).

No asyncio, sockets or processes: numbers in, a frozen :class:`ClusterPlan`
out, or a :class:`PlanError` whose one-line message says what to fix.

Rules (shared/PROTOCOL.md section 5):

- ``shard_id % max_concurrency`` is a shard's identify bucket; each bucket
  identifies once per interval, shards ``0..mc-1`` together, then the next
  ``mc``, and so on.
- When ``max_concurrency > 1`` (large bots), Discord requires the total shard
  count to be a multiple of it (close 4010 otherwise), so such a total is
  refused here, before any session start is spent.
- ``--shard-ids A-B`` runs the inclusive subset ``A..B`` of ``total`` (several
  hosts share one bot); each worker gets a contiguous, balanced slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

#: Shards per worker the default worker count aims for. A worker is one
#: uvloop process; 16 shards keep a crash's blast radius small (its shards
#: RESUME, but they do so together) while an idle shard costs almost nothing.
SHARDS_PER_WORKER: Final = 16


class PlanError(ValueError):
    """The requested plan cannot run; the message is one line naming the fix."""


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """One worker process and the shards it runs (contiguous, ascending)."""

    worker_id: int
    shard_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """What this supervisor runs: ``total_shards`` is the ``[id, total]`` every shard identifies with."""

    total_shards: int
    max_concurrency: int
    workers: tuple[WorkerPlan, ...]

    @property
    def shard_ids(self) -> tuple[int, ...]:
        return tuple(s for worker in self.workers for s in worker.shard_ids)

    def worker_of(self, shard_id: int) -> int:
        for worker in self.workers:
            if shard_id in worker.shard_ids:
                return worker.worker_id
        raise KeyError(shard_id)


def _require_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{what} must be an integer, got {value!r}")
    return value


def default_worker_count(shard_count: int, cpu_count: int) -> int:
    """``min(cpu_count, ceil(shards / 16))``, at least 1.

    More workers than cores only adds context switches (each worker is one
    busy event loop), and fewer than ``shards / 16`` puts too many shards
    behind one loop. A small bot runs in one worker.
    """
    return max(1, min(max(1, cpu_count), math.ceil(shard_count / SHARDS_PER_WORKER)))


def plan_cluster(
    total_shards: int,
    shard_range: tuple[int, int] | None,
    workers: int | None,
    max_concurrency: int,
    cpu_count: int,
) -> ClusterPlan:
    """Split shards ``A..B`` (default: all of ``total_shards``) into balanced contiguous workers."""
    total = _require_int(total_shards, "the shard count")
    mc = _require_int(max_concurrency, "max_concurrency")
    if total < 1:
        raise PlanError(f"the shard count must be at least 1, got {total}")
    if mc < 1:
        raise PlanError(f"max_concurrency must be at least 1, got {mc}")
    if mc > 1 and total % mc:
        lower, upper = total // mc * mc, (total // mc + 1) * mc
        fix = f"{lower} or {upper}" if lower else f"{upper}"
        raise PlanError(
            f"{total} shards is not a multiple of max_concurrency {mc}, which Discord refuses "
            f"(close 4010): use {fix} shards"
        )
    if shard_range is None:
        first, last = 0, total - 1
    else:
        first, last = (_require_int(x, "a shard id") for x in shard_range)
        if first > last:
            raise PlanError(f"shard range {first}-{last} is empty: the first id is after the last")
        if first < 0 or last >= total:
            raise PlanError(f"shard range {first}-{last} is outside 0-{total - 1} ({total} shards)")
    count = last - first + 1
    if workers is None:
        n_workers = default_worker_count(count, cpu_count)
    else:
        n_workers = _require_int(workers, "the worker count")
        if n_workers < 1:
            raise PlanError(f"the worker count must be at least 1, got {n_workers}")
        if n_workers > count:
            raise PlanError(f"{n_workers} workers for {count} shards: use at most {count} workers")
    base, extra = divmod(count, n_workers)
    plans: list[WorkerPlan] = []
    start = first
    for worker_id in range(n_workers):
        size = base + (1 if worker_id < extra else 0)
        plans.append(WorkerPlan(worker_id, tuple(range(start, start + size))))
        start += size
    return ClusterPlan(total, mc, tuple(plans))


def host_ranges(total_shards: int, hosts: int) -> tuple[tuple[int, int], ...]:
    """``--shard-ids auto --hosts H``: H contiguous ranges covering every shard once.

    Sizes differ by at most one, larger ranges first; host ``i`` runs range ``i``.
    """
    total = _require_int(total_shards, "the shard count")
    count = _require_int(hosts, "the host count")
    if count < 1:
        raise PlanError(f"--hosts must be at least 1, got {count}")
    if count > total:
        raise PlanError(f"--hosts {count} is more than the {total} shards: use at most {total}")
    base, extra = divmod(total, count)
    ranges: list[tuple[int, int]] = []
    start = 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        ranges.append((start, start + size - 1))
        start += size
    return tuple(ranges)


def startup_order(plan: ClusterPlan) -> tuple[int, ...]:
    """The order shards ask for identify permits: by identify window, then bucket.

    A shard's window is its place in its bucket's queue; sorting by it means
    every ``max_concurrency`` consecutive requests hold one shard of each
    bucket, so every bucket identifies in the first window and the last shard
    is ready after ``(windows - 1) * interval``. For a contiguous range that
    is simply ascending ``shard_id``. Each worker requests its own shards in
    this order, all at once; the coordinator's per-bucket FIFOs make any
    interleaving of the workers equally fast.
    """
    windows = identify_windows(plan)
    return tuple(sorted(windows, key=lambda s: (windows[s], s)))


def identify_windows(plan: ClusterPlan) -> dict[int, int]:
    """Shard -> the identify window (0, 1, ...) it falls in when every shard asks at once."""
    seen: dict[int, int] = {}
    windows: dict[int, int] = {}
    for shard_id in sorted(plan.shard_ids):
        bucket = shard_id % plan.max_concurrency
        windows[shard_id] = seen.get(bucket, 0)
        seen[bucket] = windows[shard_id] + 1
    return windows


def identify_duration(plan: ClusterPlan, interval_s: float) -> float:
    """Time from the first IDENTIFY to the last, when nothing else competes: ``(windows - 1) * interval``."""
    windows = identify_windows(plan)
    return (max(windows.values()) if windows else 0) * interval_s


def parse_shard_range(text: str) -> tuple[int, int]:
    """``"A-B"`` (inclusive) or ``"N"`` -> ``(A, B)``; bounds are checked by :func:`plan_cluster`."""
    raw = text.strip()
    first_text, sep, last_text = raw.partition("-")
    if not sep:
        last_text = first_text
    first_text, last_text = first_text.strip(), last_text.strip()
    if not (
        first_text.isascii()
        and first_text.isdigit()
        and last_text.isascii()
        and last_text.isdigit()
    ):
        raise PlanError(
            f"shard range must look like A-B with non-negative integers (e.g. 0-15), got {raw[:40]!r}"
        )
    first, last = int(first_text), int(last_text)
    if first > last:
        raise PlanError(f"shard range {first}-{last} is empty: the first id is after the last")
    return first, last


def parse_shard_count(value: str | int) -> int | None:
    """``"auto"`` -> None (ask ``GET /gateway/bot``), else a positive shard count."""
    if isinstance(value, bool):
        raise PlanError(f"shard count must be 'auto' or a positive integer, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = value.strip().lower()
        if text == "auto":
            return None
        if not (text.isascii() and text.isdigit()):
            raise PlanError(f"shard count must be 'auto' or a positive integer, got {value[:40]!r}")
        number = int(text)
    if number < 1:
        raise PlanError(f"shard count must be at least 1, got {number}")
    return number
