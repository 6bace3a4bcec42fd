"""One owner per shard range (DESIGN.md rule 9): the lease, its renewal and the fence.

A supervisor connects a range's shards only while it holds ``lease:<A>-<B>``
in Redis (value ``holder|token``; the token comes from a per-range counter, so
every new owner has a higher one, and checkpoints and grants are written under
it). :class:`LeaseKeeper`:

- :meth:`claim` takes the first free range of its candidates; with none free
  it waits as a **spare**, polling with jitter until a lease expires.
- :meth:`hold` renews every ``renew_s``. The **fence deadline** is
  ``fence_after_s`` after the *send* of the last renewal that succeeded: past
  it, or at once when another holder is seen, ``on_fence`` is called (the
  supervisor aborts its shards' TCP connections, never a 1000/1001 close,
  and becomes a spare). Redis expires the lease ``ttl_s`` after that renewal
  *arrived*, so nobody can take over before ``ttl_s - fence_after_s`` after
  the holder fenced itself; a taker adds ``takeover_wait_s`` on top.
- A renewal that finds the key gone (Redis restarted empty) re-asserts it
  under the same token.
- While a reshard runs, it also holds the new layout's range (:meth:`acquire_next`),
  renewed with the other; at the switch that lease becomes the one it holds
  (:meth:`promote_next`). A claim with the old layout's count, once the layout
  moved on, raises :class:`LayoutChangedError` (the supervisor claims the new
  layout's ranges instead).

The timing is measured on ``time.monotonic``; Redis's own clock only runs the
TTL. Clocks of different hosts are never compared.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.config import RedisSettings
from cluster.state.redis_state import (
    Lease,
    LeaseLostError,
    RedisState,
    RedisStateError,
    RedisUnavailableError,
)

log = logging.getLogger(__name__)

ShardRange = tuple[int, int]


@dataclass(slots=True)
class LeaseStats:
    acquired: int = 0
    renewals: int = 0
    renew_errors: int = 0
    fenced: int = 0
    #: time.monotonic() when the last successful renewal was sent
    renewed_sent_at: float | None = None


def range_key(shard_range: ShardRange) -> str:
    return f"{shard_range[0]}-{shard_range[1]}"


class LeaseKeeper:
    """Claims one range's lease, keeps it, and fences when it cannot."""

    def __init__(self, redis: RedisState, settings: RedisSettings) -> None:
        self._redis = redis
        self.settings = settings
        self.lease: Lease | None = None
        #: a reshard's range of the new layout, held beside :attr:`lease` until the switch
        self.next_lease: Lease | None = None
        #: why the next lease was lost (another holder), for the reshard to give up
        self.next_lost: str | None = None
        #: True while this supervisor waits for a range (a spare).
        self.waiting = False
        #: Why the last lease was given up, for /status.
        self.fence_reason: str | None = None
        self.stats = LeaseStats()
        self._ttl_ms = round(settings.ttl_s * 1000)

    @property
    def fence_deadline(self) -> float | None:
        """monotonic time past which the lease must be presumed lost."""
        sent = self.stats.renewed_sent_at
        if self.lease is None or sent is None:
            return None
        return sent + self.settings.fence_after_s

    async def claim(
        self, candidates: Sequence[ShardRange], stopping: asyncio.Event, shards: int = 0
    ) -> Lease | None:
        """The lease of the first free range of ``candidates``; waits as a spare until one is.

        Returns None when ``stopping`` is set first. A taken-over range (token > 1)
        is only returned after ``takeover_wait_s``: the old holder has fenced by then.
        ``shards``: the layout the candidates belong to; :class:`LayoutChangedError`
        when Redis's layout is another one now.
        """
        self.waiting = True
        announced = False
        try:
            while not stopping.is_set():
                for shard_range in candidates:
                    sent_at = time.monotonic()
                    try:
                        lease = await self._redis.acquire_lease(
                            shard_range, self._ttl_ms, shards=shards
                        )
                    except RedisUnavailableError as exc:
                        if not announced:
                            log.warning("waiting for Redis to claim a shard range: %s", exc)
                            announced = True
                        break
                    if lease is None:
                        continue
                    self.lease = lease
                    self.fence_reason = None
                    self.stats.acquired += 1
                    self.stats.renewed_sent_at = sent_at
                    if lease.token > 1 and self.settings.takeover_wait_s > 0:
                        log.info(
                            "lease for shards %s taken (token %d): waiting %.1f s for the old holder's fence",
                            range_key(shard_range),
                            lease.token,
                            self.settings.takeover_wait_s,
                        )
                        await asyncio.sleep(self.settings.takeover_wait_s)
                        # Renewed after the wait, so the fence deadline counts from now.
                        if not await self._renew_once():
                            self.lease = None
                            continue
                    return lease
                if not announced:
                    log.info(
                        "every shard range is held (%s): waiting as a spare",
                        ", ".join(range_key(r) for r in candidates),
                    )
                    announced = True
                await _sleep_or_stop(stopping, await self._until_a_lease_may_expire(candidates))
            return None
        finally:
            self.waiting = False

    async def _until_a_lease_may_expire(self, candidates: Sequence[ShardRange]) -> float:
        """How long a spare sleeps: until the first candidate's lease runs out, at most a poll.

        A little jitter, so spares waiting for the same range do not ask in lockstep.
        """
        poll = self.settings.spare_poll_s
        try:
            ttls = [
                info.ttl_ms / 1000
                for info in [await self._redis.lease_info(r) for r in candidates]
                if info is not None and info.ttl_ms >= 0
            ]
        except RedisStateError:
            ttls = []
        soonest = min(ttls, default=poll)
        return min(poll, max(0.005, soonest)) + random.uniform(0.0, 0.02)

    async def acquire_next(self, shard_range: ShardRange, shards: int) -> Lease | None:
        """Take a reshard's range of the new layout (None while someone holds it)."""
        lease = await self._redis.acquire_lease(shard_range, self._ttl_ms, shards=shards)
        if lease is not None:
            self.next_lease = lease
            self.next_lost = None
        return lease

    def promote_next(self) -> Lease | None:
        """The switch: the next lease becomes the one held; returns the old one (to release)."""
        old, nxt = self.lease, self.next_lease
        if nxt is None:
            return None
        self.lease, self.next_lease = nxt, None
        return old

    async def drop_next(self) -> None:
        """A reshard given up: the next lease goes back."""
        lease, self.next_lease = self.next_lease, None
        if lease is not None:
            await self.release_one(lease)

    async def _renew_once(self) -> bool:
        lease = self.lease
        if lease is None:
            return False
        sent_at = time.monotonic()
        try:
            await self._redis.renew_lease(lease, self._ttl_ms)
        except RedisUnavailableError:
            self.stats.renew_errors += 1
            return False
        self.stats.renewals += 1
        self.stats.renewed_sent_at = sent_at
        nxt = self.next_lease
        if nxt is not None:
            try:
                await self._redis.renew_lease(nxt, self._ttl_ms)
            except LeaseLostError as exc:
                self.next_lease = None
                self.next_lost = f"the new layout's lease was taken by {exc.holder or 'another'}"
            except RedisStateError:
                pass  # the main lease's deadline decides about Redis being gone
        return True

    async def hold(self, on_fence: Callable[[str], None]) -> None:
        """Renew until the lease is lost or the fence deadline passes; then ``on_fence(why)``.

        Returns after fencing; cancel it to stop holding (then :meth:`release`).
        """
        warned = False
        while True:
            deadline = self.fence_deadline
            if deadline is None:
                return
            now = time.monotonic()
            if now >= deadline:
                self._fence(on_fence, f"no lease renewal for {self.settings.fence_after_s:.1f} s")
                return
            await asyncio.sleep(min(self.settings.renew_s, max(0.0, deadline - now)))
            if time.monotonic() >= deadline:
                continue
            lease = self.lease
            assert lease is not None
            try:
                async with asyncio.timeout(max(0.05, deadline - time.monotonic())):
                    renewed = await self._renew_once()
            except TimeoutError:
                renewed = False
            except LeaseLostError as exc:
                holder = exc.holder or "another supervisor"
                self._fence(on_fence, f"the lease was taken by {holder}")
                return
            except RedisStateError:
                renewed = False  # an answer we cannot use: like no answer, the deadline decides
            except Exception as exc:
                # Fail safe: a keeper that cannot go on must not leave the shards connected.
                self._fence(on_fence, f"the lease keeper failed: {exc!r}")
                return
            if renewed:
                if warned:
                    log.info("lease renewed again: Redis is back")
                    warned = False
            elif not warned:
                left = (self.fence_deadline or 0.0) - time.monotonic()
                log.warning(
                    "cannot renew the lease for shards %s: fencing in %.1f s unless Redis answers",
                    range_key(lease.shard_range),
                    max(0.0, left),
                )
                warned = True

    def _fence(self, on_fence: Callable[[str], None], why: str) -> None:
        lease = self.lease
        self.lease = None
        self.next_lease = None
        self.fence_reason = why
        self.stats.fenced += 1
        shard_range = range_key(lease.shard_range) if lease is not None else "?"
        log.error("lease for shards %s lost (%s): fencing this host", shard_range, why)
        on_fence(why)

    async def release(self) -> None:
        """Give the lease back (after a drain), best effort: its TTL ends it anyway."""
        lease, self.lease = self.lease, None
        await self.drop_next()
        if lease is not None:
            await self.release_one(lease)

    async def release_one(self, lease: Lease) -> None:
        try:
            await self._redis.release_lease(lease)
        except Exception as exc:
            log.warning("could not release the lease (it expires by itself): %s", exc)

    def status_json(self) -> dict[str, Any]:
        lease = self.lease
        deadline = self.fence_deadline
        now = time.monotonic()
        return {
            "held": lease is not None,
            "range": None if lease is None else list(lease.shard_range),
            "token": None if lease is None else lease.token,
            "holder": None if lease is None else lease.holder,
            "fence_in_s": None if deadline is None else round(max(0.0, deadline - now), 3),
            "ttl_s": self.settings.ttl_s,
            "spare": self.waiting,
            "acquired": self.stats.acquired,
            "renewals": self.stats.renewals,
            "renew_errors": self.stats.renew_errors,
            "fenced": self.stats.fenced,
            "last_fence_reason": self.fence_reason,
        }


async def _sleep_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stopping.wait()
    except TimeoutError:
        pass
