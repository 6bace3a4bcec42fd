"""Where a shard gets its permission to IDENTIFY.

:class:`PermitSource` is the one call a shard makes before every IDENTIFY
(twilight's ``Queue::enqueue``); :class:`worker.identify_client.IdentifyClient`
implements it against the cluster's coordinator. :class:`LocalPermits` is a
real in-process implementation for a worker running alone (and for tests):
one grant per bucket (``shard_id % max_concurrency``) per interval, FIFO.
After the IDENTIFY is written the shard calls ``sent``: the bucket's spacing
then counts from the write, not from the grant. When the server's answer
(READY) is read the shard calls ``answered`` with the time it read it: the
server counted the IDENTIFY before it sent the READY, so a source that opens
buckets on answers (the coordinator's ``answer_opens``) may open the bucket an
interval after that time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class PermitSource(Protocol):
    async def acquire(self, shard_id: int) -> float | None:
        """Wait until ``shard_id`` may send one IDENTIFY; the ``time.monotonic()`` before
        which it must not be written (an early grant), or None."""
        ...

    async def cancel(self, shard_id: int) -> object:
        """Withdraw a pending request (the connection died while waiting)."""
        ...

    def sent(self, shard_id: int) -> None:
        """The IDENTIFY under the latest permit was just written: space the bucket from now."""
        ...

    def answered(self, shard_id: int, answered_at: float) -> None:
        """The server answered (READY) that IDENTIFY; the READY was read at ``answered_at``
        (``time.monotonic()``). Called once per READY, never per dispatch."""
        ...

    async def close(self) -> None: ...


class LocalPermits:
    """One IDENTIFY per bucket per ``interval_s``, granted in request order."""

    def __init__(
        self,
        max_concurrency: int = 1,
        interval_s: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_concurrency < 1 or interval_s < 0:
            raise ValueError("max_concurrency must be >= 1 and interval_s >= 0")
        self._max_concurrency = max_concurrency
        self._interval = interval_s
        self._clock = clock
        self._next_free: dict[int, float] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self.granted: list[int] = []

    def _now(self) -> float:
        # Not the loop's time: uvloop caches it per iteration (in whole milliseconds),
        # and after a long iteration (1,000 connections opening) it lags by tens of ms.
        return self._clock() if self._clock else time.monotonic()

    async def acquire(self, shard_id: int) -> None:
        bucket = shard_id % self._max_concurrency
        lock = self._locks.setdefault(bucket, asyncio.Lock())
        async with lock:  # asyncio.Lock wakes waiters in FIFO order
            # A timer can fire early by as much as uvloop's cached time lags: look again.
            while (wait := self._next_free.get(bucket, 0.0) - self._now()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            self._next_free[bucket] = self._now() + self._interval
            self.granted.append(shard_id)

    async def cancel(self, shard_id: int) -> None:
        # A waiter is cancelled by cancelling its acquire(); nothing is held here.
        return None

    def sent(self, shard_id: int) -> None:
        bucket = shard_id % self._max_concurrency
        opens = self._now() + self._interval
        if opens > self._next_free.get(bucket, 0.0):
            self._next_free[bucket] = opens

    def answered(self, shard_id: int, answered_at: float) -> None:
        # Spaced by the interval from the write alone: nothing to open sooner.
        return None

    async def close(self) -> None:
        return None
