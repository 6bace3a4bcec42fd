"""The event relay: the workers' channel -> dedupe -> the PUB socket (the supervisor's hot path).

Workers send every message on one ordered PUSH channel each (protocol/ipc.py),
which :class:`cluster.channel.EventChannel` reads on this loop: whenever a
worker's connection has input, :meth:`Relay._readable` takes up to ``batch``
of its messages (one read of the socket) and relays them, then flushes the
publisher and the taps. Whole messages left by the batch limit are read again
with ``call_soon``, after the loop has served everyone else, so the HTTP
server and the process manager are never starved.

Workers send EVENT_RUNS messages (protocol/ipc.py): one binary frame and one
body per burst of reads, holding runs of consecutive events per shard.
The body is read by protocol/ipc.py's one EVENT_RUNS reader
(:class:`protocol.ipc.EventRunsReader`, wired to the relay once): each run is
deduped as a whole by its head (:meth:`SessionBook.admit`), and what is left
of it goes to the publisher as one slice of the body: the worker wrote each
event as a subscriber gets it (its PUB frames, the header with the session
id and seq included), so for a subscriber of everything the relay does
nothing per event; one that filters topics, uses CURVE or is full gets the
events read one by one (cluster/publisher.py). The relay flushes the
publisher after every batch. With ``--sink
redis`` the same slices of every published run also go to
:class:`cluster.sink.StreamSink` (one list append per event; the encoding
happens in the sink's own task), and while the sink is backlogged the relay
stops reading the channel, so back pressure reaches the workers instead of
this process's memory. In-process taps get the same runs
(:class:`cluster.runs.RunConsumer`), after the sink. Reports (SHARD_STATE, WORKER_STATUS: a few per
shard per second) are decoded and handed to the supervisor's callback; a
report that names a session also names it in the book first.

:class:`SessionBook` is the pure bookkeeping: the last published
``(epoch, seq)`` per shard, which is what dedupes a RESUME's replay, each
shard's current session from its reports, and the session id behind each of
a shard's recent epochs (what the PUB header says). A replacement worker
RESUMEs from ``resume_point(shard)`` (a :class:`protocol.session.Session`):
the last seq the supervisor *published*, so every ``(shard_id, seq)`` reaches
the PUB socket exactly once, across a SIGKILL.

One exception (``--gateway``): a shard whose endpoint cache was saved before its
last published seq RESUMEs from the cache's seq (:meth:`SessionBook.resume_from`),
so the cache gets the events it lacks without an IDENTIFY. Its replay is deduped as
usual (nothing is published twice); the duplicates go, instead of nowhere, to the
taps that take replays (:class:`ReplayConsumer`: the endpoint's cache), before the
run's new events. Until the replay reaches the published seq, :meth:`SessionBook.resume_point`
says the seq handed on so far (a replacement worker goes on from there; a checkpoint
written meanwhile does too, so a second crash inside those seconds publishes the
rest of the replay again: at least once, as rule 8 allows across a SIGKILL).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from cluster.channel import EventChannel, Frames, Peer
from cluster.publisher import Publisher
from cluster.runs import EventSlices, RunConsumer
from cluster.sink import StreamSink
from cluster.status import RelayCounters
from protocol import ipc
from protocol.errors import WireFormatError
from protocol.pubframe import header_template
from protocol.session import Session

log = logging.getLogger(__name__)

#: Messages handled per wake-up before yielding to the event loop.
DEFAULT_BATCH: Final = 2000
#: A message the relay fails on is logged at most this often (with its traceback).
FAILURE_LOG_S: Final = 10.0
#: Older epochs remembered per shard (a replaced session's stragglers still dedupe).
_OLD_EPOCHS_PER_SHARD: Final = 4

_HEADER_UNPACK: Final = ipc.HEADER.unpack
_HEADER_SIZE: Final = ipc.HEADER_SIZE
_RUNS: Final = int(ipc.MessageKind.EVENT_RUNS)
_VERSION: Final = ipc.IPC_VERSION


class SessionBook:
    """Per shard: the last published seq per session epoch, and the current session.

    ``version`` goes up whenever what :meth:`resume_points` would return may
    have changed (a published seq, a session): a checkpointer compares it with
    the version it last wrote instead of rebuilding the sessions to find out.
    """

    __slots__ = ("_current", "_names", "_older", "_sessions", "resuming", "version")

    def __init__(self) -> None:
        #: shard -> [epoch, last published seq] of the newest epoch seen on the PUB socket
        self._current: dict[int, list[int]] = {}
        #: shard -> {epoch: last published seq} of earlier epochs (a few per shard)
        self._older: dict[int, dict[int, int]] = {}
        #: shard -> its current session, from the worker's latest report (or the saved
        #: file). Its seq is not read: the published seq above is the one that counts.
        self._sessions: dict[int, Session] = {}
        #: shard -> {epoch: session id} of the newest few sessions named by a report
        #: (or the saved file): what the PUB header says for a run of that epoch.
        self._names: dict[int, dict[int, str]] = {}
        #: shard -> the seq its already published events have been handed on up to, for a
        #: shard RESUMEd below its published seq (:meth:`resume_from`); gone once caught up
        self.resuming: dict[int, int] = {}
        #: Bumped on every change of a published seq or of a session.
        self.version = 0

    def admit(self, shard_id: int, epoch: int, seq: int, count: int) -> int:
        """How many of the ``count`` events ``seq .. seq+count-1`` are already published.

        The rest (from ``seq + skipped``) are new and are now counted as published.
        """
        last = seq + count - 1
        current = self._current.get(shard_id)
        if current is not None and current[0] == epoch:
            done = current[1]
            if last <= done:
                return count
            current[1] = last
            self.version += 1
            return max(0, done - seq + 1)
        return self._admit_other_epoch(shard_id, epoch, seq, last, count, current)

    def _admit_other_epoch(
        self, shard_id: int, epoch: int, seq: int, last: int, count: int, current: list[int] | None
    ) -> int:
        self.version += 1
        older = self._older.setdefault(shard_id, {})
        done = older.pop(epoch, None)
        if current is not None:
            older[current[0]] = current[1]
            while len(older) > _OLD_EPOCHS_PER_SHARD:
                del older[next(iter(older))]
        if done is None:
            self._current[shard_id] = [epoch, last]
            return 0
        self._current[shard_id] = [epoch, max(done, last)]
        if last <= done:
            return count
        return max(0, done - seq + 1)

    def published(self, shard_id: int, epoch: int) -> int:
        """The last seq of session ``epoch`` published for ``shard_id`` (0: none)."""
        current = self._current.get(shard_id)
        if current is not None and current[0] == epoch:
            return current[1]
        return self._older.get(shard_id, {}).get(epoch, 0)

    def name(self, shard_id: int, session_id: str) -> None:
        """Remember which session id ``shard_id``'s epoch of ``session_id`` stands for.

        Kept for the newest few sessions of each shard, also after the session
        ended, so a replaced session's stragglers still get their own id.
        """
        epoch = ipc.session_epoch(session_id)
        names = self._names.get(shard_id)
        if names is None:
            self._names[shard_id] = {epoch: session_id}
            return
        if names.get(epoch) == session_id:
            return
        names.pop(epoch, None)
        names[epoch] = session_id
        while len(names) > _OLD_EPOCHS_PER_SHARD + 1:
            del names[next(iter(names))]

    def resume_url(self, shard_id: int, session_id: str) -> str | None:
        """Where ``session_id`` of ``shard_id`` resumes (None: not its current session)."""
        session = self._sessions.get(shard_id)
        if session is None or session.session_id != session_id:
            return None
        return session.resume_url

    def session_id(self, shard_id: int, epoch: int) -> str | None:
        """The session id of ``shard_id``'s session ``epoch`` (None: not named by any report)."""
        names = self._names.get(shard_id)
        return None if names is None else names.get(epoch)

    def on_session(self, shard_id: int, session_id: str | None, resume_url: str | None) -> None:
        """A worker reported the shard's session (None: it has none to resume)."""
        if session_id:
            self.name(shard_id, session_id)
        known = self._sessions.get(shard_id)
        if session_id and resume_url:
            if known is None or known.session_id != session_id or known.resume_url != resume_url:
                if known is None or known.session_id != session_id:
                    self.resuming.pop(shard_id, None)  # another session: nothing to replay
                self._sessions[shard_id] = Session(session_id, 0, resume_url)
                self.version += 1
        elif known is not None:
            del self._sessions[shard_id]
            self.resuming.pop(shard_id, None)
            self.version += 1

    def seed(self, shard_id: int, session: Session) -> None:
        """A saved session from the previous run: its events up to ``session.seq`` were published."""
        self._sessions[shard_id] = session
        self.name(shard_id, session.session_id)
        self.version += 1
        epoch = ipc.session_epoch(session.session_id)
        if self.published(shard_id, epoch) < session.seq:
            self.admit(shard_id, epoch, 1, session.seq)

    def resume_point(self, shard_id: int) -> Session | None:
        """The shard's session at the last seq published: where a RESUME starts
        (or below it, while a :meth:`resume_from` replay is handed on)."""
        session = self._sessions.get(shard_id)
        if session is None:
            return None
        seq = self.published(shard_id, ipc.session_epoch(session.session_id))
        floor = self.resuming.get(shard_id)
        if floor is not None and floor < seq:
            seq = floor
        return session if session.seq == seq else session.with_seq(seq)

    def resume_from(self, shard_id: int, seq: int) -> None:
        """RESUME ``shard_id``'s session from ``seq``, below its published seq: the events
        up to the published seq are replayed, not published again, and handed to the
        relay's :class:`ReplayConsumer` taps (a saved gateway cache catches up)."""
        session = self._sessions.get(shard_id)
        if session is None:
            return
        if 0 <= seq < self.published(shard_id, ipc.session_epoch(session.session_id)):
            self.resuming[shard_id] = seq
            self.version += 1

    def replayed(self, shard_id: int, epoch: int, last: int, new_after: bool = False) -> None:
        """Already published events of ``shard_id`` up to ``last`` were handed on again
        (``new_after``: the run went on with new events, so the replay is over)."""
        floor = self.resuming.get(shard_id)
        session = self._sessions.get(shard_id)
        if floor is None or session is None or ipc.session_epoch(session.session_id) != epoch:
            return
        if new_after or last >= self.published(shard_id, epoch):
            del self.resuming[shard_id]
        elif last > floor:
            self.resuming[shard_id] = last
        else:
            return
        self.version += 1

    def resume_points(self, shard_ids: Iterable[int]) -> dict[int, Session]:
        """:meth:`resume_point` of each of ``shard_ids`` that has a session."""
        points = {s: self.resume_point(s) for s in shard_ids}
        return {s: p for s, p in points.items() if p is not None}


@runtime_checkable
class ReplayConsumer(Protocol):
    """A tap that also takes the already published events a :meth:`SessionBook.resume_from`
    shard replays (never published again); must not block."""

    def add_replayed(
        self, shard_id: int, epoch: int, first_seq: int, events: list[EventSlices]
    ) -> None: ...


ReportHandler = Callable[[ipc.ShardReport | ipc.WorkerStatus], None]
#: A published event's (topic, payload) -> True to drop it (a reshard's switch window)
EventFilter = Callable[[Any, Any], bool]
#: Told of each published event (topic, payload): a reshard's old set records them
EventRecorder = Callable[[Any, Any], None]


class RelayMode(enum.Enum):
    """What the relay does with the events it reads (all modes dedupe and keep the book)."""

    #: publish (the normal mode)
    PUBLISH = "publish"
    #: hand every new event to the hold consumer instead (a reshard's new set before the switch)
    HOLD = "hold"
    #: publish nothing (a reshard's old set after the switch, until its workers are gone)
    DISCARD = "discard"


class Relay:
    """Reads the workers' channel, dedupes events, publishes them, hands reports on."""

    def __init__(
        self,
        channel: EventChannel,
        publisher: Publisher,
        book: SessionBook,
        counters: RelayCounters,
        on_report: ReportHandler,
        batch: int = DEFAULT_BATCH,
        sink: StreamSink | None = None,
        taps: Sequence[RunConsumer] = (),
    ) -> None:
        self._channel = channel
        self._publisher = publisher
        self._book = book
        self._counters = counters
        self._on_report = on_report
        self._batch = batch
        self._sink = sink
        self.mode = RelayMode.PUBLISH
        #: HOLD mode's consumer of runs
        self._hold: RunConsumer | None = None
        #: PUBLISH mode's hooks while a reshard runs (None: the fast path)
        self._recorder: EventRecorder | None = None
        self._filter: EventFilter | None = None
        #: events a filter dropped (a reshard's duplicates)
        self.filtered = 0
        #: any of the above in effect: EVENT_RUNS go through :meth:`_runs_hooked`
        self._hooked = False
        #: who gets each published run besides the PUB socket: the sink, then the taps
        self._consumers: tuple[RunConsumer, ...] = (*((sink,) if sink else ()), *taps)
        #: the taps that take a resume_from shard's replay (never the sink)
        self._replays = tuple(t for t in taps if isinstance(t, ReplayConsumer))
        #: True while the sink is backlogged: the channel is not read (back pressure)
        self._paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: connections with whole messages held back by the batch limit, to be read soon
        self._again: set[Peer] = set()
        #: shard -> (epoch, PUB header template of that session): built once per
        #: session, for the runs a reshard's hooks publish event by event (see
        #: :meth:`_head`; the workers write the headers of every other event)
        self._heads: dict[int, tuple[int, bytes]] = {}
        self._unnamed_logged = False
        self._failure_logged_at = -FAILURE_LOG_S
        #: monotonic time a read last emptied a worker's connection (the relay is caught up)
        self.caught_up_at = time.monotonic()
        #: protocol/ipc.py's EVENT_RUNS reader, wired to the book and the publisher
        #: once (see :meth:`_runs`)
        self._reader = ipc.EventRunsReader(book.admit, publisher.publish_frames, self._ran)
        self._reader.keep = bool(self._consumers)
        # a resume_from shard's replay: its duplicates go to the replay taps
        self._reader.replaying = book.resuming if self._replays else ()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._channel.watch(loop, self._readable)
        self._publisher.start(loop)  # a no-op when its owner started it already
        if self._sink is not None:
            self._sink.on_drained(self._unpause)

    def stop(self) -> None:
        # The publisher is not stopped: it outlives this relay (subscribers stay connected).
        self._channel.unwatch()
        self._loop = None

    def lagging(self, now: float, within_s: float) -> bool:
        """True when messages wait and no read has found a worker's connection emptied
        for ``within_s``.

        Then a worker's silence proves nothing: its reports may be queued behind events.
        """
        if not self._channel.waiting():
            self.caught_up_at = now
            return False
        return now - self.caught_up_at > within_s

    def _readable(self, peer: Peer) -> None:
        """A worker's connection has input: read up to a batch of its messages and relay them."""
        sink = self._sink
        if sink is not None and sink.backlogged:
            self._paused = True  # the sink's drain callback reads on (see _unpause)
            self._channel.pause()
            return
        channel = self._channel
        self._handle(channel.read(peer, self._batch), sink)
        if peer.held:
            # More is waiting here: go on after the loop has served everyone else.
            if peer not in self._again:
                self._again.add(peer)
                assert self._loop is not None
                self._loop.call_soon(self._readable_again, peer)
        elif not peer.full:
            self.caught_up_at = time.monotonic()

    def _readable_again(self, peer: Peer) -> None:
        self._again.discard(peer)
        if peer.held and self._loop is not None and not self._paused:
            self._readable(peer)

    def _unpause(self) -> None:
        if self._paused:
            self._paused = False
            self._channel.resume()

    def drain(self) -> int:
        """Handle everything the workers sent until now (shutdown, a worker's exit),
        backlogged sink or not; how many messages."""
        channel = self._channel
        channel.settle()
        total = 0
        for peer in channel.peers:
            messages = channel.drain(peer)
            total += len(messages)
            self._handle(messages, None)
        return total

    def _handle(self, messages: list[Frames], sink: StreamSink | None) -> None:
        """Relay ``messages`` (each a list of frames), then flush the publisher and the
        taps; with ``sink`` and its backlog, the relay pauses after them."""
        counters = self._counters
        published = 0
        duplicates = 0
        try:
            for frames in messages:
                # Each message on its own: the read took them all out of the kernel, so one
                # that fails here must not take the others with it (they would be lost).
                try:
                    head = frames[0]
                    if len(head) == _HEADER_SIZE:
                        version, kind, count, _, _, events = _HEADER_UNPACK(head)
                        if version == _VERSION and count >= 1 and kind == _RUNS:
                            if len(frames) != 2:
                                counters.malformed_dropped += 1
                                continue
                            runs = self._runs if self._hooked is False else self._runs_hooked
                            done, skipped = runs(count, events, frames[1])
                            published += done
                            duplicates += skipped
                            continue
                    self._other([bytes(frame) for frame in frames])
                except Exception:
                    counters.malformed_dropped += 1
                    self._log_failure()
        finally:
            counters.published += published
            counters.duplicates_dropped += duplicates
        if sink is not None and sink.backlogged and not self._paused:
            self._paused = True  # the sink's drain callback reads on
            self._channel.pause()
        publisher = self._publisher
        publisher.flush()
        for consumer in self._consumers:
            consumer.flush()
        counters.pub_dropped = publisher.dropped
        counters.pub_disconnected_dropped = publisher.lost_at_disconnect
        counters.subscriptions = publisher.subscriptions
        counters.subscribers = publisher.subscribers
        counters.pub_queued = publisher.queued

    def _log_failure(self) -> None:
        now = time.monotonic()
        if now - self._failure_logged_at >= FAILURE_LOG_S:
            self._failure_logged_at = now
            log.exception("a worker's message could not be relayed; it is counted as malformed")

    def _head(self, shard_id: int, epoch: int) -> bytes:
        """The PUB header template of ``shard_id``'s session ``epoch``, cached per shard.

        The run head carries the epoch (a crc32), not the session id; the id comes
        from the book, which the relay tells about every report it reads (see
        :meth:`_other`). A session-started report is ahead of its READY on the
        worker's ordered channel, so a session is named before its first event
        is published, whatever the supervisor does with the report. A session
        no report named (never sent by our workers) goes out without the key,
        is not cached (a later report may name it), and is logged once.
        """
        session_id = self._book.session_id(shard_id, epoch) if epoch else None
        template = header_template(shard_id, session_id)
        if session_id is not None or not epoch:
            self._heads[shard_id] = (epoch, template)
        elif not self._unnamed_logged:
            self._unnamed_logged = True
            log.warning(
                "shard %d: events of session epoch %d arrived before any report named "
                "the session; their PUB headers carry no session_id",
                shard_id,
                epoch,
            )
        return template

    def _runs(self, runs: int, events: int, body: bytes | memoryview) -> tuple[int, int]:
        """Publish the runs of an EVENT_RUNS body; (published, duplicates).

        protocol/ipc.py's reader dedupes each run through the book and hands the
        publisher the rest of it as a memoryview slice of the body; runs the sink,
        the taps or the replay taps want go to :meth:`_ran`. A body that ends
        early or has bytes left over (never sent by our workers) is counted as
        malformed; what came before the fault in it was published.
        """
        published, duplicates, fault = self._reader.read(runs, events, body)
        if fault is not None:
            self._counters.malformed_dropped += 1
        return published, duplicates

    def _ran(
        self,
        shard_id: int,
        epoch: int,
        seq: int,
        count: int,
        skip: int,
        events: list[EventSlices] | None,
        replayed: list[EventSlices] | None,
    ) -> None:
        """A run of :meth:`_runs` was read: its replay (the events of a resume_from shard
        that were published before) to the replay taps, then its published events to
        the sink and the taps."""
        if replayed:
            self._hand_replayed(shard_id, epoch, seq, replayed, skip < count)
        if events:
            for consumer in self._consumers:
                consumer.add(shard_id, epoch, seq + skip, events)

    def _hand_replayed(
        self,
        shard_id: int,
        epoch: int,
        first_seq: int,
        events: list[EventSlices],
        new_after: bool,
    ) -> None:
        for tap in self._replays:
            tap.add_replayed(shard_id, epoch, first_seq, events)
        self._book.replayed(shard_id, epoch, first_seq + len(events) - 1, new_after)

    # -- resharding ---------------------------------------------------------------------------

    def attach_sink(self, sink: StreamSink) -> None:
        """From now on published runs also go to ``sink``, first (a reshard's switch)."""
        self._sink = sink
        self._consumers = (sink, *(c for c in self._consumers if c is not sink))
        self._reader.keep = True
        if self._loop is not None:
            sink.on_drained(self._unpause)

    def hold(self, consumer: RunConsumer) -> None:
        """From now on new events go to ``consumer``, not to the PUB socket (a new shard set)."""
        self._hold = consumer
        self.mode = RelayMode.HOLD
        self._rehook()

    def discard(self) -> None:
        """From now on nothing is published (an old shard set after the switch)."""
        self.mode = RelayMode.DISCARD
        self._rehook()

    def publish_with(
        self, *, recorder: EventRecorder | None = None, event_filter: EventFilter | None = None
    ) -> None:
        """Publish again (or go on), telling ``recorder`` of each event / dropping what
        ``event_filter`` says; both None: the fast path."""
        self.mode = RelayMode.PUBLISH
        self._hold = None
        self._recorder = recorder
        self._filter = event_filter
        self._rehook()

    def _rehook(self) -> None:
        self._hooked = (
            self.mode is not RelayMode.PUBLISH
            or self._recorder is not None
            or self._filter is not None
        )

    def publish_run(
        self, shard_id: int, epoch: int, first_seq: int, events: list[EventSlices]
    ) -> int:
        """Publish a run held earlier (the switch): through the filter; how many went out."""
        head = self._heads.get(shard_id)
        template = head[1] if head is not None and head[0] == epoch else self._head(shard_id, epoch)
        return self._publish_events(shard_id, epoch, first_seq, events, template)

    def _publish_events(
        self, shard_id: int, epoch: int, first_seq: int, events: list[EventSlices], template: bytes
    ) -> int:
        publish = self._publisher.publish
        recorder, event_filter = self._recorder, self._filter
        published: list[EventSlices] = []
        out: list[tuple[int, list[EventSlices]]] = []  # runs of consecutive published seqs
        for i, (topic, payload) in enumerate(events):
            if event_filter is not None and event_filter(topic, payload):
                self.filtered += 1
                if published:
                    out.append((first_seq + i - len(published), published))
                    published = []
                continue
            publish(topic, template % (first_seq + i), payload)
            if recorder is not None:
                recorder(topic, payload)
            published.append((topic, payload))
        if published:
            out.append((first_seq + len(events) - len(published), published))
        for consumer in self._consumers:
            for seq, run in out:
                consumer.add(shard_id, epoch, seq, run)
        return sum(len(run) for _, run in out)

    def _runs_hooked(self, runs: int, _events: int, body: bytes | memoryview) -> tuple[int, int]:
        """:meth:`_runs` while a reshard runs: hold, discard, or publish through the hooks."""
        try:
            batches = ipc.decode_event_runs(runs, body)
        except WireFormatError:
            self._counters.malformed_dropped += 1
            return 0, 0
        admit = self._book.admit
        published = 0
        duplicates = 0
        for batch in batches:
            count = len(batch.events)
            skip = admit(batch.shard_id, batch.epoch, batch.first_seq, count)
            duplicates += skip
            if skip and self._replays and batch.shard_id in self._book.resuming:
                self._hand_replayed(
                    batch.shard_id,
                    batch.epoch,
                    batch.first_seq,
                    batch.events[:skip],
                    skip < count,
                )
            if skip >= count:
                continue
            events = batch.events[skip:]
            first = batch.first_seq + skip
            if self.mode is RelayMode.HOLD:
                assert self._hold is not None
                self._hold.add(batch.shard_id, batch.epoch, first, events)
            elif self.mode is RelayMode.PUBLISH:
                published += self.publish_run(batch.shard_id, batch.epoch, first, events)
        return published, duplicates

    def _other(self, frames: list[bytes]) -> None:
        try:
            message = ipc.decode(frames)
        except WireFormatError:
            self._counters.malformed_dropped += 1
            return
        if isinstance(message, ipc.ShardReport):
            # Named here, not only by the supervisor's handler: the header of
            # this session's events must not depend on what that handler does.
            if message.session_id:
                self._book.name(message.shard_id, message.session_id)
            self._on_report(message)
        elif isinstance(message, ipc.WorkerStatus):
            self._on_report(message)
        else:
            self._counters.malformed_dropped += 1
