"""The Redis Streams sink: every dispatch the relay publishes, appended once, in order.

``cluster up --sink redis`` (with ``--redis``) gives each owned range one
:class:`StreamSink`. The relay hands it every run of events it publishes
(:meth:`StreamSink.add`: the shard, the session epoch, the first seq and the
events' topic and payload slices; no per-event work beyond a list append);
one sender task turns what waits into ``data`` fields
(:func:`protocol.brokerformat.dispatch_encoder`: msgpack by default, or JSON
written around the gateway's own bytes) and appends them with one pipeline
of ``SINK_APPEND`` script calls (:mod:`cluster.state.redis_streams`), at most
:data:`EVENTS_PER_CALL` events a call, one pipeline in flight, so the appends
reach Redis in the relay's order. The busier the relay, the larger a round.

Exactly once per ``(shard_id, session, seq)``: the script checks the lease and
appends only seqs above the shard's checkpoint, which it moves in the same
step. With the sink on, that checkpoint is the one a restart or a takeover
resumes from (:meth:`cluster.range_owner.RangeOwner._saved_sessions`), so
events published but not appended yet are replayed by Discord and appended
then; a worker replaced under a live supervisor resumes from the published seq
while the events before it still wait here.

Failures: a Redis error keeps the round and tries it again (backoff 0.05 s
doubling to 1 s; a round that ran but whose reply was lost appends nothing
twice). A lost lease stops the sink and tells the owner (it fences). While
more than ``max_pending`` events wait, the relay stops reading its channel
(:meth:`Relay.pause_if_backlogged`): back pressure reaches the workers'
sockets instead of this process's memory.

Maintenance, once a second: streams trimmed by age (``--sink-retention``,
``MINID ~``) and length (``--sink-maxlen``, ``MAXLEN ~``); every
:data:`VIEW_INTERVAL_S` the length of each stream and each consumer group's
lag and pending (``XINFO GROUPS``) for ``/status`` and ``/metrics``; every
:data:`TOUCH_INTERVAL_S` the range's checkpoints get their TTL again, so an
idle shard's session does not expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from cluster.config import SinkSettings
from cluster.runs import EventSlices
from cluster.state.redis_state import Lease, LeaseLostError, RedisStateError
from cluster.state.redis_streams import AppendResult, SinkBatch, StreamStore, StreamView
from protocol.brokerformat import COMMAND_STREAM, dispatch_encoder

log = logging.getLogger(__name__)

#: Events in one script call (one Redis command; its arguments are about one per event).
EVENTS_PER_CALL: Final = 1000
#: Events taken into one round (one pipeline): small enough that encoding a round and
#: writing it to Redis never holds the event loop for long.
EVENTS_PER_ROUND: Final = 4_000
TRIM_INTERVAL_S: Final = 1.0
VIEW_INTERVAL_S: Final = 2.0
TOUCH_INTERVAL_S: Final = 30.0
_BACKOFF_FIRST_S: Final = 0.05
_BACKOFF_MAX_S: Final = 1.0


class SessionNames(Protocol):
    """The relay's book: which session an epoch is, and its resume URL."""

    def session_id(self, shard_id: int, epoch: int) -> str | None: ...

    def resume_url(self, shard_id: int, session_id: str) -> str | None: ...


@dataclass(slots=True)
class SinkStats:
    appended: int = 0
    #: events the script found at or below the checkpoint (a replay, a retried round)
    skipped: int = 0
    rounds: int = 0
    errors: int = 0
    #: events that could not be encoded (not JSON: never sent by Discord)
    unencodable: int = 0
    #: events given up because the lease was lost (whoever took over replays them)
    dropped_fenced: int = 0
    trimmed: int = 0
    last_error: str | None = None
    #: time.monotonic() of the last round that reached Redis
    last_ok_at: float | None = None
    views: list[StreamView] = field(default_factory=list)


class StreamSink:
    """Appends one range's dispatches to Redis Streams; runs while the range is owned."""

    def __init__(
        self,
        store: StreamStore,
        lease: Lease,
        names: SessionNames,
        shard_ids: tuple[int, ...],
        settings: SinkSettings,
        checkpoint_ttl_s: float,
        on_lease_lost: Callable[[str], None],
    ) -> None:
        self._store = store
        self._lease = lease
        self._names = names
        self._shard_ids = shard_ids
        self.settings = settings
        self._on_lease_lost = on_lease_lost
        self._encode = dispatch_encoder(settings.encoding)
        self._ttl_ms = round(checkpoint_ttl_s * 1000)
        #: runs waiting: (shard_id, epoch, first seq, events)
        self._pending: list[tuple[int, int, int, list[EventSlices]]] = []
        self.pending_events = 0
        #: events taken into the round in flight (not appended yet)
        self.in_flight = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped = False
        #: every stream appended to (trimmed and shown by the maintenance)
        self._streams: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._resume_relay: Callable[[], None] | None = None
        self.stats = SinkStats()

    # -- the relay's side (hot path) ----------------------------------------------------------

    def add(self, shard_id: int, epoch: int, first_seq: int, events: list[EventSlices]) -> None:
        """A run the relay just published: ``events`` are seqs ``first_seq ..``."""
        self._pending.append((shard_id, epoch, first_seq, events))
        self.pending_events += len(events)

    def flush(self) -> None:
        """The relay finished a batch: let the sender go."""
        if self._pending:
            self._wake.set()

    @property
    def backlogged(self) -> bool:
        return self.pending_events >= self.settings.max_pending

    def on_drained(self, resume: Callable[[], None]) -> None:
        """``resume`` is called once the backlog is below half of ``max_pending`` again."""
        self._resume_relay = resume

    # -- lifetime -----------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="sink-send"),
            asyncio.create_task(self._maintain_loop(), name="sink-maintain"),
        ]

    async def close(self, timeout_s: float) -> bool:
        """Append what waits (a graceful stop), then stop; True when nothing was left."""
        deadline = time.monotonic() + timeout_s
        while (self._pending or self.in_flight) and not self._stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wake.set()
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(left, 0.1))
        flushed = not self._pending and not self.in_flight
        await self.stop()
        return flushed

    async def stop(self) -> None:
        """Stop at once (a fence): what waits is dropped; the next owner replays it."""
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    # -- sending ------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        # One round in flight; the next one is encoded while it is (the relay's order is
        # kept: a round starts only after the one before it reached Redis).
        flight: asyncio.Task[AppendResult] | None = None
        flying: tuple[list[SinkBatch], int] = ([], 0)
        while not self._stopped:
            if not self._pending and flight is None:
                self._idle.set()
                await self._wake.wait()
                self._wake.clear()
                continue
            round_ = self._take() if self._pending else None
            if round_ is not None:
                self.in_flight += round_[1]
            if flight is not None:
                if not await self._land(flight, *flying):
                    return
                flight = None
            if round_ is not None:
                flying = round_
                flight = asyncio.create_task(
                    self._store.append(self._lease, round_[0], self._ttl_ms)
                )
            await asyncio.sleep(0)  # the relay reads on while the round flies

    async def _land(
        self, flight: asyncio.Task[AppendResult], batches: list[SinkBatch], events: int
    ) -> bool:
        """Wait for a round; retry it until Redis takes it. False once the lease is lost."""
        delay = _BACKOFF_FIRST_S
        while True:
            try:
                result = await flight
            except LeaseLostError as exc:
                self._fenced(events, str(exc))
                return False
            except RedisStateError as exc:
                self._failed(str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
                flight = asyncio.create_task(self._store.append(self._lease, batches, self._ttl_ms))
                continue
            break
        stats = self.stats
        if stats.last_error is not None:
            log.info("sink: appending again after %d failed rounds", stats.errors)
            stats.last_error = None
        stats.appended += result.appended
        stats.skipped += result.skipped
        stats.rounds += 1
        stats.last_ok_at = time.monotonic()
        self.in_flight -= events
        resume = self._resume_relay
        if resume is not None and self.pending_events < self.settings.max_pending // 2:
            resume()
        return True

    def _take(self) -> tuple[list[SinkBatch], int]:
        """Encode up to EVENTS_PER_ROUND waiting events into script calls."""
        pending = self._pending
        taken = 0
        runs = 0
        while runs < len(pending) and taken < EVENTS_PER_ROUND:
            taken += len(pending[runs][3])
            runs += 1
        round_runs = pending[:runs]
        del pending[:runs]
        self.pending_events -= taken
        encode = self._encode
        names = self._names
        store = self._store
        batches: list[SinkBatch] = []
        batch = store.batch()
        for shard_id, epoch, first_seq, events in round_runs:
            session_id = names.session_id(shard_id, epoch) or f"epoch:{epoch}"
            resume_url = names.resume_url(shard_id, session_id) or ""
            encoded: list[tuple[Any, bytes]] = []
            put = encoded.append
            for topic, payload in events:
                try:
                    put((topic, encode(shard_id, payload)))
                except ValueError:
                    # Only a payload that is not JSON fails (never from Discord). Its seq
                    # is still appended, as an empty object, so the checkpoint moves on.
                    self.stats.unencodable += 1
                    put((topic, b"\x80"))
            at = 0
            while True:
                at += batch.add_run(
                    shard_id,
                    session_id,
                    resume_url,
                    first_seq + at,
                    encoded[at:] if at else encoded,
                )
                if at < len(encoded) or batch.events >= EVENTS_PER_CALL:
                    # full (events, or streams: the rest of the run goes into the next call)
                    batches.append(batch)
                    batch = store.batch()
                if at >= len(encoded):
                    break
        if batch.runs:
            batches.append(batch)
        streams = self._streams
        for batch in batches:
            streams.update(batch.streams)
        return batches, taken

    def _fenced(self, events: int, why: str) -> None:
        self._stopped = True
        self.stats.dropped_fenced += events + self.pending_events
        self._pending.clear()
        self.pending_events = 0
        self.in_flight = 0
        self._idle.set()
        log.error("sink: %s; the events not appended are replayed by the new owner", why)
        self._on_lease_lost(why)

    def _failed(self, why: str) -> None:
        self.stats.errors += 1
        if self.stats.last_error is None:
            log.warning(
                "sink: appending failed (retrying, %d events waiting): %s",
                self.pending_events + self.in_flight,
                why,
            )
        self.stats.last_error = why

    # -- maintenance --------------------------------------------------------------------------

    async def _maintain_loop(self) -> None:
        last_view = last_touch = time.monotonic()
        settings = self.settings
        retention_ms = round(settings.retention_s * 1000)
        while True:
            await asyncio.sleep(TRIM_INTERVAL_S)
            now = time.monotonic()
            streams = sorted(self._streams)
            try:
                self.stats.trimmed += await self._store.trim(streams, retention_ms, settings.maxlen)
                if now - last_view >= VIEW_INTERVAL_S:
                    last_view = now
                    self.stats.views = await self._store.streams([*streams, COMMAND_STREAM])
                if now - last_touch >= TOUCH_INTERVAL_S:
                    last_touch = now
                    await self._store.touch(self._lease, self._shard_ids, self._ttl_ms)
            except LeaseLostError:
                continue  # the send loop (or the lease keeper) acts on it
            except RedisStateError as exc:
                self._failed(str(exc))

    def status_json(self) -> dict[str, Any]:
        stats = self.stats
        now = time.monotonic()
        return {
            "encoding": self.settings.encoding.value,
            "appended": stats.appended,
            "skipped": stats.skipped,
            "pending": self.pending_events + self.in_flight,
            "rounds": stats.rounds,
            "errors": stats.errors,
            "unencodable": stats.unencodable,
            "dropped_fenced": stats.dropped_fenced,
            "trimmed": stats.trimmed,
            "last_error": stats.last_error,
            "age_s": None if stats.last_ok_at is None else round(now - stats.last_ok_at, 3),
            "streams": [
                {
                    "stream": view.stream,
                    "length": view.length,
                    "groups": [
                        {
                            "group": g.group,
                            "consumers": g.consumers,
                            "pending": g.pending,
                            "lag": g.lag,
                        }
                        for g in view.groups
                    ],
                }
                for view in stats.views
            ],
        }
