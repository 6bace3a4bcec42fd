"""The Redis Streams layout of ``@discordjs/brokers`` (DESIGN.md section 6), both directions.

A dispatch is one entry on the stream named after the event (``MESSAGE_CREATE``)
with one field ``data``: msgpack (the brokers' default, and the sink's) or JSON
bytes of::

    {"shardId": <int>, "payload": {"op": 0, "t": "<event>", "s": <seq>, "d": ...}}

Commands go the other way on the stream ``gateway_send``:
``{"shardId": <int>, "payload": {"op": <int>, "d": ...}}``. The encoding of a
``data`` field is told by its first byte: a msgpack map starts with 0x80-0x8f
(fixmap), 0xde (map 16) or 0xdf (map 32); JSON with ``{`` (after optional
whitespace).

The writers here are the sink's hot path (:mod:`cluster.sink`): the JSON one
wraps the gateway's own bytes without parsing them; the msgpack one parses
the payload once (orjson) and packs the object (msgpack's C packer).
:func:`decode_object` is the reader's first step; it raises only
:class:`protocol.errors.WireFormatError`.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from typing import Any, Final

import orjson

from protocol.errors import WireFormatError

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


#: ``(shard_id, the gateway's dispatch bytes) -> data``
DispatchEncoder = Callable[[int, bytes], bytes]


def detect_encoding(data: bytes) -> Encoding:
    """msgpack or JSON, from the first byte; WireFormatError for anything else."""
    if not data:
        raise WireFormatError("the data field is empty")
    first = data[0]
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return Encoding.MSGPACK
    if data.lstrip(_WHITESPACE)[:1] == b"{":
        return Encoding.JSON
    raise WireFormatError(
        f"the data field is neither a msgpack map nor a JSON object (0x{first:02x})"
    )


def decode_object(data: bytes) -> tuple[dict[str, Any], Encoding]:
    """The map one ``data`` field holds, and its encoding; WireFormatError otherwise."""
    encoding = detect_encoding(data)
    if encoding is Encoding.MSGPACK:
        try:
            obj = _msgpack.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises a dozen types for bad input
            raise WireFormatError(
                f"the data field is not valid msgpack ({type(exc).__name__})"
            ) from None
    else:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise WireFormatError(f"the data field is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireFormatError(f"the data field must hold a map, not {type(obj).__name__}")
    return obj, encoding


def encode_object(obj: dict[str, Any], encoding: Encoding = Encoding.MSGPACK) -> bytes:
    """``obj`` as a ``data`` field value in ``encoding``."""
    if encoding is Encoding.JSON:
        return orjson.dumps(obj)
    packed: bytes = _msgpack.packb(obj, use_bin_type=True)
    return packed


def _dispatch_json(shard_id: int, payload: bytes) -> bytes:
    # The gateway's bytes are already a JSON object: wrapped, never parsed.
    return b'{"shardId":%d,"payload":%b}' % (shard_id, payload)


_loads: Final = orjson.loads
_packb: Final = _msgpack.Packer(use_bin_type=True, autoreset=True).pack


def _dispatch_msgpack(shard_id: int, payload: bytes) -> bytes:
    packed: bytes = _packb({"shardId": shard_id, "payload": _loads(payload)})
    return packed


def dispatch_encoder(encoding: Encoding) -> DispatchEncoder:
    """The function that writes one dispatch's ``data`` field in ``encoding``.

    Its input is the gateway's payload exactly as received (a JSON object with
    op, t, s, d); the JSON writer trusts that, the msgpack one raises
    ``orjson.JSONDecodeError`` when it is not JSON.
    """
    return _dispatch_json if encoding is Encoding.JSON else _dispatch_msgpack
