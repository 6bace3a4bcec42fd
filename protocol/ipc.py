"""The wire format between a worker process and the supervisor, version 3.

Two ZeroMQ channels per worker:

- **worker -> supervisor, one ordered channel** (the worker's PUSH connects to
  the supervisor's PULL, the ``event endpoint``): events, shard state reports
  and worker status, in the order the worker's event loop produced them. A
  shard's session-started report is therefore always ahead of that session's
  READY event.
- **supervisor -> worker** (the supervisor's ROUTER binds the ``command
  endpoint``, each worker's DEALER connects with routing id ``worker_routing_id``):
  commands and stop. The worker first sends a HELLO on its DEALER so the
  ROUTER (with ``ROUTER_MANDATORY``) knows the peer before it sends.

Every message starts with one fixed binary frame, readable without JSON::

    offset size  field
    0      1     version   u8   IPC_VERSION (3); other versions are refused
    1      1     kind      u8   MessageKind; an unknown kind is refused
    2      2     count     u16  runs (EVENT_RUNS), else 0/1
    4      4     shard_id  u32  the shard the message is about (0 for worker-wide)
    8      4     epoch     u32  session epoch: crc32 of the session id, 0 = none
    12     8     seq       u64  EVENT_RUNS: number of events in all runs; reports: last seq
    (little endian, struct "<BBHIIQ", 20 bytes)

Kinds and the frames after the binary one:

=============  ====  ==========================================================
(reserved)        1  was EVENTS (three PUB frames per event; no worker sent
                     it): refused as an unknown kind, so such a message is
                     counted as malformed, never misread as another kind
EVENT_RUNS        5  1 frame, the body: ``count`` runs, in three regions,
                     each in the runs' order. A run is consecutive dispatches
                     of one shard's session. First every run's ``<IIQII``
                     head (shard_id, epoch, seq of the first event, number of
                     events n >= 1, bytes B of the PUB frames); then every
                     run's n ``<HHI`` event heads (topic, header and payload
                     lengths; ``seq`` events in all); then every run's B
                     bytes: each event's PUB message (protocol/pubframe.py)
                     as a subscriber gets it, its topic, header and payload
                     frames each after a ZMTP frame head (short under 256 bytes,
                     else long; more follows but after the payload), so the
                     frames of consecutive runs are one slice. The header
                     ``{"shard_id":S,"seq":N,"session_id":"..."}`` is the
                     worker's: it knows its session. What a worker sends: every
                     event of one burst of reads, of all its shards, in one
                     message (two ZeroMQ frames; worker/output.py). Version 1 had no header and
                     no frame heads in the body: the supervisor framed every
                     event itself; version 2 kept each run's head, event heads
                     and frames together, so the frames of two runs were never
                     one slice.
SHARD_STATE       2  1 frame: a JSON object (see :class:`ShardReport`)
WORKER_STATUS     3  1 frame: a JSON object (see :class:`WorkerStatus`)
HELLO             4  1 frame: a JSON object ``{"worker_id", "pid"}`` (on the DEALER)
COMMAND          16  1 frame: a gateway payload for shard ``shard_id``, sent
                     through that shard's send limiter
STOP             17  no frames: drain (close every shard with 4000, report the
                     sessions, exit 0)
END_SESSIONS     18  no frames: stop and end every session (close with 1000:
                     nobody will RESUME them; after a reshard's switch)
=============  ====  ==========================================================

The EVENT_RUNS codec is one encoder, :class:`EventRunsEncoder` (the worker's
output feeds it an event at a time), and one reader, :class:`EventRunsReader`
(the relay's hot path; :func:`decode_event_runs` and :func:`decode` are built
on it). The supervisor dedupes events by ``(shard_id, epoch, seq)`` from the
run heads alone, without JSON, and hands a subscriber of everything the runs
it admitted whole, one after the other, as one slice of the body (a body
without duplicates: the whole frames region): it does nothing per event, and
per run only the dedupe, unless a
subscriber filters topics, uses CURVE or is full, or the sink or a tap takes
the events. The epoch is a pure function of the session id, so a replacement
worker that RESUMEs the session sends the same epoch and replayed events
dedupe against the ones already seen.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from protocol.errors import WireFormatError
from protocol.jsonframe import load_object
from protocol.pubframe import header_template
from protocol.zmtp import FLAG_LONG, SHORT_LAST, SHORT_MORE, framed_size, head_more, long_head

IPC_VERSION: Final = 3
HEADER: Final = struct.Struct("<BBHIIQ")
HEADER_SIZE: Final = HEADER.size  # 20
MAX_COUNT: Final = 0xFFFF
#: An EVENT_RUNS run head: shard_id, epoch, seq of the first event, number of events,
#: bytes of the events' PUB frames.
RUN_HEAD: Final = struct.Struct("<IIQII")
#: An EVENT_RUNS event head: topic, header and payload lengths.
EVENT_HEAD: Final = struct.Struct("<HHI")
_U32: Final = 0xFFFFFFFF
_U64: Final = 0xFFFFFFFFFFFFFFFF


class MessageKind(enum.IntEnum):
    # 1 was EVENTS (no worker sent it): kept out of use, so such a message is refused
    # by read_header as an unknown kind (counted as malformed), never read as another.
    SHARD_STATE = 2
    WORKER_STATUS = 3
    HELLO = 4
    EVENT_RUNS = 5
    COMMAND = 16
    STOP = 17
    END_SESSIONS = 18


_KINDS: Final = frozenset(int(k) for k in MessageKind)


def session_epoch(session_id: str | None) -> int:
    """The u32 epoch of a session: the same id always gives the same epoch."""
    if not session_id:
        return 0
    return zlib.crc32(session_id.encode("utf-8", "surrogatepass"))


def worker_routing_id(worker_id: int) -> bytes:
    """The ZeroMQ routing id a worker's DEALER uses on the command channel."""
    return b"worker-%d" % worker_id


@dataclass(frozen=True, slots=True)
class Header:
    kind: MessageKind
    count: int
    shard_id: int
    epoch: int
    seq: int


def pack_header(kind: MessageKind, shard_id: int, epoch: int, seq: int, count: int = 0) -> bytes:
    if not (0 <= count <= MAX_COUNT and 0 <= shard_id <= _U32 and 0 <= epoch <= _U32):
        raise WireFormatError("ipc header field out of range")
    if not 0 <= seq <= _U64:
        raise WireFormatError("ipc header seq out of range")
    return HEADER.pack(IPC_VERSION, kind, count, shard_id, epoch, seq)


def read_header(frame: bytes | memoryview) -> Header:
    """Decode the binary frame (cheap: no JSON)."""
    if len(frame) != HEADER_SIZE:
        raise WireFormatError(f"ipc header is {HEADER_SIZE} bytes, got {len(frame)}")
    version, kind, count, shard_id, epoch, seq = HEADER.unpack(frame)
    if version != IPC_VERSION:
        raise WireFormatError(f"ipc version {version} is not supported (expected {IPC_VERSION})")
    if kind not in _KINDS:
        raise WireFormatError(f"unknown ipc message kind {kind}")
    return Header(MessageKind(kind), count, shard_id, epoch, seq)


# -- events: the EVENT_RUNS codec (hot path) --------------------------------------------

#: Most events in one run of an EVENT_RUNS message (the encoder cuts a longer one).
MAX_RUN_EVENTS: Final = 256
#: Most runs in one EVENT_RUNS message (the encoder sends more as several messages).
MAX_RUNS: Final = 1024
assert MAX_RUNS <= MAX_COUNT

#: The longest PUB header an encoder writes (an event head holds its length in 16 bits).
MAX_HEADER_BYTES: Final = 4096

#: One event as a reader hands it on: (topic, payload), memoryview slices of the body.
EventSlices = tuple[memoryview, memoryview]
#: One event's PUB frames as :func:`pub_events` reads them: (topic, header, payload).
PubSlices = tuple[memoryview, memoryview, memoryview]
#: ``admit(shard_id, epoch, first_seq, count)``: how many of a run's first events to skip.
Admit = Callable[[int, int, int, int], int]
#: ``publish(frames, heads, count)``: the ``count`` events of a run not skipped, as the
#: ZMTP bytes of their PUB frames (what a subscriber of everything gets) and their
#: event heads (what :func:`pub_events` needs to read them one by one).
Publish = Callable[[memoryview, memoryview, int], object]
#: ``ran(shard_id, epoch, first_seq, count, skip, published, skipped)``: a run whose
#: lists got events was read (see :class:`EventRunsReader`).
Ran = Callable[
    [int, int, int, int, int, list[EventSlices] | None, list[EventSlices] | None], object
]

_RUNS: Final = int(MessageKind.EVENT_RUNS)
_PACK: Final = HEADER.pack
_RUN_PACK: Final = RUN_HEAD.pack
_RUN_UNPACK: Final = RUN_HEAD.unpack_from
_RUN_SIZE: Final = RUN_HEAD.size
_EVENT_PACK: Final = EVENT_HEAD.pack
_EVENT_ITER: Final = EVENT_HEAD.iter_unpack
_EVENT_SIZE: Final = EVENT_HEAD.size


class _Run:
    """One shard's consecutive events in an :class:`EventRunsEncoder`."""

    __slots__ = ("count", "epoch", "first_seq", "heads", "parts", "shard_id", "template")

    def __init__(self, shard_id: int, epoch: int, seq: int, template: bytes) -> None:
        self.shard_id = shard_id
        self.epoch = epoch
        self.first_seq = seq
        self.count = 0
        #: the PUB header of this session with ``%d`` for the seq
        self.template = template
        #: an event head per event
        self.heads: list[bytes] = []
        #: per event its three PUB frames, each after its ZMTP frame head
        self.parts: list[bytes] = []


class EventRunsEncoder:
    """The EVENT_RUNS encoder, fed one event at a time (the worker's hot path).

    :meth:`add` appends an event to its shard's open run, or opens a new run
    when the event does not continue it (another session, a gap in the seqs,
    :data:`MAX_RUN_EVENTS` reached). Each event is written as the PUB message a
    subscriber gets: its topic, its header (the run's session template, the
    seq formatted in) and its payload, each framed for ZMTP. A run's session
    template comes from :meth:`name_session` (the shard names its session when
    it starts or resumes one); a session never named gets a header without
    ``session_id``. :meth:`next_head` and :meth:`next_body` take everything
    added so far out as messages of at most :data:`MAX_RUNS` runs, runs in the
    order they were opened (so one shard's events keep their order); two calls
    because a channel may refuse the first frame, and then the runs stay
    queued and the body is never joined.

    No checks on the hot path: the caller passes u32 shard ids and epochs, u64
    seqs and topics of at most 65535 bytes (a longer one raises ``struct.error``;
    headers are kept under :data:`MAX_HEADER_BYTES` by :meth:`name_session`). While :attr:`refusing` is set (the owner's channel is
    full), :meth:`add` takes nothing and returns False. :meth:`_first_event`
    is called when :meth:`add` queues into an empty encoder: a subclass's hook,
    so an owner can schedule its send without a second call per event.
    """

    def __init__(self) -> None:
        #: shard -> its open run (the one its next consecutive event joins)
        self._open: dict[int, _Run] = {}
        #: runs closed before being taken (cut, or closed by :meth:`next_head`), in order
        self._closed: list[_Run] = []
        #: shard -> (epoch, PUB header template) of the session it named last
        self._templates: dict[int, tuple[int, bytes]] = {}
        #: True: :meth:`add` refuses (the owner's channel is full)
        self.refusing = False

    def name_session(self, shard_id: int, session_id: str | None) -> None:
        """``shard_id``'s events of ``session_id`` (its epoch) carry it in their headers.

        A session id whose header would pass :data:`MAX_HEADER_BYTES` (no gateway sends
        one: Discord's are 32 hex digits) is left out of the headers, as for an unknown
        session, so that an event head can always hold the header's length.
        """
        template = header_template(shard_id, session_id or None)
        if len(template) > MAX_HEADER_BYTES - 20:  # the seq's digits are still to come
            template = header_template(shard_id, None)
        self._templates[shard_id] = (session_epoch(session_id), template)

    def _template(self, shard_id: int, epoch: int) -> bytes:
        named = self._templates.get(shard_id)
        if named is not None and named[0] == epoch:
            return named[1]
        return header_template(shard_id, None)

    def add(self, shard_id: int, epoch: int, seq: int, topic: bytes, payload: bytes) -> bool:
        """Queue one event; False (nothing queued) while :attr:`refusing`."""
        if self.refusing:
            return False
        run = self._open.get(shard_id)
        if (
            run is None
            or run.first_seq + run.count != seq
            or run.epoch != epoch
            or run.count >= MAX_RUN_EVENTS
        ):
            if run is not None:
                self._closed.append(run)
            elif not self._open and not self._closed:
                self._first_event()
            run = self._open[shard_id] = _Run(shard_id, epoch, seq, self._template(shard_id, epoch))
        header = run.template % seq
        n = len(topic)
        h = len(header)
        size = len(payload)
        run.heads.append(_EVENT_PACK(n, h, size))
        run.parts += (
            SHORT_MORE[n] if n < 256 else head_more(n),
            topic,
            SHORT_MORE[h] if h < 256 else head_more(h),
            header,
            SHORT_LAST[size] if size < 256 else long_head(FLAG_LONG, size),
            payload,
        )
        run.count += 1
        return True

    def _first_event(self) -> None:
        """:meth:`add` is queueing into an empty encoder (the subclass's hook; nothing here)."""

    def close_runs(self) -> None:
        """Close every open run: a shard's next event opens a new one."""
        if self._open:
            self._closed.extend(self._open.values())
            self._open.clear()

    def next_head(self) -> bytes | None:
        """The binary frame of the next message (the oldest :data:`MAX_RUNS` runs, every
        run closed first); None: nothing queued. The runs stay until :meth:`next_body`."""
        self.close_runs()
        runs = self._closed[:MAX_RUNS]
        if not runs:
            return None
        events = sum(run.count for run in runs)
        return _PACK(IPC_VERSION, _RUNS, len(runs), 0, 0, events)

    def next_body(self) -> bytes:
        """The body of the message :meth:`next_head` framed; its runs leave the encoder.

        The run heads, then every run's event heads, then every run's frames, each in
        the runs' order: the frames of runs read one after the other are one slice.
        """
        closed = self._closed
        runs = closed[:MAX_RUNS]
        pieces = [
            _RUN_PACK(run.shard_id, run.epoch, run.first_seq, run.count, sum(map(len, run.parts)))
            for run in runs
        ]
        for run in runs:
            pieces += run.heads
        for run in runs:
            pieces += run.parts
        del closed[: len(runs)]
        return b"".join(pieces)


def pub_events(frames: memoryview, heads: memoryview) -> Iterator[PubSlices]:
    """The events of ``frames`` (the PUB frames of consecutive events of one run) one by
    one, as (topic, header, payload) slices; ``heads`` are their event heads."""
    at = 0
    for topic_size, header_size, payload_size in _EVENT_ITER(heads):
        topic_at = at + (2 if topic_size < 256 else 9)
        header_at = topic_at + topic_size + (2 if header_size < 256 else 9)
        payload_at = header_at + header_size + (2 if payload_size < 256 else 9)
        at = payload_at + payload_size
        yield (
            frames[topic_at : topic_at + topic_size],
            frames[header_at : header_at + header_size],
            frames[payload_at:at],
        )


def _frames_size(heads: memoryview) -> int:
    """Bytes of the PUB frames of the events whose event heads are ``heads``."""
    return sum(framed_size(t) + framed_size(h) + framed_size(p) for t, h, p in _EVENT_ITER(heads))


_DISAGREE: Final = "an EVENT_RUNS run's frames disagree with its event heads"


class EventRunsReader:
    """The EVENT_RUNS reader: reads a body in one pass and hands its runs out (the
    relay's hot path; :func:`decode_event_runs` and :func:`decode` use it too).

    Built once with what happens per run: ``admit(shard_id, epoch, first_seq,
    count)`` says how many of its first events to skip (the owner's dedupe), and
    ``publish(frames, heads, count)`` gets the rest: the ZMTP bytes of their PUB
    messages as one memoryview slice of the body, and their event heads (to read
    them one by one with :func:`pub_events`, which a subscriber of everything
    never needs). The runs of a body lie side by side in both its regions, so
    consecutive runs admitted whole go out as one ``publish`` (a body without
    duplicates: one call, whatever its number of runs); a run cut by its dedupe
    is handed on alone, after the runs before it. The worker wrote each event as
    the subscriber gets it. While :attr:`keep` is set, each published event's
    ``(topic, payload)`` is also collected per run; each skipped one's when the
    run's shard is in :attr:`replaying`. After a run that collected any,
    ``ran(shard_id, epoch, first_seq, count, skip, published, skipped)`` with
    the two lists (None: not collected).

    The frames of a run are checked against its event heads only where they are
    read one by one (a list to collect: before the run is admitted, so a run
    that fails the check is not taken as published; a skip); a run handed on
    whole is checked for fitting in the body. Topics are not looked into.
    """

    __slots__ = ("_admit", "_publish", "_ran", "keep", "replaying")

    def __init__(self, admit: Admit, publish: Publish, ran: Ran) -> None:
        self._admit = admit
        self._publish = publish
        self._ran = ran
        #: collect the published events of each run (for ``ran``)
        self.keep = False
        #: shards whose skipped events are collected (for ``ran``)
        self.replaying: Container[int] = ()

    def read(self, runs: int, events: int, body: bytes | memoryview) -> tuple[int, int, str | None]:
        """Read the ``runs`` runs of ``body`` (``events`` events in all, as the message's
        binary frame says); ``(published, skipped, fault)``.

        ``fault`` is None for a well-formed body, else what is wrong with it (a
        head or a run past its end, a run without events, frames that disagree
        with their heads, event heads or bytes left after the last run); what
        was admitted before the fault was handed out.
        """
        view = memoryview(body)
        end = len(view)
        heads_base = runs * _RUN_SIZE
        frames_base = heads_base + events * _EVENT_SIZE
        if frames_base > end:
            return 0, 0, "an EVENT_RUNS body ends inside its heads"
        admit = self._admit
        publish = self._publish
        keep = self.keep
        replaying = self.replaying
        at = 0  # the next run head
        heads_at = heads_base  # the next run's event heads
        frames_at = frames_base  # the next run's frames
        # the runs admitted whole since the last publish: from here to heads_at/frames_at
        whole = 0
        whole_heads = heads_base
        whole_frames = frames_base
        published = 0
        duplicates = 0
        fault: str | None = None
        # every head lies before frames_base <= end: no unpack can run past the body
        for _ in range(runs):
            shard_id, epoch, seq, count, size = _RUN_UNPACK(view, at)
            at += _RUN_SIZE
            heads_end = heads_at + count * _EVENT_SIZE
            frames_end = frames_at + size
            if count < 1:
                fault = "an EVENT_RUNS run has no events"
                break
            if heads_end > frames_base or frames_end > end:
                fault = "an EVENT_RUNS run runs past the body"
                break
            if not keep and shard_id not in replaying:
                skip = admit(shard_id, epoch, seq, count)
                if not skip:
                    whole += count
                    heads_at = heads_end
                    frames_at = frames_end
                    continue
                events_slices: list[EventSlices] | None = None
                starts: list[int] | None = None
            else:
                # one pass over the run, before it is admitted: its events' slices and
                # starts, and a check of its frames against its heads
                events_slices = []
                starts = []
                pos = frames_at
                for t, h, p in _EVENT_ITER(view[heads_at:heads_end]):
                    starts.append(pos)
                    topic_at = pos + (2 if t < 256 else 9)
                    payload_at = topic_at + t + (2 if h < 256 else 9) + h + (2 if p < 256 else 9)
                    pos = payload_at + p
                    events_slices.append((view[topic_at : topic_at + t], view[payload_at:pos]))
                if pos != frames_end:
                    fault = _DISAGREE
                    break
                skip = admit(shard_id, epoch, seq, count)
            # this run goes alone: first the runs admitted whole before it
            if whole:
                publish(view[whole_frames:frames_at], view[whole_heads:heads_at], whole)
                published += whole
                whole = 0
            duplicates += skip
            kept: list[EventSlices] | None = None
            skipped: list[EventSlices] | None = None
            start = frames_at
            skipped_heads = heads_at + skip * _EVENT_SIZE
            if events_slices is not None and starts is not None:
                if keep and skip < count:
                    kept = events_slices[skip:] if skip else events_slices
                if skip and shard_id in replaying:
                    skipped = events_slices[:skip]
                if skip < count:
                    start = starts[skip]
            elif skip < count:
                start += _frames_size(view[heads_at:skipped_heads])
                if start > frames_end:
                    fault = _DISAGREE
                    break
            if skip < count:
                publish(view[start:frames_end], view[skipped_heads:heads_end], count - skip)
                published += count - skip
            if kept or skipped:
                self._ran(shard_id, epoch, seq, count, skip, kept, skipped)
            heads_at = whole_heads = heads_end
            frames_at = whole_frames = frames_end
        if whole:  # admitted: handed out, also before a fault
            publish(view[whole_frames:frames_at], view[whole_heads:heads_at], whole)
            published += whole
        if fault is None:
            if heads_at != frames_base:
                fault = "an EVENT_RUNS body's event heads disagree with its runs"
            elif frames_at != end:
                fault = f"EVENT_RUNS body has {end - frames_at} bytes after its runs"
        return published, duplicates, fault


class _EveryShard:
    """Every shard id is in it (:func:`decode_event_runs` collects every run's events)."""

    def __contains__(self, shard_id: object) -> bool:
        return True


def decode_event_runs(runs: int, body: bytes | memoryview) -> list[EventBatch]:
    """The runs of an EVENT_RUNS body as :class:`EventBatch` es, checked strictly (every
    byte accounted for); the events are memoryview slices of ``body``."""
    out: list[EventBatch] = []

    def ran(
        shard_id: int,
        epoch: int,
        first_seq: int,
        count: int,
        skip: int,
        published: list[EventSlices] | None,
        skipped: list[EventSlices] | None,
    ) -> None:
        assert skipped is not None
        out.append(EventBatch(shard_id, epoch, first_seq, skipped))

    # every event is "skipped" into its run's list: nothing is published
    reader = EventRunsReader(_skip_all, _no_publish, ran)
    reader.replaying = _EveryShard()
    try:
        events = sum(head[3] for head in RUN_HEAD.iter_unpack(memoryview(body)[: runs * _RUN_SIZE]))
    except struct.error:
        raise WireFormatError("EVENT_RUNS body ends inside a head") from None
    _, _, fault = reader.read(runs, events, body)
    if fault is not None:
        raise WireFormatError(fault)
    return out


def _skip_all(shard_id: int, epoch: int, first_seq: int, count: int) -> int:
    return count


def _no_publish(frames: memoryview, heads: memoryview, count: int) -> None:
    raise AssertionError("decode_event_runs publishes nothing")


@dataclass(frozen=True, slots=True)
class EventBatch:
    """One run of an EVENT_RUNS message: ``events`` are seqs ``first_seq ..``."""

    shard_id: int
    epoch: int
    first_seq: int
    #: (topic, payload) per event, slices of the message's body
    events: list[EventSlices]


@dataclass(frozen=True, slots=True)
class EventRuns:
    """An EVENT_RUNS message: runs of several shards, each as an :class:`EventBatch`."""

    batches: list[EventBatch]


# -- reports -------------------------------------------------------------------


class DispatchDrop(enum.StrEnum):
    """Why a worker did not relay a dispatch (the keys of :attr:`ShardReport.dropped`).

    Discord numbers a session's dispatches 1, 2, 3, ... (READY is 1) and never
    sends one without ``s``; the supervisor dedupes, checkpoints and RESUMEs by
    that number, so a dispatch that breaks the numbering is dropped and
    counted, never relayed under a number it does not have (worker/shard.py).
    """

    #: ``s`` at or below the last seq relayed in this session: a replayed or repeated event
    SEQ_NOT_INCREASING = "seq_not_increasing"
    #: ``s`` below 1 (0 or negative): not a gateway sequence number at all
    SEQ_INVALID = "seq_invalid"
    #: ``s`` null or absent
    SEQ_MISSING = "seq_missing"
    #: ``t`` null or absent: no event name to publish it under
    T_MISSING = "t_missing"
    #: ``t`` longer than :data:`MAX_TOPIC_BYTES`: no gateway event has such a name
    T_INVALID = "t_invalid"


#: The longest event name relayed (Discord's are under 50 bytes; the run format allows
#: 65,535, and a longer one must cost a counted drop, not the worker).
MAX_TOPIC_BYTES: Final = 256


@dataclass(frozen=True, slots=True)
class ShardReport:
    """One shard's state, sent on every phase change and periodically (liveness).

    ``session_started`` is true on the report made when READY created a new
    session; it is sent before the READY event itself.
    """

    shard_id: int
    phase: str
    seq: int
    session_id: str | None
    resume_url: str | None
    latency_ms: float | None = None
    identifies: int = 0
    resumes: int = 0
    reconnects: int = 0
    events: int = 0
    session_started: bool = False
    fatal_code: int | None = None
    reason: str | None = None
    commands_sent: int = 0
    commands_refused: int = 0
    #: Dispatches relayed by this worker process, per event name (since it started).
    events_by_type: dict[str, int] = field(default_factory=dict)
    #: Dispatches this worker process dropped, per :class:`DispatchDrop` reason (since
    #: it started). Added in place of a version bump: a report without it reads as {}.
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return session_epoch(self.session_id)


class WorkerStatusKind(enum.Enum):
    STARTED = "started"
    DRAINED = "drained"  #: every shard closed with 4000; final reports were sent before
    FATAL = "fatal"  #: a fatal close code; the worker exits with ExitCode.FATAL


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    worker_id: int
    pid: int
    status: str
    fatal_code: int | None = None
    detail: str | None = None
    shard_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Hello:
    worker_id: int
    pid: int


@dataclass(frozen=True, slots=True)
class Command:
    shard_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Stop:
    #: True (END_SESSIONS): close with 1000, ending the sessions instead of keeping them
    end_sessions: bool = False


Message = EventRuns | ShardReport | WorkerStatus | Hello | Command | Stop


def _json(obj: Any) -> bytes:
    # orjson writes a dataclass's fields itself, the same bytes as through
    # dataclasses.asdict, which deep-copies first: 2.6 against 28.6 µs per shard
    # report, and a worker sends one per shard per second (42 % of a worker's CPU
    # while 1,024 of its shards started).
    return orjson.dumps(obj)


def encode_shard_report(report: ShardReport) -> list[bytes]:
    return [
        pack_header(MessageKind.SHARD_STATE, report.shard_id, report.epoch, report.seq),
        _json(report),
    ]


def encode_worker_status(status: WorkerStatus) -> list[bytes]:
    return [pack_header(MessageKind.WORKER_STATUS, 0, 0, 0), _json(status)]


def encode_hello(hello: Hello) -> list[bytes]:
    return [pack_header(MessageKind.HELLO, 0, 0, 0), _json(hello)]


def encode_command(shard_id: int, payload: bytes) -> list[bytes]:
    return [pack_header(MessageKind.COMMAND, shard_id, 0, 0, 1), payload]


def encode_stop(end_sessions: bool = False) -> list[bytes]:
    kind = MessageKind.END_SESSIONS if end_sessions else MessageKind.STOP
    return [pack_header(kind, 0, 0, 0)]


def _build(cls: type[Any], obj: dict[str, Any], what: str) -> Any:
    try:
        return cls(**obj)
    except TypeError as exc:
        raise WireFormatError(f"{what} body has wrong fields: {exc}") from None


def _check_types(obj: dict[str, Any], ints: tuple[str, ...], what: str) -> None:
    for key in ints:
        value = obj.get(key)
        if type(value) is not int or value < 0:
            raise WireFormatError(f"{what} field {key!r} must be a non-negative int")


def _counts(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in value.items()
    )


def decode(frames: Sequence[bytes]) -> Message:
    """Decode one ipc message (without the ROUTER's routing-id frame)."""
    if not frames:
        raise WireFormatError("empty ipc message")
    head = read_header(frames[0])
    kind = head.kind
    rest = frames[1:]
    if kind is MessageKind.EVENT_RUNS:
        if head.count < 1 or len(rest) != 1:
            raise WireFormatError("EVENT_RUNS carries at least one run in exactly one frame")
        batches = decode_event_runs(head.count, rest[0])
        if sum(len(b.events) for b in batches) != head.seq:
            raise WireFormatError("EVENT_RUNS header and body disagree on the number of events")
        return EventRuns(batches)
    if kind in (MessageKind.STOP, MessageKind.END_SESSIONS):
        if rest:
            raise WireFormatError(f"{kind.name} carries no frames")
        return Stop(end_sessions=kind is MessageKind.END_SESSIONS)
    if len(rest) != 1:
        raise WireFormatError(f"{kind.name} carries exactly one frame, got {len(rest)}")
    body = bytes(rest[0])
    if kind is MessageKind.COMMAND:
        return Command(head.shard_id, body)
    obj = load_object(body, f"{kind.name} body")
    if kind is MessageKind.SHARD_STATE:
        _check_types(obj, ("shard_id", "seq"), "SHARD_STATE")
        report: ShardReport = _build(ShardReport, obj, "SHARD_STATE")
        if not isinstance(report.phase, str):
            raise WireFormatError("SHARD_STATE field 'phase' must be a string")
        if not _counts(report.dropped):
            raise WireFormatError("SHARD_STATE field 'dropped' must map names to counts")
        if report.shard_id != head.shard_id:
            raise WireFormatError("SHARD_STATE body and header disagree on shard_id")
        return report
    if kind is MessageKind.WORKER_STATUS:
        _check_types(obj, ("worker_id", "pid"), "WORKER_STATUS")
        status: WorkerStatus = _build(WorkerStatus, obj, "WORKER_STATUS")
        if not isinstance(status.status, str):
            raise WireFormatError("WORKER_STATUS field 'status' must be a string")
        return status
    _check_types(obj, ("worker_id", "pid"), "HELLO")
    hello: Hello = _build(Hello, obj, "HELLO")
    return hello
