"""``cluster up --auto-reshard``: follow Discord's recommended shard count upward.

Every ``--auto-reshard-interval`` seconds (an hour by default) :class:`AutoReshard`
asks Discord (``GET /gateway/bot``) how many shards it recommends. When that is
more than the cluster runs, the running set is whole (every shard READY) and no
reshard is under way, it starts one to the recommended count through the path
of ``cluster reshard``'s control request
(:meth:`cluster.range_owner.RangeOwner.reshard_request`, which calls
``start_reshard``: the same checks, the same refusals, the same switch;
:mod:`cluster.reshard`).
It never reshards down: fewer shards than Discord asks for is what gets a bot
closed with 4011, and a recommendation that drops is no reason to spend a
session start per shard.

A refusal (with ``--redis``; an identify budget too low) or a failed fetch is
one log line, said once per distinct reason until a reshard starts (an hourly
check must not repeat the same warning all day); the next interval tries again.

No I/O of its own: the fetch, the running count, whether a reshard may start
now, the start and the interval are handed in (the supervisor wires them to a
range owner; tests pass their own and a short interval).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Final

from cluster.discord_api import DiscordApiError
from cluster.reshard import ReshardRefusedError

log = logging.getLogger("cluster.supervisor")

#: ``--auto-reshard-interval``'s default: Discord's recommendation moves slowly (guilds join).
DEFAULT_INTERVAL_S: Final = 3600.0


def reshard_target(recommended: int, running: int) -> int | None:
    """The shard count to reshard to, or None: only ever up, to what Discord recommends."""
    return recommended if recommended > running else None


class AutoReshard:
    """One check per interval; :meth:`check` is one round, :meth:`run` the loop."""

    def __init__(
        self,
        fetch_recommended: Callable[[], Awaitable[int]],
        running: Callable[[], int],
        start: Callable[[int], Awaitable[object]],
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        can_start: Callable[[], bool] = lambda: True,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"the auto-reshard interval must be > 0 s, got {interval_s!r}")
        self._fetch = fetch_recommended
        self._running = running
        self._start = start
        self._can_start = can_start
        self.interval_s = interval_s
        #: reasons already logged (a refusal, a failed fetch), until a reshard starts
        self._said: set[str] = set()
        #: reshards this loop started
        self.started = 0

    async def run(self) -> None:
        """Check every interval until cancelled; the first check comes one interval in."""
        log.info(
            "auto-reshard: checking Discord's recommended shard count every %g s",
            self.interval_s,
        )
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # a bug must not end the loop for good: said, tried again
                log.exception("auto-reshard: the check failed")

    async def check(self) -> int | None:
        """One round: the shard count a reshard was started to, or None."""
        if not self._can_start():
            # a reshard runs, or the running set is not whole yet: next time
            return None
        try:
            recommended = await self._fetch()
        except DiscordApiError as exc:
            self._say(f"GET /gateway/bot failed: {exc}")
            return None
        running = self._running()
        target = reshard_target(recommended, running)
        if target is None:
            return None
        try:
            await self._start(target)
        except ReshardRefusedError as exc:
            self._say(
                f"Discord recommends {recommended} shards, the cluster runs {running}, "
                f"and the reshard is refused: {exc}"
            )
            return None
        self._said.clear()
        self.started += 1
        log.info(
            "auto-reshard: Discord recommends %d shards, the cluster runs %d: resharding "
            "to %d without downtime",
            recommended,
            running,
            target,
        )
        return target

    def _say(self, reason: str) -> None:
        if reason in self._said:
            return
        self._said.add(reason)
        log.warning(
            "auto-reshard: %s (said once; checked again every %g s)", reason, self.interval_s
        )
