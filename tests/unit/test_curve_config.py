"""Security off loopback, the pure parts: the loopback rule, the refusals, key files, ZAP, bearer.

The loopback rule decides from the text alone (no lookups) and never raises;
``SupervisorConfig`` refuses a non-loopback ``--pub``/``--control`` without
CURVE and a non-loopback ``--health`` without a token, each with one line
saying why and how. Key files are read as ``cluster keys`` writes them, and no
error ever holds a key or the token.
"""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cluster.config import ConfigError, SupervisorConfig
from cluster.curve import (
    ZAP_DOMAIN,
    SecretFileError,
    is_loopback_endpoint,
    is_loopback_host,
    load_client_keys,
    load_http_token,
    load_server_keys,
    load_single_key,
    write_key_pair,
    zap_reply,
)
from cluster.http import OPEN_PATHS, bearer_matches
from protocol.curvezmq import CurveKeyError, CurveServerKeys, encode_key, new_key_pair

# -- the loopback rule ---------------------------------------------------------------------------

loopback_v4 = st.integers(0x7F000000, 0x7FFFFFFF).map(lambda n: str(ipaddress.IPv4Address(n)))
other_v4 = (
    st.integers(0, 0xFFFFFFFF)
    .filter(lambda n: n >> 24 != 127)
    .map(lambda n: str(ipaddress.IPv4Address(n)))
)
other_v6 = (
    st.integers(2, 2**128 - 1)
    .map(lambda n: ipaddress.IPv6Address(n))
    .filter(lambda a: a.ipv4_mapped is None or not a.ipv4_mapped.is_loopback)
    .map(str)
)


@given(loopback_v4, st.integers(0, 65535))
def test_every_127_address_is_loopback(host: str, port: int) -> None:
    assert is_loopback_host(host)
    assert is_loopback_endpoint(f"tcp://{host}:{port}")
    assert is_loopback_endpoint(f"tcp://{host}:*")
    assert is_loopback_host(f"::ffff:{host}")


@given(st.one_of(other_v4, other_v6), st.integers(0, 65535))
@example("0.0.0.0", 5555)
@example("::", 5555)
@example("198.51.100.1", 5555)
def test_every_other_address_is_not(host: str, port: int) -> None:
    assert not is_loopback_host(host)
    shown = f"[{host}]" if ":" in host else host
    assert not is_loopback_endpoint(f"tcp://{shown}:{port}")


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/pub", True),
        ("inproc://x", True),
        ("tcp://*:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://lo:5555", False),  # an interface name: not decided from the text
        ("tcp://example.org:5555", False),
        ("tcp://127.0.0.1", False),
        ("pgm://127.0.0.1:5555", False),
    ],
)
def test_endpoints(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


@given(st.text(max_size=40))
def test_the_rule_never_raises(text: str) -> None:
    is_loopback_host(text)
    is_loopback_endpoint(text)
    is_loopback_endpoint("tcp://" + text)


# -- the refusals ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def curve() -> CurveServerKeys:
    return CurveServerKeys(new_key_pair()[1], frozenset({new_key_pair()[0]}))


@pytest.mark.parametrize("option", ["pub", "control"])
@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:1"])
def test_a_socket_off_loopback_needs_curve(
    option: str, endpoint: str, curve: CurveServerKeys
) -> None:
    with pytest.raises(ConfigError) as caught:
        SupervisorConfig(token="t0ken", **{option: endpoint})  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"--{option} {endpoint} is not on loopback")
    assert "`cluster keys --out DIR`" in message and "--curve-secret" in message
    config = SupervisorConfig(token="t0ken", curve=curve, **{option: endpoint})  # type: ignore[arg-type]
    assert encode_key(curve.secret_key) not in repr(config)


def test_loopback_and_ipc_need_nothing_and_may_opt_in(curve: CurveServerKeys) -> None:
    SupervisorConfig(token="t0ken", pub="ipc:///tmp/p", control="tcp://127.0.0.1:0")
    SupervisorConfig(token="t0ken", curve=curve, http_token="x" * 20)


def test_http_off_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError) as caught:
        SupervisorConfig(token="t0ken", health_host="0.0.0.0", health_port=8080)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("--health 0.0.0.0:8080 is not on loopback")
    assert "--http-token-file" in message
    config = SupervisorConfig(
        token="t0ken", health_host="0.0.0.0", health_port=8080, http_token="s3cret-token-value"
    )
    assert "s3cret-token-value" not in repr(config)


# -- key files --------------------------------------------------------------------------------------


def test_cluster_keys_files(tmp_path: Path) -> None:
    public_path, secret_path, public = write_key_pair(tmp_path / "keys", "server")
    assert (public_path.name, secret_path.name) == ("server.key", "server.key_secret")
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert load_single_key(public_path, "key") == public
    secret = load_single_key(secret_path, "key")
    client_public, _, _ = write_key_pair(tmp_path / "keys", "bot1")
    # the directory holds both pairs: the secret files are skipped, the public ones let in
    keys = load_server_keys(secret_path, tmp_path / "keys")
    assert keys.public_key == public and keys.secret_key == secret
    assert keys.allowed == {public, load_single_key(client_public, "key")}
    with pytest.raises(CurveKeyError, match="exists"):
        write_key_pair(tmp_path / "keys", "server")
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(CurveKeyError, match="--name"):
            write_key_pair(tmp_path, bad)


def test_client_key_files_and_errors_that_never_show_a_key(tmp_path: Path) -> None:
    keys = [new_key_pair()[0] for _ in range(3)]
    listing = tmp_path / "clients.txt"
    listing.write_text("# bots\n" + "\n".join(encode_key(k) for k in keys) + "\n\n")
    assert load_client_keys(listing) == frozenset(keys)
    secret = encode_key(new_key_pair()[1])
    broken = tmp_path / "broken.key"
    broken.write_text(f"{secret[:-1]}\n")
    with pytest.raises(CurveKeyError) as caught:
        load_client_keys(broken)
    assert "line 1" in str(caught.value) and secret[:-1] not in str(caught.value)
    with pytest.raises(CurveKeyError) as caught:
        load_single_key(broken, "--curve-secret")
    assert str(broken) in str(caught.value) and secret[:-1] not in str(caught.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CurveKeyError, match="no client keys"):
        load_client_keys(empty)
    with pytest.raises(CurveKeyError, match="cannot read"):
        load_client_keys(tmp_path / "missing")
    two = tmp_path / "two.key_secret"
    two.write_text(encode_key(keys[0]) + "\n" + encode_key(keys[1]) + "\n")
    with pytest.raises(CurveKeyError, match="exactly one"):
        load_single_key(two, "--curve-secret")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(CurveKeyError, match="not ASCII"):
        load_single_key(binary, "--curve-secret")


def test_http_token_files(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  k9Zq-long-enough-token \n")
    assert load_http_token(token_file) == "k9Zq-long-enough-token"
    for bad in ("short", "has a space in the middle", ""):
        token_file.write_text(bad)
        with pytest.raises(SecretFileError) as caught:
            load_http_token(token_file)
        assert bad not in str(caught.value) or not bad
    with pytest.raises(SecretFileError, match="cannot read"):
        load_http_token(tmp_path / "missing")


# -- ZAP (RFC 27) and the bearer check -------------------------------------------------------------


def test_zap_admits_only_allowed_curve_keys() -> None:
    allowed, other = new_key_pair()[0], new_key_pair()[0]

    def request(key: bytes, mechanism: bytes = b"CURVE", domain: bytes = ZAP_DOMAIN) -> list[bytes]:
        return [b"1.0", b"7", domain, b"10.0.0.9", b"", mechanism, key]

    assert zap_reply(request(allowed), {allowed}) == [
        b"1.0",
        b"7",
        b"200",
        b"OK",
        encode_key(allowed).encode(),
        b"",
    ]
    assert zap_reply(request(other), {allowed})[2] == b"400"
    assert zap_reply(request(allowed, b"PLAIN"), {allowed})[2] == b"400"
    assert zap_reply(request(allowed, domain=b"other"), {allowed})[2] == b"400"
    assert zap_reply([b"2.0", b"7", ZAP_DOMAIN], {allowed})[2] == b"500"


@given(st.lists(st.binary(max_size=40), max_size=9), st.sets(st.binary(min_size=32, max_size=32)))
def test_zap_answers_anything_with_six_frames_and_admits_only_the_allowed(
    frames: list[bytes], allowed: set[bytes]
) -> None:
    reply = zap_reply(frames, allowed)
    assert len(reply) == 6 and reply[0] == b"1.0"
    if reply[2] == b"200":
        assert frames[5] == b"CURVE" and frames[6] in allowed and frames[2] == ZAP_DOMAIN


@given(st.one_of(st.none(), st.text(max_size=60)))
@example("Bearer the-right-token")
@example("bearer   the-right-token  ")
def test_bearer_matches_only_the_token(header: str | None) -> None:
    expected = header is not None and header.strip().lower().startswith("bearer ")
    expected = expected and header is not None and header.strip()[7:].strip() == "the-right-token"
    assert bearer_matches(header, "the-right-token") is expected


def test_the_probes_stay_open() -> None:
    assert frozenset({"/health", "/livez"}) == OPEN_PATHS
