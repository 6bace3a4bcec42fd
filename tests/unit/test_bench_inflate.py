"""The worker's zlib-ng inflater (a hot-path change the benchmarks drove) against protocol's.

Property: for any sequence of gateway messages, compressed as a zlib-stream
and split into websocket frames anywhere, the worker's decompressor yields
exactly what :class:`protocol.compression.ZlibStreamDecompressor` yields, and
corrupt input raises the same typed error.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.compression import (
    Compression,
    ZlibStreamCompressor,
    ZlibStreamDecompressor,
)
from protocol.errors import DecompressionError, MessageTooLargeError
from worker.inflate import NgZlibStreamDecompressor, make_worker_decompressor

pytest.importorskip("zlib_ng")


def test_zlib_stream_uses_zlib_ng_and_others_are_protocols() -> None:
    assert isinstance(
        make_worker_decompressor(Compression.ZLIB_STREAM, 1 << 20), NgZlibStreamDecompressor
    )
    assert not isinstance(
        make_worker_decompressor(Compression.ZSTD_STREAM, 1 << 20), ZlibStreamDecompressor
    )


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=64), max_size=6),
)
def test_same_output_as_protocols_decompressor(messages: list[bytes], cuts: list[int]) -> None:
    compressor = ZlibStreamCompressor(1)
    ours = make_worker_decompressor(Compression.ZLIB_STREAM, 1 << 20)
    reference = ZlibStreamDecompressor(1 << 20)
    for i, message in enumerate(messages):
        wire = compressor.compress(message)
        cut = min(cuts[i % len(cuts)] if cuts else len(wire), len(wire))
        frames = [wire[:cut], wire[cut:]] if cut < len(wire) else [wire]
        got = [ours.feed(f) for f in frames]
        want = [reference.feed(f) for f in frames]
        assert got == want
        assert got[-1] == message


def test_corrupt_input_is_a_decompression_error() -> None:
    ours = make_worker_decompressor(Compression.ZLIB_STREAM, 1 << 20)
    with pytest.raises(DecompressionError):
        ours.feed(b"not zlib at all\x00\x00\xff\xff")


def test_the_size_cap_holds() -> None:
    ours = make_worker_decompressor(Compression.ZLIB_STREAM, 1000)
    with pytest.raises(MessageTooLargeError):
        ours.feed(ZlibStreamCompressor(1).compress(b"x" * 5000))
