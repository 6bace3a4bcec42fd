"""When a dead worker is restarted, and when the supervisor gives up on it.

supervisord's STARTING -> BACKOFF -> FATAL, with hikari's reset window: the
first death after a stable run restarts at once (its shards are waiting to
RESUME, and every second is events delayed); quick deaths in a row back off
exponentially with jitter; too many quick deaths in a row give the worker up,
instead of burning session starts. A worker that exits with the fatal exit
code (a fatal close code such as 4004) is never restarted.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from protocol.exitcodes import ExitCode


class RestartAction(enum.Enum):
    RESTART = "restart"
    GIVE_UP = "give_up"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class RestartDecision:
    action: RestartAction
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    stable_after_s: float = 30.0
    max_quick_deaths: int = 5


class RestartTracker:
    """The restart history of one worker slot."""

    def __init__(self, policy: RestartPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.quick_deaths = 0
        self.restarts = 0
        self._rng = rng or random.Random()

    def on_exit(self, exit_code: int | None, started_at: float, now: float) -> RestartDecision:
        if exit_code == ExitCode.FATAL:
            return RestartDecision(RestartAction.FATAL)
        if now - started_at >= self.policy.stable_after_s:
            self.quick_deaths = 0
        self.quick_deaths += 1
        if self.quick_deaths > self.policy.max_quick_deaths:
            return RestartDecision(RestartAction.GIVE_UP)
        self.restarts += 1
        if self.quick_deaths == 1:
            return RestartDecision(RestartAction.RESTART, 0.0)
        ceiling = min(
            self.policy.max_delay_s, self.policy.base_delay_s * 2 ** (self.quick_deaths - 2)
        )
        # Equal jitter: at least half the ceiling, so quick deaths really slow down.
        return RestartDecision(
            RestartAction.RESTART, ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        )
