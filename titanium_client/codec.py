"""The Redis Streams layout of ``@discordjs/brokers`` (DESIGN.md section 6): decode and encode.

A dispatch is one entry on the stream named after the event (``MESSAGE_CREATE``)
with one field ``data``: msgpack (the default of the brokers and of the sink)
or JSON bytes of::

    {"shardId": <int>, "payload": {"op": 0, "t": "<event>", "s": <seq>, "d": ...}}

A ``"sessionId"`` string next to ``shardId`` is read when present (the layout
itself has none). The encoding is detected from the first byte: a msgpack map
starts with 0x80-0x8f (fixmap), 0xde (map 16) or 0xdf (map 32); JSON with ``{``
(after optional whitespace). Commands go the other way on the stream
``gateway_send``: ``{"shardId": <int>, "payload": {"op": <int>, "d": ...}}``.

:func:`decode_data` never raises anything but :class:`DecodeError`, whatever the bytes.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from titanium_client.errors import DecodeError

# msgpack ships no type information; its two functions are wrapped once, here.
_msgpack: Any = importlib.import_module("msgpack")

#: The field that holds an entry's encoded object.
DATA_FIELD: Final = b"data"
#: The stream commands are written to (read by every host of the cluster).
COMMAND_STREAM: Final = "gateway_send"

_WHITESPACE: Final = b" \t\r\n"


class Encoding(enum.StrEnum):
    """How ``data`` is encoded."""

    MSGPACK = "msgpack"
    JSON = "json"


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
    if not data:
        raise DecodeError("the data field is empty")
    first = data[0]
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return Encoding.MSGPACK
    if data.lstrip(_WHITESPACE)[:1] == b"{":
        return Encoding.JSON
    raise DecodeError(f"the data field is neither a msgpack map nor a JSON object (0x{first:02x})")


def _int(value: object, what: str) -> int:
    if type(value) is not int:  # bool is an int subclass and not a valid value
        raise DecodeError(f"{what} must be an integer, not {type(value).__name__}")
    if value < 0:
        raise DecodeError(f"{what} must not be negative, got {value}")
    return value


def decode_data(data: bytes) -> StreamRecord:
    """Decode one ``data`` field of a sink entry; raise DecodeError if it is not one."""
    encoding = detect_encoding(data)
    if encoding is Encoding.MSGPACK:
        try:
            obj = _msgpack.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises a dozen types for bad input
            raise DecodeError(
                f"the data field is not valid msgpack ({type(exc).__name__})"
            ) from None
    else:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"the data field is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"the data field must hold a map, not {type(obj).__name__}")
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
    if encoding is Encoding.JSON:
        return orjson.dumps(dict(obj))
    packed: bytes = _msgpack.packb(dict(obj), use_bin_type=True)
    return packed


def encode_command(shard_id: int, op: int, d: Any, encoding: Encoding = Encoding.MSGPACK) -> bytes:
    """The ``data`` of one ``gateway_send`` entry: ``{"shardId", "payload": {"op", "d"}}``."""
    return encode({"shardId": shard_id, "payload": {"op": int(op), "d": d}}, encoding)
