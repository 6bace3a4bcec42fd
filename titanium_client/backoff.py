"""Exponential backoff with jitter for reconnecting to Redis (pure; the random source is injectable).

Delays double from ``base`` up to ``cap``; each is drawn uniformly from the
upper half of the current step (so retries of many consumers spread out but
never fire at once), and :meth:`Backoff.reset` after a success starts over.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """The delays before successive retries of one failing operation."""

    def __init__(
        self,
        base: float = 0.1,
        cap: float = 5.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"need 0 < base <= cap, got base={base}, cap={cap}")
        self.base = base
        self.cap = cap
        self._uniform = uniform
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next retry (and count one more failure)."""
        step = min(self.cap, self.base * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return self._uniform(step / 2, step)

    def reset(self) -> None:
        """The operation succeeded: the next failure waits ``base`` again."""
        self.failures = 0
