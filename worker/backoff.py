"""Reconnect backoff for one shard: exponential with full jitter, a cap, and a reset.

Pure: the clock and the random source are passed in, so the policy is tested
without sleeping. Shape (hikari's reset window, AWS's "full jitter"):

- after a stable connection (one that lived at least ``stable_after_s``) the
  next reconnect is immediate: a healthy shard that loses its socket resumes
  at once;
- every further consecutive attempt waits ``uniform(0, min(cap, base * 2**n))``
  where n counts the attempts since the last stable connection.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_s: float = 1.0
    cap_s: float = 60.0
    #: A connection that lived this long resets the attempt counter.
    stable_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0 or self.stable_after_s < 0:
            raise ValueError("backoff durations must not be negative")


class Backoff:
    """Counts consecutive failed or short-lived connections and turns them into delays."""

    __slots__ = ("_attempts", "_connected_at", "_policy", "_rng")

    def __init__(
        self, policy: BackoffPolicy = BackoffPolicy(), rng: Callable[[], float] = random.random
    ) -> None:
        self._policy = policy
        self._rng = rng
        self._attempts = 0
        self._connected_at: float | None = None

    @property
    def attempts(self) -> int:
        return self._attempts

    def ceiling(self) -> float:
        """The upper bound of the next delay (0 right after a stable connection)."""
        if self._attempts == 0:
            return 0.0
        p = self._policy
        exponent = min(self._attempts - 1, 62)  # 2**62 * base is past any cap
        return min(p.cap_s, p.base_s * float(2**exponent))

    def next_delay(self) -> float:
        """The delay before the next connection attempt; counts the attempt."""
        delay = self._rng() * self.ceiling()
        self._attempts += 1
        return delay

    def connected(self, now: float) -> None:
        """A connection was established (the handshake succeeded) at ``now``."""
        self._connected_at = now

    def disconnected(self, now: float) -> None:
        """The connection ended at ``now``; a stable one resets the counter."""
        started = self._connected_at
        self._connected_at = None
        if started is not None and now - started >= self._policy.stable_after_s:
            self._attempts = 0

    def reset(self) -> None:
        self._attempts = 0
        self._connected_at = None
