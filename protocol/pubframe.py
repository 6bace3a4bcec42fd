"""The event stream on the PUB socket, format version 1 (DESIGN.md 4.2 and 6).

Every dispatch event is one ZeroMQ multipart message of exactly three frames::

    frame 0  topic    the event name in ASCII, e.g. b"MESSAGE_CREATE"; subscribers
                      filter by prefix (b"MESSAGE_" takes all message events,
                      b"" takes everything)
    frame 1  header   a compact JSON object with "shard_id" (int), "seq" (int, the
                      gateway sequence number in that shard's session) and
                      "session_id" (string, the gateway session the seq belongs
                      to): b'{"shard_id":3,"seq":42,"session_id":"9f0c..."}'.
                      "session_id" is left out when the relay does not know the
                      session (an event before any READY; producers older than
                      the key). Readers must ignore keys they do not know; later
                      versions only add keys.
    frame 2  payload  the gateway payload exactly as the gateway sent it (after
                      transport decompression): UTF-8 JSON with op, s, t, d

``(shard_id, session_id, seq)`` names an event: a subscriber detects a gap (a
seq skipped within a session) or a duplicate (a seq seen twice) across
sessions and reconnects without parsing any payload.

The header is written from a pre-formatted byte template (no dict, no JSON
encoder) because it is built once per event on the hot path: the relay builds
one template per shard and session (:func:`header_template`, the session id
JSON-encoded once) and formats only the seq per event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from protocol.errors import WireFormatError
from protocol.jsonframe import load_object

PUB_FORMAT_VERSION: Final = 1
FRAME_COUNT: Final = 3
#: The header of an event whose session is not known, ``HEADER_TEMPLATE % (shard_id, seq)``.
HEADER_TEMPLATE: Final = b'{"shard_id":%d,"seq":%d}'


@dataclass(frozen=True, slots=True)
class PubEvent:
    """One decoded PUB message."""

    topic: str
    shard_id: int
    seq: int
    header: dict[str, Any]
    payload: bytes
    #: The gateway session of ``seq``; None when the header has none (an older producer).
    session_id: str | None = None


def header_template(shard_id: int, session_id: str | None) -> bytes:
    """The header of one shard's session with ``%d`` for the seq: ``template % seq``.

    Built once per shard and session (the session id JSON-escaped, and any
    ``%`` in it doubled so the one ``%d`` is the only conversion).
    """
    if session_id is None:
        return b'{"shard_id":%d,"seq":%%d}' % shard_id
    # json, not orjson: ASCII-only output, and a lone surrogate is escaped, not refused
    quoted = json.dumps(session_id).encode("ascii").replace(b"%", b"%%")
    return b'{"shard_id":%d,"seq":%%d,"session_id":%b}' % (shard_id, quoted)


def encode_header(shard_id: int, seq: int, session_id: str | None = None) -> bytes:
    """The header frame for an event of ``shard_id`` with gateway sequence ``seq``."""
    if session_id is None:
        return HEADER_TEMPLATE % (shard_id, seq)
    return header_template(shard_id, session_id) % seq


def event_frames(
    topic: bytes, shard_id: int, seq: int, payload: bytes, session_id: str | None = None
) -> list[bytes]:
    """The three frames of one event, ready for ``send_multipart``."""
    return [topic, encode_header(shard_id, seq, session_id), payload]


def _header_int(header: dict[str, Any], key: str) -> int:
    if key not in header:
        raise WireFormatError(f"PUB header has no {key!r}")
    value = header[key]
    if type(value) is not int:  # bool is an int subclass and not a valid value
        raise WireFormatError(f"PUB header {key!r} must be an int, not {type(value).__name__}")
    if value < 0:
        raise WireFormatError(f"PUB header {key!r} must not be negative, got {value}")
    return value


def _header_session(header: dict[str, Any]) -> str | None:
    value = header.get("session_id")
    if value is None or isinstance(value, str):
        return value
    raise WireFormatError(f"PUB header 'session_id' must be a string, not {type(value).__name__}")


def decode_event(frames: Sequence[bytes]) -> PubEvent:
    """Decode one multipart message from the PUB socket; raise WireFormatError if malformed."""
    if len(frames) != FRAME_COUNT:
        raise WireFormatError(f"a PUB event has {FRAME_COUNT} frames, got {len(frames)}")
    raw_topic, raw_header, payload = frames
    try:
        topic = bytes(raw_topic).decode("ascii")
    except UnicodeDecodeError:
        raise WireFormatError("PUB topic is not ASCII") from None
    header = load_object(raw_header, "PUB header")
    return PubEvent(
        topic=topic,
        shard_id=_header_int(header, "shard_id"),
        seq=_header_int(header, "seq"),
        header=header,
        payload=bytes(payload),
        session_id=_header_session(header),
    )
