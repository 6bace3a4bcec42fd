"""The startup progress display of ``cluster up``: shards ready / total and the time left.

The time left comes from the identify schedule (:func:`cluster.planner.identify_duration`):
the last shard can be ready no earlier than ``(windows - 1) * interval`` after the
first IDENTIFY; the clock starts when identifies may begin (:meth:`Progress.schedule_started`). On a terminal one line is rewritten in place; otherwise (a
pipe, a log collector) a plain log line is written when the count changes, at
most once per ``log_every_s``, and once when every shard is ready.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("cluster.progress")


def progress_line(ready: int, total: int, seconds_left: float) -> str:
    if ready >= total:
        return f"shards ready {ready}/{total}"
    return f"shards ready {ready}/{total}, about {max(0.0, seconds_left):.1f} s left by the identify schedule"


class Progress:
    """Call :meth:`update` whenever the ready count may have changed (cheap when it did not)."""

    def __init__(
        self,
        total: int,
        schedule_s: float,
        stream: TextIO | None = None,
        log_every_s: float = 1.0,
        interactive: bool | None = None,
    ) -> None:
        self.total = total
        self._stream = stream or sys.stderr
        self._interactive = self._stream.isatty() if interactive is None else interactive
        self._started = time.monotonic()
        self._schedule_s = schedule_s
        self._deadline: float | None = None
        self._log_every_s = log_every_s
        self._last_ready = -1
        self._last_line = ""
        self._last_logged = 0.0
        self._done = False

    def schedule_started(self) -> None:
        """Identifies may begin now (the coordinator is serving)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self._schedule_s

    def seconds_left(self, now: float) -> float:
        if self._deadline is None:
            return self._schedule_s
        return max(0.0, self._deadline - now)

    def update(self, ready: int) -> None:
        if self._done:
            return
        now = time.monotonic()
        line = progress_line(ready, self.total, self.seconds_left(now))
        if ready >= self.total:
            self._done = True
            elapsed = now - self._started
            if self._interactive:
                self._stream.write(f"\r\x1b[K{line} in {elapsed:.1f} s\n")
                self._stream.flush()
            else:
                log.info("all %d shards ready in %.1f s", self.total, elapsed)
            return
        if self._interactive:
            if line != self._last_line:
                self._last_line = line
                self._stream.write(f"\r\x1b[K{line}")
                self._stream.flush()
        elif ready != self._last_ready and now - self._last_logged >= self._log_every_s:
            self._last_logged = now
            log.info("%s", line)
        self._last_ready = ready

    def finish(self) -> None:
        """Leave the terminal line clean (a stop before every shard was ready)."""
        if self._interactive and not self._done:
            self._stream.write("\n")
            self._stream.flush()
        self._done = True
