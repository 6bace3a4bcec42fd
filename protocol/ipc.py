"""The wire format between a worker process and the supervisor, version 1.

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
    0      1     version   u8   IPC_VERSION (1); other versions are refused
    1      1     kind      u8   MessageKind
    2      2     count     u16  events that follow (EVENTS), runs (EVENT_RUNS), else 0/1
    4      4     shard_id  u32  the shard the message is about (0 for worker-wide)
    8      4     epoch     u32  session epoch: crc32 of the session id, 0 = none
    12     8     seq       u64  EVENTS: seq of the first event; EVENT_RUNS: number of
                                events in all runs; reports: last seq
    (little endian, struct "<BBHIIQ", 20 bytes)

Kinds and the frames after the binary one:

=============  ====  ==========================================================
EVENTS            1  ``count`` x 3 frames: the PUB v1 frames (topic, header,
                     payload) exactly as they go out on the PUB socket. The
                     events of one message are consecutive dispatches of one
                     session: seqs ``seq .. seq + count - 1``. Workers now
                     send EVENT_RUNS; a reader still accepts EVENTS of any
                     count >= 1.
EVENT_RUNS        5  1 frame, the body: ``count`` runs back to back. A run is
                     consecutive dispatches of one shard's session: a
                     ``<IIQI`` head (shard_id, epoch, seq of the first event,
                     number of events n >= 1), then per event a ``<HI`` head
                     (topic length >= 1, payload length) followed by the topic
                     and the payload bytes. The PUB header frame is not carried:
                     it is ``{"shard_id":S,"seq":N,"session_id":"..."}``
                     (protocol/pubframe.py), built where the event is published,
                     the session id found from the epoch (the session-started
                     report named it earlier on this channel). What a worker sends:
                     every event of one event-loop iteration, of all its shards,
                     in one message (two ZeroMQ frames).
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

The supervisor dedupes events by ``(shard_id, epoch, seq)`` from the binary
frame and the run heads alone. The epoch is a pure function of the session
id, so a replacement worker that RESUMEs the session sends the same epoch and
replayed events dedupe against the ones already seen.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import orjson

from protocol.errors import WireFormatError
from protocol.pubframe import encode_header as encode_pub_header

IPC_VERSION: Final = 1
HEADER: Final = struct.Struct("<BBHIIQ")
HEADER_SIZE: Final = HEADER.size  # 20
PUB_FRAMES_PER_EVENT: Final = 3
MAX_COUNT: Final = 0xFFFF
#: An EVENT_RUNS run head: shard_id, epoch, seq of the first event, number of events.
RUN_HEAD: Final = struct.Struct("<IIQI")
#: An EVENT_RUNS event head: topic length, payload length.
EVENT_HEAD: Final = struct.Struct("<HI")
_U32: Final = 0xFFFFFFFF
_U64: Final = 0xFFFFFFFFFFFFFFFF


class MessageKind(enum.IntEnum):
    EVENTS = 1
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


# -- events (hot path) -------------------------------------------------------

_EVENTS: Final = int(MessageKind.EVENTS)
_PACK: Final = HEADER.pack


def event_header(shard_id: int, epoch: int, seq: int) -> bytes:
    """The binary frame of a one-event EVENTS message (the hot path: no checks)."""
    return _PACK(IPC_VERSION, _EVENTS, 1, shard_id, epoch, seq)


def event_message(
    shard_id: int, epoch: int, seq: int, topic: bytes, header: bytes, payload: bytes
) -> list[bytes]:
    """One event as one ipc message: binary frame + the three PUB v1 frames."""
    return [_PACK(IPC_VERSION, _EVENTS, 1, shard_id, epoch, seq), topic, header, payload]


def encode_event_runs(
    runs: Sequence[tuple[int, int, int, Sequence[tuple[bytes, bytes]]]],
) -> list[bytes]:
    """An EVENT_RUNS message of ``(shard_id, epoch, first_seq, [(topic, payload), ...])`` runs.

    The reference encoder (tests, tools); the worker builds the same bytes
    incrementally (worker/group.py).
    """
    if not 1 <= len(runs) <= MAX_COUNT:
        raise WireFormatError(f"EVENT_RUNS carries 1 to {MAX_COUNT} runs, got {len(runs)}")
    parts: list[bytes] = []
    total = 0
    for shard_id, epoch, first_seq, events in runs:
        if not events:
            raise WireFormatError("an EVENT_RUNS run has at least one event")
        if not (0 <= shard_id <= _U32 and 0 <= epoch <= _U32 and 0 <= first_seq <= _U64):
            raise WireFormatError("EVENT_RUNS run head field out of range")
        parts.append(RUN_HEAD.pack(shard_id, epoch, first_seq, len(events)))
        for topic, payload in events:
            if not 1 <= len(topic) <= 0xFFFF:
                raise WireFormatError("an EVENT_RUNS topic is 1 to 65535 bytes")
            parts += (EVENT_HEAD.pack(len(topic), len(payload)), topic, payload)
        total += len(events)
    return [pack_header(MessageKind.EVENT_RUNS, 0, 0, total, len(runs)), b"".join(parts)]


def decode_event_runs(runs: int, body: bytes | memoryview) -> list[EventBatch]:
    """The runs of an EVENT_RUNS body, checked strictly (every byte accounted for)."""
    view = memoryview(body)
    end = len(view)
    at = 0
    out: list[EventBatch] = []
    try:
        for _ in range(runs):
            shard_id, epoch, first_seq, count = RUN_HEAD.unpack_from(view, at)
            at += RUN_HEAD.size
            if count < 1:
                raise WireFormatError("an EVENT_RUNS run has no events")
            events: list[tuple[bytes, bytes, bytes]] = []
            for i in range(count):
                topic_len, payload_len = EVENT_HEAD.unpack_from(view, at)
                at += EVENT_HEAD.size
                if topic_len < 1 or at + topic_len + payload_len > end:
                    raise WireFormatError("an EVENT_RUNS event runs past the body")
                topic = bytes(view[at : at + topic_len])
                at += topic_len
                payload = bytes(view[at : at + payload_len])
                at += payload_len
                events.append((topic, encode_pub_header(shard_id, first_seq + i), payload))
            out.append(EventBatch(shard_id, epoch, first_seq, events))
    except struct.error:
        raise WireFormatError("EVENT_RUNS body ends inside a head") from None
    if at != end:
        raise WireFormatError(f"EVENT_RUNS body has {end - at} bytes after its {runs} runs")
    return out


@dataclass(frozen=True, slots=True)
class EventBatch:
    shard_id: int
    epoch: int
    first_seq: int
    #: ``count`` tuples of (topic, header, payload), forwarded untouched.
    events: list[tuple[bytes, bytes, bytes]]


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


Message = EventBatch | EventRuns | ShardReport | WorkerStatus | Hello | Command | Stop


def _json(obj: Any) -> bytes:
    return orjson.dumps(asdict(obj))


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


def _load_object(frame: bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise WireFormatError(f"{what} body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireFormatError(f"{what} body must be a JSON object")
    return obj


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
    if kind is MessageKind.EVENTS:
        if head.count < 1 or len(rest) != head.count * PUB_FRAMES_PER_EVENT:
            raise WireFormatError(
                f"EVENTS with count {head.count} needs {head.count * 3} frames, got {len(rest)}"
            )
        events = [
            (bytes(rest[i]), bytes(rest[i + 1]), bytes(rest[i + 2]))
            for i in range(0, len(rest), PUB_FRAMES_PER_EVENT)
        ]
        return EventBatch(head.shard_id, head.epoch, head.seq, events)
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
    obj = _load_object(body, kind.name)
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
