"""protocol/curvezmq.py: Z85 and key files, metadata, and the CurveZMQ server handshake.

A small CurveZMQ client written here from RFC 26 (``Client``) talks to
:class:`ServerHandshake`: a full handshake, boxes both ways, and every way of
breaking it (a tampered byte, a replayed nonce, a key not allowed, garbage)
ends in :class:`CurveHandshakeError`, never in another exception. The libzmq
interop is in tests/integration/test_curve_pub.py.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import zmq
import zmq.utils.z85
from hypothesis import example, given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium

from protocol.curvezmq import (
    KEY_BYTES,
    MESSAGE_COMMAND,
    MESSAGE_MORE,
    Z85_ALPHABET,
    CurveHandshakeError,
    CurveKeyError,
    CurveServerKeys,
    HandshakeState,
    MessageBox,
    ServerHandshake,
    command_frame,
    decode_key,
    encode_key,
    error_command,
    metadata_property,
    new_key_pair,
    parse_key_lines,
    parse_metadata,
    public_key_of,
    z85_decode,
    z85_encode,
)

XPUB_METADATA = metadata_property(b"Socket-Type", b"XPUB")


class Client:
    """The client half of CurveZMQ (RFC 26), just enough to drive the server."""

    def __init__(self, server_public: bytes, public: bytes, secret: bytes) -> None:
        self.server_public = server_public
        self.public = public
        self.secret = secret
        self.short_public, self.short_secret = new_key_pair()
        self.nonce = 0
        self.precomputed = b""
        self.cookie = b""
        self.server_short = b""

    def next_short(self) -> bytes:
        self.nonce += 1
        return self.nonce.to_bytes(8, "big")

    def hello(self) -> bytes:
        short = self.next_short()
        box = sodium.crypto_box(
            bytes(64), b"CurveZMQHELLO---" + short, self.server_public, self.short_secret
        )
        return b"\x05HELLO\x01\x00" + bytes(72) + self.short_public + short + box

    def welcome(self, body: bytes) -> None:
        assert body[:8] == b"\x07WELCOME" and len(body) == 168
        plain = sodium.crypto_box_open(
            body[24:], b"WELCOME-" + body[8:24], self.server_public, self.short_secret
        )
        self.server_short, self.cookie = plain[:32], plain[32:]
        self.precomputed = sodium.crypto_box_beforenm(self.server_short, self.short_secret)

    def initiate(self, metadata: bytes, vouch_for: bytes | None = None) -> bytes:
        vouch_nonce = os.urandom(16)
        vouch = sodium.crypto_box(
            self.short_public + (vouch_for or self.server_public),
            b"VOUCH---" + vouch_nonce,
            self.server_short,
            self.secret,
        )
        short = self.next_short()
        box = sodium.crypto_box(
            self.public + vouch_nonce + vouch + metadata,
            b"CurveZMQINITIATE" + short,
            self.server_short,
            self.short_secret,
        )
        return b"\x08INITIATE" + self.cookie + short + box

    def ready(self, body: bytes) -> dict[bytes, bytes]:
        assert body[:6] == b"\x05READY"
        plain = sodium.crypto_box_open_afternm(
            body[14:], b"CurveZMQREADY---" + body[6:14], self.precomputed
        )
        return parse_metadata(plain)

    def message(self, flags: int, data: bytes, nonce: int | None = None) -> bytes:
        short = self.next_short() if nonce is None else nonce.to_bytes(8, "big")
        box = sodium.crypto_box_afternm(
            bytes((flags,)) + data, b"CurveZMQMESSAGEC" + short, self.precomputed
        )
        return b"\x07MESSAGE" + short + box

    def open(self, body: bytes) -> tuple[int, bytes]:
        assert body[:8] == b"\x07MESSAGE"
        plain = sodium.crypto_box_open_afternm(
            body[16:], b"CurveZMQMESSAGES" + body[8:16], self.precomputed
        )
        return plain[0], plain[1:]


def split_frames(data: bytes) -> list[bytes]:
    """ZMTP frames -> bodies (MESSAGE frames carry no flags on the wire)."""
    bodies = []
    at = 0
    while at < len(data):
        flags = data[at]
        assert flags in (0, 2), "a MESSAGE frame with MORE or COMMAND set on the wire"
        if flags & 2:
            size = int.from_bytes(data[at + 1 : at + 9], "big")
            at += 9
        else:
            size = data[at + 1]
            at += 2
        bodies.append(data[at : at + size])
        at += size
    return bodies


@pytest.fixture(scope="module")
def server_pair() -> tuple[bytes, bytes]:
    return new_key_pair()


@pytest.fixture(scope="module")
def client_pair() -> tuple[bytes, bytes]:
    return new_key_pair()


def connect(
    server_pair: tuple[bytes, bytes], client_pair: tuple[bytes, bytes], socket_type: bytes = b"SUB"
) -> tuple[Client, MessageBox, dict[bytes, bytes]]:
    keys = CurveServerKeys(server_pair[1], frozenset({client_pair[0]}))
    server = ServerHandshake(keys, XPUB_METADATA)
    client = Client(server_pair[0], *client_pair)
    client.welcome(server.hello(client.hello()))
    done = server.initiate(client.initiate(metadata_property(b"Socket-Type", socket_type)))
    assert done.client_key == client_pair[0]
    assert server.state is HandshakeState.DONE
    return client, done.box, client.ready(done.ready) | {b"_peer": done.properties[b"socket-type"]}


# -- Z85 and keys --------------------------------------------------------------------------------


@given(st.binary(max_size=64).filter(lambda b: len(b) % 4 == 0))
def test_z85_round_trips_and_matches_pyzmq(data: bytes) -> None:
    text = z85_encode(data)
    assert z85_decode(text) == data
    assert text.encode() == zmq.utils.z85.encode(data)


@given(st.text(max_size=60))
@example("0" * 40)
@example("#" * 5)  # "#####" is over 2**32 - 1
def test_z85_decode_of_any_text_is_bytes_or_a_key_error(text: str) -> None:
    try:
        data = z85_decode(text)
    except CurveKeyError as exc:
        assert text[:5] not in str(exc) or len(text) < 5
        return
    assert z85_encode(data) == text


def test_the_rfc_32_example() -> None:
    assert z85_encode(bytes((0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B))) == "HelloWorld"


def test_keys_decode_as_pyzmq_makes_them() -> None:
    public, secret = zmq.curve_keypair()
    assert decode_key(public.decode()) == zmq.utils.z85.decode(public)
    assert decode_key(public) == decode_key(public.decode()) == decode_key(public + b"\n")
    assert public_key_of(decode_key(secret)) == decode_key(public)
    raw = decode_key(secret)
    assert decode_key(raw) == raw and encode_key(raw) == secret.decode()


@given(st.one_of(st.text(max_size=50), st.binary(max_size=50)))
def test_decode_key_of_anything_is_32_bytes_or_a_key_error(value: str | bytes) -> None:
    try:
        key = decode_key(value)
    except CurveKeyError as exc:
        assert "got" in str(exc) or "Z85" in str(exc)
        return
    assert len(key) == KEY_BYTES


key_text = st.binary(min_size=32, max_size=32).map(z85_encode)
comment = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
    max_size=20,
).map(lambda t: "#" + t)


@given(st.lists(st.one_of(key_text, comment, st.just(""), st.just("   ")), max_size=12))
def test_key_files_skip_blank_lines_and_comments(lines: list[str]) -> None:
    expected = [decode_key(line) for line in lines if line and not line.startswith(("#", " "))]
    assert parse_key_lines("\n".join(lines)) == expected
    assert parse_key_lines("\r\n".join(f"  {line}  " for line in lines)) == expected


@given(
    st.lists(key_text, max_size=4),
    st.text(alphabet=st.sampled_from(Z85_ALPHABET.decode() + "xyz \"'"), min_size=8, max_size=45),
)
def test_a_bad_key_line_is_named_by_number_never_by_content(keys: list[str], bad: str) -> None:
    if bad.strip().startswith("#") or len(bad.strip()) < 8:
        return
    try:
        decode_key(bad)
    except CurveKeyError:
        pass
    else:
        return  # it is a key after all
    with pytest.raises(CurveKeyError, match=rf"^line {len(keys) + 1}: ") as caught:
        parse_key_lines("\n".join([*keys, bad]))
    assert bad.strip() not in str(caught.value)


def test_server_keys_hide_the_secret_and_derive_the_public(
    server_pair: tuple[bytes, bytes],
) -> None:
    keys = CurveServerKeys(server_pair[1], frozenset())
    assert keys.public_key == server_pair[0]
    assert (
        encode_key(server_pair[1]) not in repr(keys) and server_pair[1] not in repr(keys).encode()
    )
    with pytest.raises(CurveKeyError):
        CurveServerKeys(server_pair[1], frozenset({b"short"}))


# -- ZMTP pieces ---------------------------------------------------------------------------------

prop_names = st.binary(min_size=1, max_size=20)


@given(st.dictionaries(prop_names, st.binary(max_size=300), max_size=5))
def test_metadata_round_trips(properties: dict[bytes, bytes]) -> None:
    data = b"".join(metadata_property(name, value) for name, value in properties.items())
    parsed = parse_metadata(data)
    assert parsed == {name.lower(): value for name, value in reversed(properties.items())} | {
        name.lower(): value for name, value in properties.items()
    }


@given(st.binary(max_size=300))
def test_metadata_of_any_bytes_parses_or_is_a_handshake_error(data: bytes) -> None:
    with contextlib.suppress(CurveHandshakeError):
        parse_metadata(data)


def test_command_frames_and_errors() -> None:
    assert command_frame(b"\x05READY") == b"\x04\x06\x05READY"
    long = command_frame(b"\x07MESSAGE" + bytes(300))
    assert long[0] == 0x06 and int.from_bytes(long[1:9], "big") == 308
    assert error_command("400") == b"\x05ERROR\x03400"


# -- the handshake ----------------------------------------------------------------------------------


def test_a_full_handshake_then_boxes_both_ways(
    server_pair: tuple[bytes, bytes], client_pair: tuple[bytes, bytes]
) -> None:
    client, box, seen = connect(server_pair, client_pair)
    assert seen[b"socket-type"] == b"XPUB" and seen[b"_peer"] == b"SUB"
    # server -> client: frames of 3-frame messages, MORE inside the box, nonces counting from 2
    frames = [b"MESSAGE_CREATE", b'{"shard_id":0,"seq":1}', b"x" * 300] * 2
    bodies = split_frames(bytes(box.seal_messages(frames, 3)))
    assert [int.from_bytes(b[8:16], "big") for b in bodies] == [2, 3, 4, 5, 6, 7]
    opened = [client.open(b) for b in bodies]
    assert [data for _, data in opened] == frames
    assert [flags for flags, _ in opened] == [MESSAGE_MORE, MESSAGE_MORE, 0] * 2
    (pong,) = split_frames(box.seal_command(b"\x04PONG"))
    assert client.open(pong) == (MESSAGE_COMMAND, b"\x04PONG")
    # client -> server
    assert box.open(client.message(MESSAGE_MORE, b"\x01MESSAGE_")) == (
        MESSAGE_MORE,
        b"\x01MESSAGE_",
    )
    assert box.open(client.message(MESSAGE_COMMAND, b"\x04PING")) == (MESSAGE_COMMAND, b"\x04PING")


@settings(max_examples=40)
@given(st.lists(st.binary(max_size=600), min_size=1, max_size=12), st.integers(1, 4))
def test_boxing_in_place_gives_the_bytes_of_the_public_binding(
    frames: list[bytes], parts: int
) -> None:
    key = sodium.crypto_box_beforenm(*reversed(new_key_pair()))
    fast, slow = MessageBox(key), MessageBox(key)
    views = [memoryview(frame) for frame in frames]
    assert bytes(fast.seal_messages(views, parts)) == slow._seal_messages_copying(views, parts)
    assert bytes(fast.seal_messages(frames, parts)) == slow._seal_messages_copying(frames, parts)


def test_a_replayed_or_older_message_is_refused(
    server_pair: tuple[bytes, bytes], client_pair: tuple[bytes, bytes]
) -> None:
    client, box, _ = connect(server_pair, client_pair)
    first = client.message(0, b"\x01")
    box.open(first)
    with pytest.raises(CurveHandshakeError, match="does not increase"):
        box.open(first)
    with pytest.raises(CurveHandshakeError, match="does not increase"):
        box.open(client.message(0, b"\x01", nonce=2))  # the INITIATE's nonce
    box.open(client.message(0, b"\x01", nonce=1000))  # a gap is fine


def test_a_key_not_allowed_is_refused_with_400_after_its_vouch(
    server_pair: tuple[bytes, bytes], client_pair: tuple[bytes, bytes]
) -> None:
    stranger = new_key_pair()
    keys = CurveServerKeys(server_pair[1], frozenset({client_pair[0]}))
    server = ServerHandshake(keys, XPUB_METADATA)
    client = Client(server_pair[0], *stranger)
    client.welcome(server.hello(client.hello()))
    with pytest.raises(CurveHandshakeError, match="not in the allowed list") as caught:
        server.initiate(client.initiate(metadata_property(b"Socket-Type", b"SUB")))
    assert caught.value.status_code == "400"
    assert encode_key(stranger[1]) not in str(caught.value)


def test_claiming_an_allowed_key_without_its_secret_fails_at_the_vouch(
    server_pair: tuple[bytes, bytes], client_pair: tuple[bytes, bytes]
) -> None:
    _impostor_public, impostor_secret = new_key_pair()
    keys = CurveServerKeys(server_pair[1], frozenset({client_pair[0]}))
    server = ServerHandshake(keys, XPUB_METADATA)
    client = Client(server_pair[0], client_pair[0], impostor_secret)  # says it is the client
    client.welcome(server.hello(client.hello()))
    with pytest.raises(CurveHandshakeError, match="vouch") as caught:
        server.initiate(client.initiate(b""))
    assert caught.value.status_code is None


def test_a_vouch_for_another_server_is_refused(
    server_pair: tuple[bytes, bytes], client_pair: tuple[bytes, bytes]
) -> None:
    keys = CurveServerKeys(server_pair[1], frozenset({client_pair[0]}))
    server = ServerHandshake(keys, XPUB_METADATA)
    client = Client(server_pair[0], *client_pair)
    client.welcome(server.hello(client.hello()))
    with pytest.raises(CurveHandshakeError, match="another connection or server"):
        server.initiate(client.initiate(b"", vouch_for=new_key_pair()[0]))


def test_a_client_with_another_server_key_cannot_open_a_hello(
    server_pair: tuple[bytes, bytes], client_pair: tuple[bytes, bytes]
) -> None:
    server = ServerHandshake(
        CurveServerKeys(server_pair[1], frozenset({client_pair[0]})), XPUB_METADATA
    )
    client = Client(new_key_pair()[0], *client_pair)
    with pytest.raises(CurveHandshakeError, match="another server key"):
        server.hello(client.hello())


def test_commands_out_of_order_are_refused(
    server_pair: tuple[bytes, bytes], client_pair: tuple[bytes, bytes]
) -> None:
    keys = CurveServerKeys(server_pair[1], frozenset({client_pair[0]}))
    server = ServerHandshake(keys, XPUB_METADATA)
    client = Client(server_pair[0], *client_pair)
    with pytest.raises(CurveHandshakeError, match="out of order"):
        server.initiate(b"\x08INITIATE" + bytes(300))
    hello = client.hello()
    client.welcome(server.hello(hello))
    with pytest.raises(CurveHandshakeError, match="out of order"):
        server.hello(hello)


@settings(max_examples=60)
@given(st.data())
def test_any_tampered_byte_of_hello_or_initiate_is_a_handshake_error(data: st.DataObject) -> None:
    server_public, server_secret = new_key_pair()
    client_public, client_secret = new_key_pair()
    keys = CurveServerKeys(server_secret, frozenset({client_public}))
    server = ServerHandshake(keys, XPUB_METADATA)
    client = Client(server_public, client_public, client_secret)
    hello = bytearray(client.hello())
    target = data.draw(st.sampled_from(["hello", "initiate"]))
    if target == "hello":
        at = data.draw(st.integers(0, len(hello) - 1).filter(lambda i: not 8 <= i < 80))
        hello[at] ^= data.draw(st.integers(1, 255))
        with pytest.raises(CurveHandshakeError):
            server.hello(bytes(hello))
        return
    client.welcome(server.hello(bytes(hello)))
    initiate = bytearray(client.initiate(metadata_property(b"Socket-Type", b"SUB")))
    at = data.draw(st.integers(0, len(initiate) - 1))
    initiate[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CurveHandshakeError):
        server.initiate(bytes(initiate))


@given(st.binary(max_size=400), st.binary(max_size=400), st.binary(max_size=100))
def test_garbage_anywhere_is_a_handshake_error_and_nothing_else(
    hello: bytes, initiate: bytes, message: bytes
) -> None:
    server_public, server_secret = new_key_pair()
    keys = CurveServerKeys(server_secret, frozenset())
    server = ServerHandshake(keys, XPUB_METADATA)
    with pytest.raises(CurveHandshakeError):
        server.hello(hello)
    client = Client(server_public, *new_key_pair())
    server = ServerHandshake(keys, XPUB_METADATA)
    client.welcome(server.hello(client.hello()))
    with pytest.raises(CurveHandshakeError):
        server.initiate(initiate)
    box = MessageBox(sodium.crypto_box_beforenm(*reversed(new_key_pair())))
    for body in (message, b"\x07MESSAGE" + message):
        with pytest.raises(CurveHandshakeError):
            box.open(body)
