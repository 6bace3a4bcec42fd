"""Client payload builders, the 4096-byte limit, command validation, token secrecy."""

from __future__ import annotations

import sys
from typing import Any

import orjson
import pytest

from protocol import payloads as p
from protocol.errors import (
    InvalidCommandError,
    PayloadTooLargeError,
    ProtocolError,
    UnknownIntentError,
)
from protocol.gateway import CLIENT_PAYLOAD_LIMIT, COMMAND_OPCODES, Opcode

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GabcDE.secret-token-value_0123456789"


def roundtrip(payload: dict[str, Any]) -> Any:
    return orjson.loads(p.encode_client_payload(payload))


def test_identify_shape() -> None:
    payload = p.identify(TOKEN, 3, 16, 513)
    assert roundtrip(payload) == {
        "op": 2,
        "d": {
            "token": TOKEN,
            "properties": {
                "os": sys.platform,
                "browser": "titanium-cluster",
                "device": "titanium-cluster",
            },
            "intents": 513,
            "shard": [3, 16],
        },
    }
    full = p.identify(
        TOKEN,
        0,
        1,
        1,
        properties={"os": "linux", "browser": "x", "device": "y"},
        presence=p.presence("idle", [{"name": "chess", "type": 0}], since=None, afk=True),
        large_threshold=250,
        compress=True,
    )
    d = roundtrip(full)["d"]
    assert d["properties"] == {"os": "linux", "browser": "x", "device": "y"}
    assert d["presence"] == {
        "since": None,
        "activities": [{"name": "chess", "type": 0}],
        "status": "idle",
        "afk": True,
    }
    assert (d["large_threshold"], d["compress"], d["shard"]) == (250, True, [0, 1])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"shard_id": 16, "num_shards": 16}, "not below num_shards"),
        ({"shard_id": -1}, "shard_id must be at least 0"),
        ({"num_shards": 0}, "num_shards must be at least 1"),
        ({"intents": "513"}, "intents must be an int"),
        ({"large_threshold": 49}, "at least 50"),
        ({"large_threshold": 251}, "at most 250"),
        ({"presence": {"status": "online"}}, "d.since is required"),
        ({"token": ""}, "non-empty string"),
        ({"token": TOKEN + "\n"}, "without surrounding spaces"),
    ],
)
def test_identify_rejects(kwargs: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = {"token": TOKEN, "shard_id": 0, "num_shards": 16, "intents": 513}
    with pytest.raises(InvalidCommandError, match=fragment) as info:
        p.identify(**(args | kwargs))
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)


def test_identify_rejects_undefined_intents() -> None:
    with pytest.raises(UnknownIntentError, match="undefined bits"):
        p.identify(TOKEN, 0, 1, 1 << 17)


def test_resume_and_heartbeat_shapes() -> None:
    assert roundtrip(p.resume(TOKEN, "abc123", 42)) == {
        "op": 6,
        "d": {"token": TOKEN, "session_id": "abc123", "seq": 42},
    }
    assert roundtrip(p.heartbeat(None)) == {"op": 1, "d": None}
    assert roundtrip(p.heartbeat(7)) == {"op": 1, "d": 7}
    assert p.encode_client_payload(p.heartbeat(7)) == b'{"op":1,"d":7}'
    with pytest.raises(InvalidCommandError, match="session_id"):
        p.resume(TOKEN, "", 1)
    with pytest.raises(InvalidCommandError, match="seq must be at least 0"):
        p.heartbeat(-1)


def test_token_hidden_from_repr_of_identify_and_resume() -> None:
    for payload in (p.identify(TOKEN, 0, 1, 513), p.resume(TOKEN, "abc", 1)):
        for shown in (repr(payload), str(payload), repr(payload["d"]), f"{payload}"):
            assert TOKEN not in shown
            assert "<redacted>" in shown
        assert payload["d"]["token"] == TOKEN  # still sent as is
        assert TOKEN.encode() in p.encode_client_payload(payload)


def test_command_builders_shapes() -> None:
    assert roundtrip(p.presence_update()) == {
        "op": 3,
        "d": {"since": None, "activities": [], "status": "online", "afk": False},
    }
    assert roundtrip(p.presence_update(p.Status.DND, since=1700000000000))["d"]["status"] == "dnd"
    assert roundtrip(p.voice_state_update(41771983423143937, "127121515262115840", True)) == {
        "op": 4,
        "d": {
            "guild_id": "41771983423143937",
            "channel_id": "127121515262115840",
            "self_mute": True,
            "self_deaf": False,
        },
    }
    assert roundtrip(p.voice_state_update("1", None))["d"]["channel_id"] is None
    assert roundtrip(p.request_guild_members(41771983423143937)) == {
        "op": 8,
        "d": {"guild_id": "41771983423143937", "query": "", "limit": 0},
    }
    assert roundtrip(
        p.request_guild_members("5", query="abc", limit=10, presences=True, nonce="n1")
    ) == {
        "op": 8,
        "d": {"guild_id": "5", "query": "abc", "limit": 10, "presences": True, "nonce": "n1"},
    }
    assert roundtrip(p.request_guild_members("5", user_ids=[1, "2"]))["d"] == {
        "guild_id": "5",
        "user_ids": ["1", "2"],
    }
    assert roundtrip(p.request_soundboard_sounds([613425648685547541, "81384788765712384"])) == {
        "op": 31,
        "d": {"guild_ids": ["613425648685547541", "81384788765712384"]},
    }
    assert roundtrip(p.request_channel_info("5")) == {
        "op": 43,
        "d": {"guild_id": "5", "fields": ["status", "voice_start_time"]},
    }
    assert roundtrip(p.request_channel_info(5, ["status"]))["d"]["fields"] == ["status"]


def test_builder_errors() -> None:
    with pytest.raises(InvalidCommandError, match=r"d\.status must be one of"):
        p.presence_update("busy")
    with pytest.raises(InvalidCommandError, match="query or user_ids, not both"):
        p.request_guild_members(5, query="a", user_ids=[1])
    with pytest.raises(InvalidCommandError, match="1 to 100 ids"):
        p.request_guild_members(5, user_ids=range(1, 102))
    with pytest.raises(InvalidCommandError, match="nonce"):
        p.request_guild_members(5, nonce="x" * 33)
    with pytest.raises(InvalidCommandError, match="guild_id must be a decimal snowflake"):
        p.voice_state_update("abc", None)
    with pytest.raises(InvalidCommandError, match="non-empty list"):
        p.request_soundboard_sounds([])
    with pytest.raises(InvalidCommandError, match="non-empty list of strings"):
        p.request_channel_info(5, [])


def test_every_command_builder_passes_validation() -> None:
    built = [
        p.presence_update("invisible", [{"name": "x", "type": 4, "state": "hi"}], 5, True),
        p.voice_state_update(1, 2, True, True),
        p.request_guild_members(1, query="a", limit=5),
        p.request_guild_members(1, user_ids=[3]),
        p.request_soundboard_sounds([1, 2]),
        p.request_channel_info(1),
    ]
    assert {payload["op"] for payload in built} == COMMAND_OPCODES  # one check per command op
    for payload in built:
        decoded = roundtrip(payload)
        assert p.validate_command(decoded["op"], decoded["d"]) == Opcode(payload["op"])


def _sized(total: int) -> dict[str, Any]:
    base = p.presence_update(activities=[{"name": "", "type": 0}])
    overhead = len(p.encode_client_payload(base))
    base["d"]["activities"][0]["name"] = "x" * (total - overhead)
    return base


def test_limit_is_exactly_4096_bytes() -> None:
    assert CLIENT_PAYLOAD_LIMIT == 4096
    assert len(p.encode_client_payload(_sized(4096))) == 4096
    with pytest.raises(PayloadTooLargeError) as info:
        p.encode_client_payload(_sized(4097))
    assert (info.value.size, info.value.limit) == (4097, 4096)
    assert isinstance(info.value, ProtocolError)


def test_oversized_identify_error_hides_token() -> None:
    payload = p.identify(
        TOKEN, 0, 1, 513, properties={"os": "x" * 5000, "browser": "", "device": ""}
    )
    with pytest.raises(PayloadTooLargeError) as info:
        p.encode_client_payload(payload)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)
    assert "over the gateway limit of 4096 bytes" in str(info.value)


def test_unserializable_payload_is_typed() -> None:
    with pytest.raises(InvalidCommandError, match="not JSON-serializable"):
        p.encode_client_payload({"op": 3, "d": {1, 2}})


@pytest.mark.parametrize(
    ("op", "d", "fragment"),
    [
        (0, {}, "not a command"),
        (1, None, "not a command"),
        (2, {"token": TOKEN}, "not a command"),
        (6, {"token": TOKEN, "session_id": "a", "seq": 1}, "not a command"),
        (5, {}, "not a command"),
        (99, {}, "not a command"),
        ("3", {}, "op must be an int"),
        (True, {}, "op must be an int"),
        (3.0, {}, "op must be an int"),
        (None, {}, "op must be an int"),
        (3, [], "JSON object"),
        (3, "online", "JSON object"),
        (3, None, "JSON object"),
        (3, {"since": None, "activities": [], "afk": False}, "d.status is required"),
        (3, {"since": None, "activities": [], "status": "away", "afk": False}, "d.status"),
        (3, {"since": None, "activities": {}, "status": "idle", "afk": False}, "d.activities"),
        (3, {"since": None, "activities": [1], "status": "idle", "afk": False}, "d.activities"),
        (3, {"since": "now", "activities": [], "status": "idle", "afk": False}, "d.since"),
        (3, {"since": None, "activities": [], "status": "idle", "afk": 0}, "d.afk must be a bool"),
        (4, {"guild_id": "1", "channel_id": None, "self_mute": False}, "d.self_deaf is required"),
        (
            4,
            {"guild_id": "x", "channel_id": None, "self_mute": False, "self_deaf": False},
            "guild_id",
        ),
        (
            4,
            {"guild_id": "1", "channel_id": 1.5, "self_mute": False, "self_deaf": False},
            "channel_id",
        ),
        (8, {"guild_id": "1"}, "exactly one of d.query and d.user_ids"),
        (8, {"guild_id": "1", "query": "", "user_ids": ["2"]}, "exactly one of"),
        (8, {"guild_id": "1", "query": ""}, "d.limit is required"),
        (8, {"guild_id": "1", "query": 5, "limit": 0}, "d.query must be a string"),
        (8, {"guild_id": "1", "query": "", "limit": -1}, "d.limit must be at least 0"),
        (8, {"guild_id": "1", "user_ids": []}, "1 to 100 ids"),
        (8, {"guild_id": "1", "user_ids": ["a"]}, "user_ids"),
        (8, {"guild_id": "1", "user_ids": "2", "presences": "yes"}, "d.presences must be a bool"),
        (8, {"guild_id": "1", "user_ids": "2", "nonce": 5}, "d.nonce"),
        (31, {"guild_ids": "1"}, "non-empty list"),
        (31, {"guild_ids": [None]}, "guild_ids"),
        (31, {}, "d.guild_ids is required"),
        (43, {"guild_id": "1"}, "d.fields is required"),
        (43, {"guild_id": "1", "fields": ["status", 3]}, "list of strings"),
        (43, {"fields": ["status"]}, "d.guild_id is required"),
    ],
)
def test_validate_command_rejects(op: object, d: object, fragment: str) -> None:
    with pytest.raises(InvalidCommandError, match=fragment) as info:
        p.validate_command(op, d)
    assert isinstance(info.value, ProtocolError)
    assert TOKEN not in str(info.value)


def test_validate_command_accepts_documented_examples() -> None:
    # Discord's "Send Events" examples.
    assert (
        p.validate_command(
            3,
            {
                "since": 91879201,
                "activities": [{"name": "Save the Oxford Comma", "type": 0}],
                "status": "online",
                "afk": False,
            },
        )
        is Opcode.PRESENCE_UPDATE
    )
    assert (
        p.validate_command(
            4,
            {
                "guild_id": "41771983423143937",
                "channel_id": "127121515262115840",
                "self_mute": False,
                "self_deaf": False,
            },
        )
        is Opcode.VOICE_STATE_UPDATE
    )
    assert p.validate_command(8, {"guild_id": "41771983444143937", "query": "", "limit": 0}) is (
        Opcode.REQUEST_GUILD_MEMBERS
    )
    assert p.validate_command(8, {"guild_id": "1", "user_ids": "2"}) is Opcode.REQUEST_GUILD_MEMBERS
    assert (
        p.validate_command(31, {"guild_ids": ["613425648685547541", "81384788765712384"]})
        is Opcode.REQUEST_SOUNDBOARD_SOUNDS
    )
    assert (
        p.validate_command(
            43, {"guild_id": "613425648685547541", "fields": ["status", "voice_start_time"]}
        )
        is Opcode.REQUEST_CHANNEL_INFO
    )
