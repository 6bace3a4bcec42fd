"""The @discordjs/brokers layout: the sink's writers and the command parser, as pure functions."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.command_stream import (
    MAX_ENTRY_BYTES,
    CommandOutcome,
    CommandRefusedError,
    entry_age_s,
    parse_stream_command,
)
from protocol.brokerformat import Encoding, decode_object, dispatch_encoder, encode_object
from protocol.errors import WireFormatError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(shard_id=st.integers(0, 2**20), seq=st.integers(1, 2**40), d=json_values)
def test_both_writers_hold_the_object_discordjs_brokers_reads(
    shard_id: int, seq: int, d: Any
) -> None:
    payload = orjson.dumps({"op": 0, "t": "MESSAGE_CREATE", "s": seq, "d": d})
    expected = {"shardId": shard_id, "payload": orjson.loads(payload)}
    as_json = dispatch_encoder(Encoding.JSON)(shard_id, payload)
    as_msgpack = dispatch_encoder(Encoding.MSGPACK)(shard_id, payload)
    assert orjson.loads(as_json) == expected
    assert msgpack.unpackb(as_msgpack, raw=False) == expected
    assert decode_object(as_json) == (expected, Encoding.JSON)
    assert decode_object(as_msgpack) == (expected, Encoding.MSGPACK)


# Every kind of JSON value, wider than Discord sends: the msgpack writer (msgspec) must write
# the very bytes msgpack's Packer(use_bin_type=True) writes, the encoder the sink used before
# (so what @discordjs/brokers' msgpackr reads is unchanged): every int width and sign
# (orjson reads integers past 64 bits as floats), floats, str8/16/32 lengths, non-ASCII.
wide_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, -32, -33, 127, 128, 255, 256, 65535, 65536, 2**32, 2**63, 2**64 - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.integers(0, 70_000).map(lambda n: "x" * n)
    | st.text(alphabet=st.characters(codec="utf-8"), min_size=30, max_size=300),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=40), inner, max_size=5)
        | st.integers(0, 20).map(lambda n: {str(i): i for i in range(n)})
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(shard_id=st.integers(0, 2**31 - 1), d=wide_json_values)
def test_the_msgpack_writer_writes_the_bytes_msgpacks_packer_writes(shard_id: int, d: Any) -> None:
    # the stdlib writes integers of any size (orjson refuses those past 64 bits)
    payload = json.dumps({"t": "MESSAGE_CREATE", "s": 5, "op": 0, "d": d}).encode()
    reference = msgpack.packb(
        {"shardId": shard_id, "payload": orjson.loads(payload)}, use_bin_type=True
    )
    written = dispatch_encoder(Encoding.MSGPACK)(shard_id, payload)
    assert written == reference
    # and from the relay's memoryview slices too
    assert dispatch_encoder(Encoding.MSGPACK)(shard_id, memoryview(payload)) == reference  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload", [b"not json", b'{"t":"X","d":' + b"[" * 1010 + b"]" * 1010 + b"}"]
)
def test_the_msgpack_writer_raises_value_error_for_what_it_cannot_encode(payload: bytes) -> None:
    with pytest.raises(ValueError):
        dispatch_encoder(Encoding.MSGPACK)(1, payload)


def test_the_json_writer_wraps_the_gateway_bytes_as_they_are() -> None:
    payload = b'{"t":"READY","s":1,"op":0,"d":{"v":10}}'
    assert dispatch_encoder(Encoding.JSON)(7, memoryview(payload)) == (  # type: ignore[arg-type]
        b'{"shardId":7,"payload":' + payload + b"}"
    )


@given(st.binary(max_size=64))
def test_decoding_any_bytes_raises_only_wire_format_errors(data: bytes) -> None:
    try:
        obj, _ = decode_object(data)
    except WireFormatError:
        return
    assert isinstance(obj, dict)


def data(obj: Any, encoding: Encoding = Encoding.MSGPACK) -> bytes:
    return encode_object(obj, encoding)


LOCAL = range(0, 4)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_a_presence_update_for_a_local_shard_is_encoded_for_the_gateway(encoding: Encoding) -> None:
    d = {"since": None, "activities": [], "status": "idle", "afk": False}
    command = parse_stream_command(
        data({"shardId": 2, "payload": {"op": 3, "d": d}}, encoding), 8, LOCAL
    )
    assert command.shard_id == 2
    assert orjson.loads(command.payload) == {"op": 3, "d": d}


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (None, CommandOutcome.BAD_DATA),
        (b"not msgpack at all", CommandOutcome.BAD_DATA),
        (msgpack.packb([1, 2]), CommandOutcome.BAD_DATA),
        (b"\x81" + b"\xa1", CommandOutcome.BAD_DATA),
        (data({"payload": {"op": 3, "d": {}}}), CommandOutcome.BAD_TARGET),
        (data({"shardId": True, "payload": {"op": 3, "d": {}}}), CommandOutcome.BAD_TARGET),
        (data({"shardId": 9, "payload": {"op": 3, "d": {}}}), CommandOutcome.UNKNOWN_SHARD),
        (data({"shardId": 5, "payload": {"op": 3, "d": {}}}), CommandOutcome.OTHER_HOST),
        (data({"shardId": 1, "payload": {"op": 2, "d": {}}}), CommandOutcome.BAD_COMMAND),
        (data({"shardId": 1, "payload": {"op": 99, "d": {}}}), CommandOutcome.BAD_COMMAND),
        (data({"shardId": 1, "payload": {"d": {}}}), CommandOutcome.BAD_COMMAND),
        (data({"shardId": 1, "payload": "x"}), CommandOutcome.BAD_COMMAND),
        (
            data(
                {
                    "shardId": 1,
                    "payload": {"op": 8, "d": {"guild_id": "1", "query": "x" * 5000, "limit": 0}},
                }
            ),
            CommandOutcome.PAYLOAD_TOO_LARGE,
        ),
        (b"\x81" + b"\x00" * (MAX_ENTRY_BYTES + 1), CommandOutcome.TOO_LARGE),
    ],
)
def test_each_bad_entry_is_refused_with_its_reason(
    raw: bytes | None, outcome: CommandOutcome
) -> None:
    with pytest.raises(CommandRefusedError) as refused:
        parse_stream_command(raw, 8, LOCAL)
    assert refused.value.outcome is outcome
    assert str(refused.value)


@given(
    st.binary(max_size=200) | st.builds(lambda v: data({"shardId": 1, "payload": v}), json_values)
)
def test_parsing_any_entry_raises_only_refusals(raw: bytes) -> None:
    with contextlib.suppress(CommandRefusedError):
        parse_stream_command(raw, 8, LOCAL)


def test_an_entry_is_as_old_as_its_id_says() -> None:
    assert entry_age_s(b"1000000-0", 1030.5) == pytest.approx(30.5)
    assert entry_age_s(b"garbage", 5.0) == 0.0
