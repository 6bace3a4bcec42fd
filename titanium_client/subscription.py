"""What both transports share: the ``async with`` / ``async for`` shell and seq checking.

The loop shell follows aiokafka: ``async with`` is ``start()`` / ``close()``,
``__anext__`` ends with ``StopAsyncIteration`` once ``stop()`` or ``close()`` was
called, and nothing raises just because no event arrived for a while. Every
event passes :meth:`Subscription._check_sequence` before it is handed out:
duplicates are counted (and dropped when asked), gaps counted and reported to
``on_gap(shard_id, session_id, expected, got)``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

from titanium_client.events import Event
from titanium_client.sequence import DEFAULT_WINDOW, SequenceTracker, Verdict
from titanium_client.stats import Stats

#: The cluster's reshard marker (cluster/reshard.py): new shard ids from here on.
RESHARD_MARKER: Final = "TITANIUM_RESHARD"

#: ``on_gap(shard_id, session_id, expected, got)``: seqs ``expected .. got-1`` never arrived.
GapCallback = Callable[[int, str | None, int, int], None]


class Subscription(abc.ABC):
    """An asynchronous iterator of :class:`Event`; use it with ``async with`` and ``async for``."""

    def __init__(
        self,
        *,
        detect_gaps: bool,
        drop_duplicates: bool,
        on_gap: GapCallback | None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        #: The live counters of this subscription.
        self.stats = Stats()
        self._tracker = SequenceTracker(detect_gaps=detect_gaps, window=window)
        self._drop_duplicates = drop_duplicates
        self._on_gap = on_gap

    @property
    def detect_gaps(self) -> bool:
        """Whether seq jumps are reported as gaps (off for filtered or shared subscriptions)."""
        return self._tracker.detect_gaps

    @property
    def drop_duplicates(self) -> bool:
        """Whether an event whose seq was already seen is withheld from the loop."""
        return self._drop_duplicates

    def _check_sequence(self, event: Event) -> bool:
        """Count the event's seq verdict; False when it is a duplicate to drop."""
        if event.name == RESHARD_MARKER:
            self._resharded(event)
            return True
        observed = self._tracker.observe(
            event.shard_id, event.session_id, event.seq, starts_session=event.name == "READY"
        )
        verdict = observed.verdict
        stats = self.stats
        if verdict is Verdict.NEW:
            if observed.new_session:
                stats.sessions += 1
            gap = observed.gap
            if gap is not None:
                stats.gaps += 1
                stats.missed += gap.missing
                if self._on_gap is not None:
                    self._on_gap(gap.shard_id, gap.session_id, gap.expected, gap.got)
            return True
        if verdict is Verdict.LATE:
            stats.late += 1
            return True
        stats.duplicates += 1
        if self._drop_duplicates:
            stats.duplicates_dropped += 1
            return False
        return True

    def _resharded(self, event: Event) -> None:
        """The marker: new shard ids from here on (cluster/reshard.py)."""
        d = event.d
        shards = d.get("shards") if isinstance(d, dict) else None
        if not isinstance(shards, dict):
            return
        self.stats.reshards += 1
        self._tracker.reshard(
            {
                int(shard): (info.get("session_id"), int(info.get("contiguous_from", 1)))
                for shard, info in shards.items()
                if isinstance(info, dict)
            }
        )

    # -- lifecycle ------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect (idempotent). ``async with`` and the first ``__anext__`` call it."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Ask the loop to end: the next (or a waiting) ``__anext__`` raises StopAsyncIteration.

        Safe to call from another task or a signal handler; resources are released
        by :meth:`close` (which ``async with`` calls).
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop and release sockets and connections (idempotent)."""

    async def _exit(self, clean: bool) -> None:
        """Leave ``async with``: ``clean`` is False when the loop body raised."""
        await self.close()

    @abc.abstractmethod
    async def __anext__(self) -> Event:
        """The next event; StopAsyncIteration after ``stop()``."""

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit(exc_type is None)
