"""``--gateway`` options and the rule off loopback (cluster/endpoint/settings.py, cluster/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import ConfigError, SupervisorConfig, parse_gateway_settings
from cluster.endpoint.connection import (
    IdentifyRequest,
    Refusal,
    check_identify,
    check_payload,
    check_resume,
    parse_query,
    token_matches,
)
from cluster.endpoint.server import dispatch_d
from cluster.endpoint.settings import GatewaySettingsError, load_gateway_token, parse_gateway
from protocol.compression import Compression
from protocol.intents import NON_PRIVILEGED_INTENTS

TOKEN = "bot-token-1234567890"


def test_parse_gateway() -> None:
    assert parse_gateway(None) is None and parse_gateway("off") is None
    assert parse_gateway("127.0.0.1:7878") == ("127.0.0.1", 7878)
    assert parse_gateway("7878") == ("127.0.0.1", 7878)
    assert parse_gateway(":0") == ("127.0.0.1", 0)
    assert parse_gateway("[::1]:9") == ("::1", 9)
    with pytest.raises(GatewaySettingsError, match="HOST:PORT"):
        parse_gateway("nope")


def test_off_loopback_the_endpoint_needs_a_token_of_its_own(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--gateway-token-file"):
        SupervisorConfig(token=TOKEN, gateway=parse_gateway_settings("0.0.0.0:7878", None))
    token_file = tmp_path / "gateway.token"
    token_file.write_text("0123456789abcdef0123456789abcdef\n")
    settings = parse_gateway_settings("0.0.0.0:7878", str(token_file))
    assert settings is not None and settings.access_token == "0123456789abcdef0123456789abcdef"
    config = SupervisorConfig(token=TOKEN, gateway=settings)
    assert "0123456789abcdef" not in repr(config)
    with pytest.raises(ConfigError, match="goes with --gateway"):
        parse_gateway_settings(None, str(token_file))


def test_the_gateway_token_must_be_url_safe_and_is_never_echoed(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("has/slash+and=padding-secret")
    with pytest.raises(GatewaySettingsError) as exc:
        load_gateway_token(bad)
    assert "secret" not in str(exc.value)
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(GatewaySettingsError):
        load_gateway_token(short)
    with pytest.raises(GatewaySettingsError, match="cannot read"):
        load_gateway_token(tmp_path / "missing")


def test_query_string() -> None:
    assert parse_query({"v": "10", "encoding": "json"}) is Compression.NONE
    assert parse_query({"v": "9", "compress": "zlib-stream"}) is Compression.ZLIB_STREAM
    assert parse_query({"compress": "zstd-stream"}) is Compression.ZSTD_STREAM
    assert parse_query({"v": "6"}) == Refusal(4012, "Invalid API version.")
    assert isinstance(parse_query({"encoding": "etf"}), Refusal)
    assert isinstance(parse_query({"compress": "brotli"}), Refusal)


def identify(**d: object) -> object:
    return check_identify(
        {"token": TOKEN, "intents": 513, "shard": [1, 4], **d},
        TOKEN,
        4,
        frozenset({0, 1}),
        NON_PRIVILEGED_INTENTS,
    )


@pytest.mark.parametrize(
    ("d", "code"),
    [
        ({"token": "wrong"}, 4004),
        ({"token": None}, 4001),
        ({"shard": [1, 3]}, 4010),
        ({"shard": [4, 4]}, 4010),
        ({"shard": [2, 4]}, 4010),  # another host's
        ({"shard": "0,4"}, 4010),
        ({"shard": None}, 4011),
        ({"intents": -1}, 4013),
        ({"intents": 1 << 30}, 4013),
        ({"intents": True}, 4013),
        ({"intents": 1 << 8}, 4014),  # GUILD_PRESENCES: the cluster does not have it
    ],
)
def test_identify_refusals(d: dict[str, object], code: int) -> None:
    refusal = identify(**d)
    assert isinstance(refusal, Refusal) and refusal.code == code
    assert len(refusal.reason.encode()) <= 123 and TOKEN not in refusal.reason


def test_identify_accepted_and_the_bot_prefix() -> None:
    assert identify() == IdentifyRequest(1, 4, 513)
    assert identify(token=f"Bot {TOKEN}") == IdentifyRequest(1, 4, 513)
    assert token_matches(TOKEN, TOKEN) and not token_matches(5, TOKEN)
    assert check_resume({"token": TOKEN, "session_id": "s", "seq": 7}, TOKEN) is not None
    assert isinstance(check_resume({"token": TOKEN, "session_id": 5}, TOKEN), Refusal)


def test_payload_checks() -> None:
    assert check_payload(b'{"op":1,"d":null}') == (1, None)
    assert check_payload(b"{nope") == Refusal(4002, "Error while decoding payload.")
    assert check_payload(b'{"op":"1"}') == Refusal(4002, "Error while decoding payload.")
    assert check_payload(b'{"op":5}') == Refusal(4001, "Unknown opcode.")
    assert check_payload(b'{"op":1,"d":"' + b"x" * 5000 + b'"}') == Refusal(
        4002, "Payload too large."
    )


def test_dispatch_d_cuts_d_out_of_discords_key_order() -> None:
    raw = b'{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"id":"1","s":{"op":0}}}'
    assert dispatch_d(raw, b"MESSAGE_CREATE") == b'{"id":"1","s":{"op":0}}'
    assert dispatch_d(b'{"op":0,"d":{},"t":"X","s":1}', b"X") is None
    assert dispatch_d(b'{"t":"X","s":1,"op":0,"d":null}', b"X") == b"null"
    assert dispatch_d(b'{"t":"XY","s":1,"op":0,"d":1}', b"X") is None
