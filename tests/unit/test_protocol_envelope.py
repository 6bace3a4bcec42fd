"""protocol.envelope.peek: exactly orjson's op/t/s on every valid envelope, typed errors otherwise."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.envelope import peek
from protocol.errors import MalformedPayloadError

TRICKY = [
    '"t":',
    '"t":"READY",',
    '{"op":1,"d":',
    '"s":5,',
    ',"d":',
    '"op":0',
    "\\",
    '"',
    "}",
    "🔥",
    "\x00",
    "\u2028",
]

texts = st.one_of(
    st.sampled_from(TRICKY),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
)
event_names = st.one_of(st.from_regex(r"[A-Z_]{1,30}", fullmatch=True), texts)
ints64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | ints64 | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.one_of(st.sampled_from(["t", "s", "op", "d"]), texts), children, max_size=4
        )
    ),
    max_leaves=12,
)


def reference(payload: bytes) -> tuple[int, str | None, int | None]:
    """What a full orjson parse says, with the envelope's type rules."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise MalformedPayloadError("not JSON") from None
    if type(obj) is not dict or type(obj.get("op")) is not int:
        raise MalformedPayloadError("no int op")
    t, s = obj.get("t"), obj.get("s")
    if (t is not None and type(t) is not str) or (s is not None and type(s) is not int):
        raise MalformedPayloadError("bad t or s")
    return obj["op"], t, s


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {"op": draw(ints64)}
    if draw(st.booleans()) or draw(st.booleans()):
        fields["t"] = draw(st.none() | event_names)
    if draw(st.booleans()) or draw(st.booleans()):
        fields["s"] = draw(st.none() | ints64)
    if draw(st.booleans()) or draw(st.booleans()):
        fields["d"] = draw(json_values)
    if draw(st.integers(0, 4)) == 0:
        fields["_trace"] = draw(json_values)
    order = draw(st.permutations(list(fields)))
    return {key: fields[key] for key in order}


@st.composite
def serialized(draw: st.DrawFn, envelope: dict[str, Any]) -> bytes:
    style = draw(st.sampled_from(["orjson", "json"]))
    if style == "orjson":
        data = orjson.dumps(envelope)
    else:
        data = json.dumps(
            envelope,
            ensure_ascii=draw(st.booleans()),
            separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (",", ": "), (" ,", " :")])),
            indent=draw(st.sampled_from([None, 0, 2, "\t"])),
        ).encode()
    return (
        draw(st.sampled_from([b"", b" ", b"\n", b"\r\n\t "]))
        + data
        + draw(st.sampled_from([b"", b" ", b"\n"]))
    )


def assert_consistent(payload: bytes) -> None:
    """peek agrees with the reference, or raises the typed error, or is the documented leniency."""
    try:
        expected: tuple[int, str | None, int | None] | None = reference(payload)
    except MalformedPayloadError:
        expected = None
    try:
        got: tuple[int, str | None, int | None] | None = peek(payload)
    except MalformedPayloadError:
        got = None  # any other exception type fails the test
    if expected is not None:
        assert got == expected
    elif got is not None:
        # Documented: a well-formed compact header before "d" is trusted; d is not validated.
        head = payload[: payload.index(b',"d":') + 5]
        assert payload.endswith(b"}")
        assert reference(head + b"null}") == got


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_peek_equals_orjson_on_valid_envelopes(data: st.DataObject) -> None:
    envelope = data.draw(envelopes())
    payload = data.draw(serialized(envelope))
    expected = (envelope["op"], envelope.get("t"), envelope.get("s"))
    assert reference(payload) == expected
    assert peek(payload) == expected


@settings(max_examples=250, deadline=None)
@given(
    t=st.none() | event_names,
    s=st.none() | ints64,
    op=ints64,
    d=json_values,
    order=st.permutations(["t", "s", "op"]),
)
def test_peek_compact_layout_of_discord(
    t: str | None, s: int | None, op: int, d: Any, order: list[str]
) -> None:
    """The layout the fast path is for: three small keys in any order, then d."""
    values = {"t": t, "s": s, "op": op}
    envelope = {key: values[key] for key in order} | {"d": d}
    payload = orjson.dumps(envelope)
    assert peek(payload) == (op, t, s) == reference(payload)


def test_peek_realistic_dispatches() -> None:
    message = (
        b'{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"id":"334385199974967042",'
        b'"content":"\\"t\\":\\"READY\\",\\"s\\":1","guild_id":"290926798999357249"}}'
    )
    assert peek(message) == (0, "MESSAGE_CREATE", 42)
    assert peek(b'{"t":null,"s":null,"op":11,"d":null}') == (11, None, None)
    assert peek(b'{"op":10,"d":{"heartbeat_interval":41250}}') == (10, None, None)
    assert peek(b'{"d":{"t":"X","s":9,"op":3},"op":0,"s":7,"t":"READY"}') == (0, "READY", 7)
    assert peek(b'{"t":"A\\u0042","s":1,"op":0,"d":{}}') == (0, "AB", 1)
    assert peek(b'{"op":9,"d":false}') == (9, None, None)
    assert peek(b'{"t":"X","s":1,"op":0,"t":"Y","d":{}}') == (0, "Y", 1)  # orjson: last wins
    big = b'{"t":"X","s":123456789012345678901,"op":0,"d":{}}'
    with pytest.raises(MalformedPayloadError, match="s must be an int"):
        peek(big)  # orjson reads a number past 64 bits as a float


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"   ", "not valid JSON"),
        (b"[1,2]", "JSON object"),
        (b'"op"', "JSON object"),
        (b"0", "JSON object"),
        (b"null", "JSON object"),
        (b"{}", "op must be an int"),
        (b'{"t":"X","s":1,"d":{}}', "op must be an int"),
        (b'{"t":"X","s":1,"op":"0","d":{}}', "op must be an int"),
        (b'{"t":"X","s":1,"op":0.0,"d":{}}', "op must be an int"),
        (b'{"t":"X","s":1,"op":1e2,"d":{}}', "op must be an int"),
        (b'{"t":"X","s":1,"op":true,"d":{}}', "op must be an int"),
        (b'{"t":"X","s":1,"op":null,"d":{}}', "op must be an int"),
        (b'{"t":1,"s":1,"op":0,"d":{}}', "t must be a string"),
        (b'{"t":["X"],"s":1,"op":0,"d":{}}', "t must be a string"),
        (b'{"t":"X","s":"1","op":0,"d":{}}', "s must be an int"),
        (b'{"t":"X","s":false,"op":0,"d":{}}', "s must be an int"),
        (b'{"t":"X","s":1.5,"op":0,"d":{}}', "s must be an int"),
        (b'{"t":"X","s":1,"op":0', "not valid JSON"),
        (b'{"t":"X","s":1,"op":0,"d":', "not valid JSON"),
        (b'{"t":"X","s":01,"op":0,"d":{}}', "not valid JSON"),
        (b'{"t":"X\xff","s":1,"op":0,"d":{}}', "not valid JSON"),
        (b'{"t":"X\x01","s":1,"op":0,"d":{}}', "not valid JSON"),
        (b'\xef\xbb\xbf{"op":0}', "not valid JSON"),
    ],
)
def test_peek_rejects_malformed(payload: bytes, fragment: str) -> None:
    with pytest.raises(MalformedPayloadError, match=fragment):
        peek(payload)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_peek_on_random_bytes_only_raises_the_typed_error(payload: bytes) -> None:
    assert_consistent(payload)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_peek_on_damaged_envelopes(data: st.DataObject) -> None:
    payload = data.draw(serialized(data.draw(envelopes())))
    action = data.draw(st.sampled_from(["cut", "flip", "insert"]))
    if action == "cut":
        payload = payload[: data.draw(st.integers(0, len(payload)))]
    elif action == "flip":
        i = data.draw(st.integers(0, len(payload) - 1))
        payload = (
            payload[:i]
            + bytes([payload[i] ^ (1 << data.draw(st.integers(0, 7)))])
            + payload[i + 1 :]
        )
    else:
        i = data.draw(st.integers(0, len(payload)))
        junk = data.draw(st.sampled_from([b'"', b"\\", b",", b"}", b"{", b"\xff", b'"t":1,']))
        payload = payload[:i] + junk + payload[i:]
    assert_consistent(payload)


def test_peek_lenient_body_is_documented_behaviour() -> None:
    # A good header with a corrupt d passes: the relay forwards the payload verbatim.
    assert peek(b'{"t":"X","s":1,"op":0,"d":{]}') == (0, "X", 1)


header_values = st.sampled_from(
    [b"null", b'"X"', b'""', b'"A B"', b"0", b"-1", b"7", b"true", b"1.5", b'"\\n"', b"[]", b"{}"]
) | ints64.map(lambda i: b"%d" % i)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([b"t", b"s", b"op", b"d"]), header_values), min_size=1, max_size=4
    ),
    st.sampled_from([b"{}", b"null", b'{"op":5}', b"[1]"]),
)
def test_peek_on_fuzzed_headers(pairs: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Repeated, missing and mistyped keys before d: same answer as orjson or the typed error."""
    payload = b"{" + b",".join(b'"%s":%s' % pair for pair in pairs) + b',"d":' + body + b"}"
    assert_consistent(payload)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"t":"A","t":"B","op":0,"d":{}}', (0, "B", None)),
        (b'{"op":1,"s":2,"op":3,"d":{}}', (3, None, 2)),
        (b'{"s":1,"s":null,"op":0,"d":{}}', (0, None, None)),
    ],
)
def test_peek_repeated_keys_follow_orjson(
    payload: bytes, expected: tuple[int, str | None, int | None]
) -> None:
    assert peek(payload) == expected == reference(payload)
