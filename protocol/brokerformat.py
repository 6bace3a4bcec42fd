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
the payload once (orjson) and packs the object with msgspec's encoder, which
writes the same bytes as msgpack's packer (``use_bin_type=True``: the
smallest int, str8/16/32, float64; checked by hypothesis) in about half its
time (``msgpack`` still reads entries and packs commands).
:func:`decode_object` is the reader's first step; it raises only
:class:`protocol.errors.WireFormatError`.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from typing import Any, Final

import msgspec
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


def _json_writer() -> DispatchEncoder:
    # The gateway's bytes are already a JSON object: wrapped, never parsed. The head of each
    # shard is written once; joining three pieces takes half the time of a %-format.
    heads: dict[int, bytes] = {}
    join = b"".join

    def write(shard_id: int, payload: bytes) -> bytes:
        head = heads.get(shard_id)
        if head is None:
            head = heads[shard_id] = b'{"shardId":%d,"payload":' % shard_id
        return join((head, payload, b"}"))

    return write


_loads: Final = orjson.loads
# msgspec, not msgpack's Packer: the same bytes for every JSON value (tests/unit/
# test_brokerformat.py), 1.7 against 4 us for a 1 KB MESSAGE_CREATE; the parse (orjson,
# ~3 us) is the rest of the cost.
_encode: Final = msgspec.msgpack.Encoder().encode


def _dispatch_msgpack(shard_id: int, payload: bytes) -> bytes:
    obj = {"shardId": shard_id, "payload": _loads(payload)}
    try:
        return _encode(obj)
    except RecursionError:
        # nested deeper than ~1,000 (orjson reads up to 1,024): not from Discord
        raise ValueError("the payload is nested too deeply for msgpack") from None


def dispatch_encoder(encoding: Encoding) -> DispatchEncoder:
    """The function that writes one dispatch's ``data`` field in ``encoding``.

    Its input is the gateway's payload exactly as received (a JSON object with
    op, t, s, d); the JSON writer trusts that, the msgpack one raises
    ``ValueError`` (``orjson.JSONDecodeError`` when it is not JSON) when it
    cannot encode it.
    """
    return _json_writer() if encoding is Encoding.JSON else _dispatch_msgpack
