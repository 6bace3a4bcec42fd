"""protocol/zmtp.py: a NULL peer's handshake read from any cut of its bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.zmtp import GREETING, ProtocolError, command, handshake, metadata, read_handshake

TRAILING = b"\x00\x05hello"  # the peer's first message, right behind its READY


@given(cut=st.integers(0, len(handshake(b"PUSH")) - 1))
def test_a_handshake_cut_short_waits_for_more(cut: int) -> None:
    assert read_handshake(handshake(b"PUSH")[:cut], b"PUSH") == 0


@given(socket_type=st.sampled_from([b"PUSH", b"PULL"]), extra=st.binary(max_size=64))
def test_a_whole_handshake_takes_exactly_its_bytes(socket_type: bytes, extra: bytes) -> None:
    whole = handshake(socket_type)
    assert read_handshake(bytearray(whole + extra), socket_type) == len(whole)


@given(cut=st.integers(1, len(GREETING)))
def test_what_cannot_be_a_greeting_is_refused_as_soon_as_seen(cut: int) -> None:
    http = b"GET / HTTP/1.1\r\n" + bytes(100)
    with pytest.raises(ProtocolError, match="not a ZMTP 3 greeting"):
        read_handshake(http[:cut], b"PUSH")


@pytest.mark.parametrize(
    ("after_greeting", "why"),
    [
        (command(b"READY", metadata(b"Socket-Type", b"PUB")), r"b'PUB' peer \(PUSH expected\)"),
        (command(b"READY", b""), r"None peer \(PUSH expected\)"),
        (command(b"PING", b"\x00\x00"), "not READY"),
        (b"\x00\x05hello", "not a short command"),
        (b"\x06" + bytes(8), "not a short command"),
    ],
)
def test_a_handshake_of_the_wrong_kind_is_refused(after_greeting: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        read_handshake(GREETING + after_greeting + TRAILING, b"PUSH")
