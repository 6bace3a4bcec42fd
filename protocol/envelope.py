"""A fast look at the envelope of a raw gateway payload: ``op``, ``t`` and ``s``.

This is the worker's hot path: every dispatch is routed by ``t`` and ``s``
and relayed verbatim, so parsing the whole ``d`` (often 1 KB, sometimes
MBs) into Python objects would be wasted work.

Discord and our simulator serialize the envelope compactly with the three
small keys first, ``{"t":...,"s":...,"op":...,"d":...}``. When the payload
starts with ``op``, ``t`` and ``s`` (in any order, compact, ``t`` null or a
plain printable-ASCII string without escapes, ``s`` and ``op`` integers of at
most 18 digits) followed by ``"d":`` and ends with ``}``, :func:`peek` reads
them with one anchored regular expression that never looks past ``"d":``.
Any other layout (``d`` first, whitespace, escapes, extra keys, huge
numbers) falls back to ``orjson.loads``.

Equivalence: for every JSON object with unique keys (RFC 7493, what Discord
sends), :func:`peek` returns exactly what ``orjson.loads`` yields for
``op``/``t``/``s``. Limits of the fast path, by design: it does not validate
``d`` (a payload with a good envelope and a corrupt body passes; the relay
forwards it verbatim and the subscriber's parse rejects it), and a duplicate
``t``/``s``/``op`` key after ``d`` is not seen.
"""

from __future__ import annotations

import re
from typing import Final

import orjson

from protocol.errors import MalformedPayloadError

# A JSON value the fast path understands: null, an escape-free printable ASCII
# string (0x20-0x7e without '"' and '\'), or an integer without leading zeros
# that fits in 64 bits (at most 18 digits: orjson turns larger ones into floats).
_VALUE: Final = rb'(null|"[ !#-\[\]-~]*"|-?(?:0|[1-9][0-9]{0,17}))'
_KEY: Final = rb'"(t|s|op)":'
#: The layout Discord and the simulator use: t, s, op, d.
_COMMON: Final = re.compile(
    rb'\{"t":(?:null|"([ !#-\[\]-~]*)"),"s":(null|-?(?:0|[1-9][0-9]{0,17})),'
    rb'"op":(-?(?:0|[1-9][0-9]{0,17})),"d":'
)
#: The same three keys in any order before "d".
_ANY_ORDER: Final = re.compile(
    rb"\{" + _KEY + _VALUE + rb"," + _KEY + _VALUE + rb"," + _KEY + _VALUE + rb',"d":'
)

Envelope = tuple[int, str | None, int | None]


def peek(payload: bytes) -> Envelope:
    """Return ``(op, t, s)`` of a gateway payload; raise MalformedPayloadError if it has none."""
    if payload[-1:] == b"}":
        match = _COMMON.match(payload)
        if match is not None:
            t, s, op = match.groups()
            return (
                int(op),
                None if t is None else t.decode("ascii"),
                None if s == b"null" else int(s),
            )
        match = _ANY_ORDER.match(payload)
        if match is not None:
            envelope = _from_any_order(match.groups())
            if envelope is not None:
                return envelope
    return _slow_peek(payload)


def _from_any_order(groups: tuple[bytes, ...]) -> Envelope | None:
    values = {groups[0]: groups[1], groups[2]: groups[3], groups[4]: groups[5]}
    if len(values) != 3:
        return None  # a repeated key: let orjson decide which one wins
    raw_op, raw_t, raw_s = values[b"op"], values[b"t"], values[b"s"]
    if raw_op[:1] in (b"n", b'"') or raw_t[:1] not in (b"n", b'"') or raw_s[:1] == b'"':
        return None  # a wrong type somewhere: the slow path raises the precise error
    return (
        int(raw_op),
        None if raw_t == b"null" else raw_t[1:-1].decode("ascii"),
        None if raw_s == b"null" else int(raw_s),
    )


def _slow_peek(payload: bytes) -> Envelope:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayloadError(f"gateway payload is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise MalformedPayloadError(
            f"gateway payload must be a JSON object, not {type(obj).__name__}"
        )
    op = obj.get("op")
    if type(op) is not int:  # bool is an int subclass, and not an opcode
        raise MalformedPayloadError(f"gateway payload op must be an int, not {type(op).__name__}")
    t = obj.get("t")
    if t is not None and type(t) is not str:
        raise MalformedPayloadError(
            f"gateway payload t must be a string or null, not {type(t).__name__}"
        )
    s = obj.get("s")
    if s is not None and type(s) is not int:
        raise MalformedPayloadError(
            f"gateway payload s must be an int or null, not {type(s).__name__}"
        )
    return op, t, s
