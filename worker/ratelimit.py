"""The per-connection send limiter: 120 payloads per 60 s, heartbeats never starved.

Discord counts every client payload on one websocket connection, heartbeats,
IDENTIFY and RESUME included, and closes with 4008 past 120 per 60 s
(shared/PROTOCOL.md section 6). Like twilight's ``CommandRatelimiter`` this is
a sliding-window log that keeps ``ceil(60 s / heartbeat_interval) + 1`` slots
(at most 10) free for heartbeats: commands may fill the window only up to
``limit - reserved``; heartbeats and the handshake may use it to the end. So no
flood of commands can ever make the shard send the payload that earns a 4008.

The window is a little longer than Discord's (``slack_s``): our timestamps are
taken when we send, the server's when it receives, a few milliseconds later.

:class:`SendWindow` is the pure core (clock passed in); :class:`SendLimiter`
is its asyncio face. A new connection gets a new limiter.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Final

from protocol.gateway import SEND_LIMIT, SEND_WINDOW_S

#: twilight never reserves more than this, so commands always keep 110 slots.
MAX_HEARTBEAT_RESERVE: Final = 10
DEFAULT_SLACK_S: Final = 1.0


def heartbeat_reserve(heartbeat_interval_s: float, window_s: float = SEND_WINDOW_S) -> int:
    """Slots kept for heartbeats: ``ceil(window / interval) + 1``, at most 10."""
    if heartbeat_interval_s <= 0:
        return MAX_HEARTBEAT_RESERVE
    return min(math.ceil(window_s / heartbeat_interval_s) + 1, MAX_HEARTBEAT_RESERVE)


class SendWindow:
    """Sliding-window log of send times for one connection (pure)."""

    __slots__ = ("_limit", "_reserved", "_sent", "_window")

    def __init__(
        self,
        limit: int = SEND_LIMIT,
        window_s: float = SEND_WINDOW_S + DEFAULT_SLACK_S,
        reserved: int = MAX_HEARTBEAT_RESERVE,
    ) -> None:
        if limit <= reserved or reserved < 0:
            raise ValueError("the limit must leave room for commands after the reserve")
        self._limit = limit
        self._window = window_s
        self._reserved = reserved
        self._sent: deque[float] = deque()

    @property
    def reserved(self) -> int:
        return self._reserved

    def set_heartbeat_interval(self, heartbeat_interval_s: float) -> None:
        """Size the heartbeat reserve from the interval Hello announced."""
        self._reserved = heartbeat_reserve(heartbeat_interval_s, self._window)

    def in_window(self, now: float) -> int:
        self._expire(now)
        return len(self._sent)

    def _expire(self, now: float) -> None:
        sent = self._sent
        horizon = now - self._window
        while sent and sent[0] <= horizon:
            sent.popleft()

    def try_acquire(self, now: float, *, priority: bool = False) -> float:
        """Take a slot at ``now`` and return 0.0, or return how long to wait first.

        ``priority`` (heartbeats, IDENTIFY, RESUME) may use the reserved slots.
        """
        self._expire(now)
        sent = self._sent
        capacity = self._limit if priority else self._limit - self._reserved
        if len(sent) < capacity:
            sent.append(now)
            return 0.0
        # The slot frees when the entry at index len - capacity leaves the window.
        oldest_blocking = sent[len(sent) - capacity]
        return max(oldest_blocking + self._window - now, 1e-3)


class SendLimiter:
    """asyncio face of :class:`SendWindow`: commands wait in FIFO order, priority jumps."""

    __slots__ = ("_clock", "_lock", "_window")

    def __init__(self, window: SendWindow, clock: Callable[[], float]) -> None:
        self._window = window
        self._clock = clock
        self._lock = asyncio.Lock()

    @property
    def window(self) -> SendWindow:
        return self._window

    async def acquire(self) -> None:
        """Wait for a command slot (FIFO among commands)."""
        async with self._lock:
            while True:
                wait = self._window.try_acquire(self._clock())
                if wait == 0.0:
                    return
                await asyncio.sleep(wait)

    async def acquire_priority(self) -> None:
        """Wait for a slot that may use the heartbeat reserve (normally immediate)."""
        while True:
            wait = self._window.try_acquire(self._clock(), priority=True)
            if wait == 0.0:
                return
            await asyncio.sleep(wait)
