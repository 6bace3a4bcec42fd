"""The Redis identify arbiter: the buckets and the session-start budget shared by every host.

:class:`cluster.coordinator.Coordinator` keeps each host's local FIFO per
bucket; only the head of a local bucket asks here, once per IDENTIFY (never
per event). One script (:meth:`RedisState.try_identify`) checks the caller's
lease, the cold-start guard, the bucket ``shard_id % max_concurrency`` and
the budget above the reserve, on Redis's own clock, and holds the bucket
until the IDENTIFY is reported written (then ``interval + margin`` from that
report), exactly the ``sent`` semantics of the embedded scheduler. Without
Redis or without the lease nothing is granted: the answer is "ask again".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cluster.state.redis_state import (
    GrantOutcome,
    Lease,
    RedisState,
    RedisStateError,
)

log = logging.getLogger(__name__)

#: How long to wait before asking again when Redis or the lease is missing.
RETRY_UNAVAILABLE_S: Final = 1.0


@dataclass(slots=True)
class ArbiterStats:
    asked: int = 0
    granted: int = 0
    #: refusals by outcome (bucket_busy, cold_start, budget_low)
    refused: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    last_latency_ms: float | None = None
    max_latency_ms: float = 0.0
    total_latency_ms: float = 0.0


class RedisArbiter:
    """:class:`cluster.coordinator.IdentifyArbiter` over Redis, under this host's lease."""

    def __init__(
        self,
        redis: RedisState,
        lease: Callable[[], Lease | None],
        *,
        max_concurrency: int,
        spacing_s: float,
        sent_hold_s: float,
        reserve: int,
    ) -> None:
        self._redis = redis
        self._lease = lease
        self._max_concurrency = max_concurrency
        self._spacing_ms = max(1, round(spacing_s * 1000))
        self._hold_ms = max(1, round((spacing_s + sent_hold_s) * 1000))
        self._reserve = reserve
        self.stats = ArbiterStats()
        self._warned = False
        self.budget_remaining: int | None = None

    async def grant(self, shard_id: int) -> float | None:
        lease = self._lease()
        if lease is None:
            return RETRY_UNAVAILABLE_S
        started = time.perf_counter()
        try:
            result = await self._redis.try_identify(
                lease,
                shard_id,
                max_concurrency=self._max_concurrency,
                hold_ms=self._hold_ms,
                reserve=self._reserve,
                cold_start_ms=self._spacing_ms,
            )
        except RedisStateError as exc:
            self.stats.errors += 1
            if not self._warned:
                log.warning("no identify grants while Redis is unreachable: %s", exc)
                self._warned = True
            return RETRY_UNAVAILABLE_S
        latency = (time.perf_counter() - started) * 1000
        stats = self.stats
        stats.asked += 1
        stats.last_latency_ms = latency
        stats.max_latency_ms = max(stats.max_latency_ms, latency)
        stats.total_latency_ms += latency
        if self._warned:
            log.info("Redis answers identify requests again")
            self._warned = False
        if result.remaining >= 0:
            self.budget_remaining = result.remaining
        if result.outcome is GrantOutcome.GRANTED:
            stats.granted += 1
            return None
        if result.outcome is GrantOutcome.LEASE_LOST:
            # The lease keeper renews (or re-asserts after an empty restart) or fences.
            return RETRY_UNAVAILABLE_S
        reason = result.outcome.name.lower()
        stats.refused[reason] = stats.refused.get(reason, 0) + 1
        if result.outcome is GrantOutcome.BUDGET_LOW:
            log.warning(
                "identify budget at its reserve in Redis: shard %d waits %.0f s for the reset",
                shard_id,
                result.retry_after_s,
            )
        return max(result.retry_after_s, 0.001)

    async def sent(self, shard_id: int) -> None:
        lease = self._lease()
        if lease is None:
            return
        try:
            await self._redis.identify_sent(
                lease, shard_id, max_concurrency=self._max_concurrency, spacing_ms=self._spacing_ms
            )
        except RedisStateError:
            self.stats.errors += 1  # the bucket's hold runs out by itself

    async def release(self, shard_id: int) -> None:
        lease = self._lease()
        if lease is None:
            return
        try:
            await self._redis.identify_release(
                lease, shard_id, max_concurrency=self._max_concurrency
            )
        except RedisStateError:
            self.stats.errors += 1

    def status_json(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "asked": stats.asked,
            "granted": stats.granted,
            "refused": dict(stats.refused),
            "errors": stats.errors,
            "latency_ms": {
                "last": None if stats.last_latency_ms is None else round(stats.last_latency_ms, 3),
                "max": round(stats.max_latency_ms, 3),
                "mean": round(stats.total_latency_ms / stats.asked, 3) if stats.asked else None,
            },
        }
