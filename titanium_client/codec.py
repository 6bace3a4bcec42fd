"""The Redis Streams layout of ``@discordjs/brokers`` (DESIGN.md section 6): the client's side.

The layout itself (stream per event name, one field ``data``, msgpack or JSON,
commands on ``gateway_send``) is :mod:`protocol.brokerformat`, shared with the
cluster's sink. A ``"sessionId"`` string next to ``shardId`` is read when
present (the layout itself has none).

:func:`decode_data` never raises anything but :class:`DecodeError`, whatever the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol import brokerformat
from protocol.brokerformat import COMMAND_STREAM, DATA_FIELD, Encoding
from protocol.errors import WireFormatError
from titanium_client.errors import DecodeError

__all__ = [
    "COMMAND_STREAM",
    "DATA_FIELD",
    "Encoding",
    "StreamRecord",
    "decode_data",
    "detect_encoding",
    "encode",
    "encode_command",
]


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One decoded ``data`` field: whose event, which seq, and the payload.

    ``payload`` is the decoded gateway payload; an event's ``raw`` bytes are
    written from it (orjson) only when asked for.
    """

    shard_id: int
    seq: int
    session_id: str | None
    t: str | None
    payload: dict[str, Any]
    encoding: Encoding


def detect_encoding(data: bytes) -> Encoding:
    """msgpack or JSON, from the first byte; DecodeError for anything else."""
    try:
        return brokerformat.detect_encoding(data)
    except WireFormatError as exc:
        raise DecodeError(str(exc)) from None


def _int(value: object, what: str) -> int:
    if type(value) is not int:  # bool is an int subclass and not a valid value
        raise DecodeError(f"{what} must be an integer, not {type(value).__name__}")
    if value < 0:
        raise DecodeError(f"{what} must not be negative, got {value}")
    return value


def decode_data(data: bytes) -> StreamRecord:
    """Decode one ``data`` field of a sink entry; raise DecodeError if it is not one."""
    try:
        obj, encoding = brokerformat.decode_object(data)
    except WireFormatError as exc:
        raise DecodeError(str(exc)) from None
    shard_id = _int(obj.get("shardId"), "shardId")
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise DecodeError(f"payload must be a map, not {type(payload).__name__}")
    seq = _int(payload.get("s"), "payload.s")
    t = payload.get("t")
    if t is not None and not isinstance(t, str):
        raise DecodeError(f"payload.t must be a string, not {type(t).__name__}")
    session_id = obj.get("sessionId")
    if session_id is not None and not isinstance(session_id, str):
        raise DecodeError(f"sessionId must be a string, not {type(session_id).__name__}")
    return StreamRecord(shard_id, seq, session_id, t, payload, encoding)


def encode(obj: Mapping[str, Any], encoding: Encoding = Encoding.MSGPACK) -> bytes:
    """``obj`` as a ``data`` field value in ``encoding``."""
    return brokerformat.encode_object(dict(obj), encoding)


def encode_command(shard_id: int, op: int, d: Any, encoding: Encoding = Encoding.MSGPACK) -> bytes:
    """The ``data`` of one ``gateway_send`` entry: ``{"shardId", "payload": {"op", "d"}}``."""
    return encode({"shardId": shard_id, "payload": {"op": int(op), "d": d}}, encoding)
