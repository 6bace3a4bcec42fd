"""Session checkpoints: what the relay published, on disk and in Redis, within a second.

DESIGN.md rule 8: a supervisor that dies by SIGKILL costs no identify. The
:class:`Checkpointer` reads the relay's book (the last *published* seq of
every shard's session) every ``interval_s`` and, when anything changed (the
book's ``version``), writes it:

- to ``--state-dir`` through :class:`cluster.sessions.SessionStore` (temp
  file, fsync, rename, directory fsync), off the event loop;
- with ``--redis``, to ``sess:<shard>`` in one script call for the whole
  batch, which first checks this supervisor still holds its lease (not with
  ``--sink redis``: there the sink's appends write those keys, see
  :mod:`cluster.sink`).

A new session (a READY) is written at once (:meth:`Checkpointer.soon`): it is
rare (one per IDENTIFY), and a session nobody checkpointed is an IDENTIFY
after a crash. A write is also made every ``refresh_s`` without a change, so an idle
shard's checkpoint never looks stale to the next start. Never per event:
the relay's hot path only bumps a counter. After a SIGKILL the next start
RESUMEs from the checkpoint; events published after it are sent again
(at least once on the PUB tap, each visible as a repeated ``(shard_id, seq)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from cluster.sessions import SessionStore
from protocol.session import Session

log = logging.getLogger(__name__)

#: A checkpoint is rewritten this often even when nothing changed.
DEFAULT_REFRESH_S: Final = 30.0

#: Writes the sessions somewhere shared (Redis); raises on failure.
RemoteWriter = Callable[[Mapping[int, Session]], Awaitable[None]]


class SessionSource(Protocol):
    """The relay's book (:class:`cluster.relay.SessionBook`): sessions and a change counter."""

    @property
    def version(self) -> int: ...

    def resume_points(self, shard_ids: tuple[int, ...]) -> dict[int, Session]: ...


@dataclass(slots=True)
class CheckpointStats:
    writes: int = 0
    file_errors: int = 0
    remote_writes: int = 0
    remote_errors: int = 0
    #: time.monotonic() of the latest write that reached every target
    last_write_at: float | None = None
    last_error: str | None = None


class Checkpointer:
    """Writes one range's sessions at most ``interval_s`` after they change."""

    def __init__(
        self,
        book: SessionSource,
        shard_ids: tuple[int, ...],
        store: SessionStore | None,
        remote: RemoteWriter | None = None,
        *,
        interval_s: float = 0.5,
        refresh_s: float = DEFAULT_REFRESH_S,
    ) -> None:
        self._book = book
        self._shard_ids = shard_ids
        self._store = store
        self._remote = remote
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self._written_version = -1
        #: shard -> the seq of its latest checkpoint (what a restart would resume from)
        self.checkpointed: dict[int, int] = {}
        self.stats = CheckpointStats()
        self._lock = asyncio.Lock()
        self._soon = asyncio.Event()
        #: What Redis holds (as far as this checkpointer wrote it), and when all was last written.
        self._remote_written: dict[int, Session] = {}
        self._remote_at: float | None = None

    def soon(self) -> None:
        """Write now rather than at the next tick (a new session appeared)."""
        self._soon.set()

    async def run(self) -> None:
        """Checkpoint until cancelled."""
        while True:
            # Not asyncio.wait_for: on Python 3.11 it returns the result, dropping a
            # cancellation that comes after soon() woke it but before it resumed, and this
            # loop then never ended (the range's stop waited for it for good).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._soon.wait()
            self._soon.clear()
            last = self.stats.last_write_at
            stale = last is None or time.monotonic() - last >= self.refresh_s
            if self._book.version != self._written_version or stale:
                await self.write()

    async def write(self) -> bool:
        """Write the book as it is now; True when every target took it."""
        async with self._lock:
            version = self._book.version
            sessions = self._book.resume_points(self._shard_ids)
            ok = True
            if self._store is not None:
                try:
                    await asyncio.to_thread(self._store.save, sessions, time.time())
                except OSError as exc:
                    ok = False
                    self.stats.file_errors += 1
                    self._failed(f"state dir: {exc.strerror or exc}")
            if self._remote is not None:
                # Only what changed goes to Redis (one key per shard); everything on a
                # refresh, which also renews the keys' TTL.
                stale = (
                    self._remote_at is None or time.monotonic() - self._remote_at >= self.refresh_s
                )
                batch = (
                    sessions
                    if stale
                    else {s: p for s, p in sessions.items() if self._remote_written.get(s) != p}
                )
                try:
                    if batch:
                        await self._remote(batch)
                    self._remote_written.update(batch)
                    if stale:
                        self._remote_at = time.monotonic()
                    self.stats.remote_writes += 1
                except Exception as exc:
                    ok = False
                    self.stats.remote_errors += 1
                    self._failed(f"redis: {exc}")
            if ok:
                self._written_version = version
                self.stats.writes += 1
                self.stats.last_write_at = time.monotonic()
                self.checkpointed = {s: p.seq for s, p in sessions.items()}
                self.stats.last_error = None
            return ok

    def _failed(self, why: str) -> None:
        if self.stats.last_error is None:
            log.warning("checkpoint failed (retrying every %.1f s): %s", self.interval_s, why)
        self.stats.last_error = why

    def status_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        last = self.stats.last_write_at
        return {
            "age_s": None if last is None else round(now - last, 3),
            "writes": self.stats.writes,
            "errors": self.stats.file_errors + self.stats.remote_errors,
            "last_error": self.stats.last_error,
        }

    async def close(self) -> None:
        """A last write (the drain), best effort."""
        with contextlib.suppress(Exception):
            await self.write()
