"""CurveZMQ (rfc.zeromq.org/spec/26) on ZMTP 3.0 (spec/23, 25): key formats and the server side.

Pure: no sockets, no files. The PUB socket (:mod:`cluster.publisher`) speaks
ZMTP itself on a ZMQ_STREAM socket, so with CURVE on it runs the server half of
the handshake and boxes every frame with the classes here; libzmq's SUB
(``curve_serverkey``, ``curve_publickey``, ``curve_secretkey``) is the client.

Keys are Curve25519 keys of 32 bytes, written as 40 characters of Z85
(spec/32), as ``zmq.curve_keypair()`` makes them. A key file holds one Z85
key per line; blank lines and lines starting with ``#`` are skipped.

Commands (ZMTP command bodies: a name-size byte, the name, the data; offsets
count from the start of the body; ``Box[x](A->B)`` is ``crypto_box`` of ``x``
from A's secret to B's public key, 16 bytes of MAC in front)::

    HELLO     200 bytes  "\\x05HELLO" | version 1.0 | 72 zero bytes | C' (32)
                         | short nonce (8) | Box[64 zero bytes](C'->S) (80)
                         nonce "CurveZMQHELLO---" + short nonce
    WELCOME   168 bytes  "\\x07WELCOME" | nonce (16) | Box[S' + cookie](S->C') (144)
                         nonce "WELCOME-" + nonce; cookie = nonce (16) +
                         secretbox[C' + s'](K) (80) with "COOKIE--" + nonce and a
                         key K of this connection only
    INITIATE  257+ bytes "\\x08INITIATE" | cookie (96) | short nonce (8)
                         | Box[C + vouch nonce (16) + vouch (80) + metadata](C'->S')
                         nonce "CurveZMQINITIATE" + short nonce;
                         vouch = Box[C' + S](C->S') with "VOUCH---" + vouch nonce
    READY     30+ bytes  "\\x05READY" | short nonce (8) | Box[metadata](S'->C')
                         nonce "CurveZMQREADY---" + short nonce
    MESSAGE   33+ bytes  "\\x07MESSAGE" | short nonce (8) | Box[flags (1) + frame](C'<->S')
                         nonce "CurveZMQMESSAGEC" (client to server) or
                         "CurveZMQMESSAGES" (server to client) + short nonce;
                         flags: 0x01 more frames follow, 0x02 a ZMTP command
    ERROR                "\\x05ERROR" | reason size (1) | reason, not boxed

S, s are the server's long-term public and secret key, C the client's
long-term public key, C'/S' and s' the short-term keys of one connection.
Short nonces are 8-byte big-endian counters that strictly increase in each
direction (HELLO 1, INITIATE 2, then the client's messages; READY 1, then the
server's messages). On the wire every MESSAGE is an ordinary ZMTP frame with
no flags set (libzmq 4.3 sends it so): the frame's own MORE and COMMAND bits
travel inside the box.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from protocol.errors import WireFormatError

try:
    # PyNaCl's own cffi handle on libsodium: boxing in place into one buffer per chunk
    # costs a third of the public binding (which allocates and copies per call). Not
    # part of PyNaCl's API, so the public binding stays as the fallback.
    from nacl._sodium import ffi as _ffi  # type: ignore[import-not-found]
    from nacl._sodium import lib as _lib

    _box_in_place = _lib.crypto_box_easy_afternm
except (ImportError, AttributeError):  # pragma: no cover - a PyNaCl without it
    _ffi = _box_in_place = None

#: Bytes of a Curve25519 public or secret key.
KEY_BYTES: Final = 32
#: Z85 characters of a key.
Z85_KEY_CHARS: Final = 40
#: The Z85 alphabet (spec/32): 85 printable characters, no quotes, no backslash, no space.
Z85_ALPHABET: Final = (
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
_Z85_VALUE: Final = {char: value for value, char in enumerate(Z85_ALPHABET)}

#: Flags inside a MESSAGE box.
MESSAGE_MORE: Final = 0x01
MESSAGE_COMMAND: Final = 0x02

_HELLO: Final = b"\x05HELLO"
_WELCOME: Final = b"\x07WELCOME"
_INITIATE: Final = b"\x08INITIATE"
_READY: Final = b"\x05READY"
_MESSAGE: Final = b"\x07MESSAGE"
_ERROR: Final = b"\x05ERROR"
_HELLO_SIZE: Final = 200
_INITIATE_MIN: Final = 257
_MESSAGE_MIN: Final = 33  # name 8 + nonce 8 + MAC 16 + flags 1
_ZMTP_COMMAND: Final = 0x04
_ZMTP_LONG: Final = 0x02
#: Room for a box's MAC, then its flags byte (more / last frame of a message).
_ROOM_MORE: Final = bytes(16) + bytes((MESSAGE_MORE,))
_ROOM_LAST: Final = bytes(17)


class CurveKeyError(ValueError):
    """A key or a key file is malformed. The message never holds key material."""


class CurveHandshakeError(WireFormatError):
    """A peer broke CurveZMQ; the connection ends.

    ``status_code`` is what an ERROR command tells the client ("400": its key
    is not allowed), or None when the connection just closes (libzmq sends no
    ERROR for a box it cannot open either).
    """

    def __init__(self, message: str, status_code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


# -- keys -------------------------------------------------------------------------------------


def z85_encode(data: bytes) -> str:
    """Z85 of ``data`` (its length a multiple of 4)."""
    if len(data) % 4:
        raise ValueError(f"Z85 encodes multiples of 4 bytes, got {len(data)}")
    out = bytearray()
    for at in range(0, len(data), 4):
        value = int.from_bytes(data[at : at + 4], "big")
        chunk = bytearray(5)
        for i in range(4, -1, -1):
            value, digit = divmod(value, 85)
            chunk[i] = Z85_ALPHABET[digit]
        out += chunk
    return out.decode("ascii")


def z85_decode(text: str | bytes) -> bytes:
    """The bytes of Z85 ``text``; CurveKeyError when it is not Z85."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    if len(raw) % 5:
        raise CurveKeyError(f"Z85 text is a multiple of 5 characters, got {len(raw)}")
    out = bytearray()
    for at in range(0, len(raw), 5):
        value = 0
        for char in raw[at : at + 5]:
            digit = _Z85_VALUE.get(char)
            if digit is None:
                raise CurveKeyError("not Z85: a character outside the Z85 alphabet")
            value = value * 85 + digit
        if value > 0xFFFFFFFF:
            raise CurveKeyError("not Z85: a 5-character group is over 2^32 - 1")
        out += value.to_bytes(4, "big")
    return bytes(out)


def decode_key(key: str | bytes) -> bytes:
    """A key given as 40 Z85 characters or as 32 raw bytes -> the 32 raw bytes."""
    if isinstance(key, bytes | bytearray) and len(key) == KEY_BYTES:
        return bytes(key)
    text = key.strip() if isinstance(key, str) else bytes(key).strip()
    if len(text) != Z85_KEY_CHARS:
        raise CurveKeyError(
            f"a CURVE key is {Z85_KEY_CHARS} Z85 characters (or {KEY_BYTES} raw bytes), "
            f"got {len(text)} characters"
        )
    return z85_decode(text)


def encode_key(key: bytes) -> str:
    """The 40-character Z85 form of a 32-byte key."""
    if len(key) != KEY_BYTES:
        raise CurveKeyError(f"a CURVE key is {KEY_BYTES} bytes, got {len(key)}")
    return z85_encode(key)


def parse_key_lines(text: str) -> list[bytes]:
    """The keys of a key file: one Z85 key per line, blank lines and ``#`` comments skipped.

    CurveKeyError names the first bad line by its number (never its content).
    """
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            keys.append(decode_key(stripped))
        except CurveKeyError as exc:
            raise CurveKeyError(f"line {number}: {exc}") from None
    return keys


def public_key_of(secret_key: bytes) -> bytes:
    """The public key that belongs to a 32-byte secret key."""
    if len(secret_key) != KEY_BYTES:
        raise CurveKeyError(f"a CURVE key is {KEY_BYTES} bytes, got {len(secret_key)}")
    return bytes(sodium.crypto_scalarmult_base(secret_key))


def new_key_pair() -> tuple[bytes, bytes]:
    """A fresh (public, secret) key pair, 32 bytes each."""
    public, secret = sodium.crypto_box_keypair()
    return bytes(public), bytes(secret)


@dataclass(frozen=True, slots=True)
class CurveServerKeys:
    """A CURVE server: its key pair and the client public keys it admits."""

    secret_key: bytes = field(repr=False)
    allowed: frozenset[bytes]
    public_key: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_key", public_key_of(self.secret_key))
        if any(len(key) != KEY_BYTES for key in self.allowed):
            raise CurveKeyError(f"an allowed client key is not {KEY_BYTES} bytes")

    def admits(self, client_key: bytes) -> bool:
        return client_key in self.allowed


# -- ZMTP pieces --------------------------------------------------------------------------------


def command_frame(body: bytes) -> bytes:
    """A ZMTP 3.0 command frame around a command body (name-size byte, name, data)."""
    size = len(body)
    if size < 256:
        return bytes((_ZMTP_COMMAND, size)) + body
    return bytes((_ZMTP_COMMAND | _ZMTP_LONG,)) + size.to_bytes(8, "big") + body


def error_command(reason: str) -> bytes:
    """The body of an ERROR command (sent unboxed, during the handshake)."""
    text = reason.encode("ascii", "replace")[:255]
    return _ERROR + bytes((len(text),)) + text


def metadata_property(name: bytes, value: bytes) -> bytes:
    return bytes((len(name),)) + name + len(value).to_bytes(4, "big") + value


def parse_metadata(data: bytes) -> dict[bytes, bytes]:
    """ZMTP metadata (name-size, name, 4-byte value-size, value)* -> {lower-case name: value}."""
    properties: dict[bytes, bytes] = {}
    at = 0
    end = len(data)
    while at < end:
        name_size = data[at]
        name = data[at + 1 : at + 1 + name_size]
        at += 1 + name_size
        if not name_size or at + 4 > end:
            raise CurveHandshakeError("garbled metadata")
        value_size = int.from_bytes(data[at : at + 4], "big")
        at += 4
        if at + value_size > end:
            raise CurveHandshakeError("garbled metadata")
        properties[name.lower()] = data[at : at + value_size]
        at += value_size
    return properties


# -- one connection, server side ----------------------------------------------------------------


class MessageBox:
    """The MESSAGE commands of one connection once the handshake is done.

    ``seal_*`` box what we send (a nonce counter of our own), :meth:`open`
    unboxes what the peer sends and refuses a nonce that does not increase.
    """

    __slots__ = ("_key", "_recv_nonce", "_recv_prefix", "_send_nonce", "_send_prefix")

    def __init__(
        self,
        precomputed: bytes,
        *,
        send_prefix: bytes = b"CurveZMQMESSAGES",
        recv_prefix: bytes = b"CurveZMQMESSAGEC",
        send_nonce: int = 0,
        recv_nonce: int = 0,
    ) -> None:
        self._key = precomputed
        self._send_prefix = send_prefix
        self._recv_prefix = recv_prefix
        #: the last short nonce used by us / seen from the peer
        self._send_nonce = send_nonce
        self._recv_nonce = recv_nonce

    def next_nonce(self) -> bytes:
        self._send_nonce += 1
        return self._send_nonce.to_bytes(8, "big")

    def seal_messages(self, frames: Sequence[bytes | memoryview], parts: int) -> bytearray:
        """ZMTP frames of MESSAGE commands for ``frames``, ``parts`` frames per message, joined.

        Each frame is its own box (the protocol has no other way); every frame but
        the last of each message carries the MORE flag inside its box. One pass
        lays out heads, room for the MACs, flags and frames in one buffer (the one
        copy of the frames); a second boxes each frame there in place.
        """
        if _box_in_place is None:  # pragma: no cover - a PyNaCl without its cffi module
            return bytearray(self._seal_messages_copying(frames, parts))
        pieces: list[bytes | memoryview] = []
        add = pieces.append
        boxes: list[tuple[int, int, bytes]] = []
        prefix = self._send_prefix
        nonce = self._send_nonce
        last = parts - 1
        part = 0
        at = 0
        for frame in frames:
            size = len(frame)
            body = size + _MESSAGE_MIN
            nonce += 1
            short = nonce.to_bytes(8, "big")
            if body < 256:
                add(bytes((0, body)) + _MESSAGE + short)
                at += 18
            else:
                add(bytes((_ZMTP_LONG,)) + body.to_bytes(8, "big") + _MESSAGE + short)
                at += 25
            add(_ROOM_MORE if part != last else _ROOM_LAST)
            add(frame)
            # the box starts with its MAC at ``at``; flags and frame follow, boxed in place
            boxes.append((at, size + 1, prefix + short))
            at += size + 17
            part = 0 if part == last else part + 1
        buf = bytearray(b"".join(pieces))
        pointer = _ffi.from_buffer(buf)
        box = _box_in_place
        key = self._key
        for offset, length, full_nonce in boxes:
            if box(pointer + offset, pointer + (offset + 16), length, full_nonce, key):
                raise RuntimeError("crypto_box_easy_afternm failed")  # pragma: no cover
        self._send_nonce = nonce
        return buf

    def _seal_messages_copying(self, frames: Sequence[bytes | memoryview], parts: int) -> bytes:
        """:meth:`seal_messages` through PyNaCl's public binding (same bytes, slower)."""
        box = sodium.crypto_box_easy_afternm
        key = self._key
        prefix = self._send_prefix
        nonce = self._send_nonce
        out: list[bytes] = []
        append = out.append
        last = parts - 1
        part = 0
        for frame in frames:
            nonce += 1
            short = nonce.to_bytes(8, "big")
            sealed = box((b"\x01" if part != last else b"\x00") + frame, prefix + short, key)
            size = len(sealed) + 16
            append(bytes((0, size)) if size < 256 else b"\x02" + size.to_bytes(8, "big"))
            append(_MESSAGE)
            append(short)
            append(sealed)
            part = 0 if part == last else part + 1
        self._send_nonce = nonce
        return b"".join(out)

    def seal_command(self, body: bytes) -> bytes:
        """One ZMTP frame: a MESSAGE carrying a ZMTP command (PONG, say) with the COMMAND flag."""
        short = self.next_nonce()
        sealed = sodium.crypto_box_easy_afternm(
            bytes((MESSAGE_COMMAND,)) + body, self._send_prefix + short, self._key
        )
        size = len(sealed) + 16
        head = bytes((0, size)) if size < 256 else b"\x02" + size.to_bytes(8, "big")
        return head + _MESSAGE + short + sealed

    def open(self, body: bytes) -> tuple[int, bytes]:
        """A MESSAGE command body -> (flags, frame); CurveHandshakeError when it is not one of ours."""
        if len(body) < _MESSAGE_MIN or body[:8] != _MESSAGE:
            raise CurveHandshakeError("not a MESSAGE command after the handshake")
        short = body[8:16]
        nonce = int.from_bytes(short, "big")
        if nonce <= self._recv_nonce:
            raise CurveHandshakeError("a MESSAGE nonce that does not increase (a replay?)")
        try:
            plain = sodium.crypto_box_open_easy_afternm(
                body[16:], self._recv_prefix + short, self._key
            )
        except (CryptoError, ValueError, TypeError):
            raise CurveHandshakeError("a MESSAGE box that does not open") from None
        self._recv_nonce = nonce
        return plain[0], plain[1:]


class HandshakeState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_INITIATE = "await_initiate"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Initiated:
    """A client that finished the handshake: who it is and what to send it."""

    client_key: bytes
    #: the INITIATE's metadata, names in lower case (``b"socket-type"``, ...)
    properties: dict[bytes, bytes]
    #: the READY command body to send
    ready: bytes
    box: MessageBox = field(repr=False)


class ServerHandshake:
    """The server half of one connection's handshake: HELLO -> WELCOME, INITIATE -> READY.

    ``metadata`` is what our READY carries (``Socket-Type`` at least). Every
    failure raises :class:`CurveHandshakeError`; the client's long-term key is
    checked against ``keys.allowed`` only after its vouch proved it holds the
    secret half.
    """

    __slots__ = (
        "_client_short",
        "_cookie_key",
        "_keys",
        "_metadata",
        "_peer_nonce",
        "_short_public",
        "_short_secret",
        "state",
    )

    def __init__(self, keys: CurveServerKeys, metadata: bytes) -> None:
        self._keys = keys
        self._metadata = metadata
        self.state = HandshakeState.AWAIT_HELLO
        self._client_short = b""
        self._short_public = b""
        self._short_secret = b""
        self._cookie_key = b""
        self._peer_nonce = 0

    def hello(self, body: bytes) -> bytes:
        """A HELLO command body -> the WELCOME command body."""
        if self.state is not HandshakeState.AWAIT_HELLO:
            raise CurveHandshakeError("HELLO out of order")
        if body[:6] != _HELLO:
            raise CurveHandshakeError("the first CURVE command is not HELLO")
        if len(body) != _HELLO_SIZE:
            raise CurveHandshakeError(f"a {len(body)}-byte HELLO ({_HELLO_SIZE} expected)")
        if body[6:8] != b"\x01\x00":
            raise CurveHandshakeError(f"CurveZMQ version {body[6]}.{body[7]} (1.0 expected)")
        client_short = body[80:112]
        short = body[112:120]
        try:
            signature = sodium.crypto_box_open(
                body[120:200], b"CurveZMQHELLO---" + short, client_short, self._keys.secret_key
            )
        except (CryptoError, ValueError, TypeError):
            raise CurveHandshakeError(
                "cannot open the HELLO box: the client has another server key"
            ) from None
        if signature != bytes(64):
            raise CurveHandshakeError("a HELLO signature that is not 64 zero bytes")
        self._peer_nonce = int.from_bytes(short, "big")
        self._client_short = client_short
        self._short_public, self._short_secret = new_key_pair()
        self._cookie_key = os.urandom(32)
        cookie_nonce = os.urandom(16)
        cookie = cookie_nonce + sodium.crypto_secretbox(
            client_short + self._short_secret, b"COOKIE--" + cookie_nonce, self._cookie_key
        )
        welcome_nonce = os.urandom(16)
        box = sodium.crypto_box(
            self._short_public + cookie,
            b"WELCOME-" + welcome_nonce,
            client_short,
            self._keys.secret_key,
        )
        self.state = HandshakeState.AWAIT_INITIATE
        return _WELCOME + welcome_nonce + box

    def initiate(self, body: bytes) -> Initiated:
        """An INITIATE command body -> the client, its metadata, our READY and the message box."""
        if self.state is not HandshakeState.AWAIT_INITIATE:
            raise CurveHandshakeError("INITIATE out of order")
        if body[:9] != _INITIATE:
            raise CurveHandshakeError("the command after WELCOME is not INITIATE")
        if len(body) < _INITIATE_MIN:
            raise CurveHandshakeError(f"a {len(body)}-byte INITIATE (at least {_INITIATE_MIN})")
        try:
            cookie = sodium.crypto_secretbox_open(
                body[25:105], b"COOKIE--" + body[9:25], self._cookie_key
            )
        except (CryptoError, ValueError, TypeError):
            raise CurveHandshakeError("an INITIATE whose cookie does not open") from None
        if not hmac.compare_digest(cookie, self._client_short + self._short_secret):
            raise CurveHandshakeError("an INITIATE with another connection's cookie")
        short = body[105:113]
        nonce = int.from_bytes(short, "big")
        if nonce <= self._peer_nonce:
            raise CurveHandshakeError("an INITIATE nonce that does not increase")
        try:
            plain = sodium.crypto_box_open(
                body[113:], b"CurveZMQINITIATE" + short, self._client_short, self._short_secret
            )
        except (CryptoError, ValueError, TypeError):
            raise CurveHandshakeError("an INITIATE box that does not open") from None
        client_key = plain[:32]
        try:
            vouch = sodium.crypto_box_open(
                plain[48:128], b"VOUCH---" + plain[32:48], client_key, self._short_secret
            )
        except (CryptoError, ValueError, TypeError):
            raise CurveHandshakeError(
                "an INITIATE whose vouch does not open: the client lacks its secret key"
            ) from None
        if not hmac.compare_digest(vouch, self._client_short + self._keys.public_key):
            raise CurveHandshakeError("an INITIATE vouching for another connection or server")
        if not self._keys.admits(client_key):
            raise CurveHandshakeError(
                f"client key {encode_key(client_key)} is not in the allowed list", "400"
            )
        properties = parse_metadata(plain[128:])
        precomputed = sodium.crypto_box_beforenm(self._client_short, self._short_secret)
        box = MessageBox(precomputed, recv_nonce=nonce)
        ready_short = box.next_nonce()
        ready = (
            _READY
            + ready_short
            + sodium.crypto_box_easy_afternm(
                self._metadata, b"CurveZMQREADY---" + ready_short, precomputed
            )
        )
        self.state = HandshakeState.DONE
        # The cookie key and the short-term secret are not needed any more.
        self._cookie_key = self._short_secret = b""
        return Initiated(client_key, properties, ready, box)
