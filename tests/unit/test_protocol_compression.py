"""Transport decompression (PROTOCOL.md 7) against real zlib-stream and zstd-stream streams."""

from __future__ import annotations

import itertools
import random
import sys
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.compression import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ZLIB_SUFFIX,
    Compression,
    PassthroughDecompressor,
    ZlibStreamCompressor,
    ZlibStreamDecompressor,
    ZstdStreamCompressor,
    ZstdStreamDecompressor,
    make_compressor,
    make_decompressor,
)
from protocol.errors import DecompressionError, MessageTooLargeError

SMALL_MAX = 256 * 1024

json_like = st.builds(
    lambda t, s, body: b'{"t":"%s","s":%d,"op":0,"d":{"content":"%s"}}' % (t, s, body),
    st.sampled_from([b"MESSAGE_CREATE", b"PRESENCE_UPDATE", b"READY"]),
    st.integers(0, 10**9),
    st.binary(max_size=300).map(lambda b: b.hex().encode()),
)
messages_st = st.lists(json_like | st.binary(min_size=1, max_size=2000), min_size=1, max_size=12)


def feed_all(
    decompressor: ZlibStreamDecompressor | ZstdStreamDecompressor, pieces: list[bytes]
) -> list[bytes]:
    out = []
    for piece in pieces:
        result = decompressor.feed(piece)
        if result is not None:
            out.append(result)
    return out


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def zlib_stream(messages: list[bytes]) -> list[bytes]:
    compressor = ZlibStreamCompressor()
    return [compressor.compress(m) for m in messages]


def zstd_stream(messages: list[bytes]) -> list[bytes]:
    compressor = ZstdStreamCompressor()
    return [compressor.compress(m) for m in messages]


# --- zlib-stream -----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    messages=messages_st, points=st.lists(st.integers(min_value=0), max_size=30), mid=st.booleans()
)
def test_zlib_cut_anywhere_within_messages_yields_the_messages(
    messages: list[bytes], points: list[int], mid: bool
) -> None:
    frames = zlib_stream(messages)
    assert all(f.endswith(ZLIB_SUFFIX) for f in frames)
    stream = b"".join(frames)
    boundaries, pos = [], 0
    for frame in frames:
        pos += len(frame)
        boundaries.append(pos)
        if mid:  # split one message's suffix itself: "...00 00" | "ff ff"
            boundaries.append(pos - 2)
    pieces = cut(stream, points + boundaries)
    assert feed_all(ZlibStreamDecompressor(), pieces) == messages


@settings(max_examples=150, deadline=None)
@given(messages=messages_st, points=st.lists(st.integers(min_value=0), max_size=30))
def test_zlib_arbitrary_cuts_yield_whole_runs_of_messages(
    messages: list[bytes], points: list[int]
) -> None:
    """Pieces that span messages inflate together: the output is runs of whole messages."""
    stream = b"".join(zlib_stream(messages))
    out = feed_all(ZlibStreamDecompressor(), cut(stream, points))
    assert b"".join(out) == b"".join(messages)
    ends, pos = set(), 0
    for m in messages:
        pos += len(m)
        ends.add(pos)
    pos = 0
    for chunk in out:
        pos += len(chunk)
        assert pos in ends


def test_zlib_single_frame_fast_path_and_passthrough() -> None:
    decompressor = ZlibStreamDecompressor()
    compressor = ZlibStreamCompressor()
    for i in range(50):
        message = b'{"op":0,"s":%d}' % i
        assert decompressor.feed(compressor.compress(message)) == message
    assert PassthroughDecompressor().feed(b"x") == b"x"
    assert isinstance(make_decompressor(Compression.ZLIB_STREAM), ZlibStreamDecompressor)
    assert isinstance(make_decompressor(Compression.ZSTD_STREAM), ZstdStreamDecompressor)
    assert isinstance(make_decompressor(Compression.NONE), PassthroughDecompressor)
    assert make_compressor(Compression.NONE) is None
    assert Compression.NONE.query_value is None
    assert Compression.ZSTD_STREAM.query_value == "zstd-stream"


# --- zstd-stream -----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(messages=messages_st, points=st.lists(st.integers(min_value=0), max_size=30))
def test_zstd_whole_messages_and_arbitrary_cuts(messages: list[bytes], points: list[int]) -> None:
    frames = zstd_stream(messages)
    decompressor = ZstdStreamDecompressor()
    assert [decompressor.feed(f) for f in frames] == messages
    # A small limit feeds every input over 64 bytes in slices: same messages.
    sliced = ZstdStreamDecompressor(4096)
    assert [sliced.feed(f) for f in frames] == messages
    out = feed_all(ZstdStreamDecompressor(), cut(b"".join(frames), points))
    assert b"".join(out) == b"".join(messages)


# --- corrupt input ---------------------------------------------------------------------


def feed_guarded(
    decompressor: ZlibStreamDecompressor | ZstdStreamDecompressor, pieces: list[bytes]
) -> int:
    """Feed until the first error; return the bytes produced. Only DecompressionError may escape."""
    produced = 0
    try:
        for piece in pieces:
            out = decompressor.feed(piece)
            produced += len(out or b"")
    except DecompressionError:
        pass
    return produced


@settings(max_examples=200, deadline=None)
@given(garbage=st.lists(st.binary(max_size=500), max_size=6), suffix=st.booleans())
def test_garbage_raises_decompression_error_or_nothing(garbage: list[bytes], suffix: bool) -> None:
    pieces = [g + ZLIB_SUFFIX if suffix else g for g in garbage]
    assert feed_guarded(ZlibStreamDecompressor(SMALL_MAX), pieces) <= SMALL_MAX * len(pieces)
    assert feed_guarded(ZstdStreamDecompressor(SMALL_MAX), pieces) <= SMALL_MAX * len(pieces)
    for piece in pieces:
        # A zstd magic number in front makes the decoder parse the garbage as a frame.
        feed_guarded(ZstdStreamDecompressor(SMALL_MAX), [b"\x28\xb5\x2f\xfd" + piece])


@settings(max_examples=200, deadline=None)
@given(
    messages=messages_st,
    flips=st.lists(st.integers(min_value=0), min_size=1, max_size=4),
    zstd=st.booleans(),
)
def test_bit_flipped_streams_raise_decompression_error_only(
    messages: list[bytes], flips: list[int], zstd: bool
) -> None:
    frames = zstd_stream(messages) if zstd else zlib_stream(messages)
    data = bytearray(b"".join(frames))
    for flip in flips:
        data[(flip // 8) % len(data)] ^= 1 << (flip % 8)
    pieces, pos = [], 0
    for frame in frames:  # keep the websocket message boundaries
        pieces.append(bytes(data[pos : pos + len(frame)]))
        pos += len(frame)
    decompressor = ZstdStreamDecompressor(SMALL_MAX) if zstd else ZlibStreamDecompressor(SMALL_MAX)
    produced = feed_guarded(decompressor, pieces)
    assert produced <= SMALL_MAX * len(pieces)


def test_truncated_zlib_message_is_buffered_not_inflated() -> None:
    frame = zlib_stream([b'{"op":0}'])[0]
    decompressor = ZlibStreamDecompressor()
    assert decompressor.feed(frame[:-1]) is None
    assert decompressor.feed(frame[-1:]) == b'{"op":0}'


def test_corrupt_zlib_message_raises() -> None:
    with pytest.raises(DecompressionError, match="corrupt zlib-stream data"):
        ZlibStreamDecompressor().feed(b"\x00garbage" + ZLIB_SUFFIX)


def test_corrupt_zstd_message_raises() -> None:
    with pytest.raises(DecompressionError, match="corrupt zstd-stream data"):
        ZstdStreamDecompressor().feed(b"\x28\xb5\x2f\xfd" + b"\xff" * 32)


# --- size limits and memory ------------------------------------------------------------


def test_zlib_message_over_the_limit() -> None:
    limit = 64 * 1024
    compressor = ZlibStreamCompressor()
    decompressor = ZlibStreamDecompressor(limit)
    assert decompressor.feed(compressor.compress(b"a" * limit)) == b"a" * limit
    with pytest.raises(MessageTooLargeError) as info:
        ZlibStreamDecompressor(limit).feed(ZlibStreamCompressor().compress(b"a" * (limit + 1)))
    assert info.value.limit == limit
    assert isinstance(info.value, DecompressionError)


def test_zlib_pending_input_over_the_limit() -> None:
    limit = 64 * 1024
    data = ZlibStreamCompressor(level=0).compress(random.Random(1).randbytes(limit + 10))
    decompressor = ZlibStreamDecompressor(limit)
    with pytest.raises(MessageTooLargeError):
        for i in range(0, len(data), 4096):
            decompressor.feed(data[i : i + 4096])
    # One frame that never ends with the suffix is refused too.
    with pytest.raises(MessageTooLargeError):
        ZlibStreamDecompressor(limit).feed(b"\x00" * (limit + 1))


def test_zstd_message_over_the_limit() -> None:
    limit = 64 * 1024
    assert (
        ZstdStreamDecompressor(limit).feed(ZstdStreamCompressor().compress(b"a" * limit))
        == b"a" * limit
    )
    with pytest.raises(MessageTooLargeError):
        ZstdStreamDecompressor(limit).feed(ZstdStreamCompressor().compress(b"a" * (limit + 1)))


def test_zlib_buffer_shrinks_after_a_20mb_message() -> None:
    message = b"x" * (20 * 1024 * 1024)
    data = ZlibStreamCompressor(level=0).compress(message)  # stored: as large as the message
    decompressor = ZlibStreamDecompressor()
    piece = 1024 * 1024
    out = None
    for i in range(0, len(data), piece):
        out = decompressor.feed(data[i : i + piece])
        if i + piece < len(data):
            assert out is None
    assert out == message
    assert sys.getsizeof(decompressor._buffer) < 64 * 1024
    small = b'{"op":11}'
    compressor_frames = ZlibStreamCompressor(level=0)
    assert ZlibStreamDecompressor().feed(compressor_frames.compress(small)) == small


@pytest.mark.parametrize("compression", [Compression.ZLIB_STREAM, Compression.ZSTD_STREAM])
def test_30mb_message_with_the_default_limit(compression: Compression) -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE >= 30 * 1024 * 1024
    member = b'{"user":{"id":"%d","username":"member"},"roles":[],"deaf":false,"mute":false},'
    body = b"".join(member % i for i in range(30 * 1024 * 1024 // len(member % 0) + 1))
    message = b'{"t":"GUILD_MEMBERS_CHUNK","s":1,"op":0,"d":{"members":[' + body[:-1] + b"]}}"
    assert len(message) > 30 * 1024 * 1024
    compressor = make_compressor(compression)
    assert compressor is not None
    decompressor = make_decompressor(compression)
    assert decompressor.feed(compressor.compress(message)) == message
    after = b'{"t":"MESSAGE_CREATE","s":2,"op":0,"d":{}}'
    assert decompressor.feed(compressor.compress(after)) == after


def test_zlib_inflater_is_per_connection() -> None:
    frames = zlib_stream([b"first", b"second"])
    with pytest.raises(DecompressionError):
        # A new connection cannot continue an old stream (no zlib header, back-references).
        ZlibStreamDecompressor().feed(frames[1])
    assert zlib.decompressobj().decompress(frames[0]) == b"first"


@pytest.mark.parametrize("limit", [1024 * 1024, 8 * 1024 * 1024])
def test_zstd_bomb_is_stopped_early(limit: int) -> None:
    """A few KB that inflate to 200 MB must not be inflated before the limit applies."""
    bomb = ZstdStreamCompressor().compress(bytes(200 * 1024 * 1024))
    assert len(bomb) < 16 * 1024
    decompressor = ZstdStreamDecompressor(limit)
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLargeError):
            decompressor.feed(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * limit + 4 * 1024 * 1024
