"""ZMTP 3.0 (rfc.zeromq.org/spec/23): the greeting, frame flags and commands the
cluster's own ZeroMQ endpoints speak (cluster/publisher.py's XPUB side for
subscribers; the workers' channel: cluster/channel.py's PULL side and
worker/output.py's PUSH side).

Pure code: building a greeting and commands, checking a peer's greeting,
reading the Socket-Type of a READY, and reading a NULL peer's whole handshake.
Only the NULL mechanism is spelled here; CURVE lives in :mod:`protocol.curvezmq`.
"""

from __future__ import annotations

import struct
from typing import Final

#: signature (0xFF, 8 bytes padding, 0x7F), version 3.0, mechanism NULL, as-server 0, filler
GREETING: Final = (
    b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)
)
#: The greeting with CURVE, as-server 1.
CURVE_GREETING: Final = (
    b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\x00") + b"\x01" + bytes(31)
)
GREETING_SIZE: Final = 64
FLAG_MORE: Final = 0x01
FLAG_LONG: Final = 0x02
FLAG_COMMAND: Final = 0x04
#: Frame heads of short frames (under 256 bytes) by size: ``SHORT_MORE[n]`` (more
#: frames follow), ``SHORT_LAST[n]`` (the message's last frame).
SHORT_MORE: Final = tuple(bytes((FLAG_MORE, n)) for n in range(256))
SHORT_LAST: Final = tuple(bytes((0, n)) for n in range(256))
#: The head of a long frame: ``long_head(flags | FLAG_LONG, size)`` (one C call).
long_head: Final = struct.Struct(">BQ").pack
_LONG_MORE: Final = FLAG_MORE | FLAG_LONG


def head_more(size: int) -> bytes:
    """The head of a frame of ``size`` bytes that more frames follow."""
    return SHORT_MORE[size] if size < 256 else long_head(_LONG_MORE, size)


def head_last(size: int) -> bytes:
    """The head of a message's last frame of ``size`` bytes."""
    return SHORT_LAST[size] if size < 256 else long_head(FLAG_LONG, size)


def framed_size(size: int) -> int:
    """Bytes of a frame of ``size`` bytes with its head."""
    return size + (2 if size < 256 else 9)


class ProtocolError(Exception):
    """A peer broke ZMTP; it is disconnected."""


def command(name: bytes, data: bytes) -> bytes:
    """A command frame (head included)."""
    body = bytes((len(name),)) + name + data
    if len(body) < 256:
        return bytes((FLAG_COMMAND, len(body))) + body
    return bytes((FLAG_COMMAND | FLAG_LONG,)) + len(body).to_bytes(8, "big") + body


def metadata(name: bytes, value: bytes) -> bytes:
    """One property of a READY command's metadata."""
    return bytes((len(name),)) + name + len(value).to_bytes(4, "big") + value


def handshake(socket_type: bytes) -> bytes:
    """What a NULL endpoint of ``socket_type`` sends as soon as a peer connects: the
    greeting and its READY (a peer that speaks ZMTP 3 does not wait for ours first)."""
    return GREETING + command(b"READY", metadata(b"Socket-Type", socket_type))


def check_greeting(inbox: bytes | bytearray, mechanism: bytes) -> bool:
    """Whether ``inbox`` starts with a whole greeting (False: wait for more) of a ZMTP 3
    peer with ``mechanism``; :class:`ProtocolError` as soon as it cannot be one.

    A peer naming CURVE must be its client (as-server 0).
    """
    if not inbox:
        return False
    if inbox[0] != 0xFF or (len(inbox) >= 10 and inbox[9] != 0x7F):
        raise ProtocolError("not a ZMTP 3 greeting")
    if len(inbox) < GREETING_SIZE:
        return False
    if inbox[10] < 3:
        raise ProtocolError(f"ZMTP {inbox[10]}.{inbox[11]} (3.0 or later needed)")
    named = bytes(inbox[12:32]).rstrip(b"\x00")
    if named != mechanism:
        raise ProtocolError(
            f"security mechanism {named.decode('ascii', 'replace')!r} "
            f"(this socket takes {mechanism.decode()} only)"
        )
    if inbox[32] and mechanism == b"CURVE":
        raise ProtocolError("a CURVE peer that says it is a server")
    return True


def ready_socket_type(data: bytes | memoryview) -> bytes | None:
    """The Socket-Type property of a READY command's metadata (None when absent or garbled)."""
    at = 0
    while at < len(data):
        name_size = data[at]
        name = bytes(data[at + 1 : at + 1 + name_size])
        at += 1 + name_size
        if at + 4 > len(data):
            return None
        value_size = int.from_bytes(data[at : at + 4], "big")
        value = bytes(data[at + 4 : at + 4 + value_size])
        at += 4 + value_size
        if at > len(data):
            return None
        if name.lower() == b"socket-type":
            return value
    return None


def read_handshake(inbox: bytes | bytearray, socket_type: bytes) -> int:
    """How many bytes of ``inbox`` a NULL peer's greeting and READY take once both are in
    (0: wait for more); :class:`ProtocolError` as soon as they cannot be a ``socket_type``'s.

    Our peers (libzmq and ours) send their READY right after the greeting, short.
    """
    if not check_greeting(inbox, b"NULL"):
        return 0
    at = GREETING_SIZE
    if len(inbox) < at + 2:
        return 0
    flags, size = inbox[at], inbox[at + 1]
    if flags & FLAG_LONG or not flags & FLAG_COMMAND:
        raise ProtocolError("the first frame after the greeting is not a short command")
    end = at + 2 + size
    if len(inbox) < end:
        return 0
    body = bytes(inbox[at + 2 : end])
    if body[:6] != b"\x05READY":
        raise ProtocolError("the first command is not READY")
    peer_type = ready_socket_type(body[6:])
    if peer_type != socket_type:
        raise ProtocolError(f"a {peer_type!r} peer ({socket_type.decode()} expected)")
    return end
