"""PUB frame format v1 (DESIGN.md 4.2): round trip and malformed input."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import WireFormatError
from protocol.pubframe import (
    PUB_FORMAT_VERSION,
    PubEvent,
    decode_event,
    encode_header,
    event_frames,
    header_template,
)

topics = st.from_regex(rb"[\x00-\x7f]{0,40}", fullmatch=True)
non_negative = st.integers(min_value=0, max_value=2**63 - 1)


def test_version_and_header_layout() -> None:
    assert PUB_FORMAT_VERSION == 1
    assert encode_header(3, 42, "9f0c") == b'{"shard_id":3,"seq":42,"session_id":"9f0c"}'
    assert encode_header(3, 42) == b'{"shard_id":3,"seq":42}'  # no session known
    assert orjson.loads(encode_header(0, 0)) == {"shard_id": 0, "seq": 0}


def test_a_header_template_formats_only_the_seq_and_escapes_the_session_id() -> None:
    template = header_template(3, 'a%d"b\\')
    assert template % 7 == b'{"shard_id":3,"seq":7,"session_id":"a%d\\"b\\\\"}'
    assert orjson.loads(template % 7)["session_id"] == 'a%d"b\\'
    assert header_template(5, None) % 9 == encode_header(5, 9)


def test_event_frames_layout() -> None:
    payload = b'{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{}}'
    frames = event_frames(b"MESSAGE_CREATE", 3, 42, payload)
    assert frames == [b"MESSAGE_CREATE", b'{"shard_id":3,"seq":42}', payload]
    assert frames[2] is payload  # relayed verbatim, no copy
    event = decode_event(frames)
    assert event == PubEvent("MESSAGE_CREATE", 3, 42, {"shard_id": 3, "seq": 42}, payload)
    assert event.session_id is None  # an older producer: no session in the header
    with_session = decode_event(event_frames(b"READY", 3, 1, payload, "abc"))
    assert (with_session.shard_id, with_session.seq, with_session.session_id) == (3, 1, "abc")
    with pytest.raises(AttributeError):
        event.seq = 1  # type: ignore[misc]


@settings(max_examples=200, deadline=None)
@given(
    topic=topics,
    shard_id=non_negative,
    seq=non_negative,
    payload=st.binary(max_size=300),
    session_id=st.none() | st.text(max_size=40),
)
def test_round_trip(
    topic: bytes, shard_id: int, seq: int, payload: bytes, session_id: str | None
) -> None:
    event = decode_event(event_frames(topic, shard_id, seq, payload, session_id))
    assert event.topic == topic.decode("ascii")
    assert (event.shard_id, event.seq, event.payload) == (shard_id, seq, payload)
    assert event.session_id == session_id
    expected: dict[str, object] = {"shard_id": shard_id, "seq": seq}
    if session_id is not None:
        expected["session_id"] = session_id
    assert event.header == expected
    assert header_template(shard_id, session_id) % seq == encode_header(shard_id, seq, session_id)


def test_header_may_carry_more_keys() -> None:
    event = decode_event([b"READY", b'{"seq":1,"shard_id":2,"worker":7}', b"{}"])
    assert (event.shard_id, event.seq, event.header["worker"]) == (2, 1, 7)
    event = decode_event([b"READY", b'{"seq":1,"shard_id":2,"session_id":null}', b"{}"])
    assert event.session_id is None


@pytest.mark.parametrize(
    ("frames", "fragment"),
    [
        ([], "3 frames, got 0"),
        ([b"READY", b'{"shard_id":0,"seq":1}'], "3 frames, got 2"),
        ([b"READY", b'{"shard_id":0,"seq":1}', b"{}", b"extra"], "3 frames, got 4"),
        ([b"READ\xc3\x9d", b'{"shard_id":0,"seq":1}', b"{}"], "not ASCII"),
        ([b"READY", b"", b"{}"], "not JSON"),
        ([b"READY", b'{"shard_id":0,', b"{}"], "not JSON"),
        ([b"READY", b"[0,1]", b"{}"], "JSON object"),
        ([b"READY", b'{"seq":1}', b"{}"], "no 'shard_id'"),
        ([b"READY", b'{"shard_id":1}', b"{}"], "no 'seq'"),
        ([b"READY", b'{"shard_id":"1","seq":1}', b"{}"], "'shard_id' must be an int"),
        ([b"READY", b'{"shard_id":1,"seq":1.0}', b"{}"], "'seq' must be an int"),
        ([b"READY", b'{"shard_id":true,"seq":1}', b"{}"], "'shard_id' must be an int"),
        ([b"READY", b'{"shard_id":1,"seq":null}', b"{}"], "'seq' must be an int"),
        ([b"READY", b'{"shard_id":-1,"seq":1}', b"{}"], "must not be negative"),
        ([b"READY", b'{"shard_id":1,"seq":1,"session_id":5}', b"{}"], "'session_id' must be"),
    ],
)
def test_malformed_frames(frames: list[bytes], fragment: str) -> None:
    with pytest.raises(WireFormatError, match=fragment):
        decode_event(frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=5))
def test_random_frames_decode_or_raise_wire_format_error(frames: list[bytes]) -> None:
    try:
        event = decode_event(frames)
    except WireFormatError:
        return
    assert len(frames) == 3
    assert event.topic.encode("ascii") == frames[0]
    assert event.payload == frames[2]
