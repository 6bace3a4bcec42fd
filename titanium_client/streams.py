"""Consume the Redis Streams sink with a consumer group (DESIGN.md section 6).

Layout (``@discordjs/brokers``, :mod:`titanium_client.codec`): one stream per
event name, one field ``data``. Delivery is at least once and every step is
explicit (STYLE.md, consumer practices 4-6):

1. **Groups.** ``XGROUP CREATE <event> <group> 0 MKSTREAM`` per stream (BUSYGROUP
   ignored; ``start_id="$"`` skips what is already there). Every group sees
   every entry; the members of one group share them.
2. **Reading.** First this consumer's own pending entries (``XREADGROUP ... 0``:
   left over by a previous run under the same ``consumer`` name, or by a
   connection lost mid-reply), then new ones (``>``) with ``BLOCK``; an empty
   block is just a loop turn.
3. **Acknowledging.** After the loop body returns for an event (``auto_ack``,
   the default: the XACK goes out, batched, when the next event is asked for or
   the loop ends cleanly), or explicitly with ``await event.ack()``. An
   exception out of the loop body leaves its event pending: it is delivered
   again after the ack wait. ``nak(delay)`` asks for it again (XCLAIM ``IDLE``,
   so the claimer takes it when the delay is over), ``term()`` dead-letters it,
   ``in_progress()`` restarts the ack wait.
4. **Claiming.** A claimer task runs ``XAUTOCLAIM <stream> <group> <me> <ack_wait>``
   every ``claim_interval``, following the cursor to ``0-0``: entries another
   member took but did not settle within ``ack_wait`` (it died, or is stuck)
   come to this one, with Redis's delivery count.
5. **Dead letters.** An entry delivered more than ``max_deliveries`` times, or
   one whose ``data`` cannot be decoded, is copied to the ``dead_letter`` stream
   (fields ``stream``, ``id``, ``group``, ``consumer``, ``deliveries``, ``reason``,
   ``data``) and acked in one MULTI, counted in ``stats.dead_lettered``.
6. **Lost entries.** Pending entries the sink trimmed before anyone acked them
   (XAUTOCLAIM's deleted IDs, empty entries in the own pending list) are counted
   in ``stats.lost`` and logged, never dropped quietly.

Redelivered events (``delivery_count > 1``) are never dropped as duplicates.
Seq checks default to counting only (``drop_duplicates=False``,
``detect_gaps=False``): the members of a group each see part of a shard's
events, one stream per event type means events of different types arrive out of
seq order, and the sink's layout carries no session id, so a seq "not above the
last one" is usually not a repeat; the sink appends each ``(shard, session, seq)``
once. A single consumer of every stream can switch both on.

Bounded memory: at most ``batch`` events wait decoded in this process (the
reader stops reading while they do), and at most ``max_in_flight`` are handed
out unsettled; the rest stays in Redis. A slow handler makes the group's lag
grow in Redis (``XINFO GROUPS``), and entries it holds longer than ``ack_wait``
are claimed by other members: size ``ack_wait`` above the slowest handling, or
call ``in_progress()``. On close, events read ahead but not handed out are
released at once (their idle time set to the ack wait) so another member takes them.

Connection failures are retried with exponential backoff and jitter, forever;
after one, the own pending list is read again (replies lost in the failure) and
the groups are created again (a Redis restarted empty has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from titanium_client.backoff import Backoff
from titanium_client.codec import DATA_FIELD, decode_data
from titanium_client.errors import DecodeError, SubscriptionFailedError, TransportError
from titanium_client.events import AckState, Event
from titanium_client.sequence import DEFAULT_WINDOW
from titanium_client.subscription import GapCallback, Subscription

log = logging.getLogger(__name__)

DEFAULT_BATCH: Final = 64
DEFAULT_ACK_WAIT: Final = 30.0
DEFAULT_MAX_DELIVERIES: Final = 5
DEFAULT_MAX_IN_FLIGHT: Final = 1000
DEFAULT_BLOCK: Final = 1.0
DEFAULT_DEAD_LETTER_MAXLEN: Final = 10_000
#: Extra seconds a read may take beyond its BLOCK before the socket times out.
READ_TIMEOUT_MARGIN: Final = 10.0
CONNECT_TIMEOUT: Final = 5.0

_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
#: Errors that mean "Redis is not reachable right now": wait and retry.
_UNAVAILABLE: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)

Entry = tuple[bytes, dict[bytes, bytes]]
StreamKey = bytes | str | memoryview
StreamId = int | bytes | str | memoryview


def is_redis_url(url: str) -> bool:
    """True for a Redis URL (``redis://``, ``rediss://``, ``unix://``)."""
    return url.startswith(_REDIS_SCHEMES)


def default_consumer_name() -> str:
    """``<host name>-<pid>``: unique per process; pass a stable name to resume the own pending list."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end.

    Cancelled again every 0.1 s: on Python 3.11 ``asyncio.wait_for`` (inside
    redis-py's send) can swallow a cancellation that arrives as the awaited write
    completes, and the task would read on.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=0.1)


def _ids(streams: dict[str, StreamId]) -> dict[StreamKey, StreamId]:
    """The ``streams`` argument of XREADGROUP (redis-py's key type is wider than ours)."""
    return {name: entry_id for name, entry_id in streams.items()}


def _where(event: Event) -> tuple[str, str]:
    """The (stream, entry id) of an event this module delivered."""
    assert event.stream is not None and event.entry_id is not None
    return event.stream, event.entry_id


def connect_redis(url: str, block: float = DEFAULT_BLOCK) -> redis.asyncio.Redis:
    """A redis-py client for the library: bytes replies, bounded timeouts, one quick retry."""
    return redis.asyncio.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=block + READ_TIMEOUT_MARGIN,
        socket_keepalive=True,
        health_check_interval=30,
        # One immediate retry replaces a pooled connection a Redis restart closed;
        # longer outages come back to the subscription's own backoff.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
    )


class _Settler:
    """The events' acknowledger: forwards to the subscription that delivered them."""

    __slots__ = ("_subscription",)

    def __init__(self, subscription: StreamSubscription) -> None:
        self._subscription = subscription

    async def ack(self, event: Event) -> None:
        await self._subscription._ack(event)

    async def nak(self, event: Event, delay: float) -> None:
        await self._subscription._nak(event, delay)

    async def term(self, event: Event, reason: str) -> None:
        await self._subscription._term(event, reason)

    async def in_progress(self, event: Event) -> None:
        await self._subscription._in_progress(event)


class StreamSubscription(Subscription):
    """One member of a Redis Streams consumer group, as an async iterator of :class:`Event`.

    ``events`` are the stream names (exact event names, no prefixes). Give
    ``consumer`` a stable name per bot process (e.g. the pod name) so a restart
    picks up its own pending entries at once instead of after ``ack_wait``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        group: str,
        events: Sequence[str],
        consumer: str | None = None,
        client: redis.asyncio.Redis | None = None,
        batch: int = DEFAULT_BATCH,
        block: float = DEFAULT_BLOCK,
        ack_wait: float = DEFAULT_ACK_WAIT,
        claim_interval: float | None = None,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        dead_letter: str | None = None,
        dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        auto_ack: bool = True,
        start_id: str = "0",
        detect_gaps: bool = False,
        drop_duplicates: bool = False,
        on_gap: GapCallback | None = None,
        window: int = DEFAULT_WINDOW,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        if (url is None) == (client is None):
            raise ValueError("give either a Redis URL or a redis.asyncio client")
        if url is not None and not is_redis_url(url):
            raise ValueError("the URL must start with redis://, rediss:// or unix://")
        if not group:
            raise ValueError("group must be a non-empty name")
        if isinstance(events, str) or not events:
            raise ValueError("events must be a list of stream names, e.g. ['MESSAGE_CREATE']")
        for name in events:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a stream name must be a non-empty string, got {name!r}")
        for what, value in (("batch", batch), ("max_deliveries", max_deliveries)):
            if value < 1:
                raise ValueError(f"{what} must be at least 1, got {value}")
        if max_in_flight < batch:
            raise ValueError(f"max_in_flight ({max_in_flight}) must be at least batch ({batch})")
        if ack_wait <= 0 or block <= 0:
            raise ValueError("ack_wait and block must be positive")
        super().__init__(
            detect_gaps=detect_gaps,
            drop_duplicates=drop_duplicates,
            on_gap=on_gap,
            window=window,
        )
        self.group = group
        self.streams: tuple[str, ...] = tuple(dict.fromkeys(events))
        self.consumer = consumer or default_consumer_name()
        self.dead_letter = dead_letter or f"titanium:dead-letter:{group}"
        self.ack_wait = ack_wait
        self.max_deliveries = max_deliveries
        self.auto_ack = auto_ack
        self._url = url
        self._redis = client
        self._own_client = client is None
        self._batch = batch
        self._block = block
        self._ack_wait_ms = max(1, int(ack_wait * 1000))
        self._claim_interval = claim_interval if claim_interval is not None else ack_wait / 2
        self._dead_letter_maxlen = dead_letter_maxlen
        self._max_in_flight = max_in_flight
        self._start_id = start_id
        self._backoff = (backoff_base, backoff_max)
        self._settler = _Settler(self)
        self._names = {s.encode(): s for s in self.streams}
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=batch)
        #: Events read and not yet settled (queued or handed out), by (stream, entry id).
        self._in_flight: dict[tuple[str, str], Event] = {}
        #: Events read and not yet handed out (queued, or waiting for room in the queue).
        self._read_ahead: dict[tuple[str, str], Event] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._claim_wake = asyncio.Event()
        self._admit_lock = asyncio.Lock()
        self._ack_buffer: list[Event] = []
        self._last: Event | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._reader: asyncio.Task[None] | None = None
        self._claimer: asyncio.Task[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._stopping = False
        self._closed = False
        self._outage = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reader and the claimer (idempotent). Redis may be down: they retry."""
        if self._reader is not None or self._stopping:
            return
        if self._redis is None:
            assert self._url is not None
            self._redis = connect_redis(self._url, self._block)
        self._stopped = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_loop(), name=f"reader of group {self.group}")
        self._claimer = asyncio.create_task(
            self._claim_loop(), name=f"claimer of group {self.group}"
        )

    def stop(self) -> None:
        """End the loop: a waiting or the next ``__anext__`` raises StopAsyncIteration."""
        self._stopping = True
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def close(self) -> None:
        """Stop, flush acknowledgements, release read-ahead events, close the connection.

        The event the loop body was handling when ``close()`` was called is not
        acknowledged (``async with`` acknowledges it when the body ended cleanly).
        """
        await self._shutdown(ack_last=False)

    async def _exit(self, clean: bool) -> None:
        await self._shutdown(ack_last=clean)

    async def _shutdown(self, ack_last: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop()
        for task in (self._reader, self._claimer):
            if task is not None:
                await _cancel(task)
                if not task.cancelled() and task.exception() is not None:
                    log.error("the %s task had failed", task.get_name(), exc_info=task.exception())
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        last, self._last = self._last, None
        if ack_last and self.auto_ack and last is not None and last.state is AckState.PENDING:
            self._buffer_ack(last)
        if self._redis is not None:
            await self._flush_acks()
            await self._release_read_ahead()
            if self._own_client:
                await self._redis.aclose()

    # -- iteration ------------------------------------------------------------------------

    async def __anext__(self) -> Event:
        if self._closed:
            raise StopAsyncIteration  # close() settled what it could; nothing is acked now
        if self._reader is None:
            if self._stopping:
                raise StopAsyncIteration
            await self.start()
        last, self._last = self._last, None
        if last is not None and self.auto_ack and last.state is AckState.PENDING:
            self._buffer_ack(last)  # the loop body returned: it is handled
        while True:
            if self._stopping:
                raise StopAsyncIteration
            if len(self._ack_buffer) >= self._batch:
                await self._flush_acks()
            try:
                event = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                await self._flush_acks()
                event = await self._wait_for_event()
            self._read_ahead.pop(_where(event), None)
            self.stats.received += 1
            if event.delivery_count > 1:
                self.stats.redelivered += 1
            elif not self._check_sequence(event):
                self._buffer_ack(event)  # a dropped duplicate is settled here
                continue
            self.stats.delivered += 1
            self._last = event
            return event

    async def _wait_for_event(self) -> Event:
        assert self._stopped is not None
        tasks = [t for t in (self._reader, self._claimer) if t is not None]
        get = asyncio.ensure_future(self._queue.get())
        waits: list[asyncio.Future[Any]] = [get, self._stopped, *tasks]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                self.stop()
                raise SubscriptionFailedError(
                    f"the {task.get_name()} task stopped: {task.exception()}"
                ) from task.exception()
        raise StopAsyncIteration

    # -- reading --------------------------------------------------------------------------

    def _client(self) -> redis.asyncio.Redis:
        assert self._redis is not None
        return self._redis

    def _by_stream(self, reply: Any) -> dict[str, list[Entry]]:
        """An XREADGROUP reply (``[[stream, [(id, fields), ...]], ...]``) by stream name."""
        return {self._names[raw]: entries for raw, entries in reply or ()}

    async def _create_groups(self) -> None:
        for stream in self.streams:
            try:
                await self._client().xgroup_create(
                    stream, self.group, id=self._start_id, mkstream=True
                )
            except redis.exceptions.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    async def _wait_for_room(self) -> None:
        while len(self._in_flight) >= self._max_in_flight:
            self._room.clear()
            await self._room.wait()

    def _failed(self, exc: BaseException, backoff: Backoff) -> float:
        """Note a Redis outage; the delay before the next attempt."""
        self.stats.reconnects += 1
        if not self._outage:
            self._outage = True
            log.warning("Redis unavailable for group %s (%s); retrying", self.group, exc)
        return backoff.next_delay()

    def _recovered(self, backoff: Backoff) -> None:
        backoff.reset()
        if self._outage:
            self._outage = False
            log.info("Redis reachable again for group %s", self.group)

    async def _read_loop(self) -> None:
        backoff = Backoff(*self._backoff)
        client = self._client()
        need_groups = True
        # Own pending entries first, per stream, from ID 0 until a read comes back empty.
        history: dict[str, StreamId] = dict.fromkeys(self.streams, b"0")
        live: dict[StreamKey, StreamId] = dict.fromkeys(self.streams, ">")
        block_ms = max(1, int(self._block * 1000))
        while not self._stopping:
            try:
                if need_groups:
                    await self._create_groups()
                    need_groups = False
                await self._wait_for_room()
                if history:
                    got = self._by_stream(
                        await client.xreadgroup(
                            self.group, self.consumer, _ids(history), count=self._batch
                        )
                    )
                    for stream in list(history):
                        entries = got.get(stream)
                        if not entries:
                            del history[stream]
                            continue
                        history[stream] = entries[-1][0]
                        await self._admit(stream, entries, redelivered=True)
                else:
                    got = self._by_stream(
                        await client.xreadgroup(
                            self.group, self.consumer, live, count=self._batch, block=block_ms
                        )
                    )
                    for stream, entries in got.items():
                        await self._admit(stream, entries, redelivered=False)
                self._recovered(backoff)
            except redis.exceptions.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                log.warning("group %s is gone (Redis restarted empty?): creating it", self.group)
                need_groups = True
                await asyncio.sleep(backoff.next_delay())
            except _UNAVAILABLE as exc:
                delay = self._failed(exc, backoff)
                # Replies lost with the connection left entries in our pending list.
                history = dict.fromkeys(self.streams, b"0")
                need_groups = True
                await asyncio.sleep(delay)

    async def _admit(self, stream: str, entries: Sequence[Entry], *, redelivered: bool) -> None:
        """Decode entries and queue them; dead-letter what cannot or must not be delivered."""
        async with self._admit_lock:
            fresh: list[tuple[str, dict[bytes, bytes]]] = []
            lost: list[bytes] = []
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                if (stream, entry_id) in self._in_flight:
                    continue  # already with us (queued or in the loop body)
                if not fields:
                    lost.append(raw_id)  # trimmed from the stream while pending
                    continue
                fresh.append((entry_id, fields))
            if lost:
                await self._client().xack(stream, self.group, *lost)
                self._count_lost(stream, len(lost))
            counts: dict[str, int] = {}
            if redelivered and fresh:
                counts = await self._delivery_counts(stream, [entry_id for entry_id, _ in fresh])
            for entry_id, fields in fresh:
                count = counts.get(entry_id, 2) if redelivered else 1
                data = fields.get(DATA_FIELD)
                try:
                    if data is None:
                        raise DecodeError("the entry has no data field")
                    record = decode_data(data)
                except DecodeError as exc:
                    self.stats.malformed += 1
                    await self._dead_letter(stream, entry_id, data, count, f"undecodable: {exc}")
                    continue
                if count > self.max_deliveries:
                    await self._dead_letter(
                        stream,
                        entry_id,
                        data,
                        count,
                        f"delivered {count} times (max_deliveries={self.max_deliveries})",
                    )
                    continue
                event = Event(
                    stream,
                    record.shard_id,
                    record.seq,
                    record.session_id,
                    payload=record.payload,
                    stream=stream,
                    entry_id=entry_id,
                    delivery_count=count,
                    entry_data=data,
                    acker=self._settler,
                )
                self._in_flight[(stream, entry_id)] = event
                self._read_ahead[(stream, entry_id)] = event
                await self._queue.put(event)

    async def _delivery_counts(self, stream: str, entry_ids: list[str]) -> dict[str, int]:
        keys = sorted(entry_ids, key=_id_key)
        rows: list[dict[str, Any]] = await self._client().xpending_range(
            stream,
            self.group,
            min=keys[0],
            max=keys[-1],
            count=len(keys) + len(self._in_flight) + self._batch,
            consumername=self.consumer,
        )
        return {row["message_id"].decode(): int(row["times_delivered"]) for row in rows}

    def _count_lost(self, stream: str, n: int) -> None:
        self.stats.lost += n
        log.warning(
            "%d pending entries of %s were trimmed before group %s acked them (lost)",
            n,
            stream,
            self.group,
        )

    async def _dead_letter(
        self, stream: str, entry_id: str, data: bytes | None, count: int, reason: str
    ) -> None:
        fields: dict[Any, Any] = {
            "stream": stream,
            "id": entry_id,
            "group": self.group,
            "consumer": self.consumer,
            "deliveries": count,
            "reason": reason[:500],
            "data": data or b"",
        }
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_letter, fields, maxlen=self._dead_letter_maxlen, approximate=True)
            pipe.xack(stream, self.group, entry_id)
            await pipe.execute()
        self.stats.dead_lettered += 1
        log.warning("moved %s %s to %s: %s", stream, entry_id, self.dead_letter, reason)

    # -- claiming -------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = Backoff(*self._backoff)
        while not self._stopping:
            try:
                for stream in self.streams:
                    await self._claim_stream(stream)
                self._recovered(backoff)
            except redis.exceptions.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise  # the reader creates the group; anything else is a bug
            except _UNAVAILABLE as exc:
                await asyncio.sleep(self._failed(exc, backoff))
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._claim_interval):
                    await self._claim_wake.wait()
            self._claim_wake.clear()

    async def _claim_stream(self, stream: str) -> None:
        cursor: bytes | str = "0-0"
        while True:
            await self._wait_for_room()
            reply = await self._client().xautoclaim(
                stream,
                self.group,
                self.consumer,
                self._ack_wait_ms,
                start_id=cursor,
                count=self._batch,
            )
            cursor, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                self._count_lost(stream, len(deleted))
            # Our own unsettled events were just claimed back to us: nothing to deliver.
            taken = [e for e in entries if (stream, e[0].decode()) not in self._in_flight]
            if taken:
                self.stats.claimed += len(taken)
                await self._admit(stream, taken, redelivered=True)
            if cursor in (b"0-0", "0-0"):
                return

    def _wake_claimer_after(self, delay: float) -> None:
        def wake() -> None:
            self._timers.discard(handle)
            self._claim_wake.set()

        handle = asyncio.get_running_loop().call_later(delay, wake)
        self._timers.add(handle)

    # -- settling -------------------------------------------------------------------------

    def _forget(self, event: Event) -> None:
        self._in_flight.pop(_where(event), None)
        if len(self._in_flight) < self._max_in_flight:
            self._room.set()

    def _buffer_ack(self, event: Event) -> None:
        event._settle(AckState.ACKED)
        self._ack_buffer.append(event)

    async def _flush_acks(self) -> None:
        """XACK the buffered events, one pipeline; on failure they come back after the ack wait."""
        if not self._ack_buffer:
            return
        events, self._ack_buffer = self._ack_buffer, []
        by_stream: dict[str, list[str]] = {}
        for event in events:
            stream, entry_id = _where(event)
            by_stream.setdefault(stream, []).append(entry_id)
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for stream, ids in by_stream.items():
                    pipe.xack(stream, self.group, *ids)
                results: list[int] = await pipe.execute()
        except (*_UNAVAILABLE, redis.exceptions.RedisError) as exc:
            self.stats.ack_failures += len(events)
            log.warning(
                "could not acknowledge %d events of group %s (%s): they will be delivered again",
                len(events),
                self.group,
                exc,
            )
        else:
            self.stats.acked += len(events)
            self.stats.stale_acks += len(events) - sum(results)
        finally:
            for event in events:
                self._forget(event)

    async def _release_read_ahead(self) -> None:
        """Hand events read but never handed out back to the group at once (idle = ack wait)."""
        events = list(self._read_ahead.values())
        self._read_ahead.clear()
        while not self._queue.empty():
            self._queue.get_nowait()
        if not events:
            return
        with contextlib.suppress(*_UNAVAILABLE, redis.exceptions.RedisError):
            async with self._client().pipeline(transaction=False) as pipe:
                for event in events:
                    stream, entry_id = _where(event)
                    pipe.xclaim(
                        stream,
                        self.group,
                        self.consumer,
                        0,
                        [entry_id],
                        idle=self._ack_wait_ms,
                        justid=True,
                    )
                await pipe.execute()
        for event in events:
            self._forget(event)

    async def _call(self, request: Any) -> Any:
        try:
            return await request
        except (*_UNAVAILABLE, redis.exceptions.RedisError) as exc:
            raise TransportError(f"Redis failed: {exc}") from exc

    async def _ack(self, event: Event) -> None:
        stream, entry_id = _where(event)
        done = await self._call(self._client().xack(stream, self.group, entry_id))
        self.stats.acked += 1
        if not done:
            self.stats.stale_acks += 1
        self._forget(event)

    async def _nak(self, event: Event, delay: float) -> None:
        delay = min(delay, self.ack_wait)
        idle_ms = max(0, self._ack_wait_ms - int(delay * 1000))
        stream, entry_id = _where(event)
        await self._call(
            self._client().xclaim(
                stream,
                self.group,
                self.consumer,
                0,
                [entry_id],
                idle=idle_ms,
                justid=True,
            )
        )
        self.stats.naked += 1
        self._forget(event)
        self._wake_claimer_after(delay)

    async def _term(self, event: Event, reason: str) -> None:
        stream, entry_id = _where(event)
        await self._call(
            self._dead_letter(stream, entry_id, event.entry_data, event.delivery_count, reason)
        )
        self.stats.terminated += 1
        self._forget(event)

    async def _in_progress(self, event: Event) -> None:
        stream, entry_id = _where(event)
        await self._call(
            self._client().xclaim(stream, self.group, self.consumer, 0, [entry_id], justid=True)
        )
