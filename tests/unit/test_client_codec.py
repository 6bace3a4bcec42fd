"""titanium_client.codec: the @discordjs/brokers layout, and bytes that must never crash it."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from titanium_client import DecodeError, Encoding, Event
from titanium_client.codec import decode_data, detect_encoding, encode_command

PAYLOAD: dict[str, Any] = {"op": 0, "t": "MESSAGE_CREATE", "s": 42, "d": {"content": "hi"}}


def test_msgpack_and_json_decode_to_the_same_record() -> None:
    obj = {"shardId": 7, "payload": PAYLOAD}
    packed = decode_data(msgpack.packb(obj))
    json = decode_data(orjson.dumps(obj))
    assert (packed.encoding, json.encoding) == (Encoding.MSGPACK, Encoding.JSON)
    for record in (packed, json):
        assert (record.shard_id, record.seq, record.t, record.session_id) == (
            7,
            42,
            "MESSAGE_CREATE",
            None,
        )
        assert record.payload == PAYLOAD


def test_a_session_id_next_to_shard_id_is_read() -> None:
    record = decode_data(msgpack.packb({"shardId": 1, "sessionId": "abc", "payload": PAYLOAD}))
    assert record.session_id == "abc"


@pytest.mark.parametrize(
    ("first", "encoding"),
    [
        (0x80, Encoding.MSGPACK),
        (0x8F, Encoding.MSGPACK),
        (0xDE, Encoding.MSGPACK),
        (0xDF, Encoding.MSGPACK),
        (ord("{"), Encoding.JSON),
    ],
)
def test_detection_by_the_first_byte(first: int, encoding: Encoding) -> None:
    assert detect_encoding(bytes([first]) + b"rest") is encoding


def test_map16_and_map32_are_msgpack() -> None:
    many = {"shardId": 2, "payload": {**PAYLOAD, **{f"k{i}": i for i in range(20)}}}
    assert msgpack.packb(many["payload"])[0] == 0xDE
    assert decode_data(msgpack.packb(many)).seq == 42


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"[1]", "neither"),
        (msgpack.packb([1, 2]), "neither"),  # an array, not a map
        (b"{", "not valid JSON"),
        (msgpack.packb({"payload": PAYLOAD}), "shardId"),
        (msgpack.packb({"shardId": True, "payload": PAYLOAD}), "shardId"),
        (msgpack.packb({"shardId": -1, "payload": PAYLOAD}), "negative"),
        (msgpack.packb({"shardId": 0, "payload": [1]}), "payload must be a map"),
        (msgpack.packb({"shardId": 0, "payload": {"s": None}}), "payload.s"),
        (msgpack.packb({"shardId": 0, "payload": {"s": 1, "t": 5}}), "payload.t"),
        (msgpack.packb({"shardId": 0, "sessionId": 5, "payload": {"s": 1}}), "sessionId"),
        (b"\x81\xc1", "not valid msgpack"),
    ],
)
def test_bad_data_is_a_decode_error(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_data(data)


def test_encode_command_is_the_brokers_layout() -> None:
    data = encode_command(3, 8, {"guild_id": "1", "query": "", "limit": 0})
    assert msgpack.unpackb(data) == {
        "shardId": 3,
        "payload": {"op": 8, "d": {"guild_id": "1", "query": "", "limit": 0}},
    }
    assert orjson.loads(encode_command(0, 3, {}, Encoding.JSON)) == {
        "shardId": 0,
        "payload": {"op": 3, "d": {}},
    }


def event_of(data: bytes) -> Event:
    record = decode_data(data)
    return Event("X", record.shard_id, record.seq, record.session_id, payload=record.payload)


def touch(event: Event) -> None:
    _ = event.raw
    _ = event.d


@given(st.binary(max_size=512))
@settings(max_examples=500, deadline=None)
def test_arbitrary_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        touch(event_of(data))


# Arbitrary msgpack/JSON documents, shaped like entries often enough to get past the checks.
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
scalars = scalars | st.binary(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(0, 9), inner, max_size=4)
    ),
    max_leaves=20,
)
entries = st.fixed_dictionaries(
    {
        "shardId": st.integers(-2, 2**40) | values,
        "payload": st.fixed_dictionaries(
            {"s": st.integers(-2, 2**40) | values},
            optional={"op": values, "t": st.text() | values, "d": values},
        )
        | values,
    },
    optional={"sessionId": st.text() | values},
)


@given(entries, st.booleans(), st.data())
@settings(max_examples=150, deadline=None)
def test_structured_entries_never_raise_anything_but_decode_error(
    obj: dict[str, Any], as_json: bool, data: st.DataObject
) -> None:
    try:
        encoded = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) if as_json else None
    except (orjson.JSONEncodeError, TypeError):
        encoded = None
    if encoded is None:
        try:
            encoded = msgpack.packb(obj, use_bin_type=True, strict_types=False)
        except (OverflowError, TypeError, ValueError):
            return
    cut = data.draw(st.integers(0, len(encoded)))  # truncated or whole
    for candidate in (encoded, encoded[:cut]):
        with contextlib.suppress(DecodeError):
            touch(event_of(candidate))
