"""The coordinator's wire format: round trips, and a typed error for every bad frame."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.coordination import (
    MAX_MESSAGE_BYTES,
    MAX_NONCE,
    MAX_SHARD_ID,
    Acquire,
    Answered,
    Cancel,
    CoordinationMessage,
    ErrorReply,
    Grant,
    Release,
    Sent,
    StatusReply,
    StatusRequest,
    decode_message,
)
from protocol.errors import WireFormatError

shard_ids = st.integers(0, MAX_SHARD_ID)
nonces = st.integers(0, MAX_NONCE)
seconds = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
counts = st.integers(0, 10**9)

messages: st.SearchStrategy[CoordinationMessage] = st.one_of(
    st.builds(Acquire, shard_ids, nonces),
    st.builds(Cancel, shard_ids, nonces),
    st.builds(Release, shard_ids, nonces),
    st.builds(Grant, shard_ids, nonces, st.none() | seconds),
    st.builds(Sent, shard_ids, nonces, st.none() | seconds),
    st.builds(Answered, shard_ids, nonces, st.none() | seconds),
    st.just(StatusRequest()),
    st.builds(
        StatusReply,
        remaining=counts,
        total=counts,
        exhausted=st.booleans(),
        reset_after_s=seconds,
        max_concurrency=st.integers(1, 4096),
        interval_s=seconds,
        queued=counts,
    ),
    st.builds(ErrorReply, st.text(max_size=500), st.none() | shard_ids),
)


@given(messages)
def test_every_message_round_trips(message: CoordinationMessage) -> None:
    frame = message.encode()
    assert len(frame) <= MAX_MESSAGE_BYTES
    assert decode_message(frame) == message
    assert type(message).decode(frame) == message
    assert orjson.loads(frame)["v"] == 1


def test_the_documented_layout() -> None:
    assert orjson.loads(Acquire(7, 42).encode()) == {
        "v": 1,
        "type": "acquire",
        "shard_id": 7,
        "nonce": 42,
    }
    assert decode_message(b'{"v":1,"type":"grant","shard_id":3,"nonce":9}') == Grant(3, 9)
    # the optional times: absent when None, and a peer that does not know them ignores them
    assert orjson.loads(Grant(3, 9, 12.5).encode())["not_before"] == 12.5
    assert "written_at" not in orjson.loads(Sent(3, 9).encode())
    assert orjson.loads(Answered(3, 9, 7.25).encode()) == {
        "v": 1,
        "type": "answered",
        "shard_id": 3,
        "nonce": 9,
        "answered_at": 7.25,
    }
    assert decode_message(b'{"v":1,"type":"answered","shard_id":3,"nonce":9}') == Answered(3, 9)
    # Fields added later within version 1 are ignored.
    assert decode_message(b'{"v":1,"type":"status","future":true}') == StatusRequest()


def test_decoding_as_the_wrong_type_is_refused() -> None:
    with pytest.raises(WireFormatError, match="expected a 'grant'"):
        Grant.decode(Acquire(1, 1).encode())


BAD_FRAMES: list[Any] = [
    b"",
    b"not json",
    b"\xff\xfe",
    b"[1,2]",
    b'"acquire"',
    b'{"type":"acquire","shard_id":1,"nonce":1}',
    b'{"v":2,"type":"acquire","shard_id":1,"nonce":1}',
    b'{"v":true,"type":"acquire","shard_id":1,"nonce":1}',
    b'{"v":1.0,"type":"acquire","shard_id":1,"nonce":1}',
    b'{"v":1,"type":"launch","shard_id":1,"nonce":1}',
    b'{"v":1,"type":7}',
    b'{"v":1,"type":"acquire","nonce":1}',
    b'{"v":1,"type":"acquire","shard_id":"1","nonce":1}',
    b'{"v":1,"type":"acquire","shard_id":true,"nonce":1}',
    b'{"v":1,"type":"acquire","shard_id":-1,"nonce":1}',
    b'{"v":1,"type":"acquire","shard_id":1.5,"nonce":1}',
    b'{"v":1,"type":"acquire","shard_id":1,"nonce":-3}',
    b'{"v":1,"type":"acquire","shard_id":2147483648,"nonce":1}',
    b'{"v":1,"type":"status_reply","remaining":1}',
    b'{"v":1,"type":"status_reply","remaining":1,"total":1,"exhausted":1,"reset_after_s":1,'
    b'"max_concurrency":1,"interval_s":1,"queued":0}',
    b'{"v":1,"type":"answered","shard_id":1}',
    b'{"v":1,"type":"answered","shard_id":1,"nonce":1,"answered_at":-1.0}',
    b'{"v":1,"type":"answered","shard_id":1,"nonce":1,"answered_at":"now"}',
    b'{"v":1,"type":"answered","shard_id":1,"nonce":1,"answered_at":true}',
    b'{"v":1,"type":"answered","shard_id":1,"nonce":1,"answered_at":1e999}',
    b'{"v":1,"type":"error"}',
    b'{"v":1,"type":"error","reason":"x","shard_id":"0"}',
    b'{"v":1,"type":"acquire","shard_id":1,"nonce":1,"pad":"' + b"x" * MAX_MESSAGE_BYTES + b'"}',
]


@pytest.mark.parametrize("frame", BAD_FRAMES)
def test_malformed_frames_raise_wire_format_error(frame: bytes) -> None:
    with pytest.raises(WireFormatError):
        decode_message(frame)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_the_typed_error(data: bytes) -> None:
    try:
        message = decode_message(data)
    except WireFormatError:
        return
    assert decode_message(message.encode()) == message


@given(
    st.dictionaries(
        st.sampled_from(
            ["v", "type", "shard_id", "nonce", "reason", "remaining", "exhausted", "answered_at"]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=10),
            st.sampled_from(["acquire", "grant", "status_reply", "error", "cancel", "answered"]),
        ),
    )
)
def test_arbitrary_objects_decode_or_raise_the_typed_error(obj: dict[str, Any]) -> None:
    try:
        frame = orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        message = decode_message(frame)
    except WireFormatError:
        return
    assert decode_message(message.encode()) == message


def test_a_message_with_bad_fields_cannot_be_built() -> None:
    with pytest.raises(WireFormatError):
        Acquire(-1, 0)
    with pytest.raises(WireFormatError):
        Grant(0, MAX_NONCE + 1)
