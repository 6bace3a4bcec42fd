"""The control socket's pure request logic: every refusal typed, routing by the shard formula."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.control import (
    MAX_REQUEST_BYTES,
    ControlErrorKind,
    ControlRequestError,
    Target,
    parse_control_request,
    split_envelope,
)
from protocol.gateway import Opcode

PRESENCE: dict[str, Any] = {"since": None, "activities": [], "status": "online", "afk": False}
VOICE: dict[str, Any] = {
    "guild_id": "41771983423143937",
    "channel_id": None,
    "self_mute": False,
    "self_deaf": False,
}
ALL_LOCAL = frozenset(range(16))


def parse(request: Any, total: int = 16, local: frozenset[int] = ALL_LOCAL) -> Any:
    raw = request if isinstance(request, bytes) else orjson.dumps(request)
    return parse_control_request(raw, total, local)


def refused(
    request: Any, total: int = 16, local: frozenset[int] = ALL_LOCAL
) -> ControlRequestError:
    with pytest.raises(ControlRequestError) as info:
        parse(request, total, local)
    assert str(info.value)  # every refusal says why
    return info.value


def test_a_shard_target_carries_the_encoded_command() -> None:
    request = parse({"op": 3, "d": PRESENCE, "shard_id": 5})
    assert request.op is Opcode.PRESENCE_UPDATE
    assert request.target is Target.SHARD and request.shard_ids == (5,)
    # only op and d go to the gateway, the target stays with us
    assert orjson.loads(request.payload) == {"op": 3, "d": PRESENCE}


@given(st.integers(0, (1 << 64) - 1), st.integers(1, 5000), st.booleans())
def test_a_guild_target_follows_the_shard_formula(
    guild_id: int, total: int, as_string: bool
) -> None:
    request = parse(
        {"op": 4, "d": VOICE, "guild_id": str(guild_id) if as_string else guild_id},
        total,
        frozenset(range(total)),
    )
    assert request.target is Target.GUILD
    assert request.shard_ids == ((guild_id >> 22) % total,)


def test_all_means_every_local_shard_in_order() -> None:
    request = parse({"op": 3, "d": PRESENCE, "all": True}, 16, frozenset({9, 8, 10}))
    assert request.target is Target.ALL and request.shard_ids == (8, 9, 10)


@pytest.mark.parametrize(
    ("request_", "kind", "words"),
    [
        (b"{not json", ControlErrorKind.BAD_JSON, "not valid JSON"),
        (b"", ControlErrorKind.BAD_JSON, "not valid JSON"),
        (b"\xff\xfe", ControlErrorKind.BAD_JSON, "not valid JSON"),
        ([1, 2], ControlErrorKind.NOT_AN_OBJECT, "an array"),
        ("op", ControlErrorKind.NOT_AN_OBJECT, "a string"),
        (None, ControlErrorKind.NOT_AN_OBJECT, "null"),
        ({"op": 3, "d": PRESENCE, "shard": 1}, ControlErrorKind.UNKNOWN_KEY, "'shard'"),
        ({"d": PRESENCE, "shard_id": 1}, ControlErrorKind.BAD_COMMAND, "op is required"),
        ({"op": 3, "shard_id": 1}, ControlErrorKind.BAD_COMMAND, "d is required"),
        ({"op": 2, "d": {}, "shard_id": 1}, ControlErrorKind.BAD_COMMAND, "op 2 is not a command"),
        ({"op": 6, "d": {}, "shard_id": 1}, ControlErrorKind.BAD_COMMAND, "op 6"),
        ({"op": 1, "d": 5, "shard_id": 1}, ControlErrorKind.BAD_COMMAND, "op 1"),
        ({"op": 99, "d": {}, "shard_id": 1}, ControlErrorKind.BAD_COMMAND, "op 99"),
        ({"op": "3", "d": PRESENCE, "shard_id": 1}, ControlErrorKind.BAD_COMMAND, "must be an int"),
        ({"op": True, "d": PRESENCE, "shard_id": 1}, ControlErrorKind.BAD_COMMAND, "bool"),
        ({"op": 3, "d": [], "shard_id": 1}, ControlErrorKind.BAD_COMMAND, "JSON object"),
        (
            {"op": 3, "d": {**PRESENCE, "status": "busy"}, "shard_id": 1},
            ControlErrorKind.BAD_COMMAND,
            "d.status",
        ),
        ({"op": 3, "d": PRESENCE}, ControlErrorKind.BAD_TARGET, "no target"),
        (
            {"op": 3, "d": PRESENCE, "shard_id": 1, "all": True},
            ControlErrorKind.BAD_TARGET,
            "2 targets",
        ),
        (
            {"op": 4, "d": VOICE, "shard_id": 1, "guild_id": "1"},
            ControlErrorKind.BAD_TARGET,
            "2 targets",
        ),
        ({"op": 3, "d": PRESENCE, "all": False}, ControlErrorKind.BAD_TARGET, "all must be true"),
        ({"op": 3, "d": PRESENCE, "all": 1}, ControlErrorKind.BAD_TARGET, "all must be true"),
        ({"op": 3, "d": PRESENCE, "shard_id": "1"}, ControlErrorKind.BAD_TARGET, "integer"),
        ({"op": 3, "d": PRESENCE, "shard_id": True}, ControlErrorKind.BAD_TARGET, "integer"),
        ({"op": 3, "d": PRESENCE, "shard_id": 1.0}, ControlErrorKind.BAD_TARGET, "integer"),
        ({"op": 4, "d": VOICE, "guild_id": "12ab"}, ControlErrorKind.BAD_TARGET, "snowflake"),
        ({"op": 4, "d": VOICE, "guild_id": -1}, ControlErrorKind.BAD_TARGET, "64-bit"),
        ({"op": 4, "d": VOICE, "guild_id": None}, ControlErrorKind.BAD_TARGET, "snowflake"),
        (
            {"op": 3, "d": PRESENCE, "shard_id": 16},
            ControlErrorKind.UNKNOWN_SHARD,
            "unknown shard 16",
        ),
        (
            {"op": 3, "d": PRESENCE, "shard_id": -1},
            ControlErrorKind.UNKNOWN_SHARD,
            "unknown shard -1",
        ),
    ],
)
def test_refusals_name_the_problem(request_: Any, kind: ControlErrorKind, words: str) -> None:
    error = refused(request_)
    assert error.kind is kind
    assert words in str(error)


def test_a_shard_another_supervisor_runs_is_refused_by_id_and_by_guild() -> None:
    local = frozenset(range(8, 16))
    error = refused({"op": 3, "d": PRESENCE, "shard_id": 3}, 16, local)
    assert error.kind is ControlErrorKind.NOT_LOCAL
    assert "shard 3 is not run by this supervisor" in str(error) and "8-15" in str(error)
    guild_on_shard_2 = str((2 << 22) | 12345)
    error = refused({"op": 4, "d": VOICE, "guild_id": guild_on_shard_2}, 16, local)
    assert error.kind is ControlErrorKind.NOT_LOCAL and "shard 2" in str(error)


def test_a_command_over_the_gateway_limit_is_refused_before_any_shard_sees_it() -> None:
    big = {**PRESENCE, "activities": [{"name": "x" * 4100, "type": 0}]}
    error = refused({"op": 3, "d": big, "shard_id": 0})
    assert error.kind is ControlErrorKind.PAYLOAD_TOO_LARGE
    assert "4096" in str(error)


def test_an_oversized_request_is_refused_unread() -> None:
    raw = b"[" + b" " * MAX_REQUEST_BYTES + b"]"
    error = refused(raw)
    assert error.kind is ControlErrorKind.TOO_LARGE and str(MAX_REQUEST_BYTES) in str(error)


def test_every_command_opcode_passes_with_its_documented_shape() -> None:
    commands: dict[int, dict[str, Any]] = {
        3: PRESENCE,
        4: VOICE,
        8: {"guild_id": "41771983423143937", "query": "", "limit": 0},
        31: {"guild_ids": ["41771983423143937"]},
        43: {"guild_id": "41771983423143937", "fields": ["status"]},
    }
    for op, d in commands.items():
        assert parse({"op": op, "d": d, "shard_id": 0}).op == op


# -- properties: nothing a client sends raises anything but the typed error -------------


def _never_raises_untyped(raw: bytes, total: int = 16, local: frozenset[int] = ALL_LOCAL) -> None:
    try:
        request = parse_control_request(raw, total, local)
    except ControlRequestError as exc:
        assert isinstance(exc.kind, ControlErrorKind) and str(exc)
    else:
        assert set(request.shard_ids) <= local
        assert 0 < len(request.payload) <= 4096


@given(st.binary(max_size=512))
def test_random_bytes_never_raise_an_untyped_error(raw: bytes) -> None:
    _never_raises_untyped(raw)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def near_requests(draw: st.DrawFn) -> bytes:
    """Objects shaped like requests, with plausible and wrong values in every field."""
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["op"] = draw(st.sampled_from([3, 4, 8, 31, 43, 0, 1, 2, 6, -1]) | json_values)
    if draw(st.booleans()):
        body["d"] = draw(
            st.sampled_from(
                [PRESENCE, VOICE, {"guild_ids": ["1"]}, {"guild_id": "1", "fields": []}]
            )
            | st.dictionaries(
                st.sampled_from(
                    [
                        "since",
                        "activities",
                        "status",
                        "afk",
                        "guild_id",
                        "channel_id",
                        "self_mute",
                        "self_deaf",
                        "query",
                        "limit",
                        "user_ids",
                        "presences",
                        "nonce",
                        "guild_ids",
                        "fields",
                    ]
                ),
                json_values,
                max_size=6,
            )
            | json_values
        )
    for key in ("shard_id", "guild_id", "all"):
        if draw(st.integers(0, 3)) == 0:
            body[key] = draw(st.integers(-3, 40) | json_values)
    if draw(st.integers(0, 5)) == 0:
        body[draw(st.text(max_size=8))] = draw(json_values)
    return orjson.dumps(body)


@given(near_requests(), st.integers(1, 40), st.frozensets(st.integers(0, 39), max_size=10))
def test_request_shaped_objects_never_raise_an_untyped_error(
    raw: bytes, total: int, local: frozenset[int]
) -> None:
    _never_raises_untyped(raw, total, frozenset(s for s in local if s < total))


@given(st.lists(st.binary(max_size=4), max_size=6), st.binary(min_size=1, max_size=8))
def test_the_envelope_ends_at_the_first_empty_frame(middle: list[bytes], identity: bytes) -> None:
    frames = [identity, *middle]
    envelope, body = split_envelope(frames)
    assert envelope + body == frames and envelope[0] == identity
    if b"" in middle:
        assert envelope[-1] == b"" and b"" not in envelope[1:-1]
    else:
        assert envelope == [identity]
