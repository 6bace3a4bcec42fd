"""Transport compression of the gateway: zlib-stream and zstd-stream.

Both sides live here so the simulator compresses exactly what a shard
inflates. Rules (shared/PROTOCOL.md section 7):

- zlib-stream: one inflate context per connection; binary frames are
  buffered until the data ends with the Z_SYNC_FLUSH suffix ``00 00 ff ff``,
  then the buffer is inflated into one whole gateway message.
- zstd-stream: one decompression context per connection; every websocket
  message is a whole gateway message that does not end a zstd frame, so the
  decompressor consumes all input it is given.

A decompressor never grows without bound: pending input and inflated output
are capped at ``max_message_size``; corrupt input raises
:class:`DecompressionError`. Buffers kept for a large message are released
after it, so memory shrinks back.
"""

from __future__ import annotations

import enum
import zlib
from typing import Final, Protocol

import zstandard

from protocol.errors import DecompressionError, MessageTooLargeError

ZLIB_SUFFIX: Final = b"\x00\x00\xff\xff"
#: Default cap on one inflated inbound message. Discord documents no maximum;
#: READY/GUILD_CREATE/member chunks of tens of MB are real (PROTOCOL.md 7).
DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
#: A pending-input buffer larger than this is dropped (not kept) after use.
_SHRINK_THRESHOLD: Final = 1024 * 1024
#: zstd's worst inflation per input byte: a 4-byte block (3-byte header, 1 RLE
#: byte) can stand for a whole 128 KiB block (RFC 8878 3.1.1.2).
_ZSTD_MAX_RATIO: Final = 128 * 1024 // 4


class Compression(enum.Enum):
    NONE = "none"
    ZLIB_STREAM = "zlib-stream"
    ZSTD_STREAM = "zstd-stream"

    @property
    def query_value(self) -> str | None:
        """The ``compress=`` query value, or None when no transport compression."""
        return None if self is Compression.NONE else self.value


class Decompressor(Protocol):
    def feed(self, data: bytes) -> bytes | None:
        """Take one binary websocket message; return a whole gateway message or None."""
        ...


class ZlibStreamDecompressor:
    """Inflates a zlib-stream; one instance per connection."""

    __slots__ = ("_buffer", "_inflater", "_max")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._inflater = zlib.decompressobj()
        self._buffer = bytearray()
        self._max = max_message_size

    def feed(self, data: bytes) -> bytes | None:
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) > self._max:
                self._release()
                raise MessageTooLargeError(self._max)
            if not buffer.endswith(ZLIB_SUFFIX):
                return None
            pending: bytes | bytearray = buffer
        elif data.endswith(ZLIB_SUFFIX):
            pending = data  # the common case: one frame, one message, no copy
        else:
            if len(data) > self._max:
                raise MessageTooLargeError(self._max)
            buffer += data
            return None
        try:
            out = self._inflater.decompress(pending, self._max)
        except zlib.error as exc:
            raise DecompressionError(f"corrupt zlib-stream data: {exc}") from None
        finally:
            if pending is buffer:
                self._release()
        if self._inflater.unconsumed_tail:
            raise MessageTooLargeError(self._max)
        return out

    def _release(self) -> None:
        if len(self._buffer) > _SHRINK_THRESHOLD:
            self._buffer = bytearray()
        else:
            del self._buffer[:]


class ZstdStreamDecompressor:
    """Decompresses a zstd-stream; one instance per connection."""

    __slots__ = ("_dctx", "_max", "_step")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._dctx = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        self._max = max_message_size
        # python-zstandard's decompressobj has no output cap, so a few KB can
        # inflate to GBs. An input of n bytes completes at most n / 4 + 1 blocks
        # of at most 128 KiB each (_ZSTD_MAX_RATIO), so inputs up to _step bytes
        # stay within about twice the limit in one call; larger inputs are fed
        # in _step-sized slices and checked after each.
        self._step = max(64, max_message_size // _ZSTD_MAX_RATIO)

    def feed(self, data: bytes) -> bytes | None:
        try:
            if len(data) <= self._step:
                out: bytes = self._dctx.decompress(data)  # the common case: one call
            else:
                out = self._feed_sliced(data)
        except zstandard.ZstdError as exc:
            raise DecompressionError(f"corrupt zstd-stream data: {exc}") from None
        if len(out) > self._max:
            raise MessageTooLargeError(self._max)
        # A message cut short produces less than a whole payload; the caller's
        # JSON parse rejects it, and the next message cannot decode either.
        return out if out else None

    def _feed_sliced(self, data: bytes) -> bytes:
        step, limit, decompress = self._step, self._max, self._dctx.decompress
        view = memoryview(data)
        parts: list[bytes] = []
        size = 0
        for start in range(0, len(view), step):
            part: bytes = decompress(view[start : start + step])
            if part:
                size += len(part)
                if size > limit:
                    raise MessageTooLargeError(limit)
                parts.append(part)
        return b"".join(parts)


class PassthroughDecompressor:
    """No transport compression: every message is already whole."""

    __slots__ = ()

    def feed(self, data: bytes) -> bytes | None:
        return data


def make_decompressor(
    compression: Compression, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> Decompressor:
    if compression is Compression.ZLIB_STREAM:
        return ZlibStreamDecompressor(max_message_size)
    if compression is Compression.ZSTD_STREAM:
        return ZstdStreamDecompressor(max_message_size)
    return PassthroughDecompressor()


class Compressor(Protocol):
    def compress(self, message: bytes) -> bytes:
        """Compress one whole gateway message into one binary websocket message."""
        ...


class ZlibStreamCompressor:
    """Server side of zlib-stream: each message ends with a Z_SYNC_FLUSH."""

    __slots__ = ("_deflater",)

    def __init__(self, level: int = 6) -> None:
        self._deflater = zlib.compressobj(level)

    def compress(self, message: bytes) -> bytes:
        return self._deflater.compress(message) + self._deflater.flush(zlib.Z_SYNC_FLUSH)


class ZstdStreamCompressor:
    """Server side of zstd-stream: each message is a flushed block of one endless frame."""

    __slots__ = ("_cctx",)

    def __init__(self, level: int = 3) -> None:
        self._cctx = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, message: bytes) -> bytes:
        out: bytes = self._cctx.compress(message) + self._cctx.flush(
            zstandard.COMPRESSOBJ_FLUSH_BLOCK
        )
        return out


def make_compressor(compression: Compression) -> Compressor | None:
    if compression is Compression.ZLIB_STREAM:
        return ZlibStreamCompressor()
    if compression is Compression.ZSTD_STREAM:
        return ZstdStreamCompressor()
    return None
