"""Wire format of the identify coordinator, version 1 (DESIGN.md 4.5).

Workers (and, across hosts, other supervisors) ask the coordinator for
permission to IDENTIFY a shard. Transport: ZeroMQ, a DEALER per client and one
ROUTER in the coordinator. Every message is **one frame**: a UTF-8 JSON object
(orjson), at most :data:`MAX_MESSAGE_BYTES`, with

- ``"v"``: the format version, the integer ``1``;
- ``"type"``: one of the names below;
- the fields of that type (unknown extra fields are ignored, so version 1 may
  grow fields without breaking older peers; a different ``"v"`` is refused).

The ROUTER sees ``[client identity, frame]``; the DEALER sends and receives the
bare frame (no empty delimiter frame).

| type | direction | fields |
|---|---|---|
| ``acquire`` | client -> coordinator | ``shard_id``, ``nonce`` |
| ``cancel`` | client -> coordinator | ``shard_id``, ``nonce`` |
| ``release`` | client -> coordinator | ``shard_id``, ``nonce`` |
| ``sent`` | client -> coordinator | ``shard_id``, ``nonce``, ``written_at`` (optional) |
| ``answered`` | client -> coordinator | ``shard_id``, ``nonce``, ``answered_at`` (optional) |
| ``grant`` | coordinator -> client | ``shard_id``, ``nonce``, ``not_before`` (optional) |
| ``status`` | client -> coordinator | (none) |
| ``status_reply`` | coordinator -> client | ``remaining``, ``total``, ``exhausted``, ``reset_after_s``, ``max_concurrency``, ``interval_s``, ``queued`` |
| ``error`` | coordinator -> client | ``reason``, ``shard_id`` (int or null) |

``nonce`` is chosen by the client for each acquire (an int in [0, 2**63)).
Sending the same ``acquire`` again is idempotent: while queued it keeps its
place, after the grant it is answered with the same grant again, so a client
may re-send freely when it hears nothing (a lost message, a coordinator
restart). ``cancel`` withdraws a queued acquire. ``release`` gives back a
grant the client will not use (its shard stopped before it could IDENTIFY):
the session start is refunded. ``sent`` says the IDENTIFY under the grant
with that nonce was written just now; a coordinator that counts the bucket's
spacing from it (``cluster/identify_scheduler.py``, ``sent_hold_s``) waits for
it, for a while, before the bucket's next grant. ``answered`` says the server
answered that IDENTIFY (the client read its READY, at ``answered_at``); a
coordinator that opens buckets on answers (``answer_opens``) may then open the
bucket one interval after it. ``grant`` echoes the acquire's nonce so a
client can tell a current grant from a stale one.

``not_before``, ``written_at`` and ``answered_at`` are seconds on the host's
monotonic clock (``time.monotonic()``; the coordinator runs in the supervisor,
on the same host as its workers). A grant with ``not_before`` came early: the
client writes the IDENTIFY at that time, not before. ``written_at`` says when
the client wrote it, so the coordinator spaces the bucket from the write rather
than from the report's arrival. ``answered_at`` says when the client read the
READY: the server counted the IDENTIFY before it sent the READY, and the client
read the READY after it was sent, so that time bounds the server's count from
above whatever the report's trip to the coordinator costs (the coordinator takes
no time later than its own now). A client or coordinator that ignores them is
merely slower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self, cast

import orjson

from protocol.errors import WireFormatError

VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 64 * 1024
MAX_SHARD_ID: Final = (1 << 31) - 1
MAX_NONCE: Final = (1 << 63) - 1
MAX_REASON_CHARS: Final = 500


def _int(obj: dict[str, Any], key: str, low: int, high: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireFormatError(
            f"coordination field {key!r} must be an int, got {type(value).__name__}"
        )
    if not low <= value <= high:
        raise WireFormatError(f"coordination field {key!r} = {value} is outside [{low}, {high}]")
    return value


def _float(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireFormatError(
            f"coordination field {key!r} must be a number, got {type(value).__name__}"
        )
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise WireFormatError(f"coordination field {key!r} must be a finite number >= 0")
    return number


def _bool(obj: dict[str, Any], key: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise WireFormatError(
            f"coordination field {key!r} must be a bool, got {type(value).__name__}"
        )
    return value


class _Message:
    """Shared encode/decode; subclasses are frozen dataclasses with a ``TYPE``."""

    __slots__ = ()

    TYPE: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Self:
        raise NotImplementedError

    def encode(self) -> bytes:
        """This message as one ZeroMQ frame."""
        return orjson.dumps({"v": VERSION, "type": self.TYPE, **self.fields()})

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode ``data``, which must be a message of this type."""
        message = decode_message(data)
        if not isinstance(message, cls):
            raise WireFormatError(f"expected a {cls.TYPE!r} message, got {message.TYPE!r}")
        return message


def routing_id_prefix(pid: int) -> bytes:
    """How the routing id of a client in process ``pid`` begins (the coordinator can tell
    which worker process a grant went to)."""
    return b"ic-%d-" % pid


@dataclass(frozen=True, slots=True)
class _ShardMessage(_Message):
    shard_id: int
    nonce: int

    def __post_init__(self) -> None:
        _int({"shard_id": self.shard_id}, "shard_id", 0, MAX_SHARD_ID)
        _int({"nonce": self.nonce}, "nonce", 0, MAX_NONCE)

    def fields(self) -> dict[str, Any]:
        return {"shard_id": self.shard_id, "nonce": self.nonce}

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Self:
        return cls(_int(obj, "shard_id", 0, MAX_SHARD_ID), _int(obj, "nonce", 0, MAX_NONCE))


@dataclass(frozen=True, slots=True)
class Acquire(_ShardMessage):
    """Ask for permission to IDENTIFY ``shard_id``; answered by a :class:`Grant` with the same nonce."""

    TYPE: ClassVar[str] = "acquire"


@dataclass(frozen=True, slots=True)
class Cancel(_ShardMessage):
    """Withdraw the queued acquire with this nonce."""

    TYPE: ClassVar[str] = "cancel"


@dataclass(frozen=True, slots=True)
class Release(_ShardMessage):
    """Give back a grant that will not be used: no IDENTIFY was sent under it."""

    TYPE: ClassVar[str] = "release"


@dataclass(frozen=True, slots=True)
class _TimedShardMessage(_ShardMessage):
    """A shard message with one optional monotonic time, named by ``TIME_FIELD`` (the
    subclass declares that field, ``float | None = None``; absent from the frame when None)."""

    TIME_FIELD: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        # not super(): slots=True makes a new class, which zero-argument super() misses
        fields = _ShardMessage.fields(self)
        value = getattr(self, self.TIME_FIELD)
        if value is not None:
            fields[self.TIME_FIELD] = value
        return fields

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Self:
        at = None if obj.get(cls.TIME_FIELD) is None else _float(obj, cls.TIME_FIELD)
        return cls(
            shard_id=_int(obj, "shard_id", 0, MAX_SHARD_ID),
            nonce=_int(obj, "nonce", 0, MAX_NONCE),
            **{cls.TIME_FIELD: at},
        )


@dataclass(frozen=True, slots=True)
class Sent(_TimedShardMessage):
    """The IDENTIFY under the grant with this nonce was written to the gateway (at ``written_at``)."""

    TYPE: ClassVar[str] = "sent"
    TIME_FIELD: ClassVar[str] = "written_at"
    written_at: float | None = None


@dataclass(frozen=True, slots=True)
class Answered(_TimedShardMessage):
    """The server answered (READY) the IDENTIFY under the grant with this nonce; the client
    read the answer at ``answered_at`` (None: when this message arrives)."""

    TYPE: ClassVar[str] = "answered"
    TIME_FIELD: ClassVar[str] = "answered_at"
    answered_at: float | None = None


@dataclass(frozen=True, slots=True)
class Grant(_TimedShardMessage):
    """Permission to send one IDENTIFY for ``shard_id``: now, or at ``not_before``."""

    TYPE: ClassVar[str] = "grant"
    TIME_FIELD: ClassVar[str] = "not_before"
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class StatusRequest(_Message):
    """Ask for the coordinator's budget and queues."""

    TYPE: ClassVar[str] = "status"

    def fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class StatusReply(_Message):
    """The coordinator's identify budget and how many requests wait."""

    TYPE: ClassVar[str] = "status_reply"

    remaining: int
    total: int
    exhausted: bool
    reset_after_s: float
    max_concurrency: int
    interval_s: float
    queued: int

    def fields(self) -> dict[str, Any]:
        return {
            "remaining": self.remaining,
            "total": self.total,
            "exhausted": self.exhausted,
            "reset_after_s": self.reset_after_s,
            "max_concurrency": self.max_concurrency,
            "interval_s": self.interval_s,
            "queued": self.queued,
        }

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Self:
        return cls(
            remaining=_int(obj, "remaining", 0, MAX_NONCE),
            total=_int(obj, "total", 0, MAX_NONCE),
            exhausted=_bool(obj, "exhausted"),
            reset_after_s=_float(obj, "reset_after_s"),
            max_concurrency=_int(obj, "max_concurrency", 1, MAX_SHARD_ID),
            interval_s=_float(obj, "interval_s"),
            queued=_int(obj, "queued", 0, MAX_NONCE),
        )


@dataclass(frozen=True, slots=True)
class ErrorReply(_Message):
    """The coordinator could not use a request (malformed, wrong version)."""

    TYPE: ClassVar[str] = "error"

    reason: str
    shard_id: int | None = None

    def fields(self) -> dict[str, Any]:
        return {"reason": self.reason[:MAX_REASON_CHARS], "shard_id": self.shard_id}

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Self:
        reason = obj.get("reason")
        if not isinstance(reason, str):
            raise WireFormatError("coordination field 'reason' must be a string")
        shard_id = None if obj.get("shard_id") is None else _int(obj, "shard_id", 0, MAX_SHARD_ID)
        return cls(reason[:MAX_REASON_CHARS], shard_id)


CoordinationMessage = (
    Acquire | Cancel | Release | Sent | Answered | Grant | StatusRequest | StatusReply | ErrorReply
)

_TYPES: Final[dict[str, type[_Message]]] = {
    cls.TYPE: cls
    for cls in (
        Acquire,
        Cancel,
        Release,
        Sent,
        Answered,
        Grant,
        StatusRequest,
        StatusReply,
        ErrorReply,
    )
}


def decode_message(data: bytes | bytearray | memoryview) -> CoordinationMessage:
    """Decode one coordination frame, or raise :class:`WireFormatError` saying what is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireFormatError(
            f"coordination message is {len(data)} bytes, over {MAX_MESSAGE_BYTES}"
        )
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WireFormatError(f"coordination message is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireFormatError(
            f"coordination message must be a JSON object, got {type(obj).__name__}"
        )
    version = obj.get("v")
    if type(version) is not int or version != VERSION:
        raise WireFormatError(
            f"unsupported coordination format version {version!r} (expected {VERSION})"
        )
    kind = obj.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireFormatError(f"unknown coordination message type {str(kind)[:40]!r}")
    return cast(CoordinationMessage, cls.from_fields(obj))
