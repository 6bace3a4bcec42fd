"""Opcodes and the close-code table, spelled out from Discord's docs (PROTOCOL.md 1-2)."""

from __future__ import annotations

import pytest

from protocol.gateway import (
    CLIENT_OPCODES,
    CLOSE_ACTIONS,
    COMMAND_OPCODES,
    FATAL_EXPLANATIONS,
    RESUMABLE_CLOSE_CODE,
    CloseAction,
    CloseCode,
    Opcode,
    close_action,
    explain_fatal,
    is_fatal,
)

RESUME, NEW, FATAL = CloseAction.RESUME, CloseAction.NEW_SESSION, CloseAction.FATAL

#: Discord's "Gateway Close Event Codes" table, with the action it implies (PROTOCOL.md 2).
DOCUMENTED: dict[int, tuple[str, bool, CloseAction]] = {
    # code: (name, docs "Reconnect", action)
    4000: ("UNKNOWN_ERROR", True, RESUME),
    4001: ("UNKNOWN_OPCODE", True, RESUME),
    4002: ("DECODE_ERROR", True, RESUME),
    4003: ("NOT_AUTHENTICATED", True, NEW),
    4004: ("AUTHENTICATION_FAILED", False, FATAL),
    4005: ("ALREADY_AUTHENTICATED", True, RESUME),
    4007: ("INVALID_SEQ", True, NEW),
    4008: ("RATE_LIMITED", True, RESUME),
    4009: ("SESSION_TIMED_OUT", True, NEW),
    4010: ("INVALID_SHARD", False, FATAL),
    4011: ("SHARDING_REQUIRED", False, FATAL),
    4012: ("INVALID_API_VERSION", False, FATAL),
    4013: ("INVALID_INTENTS", False, FATAL),
    4014: ("DISALLOWED_INTENTS", False, FATAL),
}


@pytest.mark.parametrize("code", sorted(DOCUMENTED))
def test_documented_close_codes(code: int) -> None:
    name, reconnect, action = DOCUMENTED[code]
    assert CloseCode(code).name == name
    assert close_action(code) is action
    assert CLOSE_ACTIONS[code] is action
    assert is_fatal(code) is (not reconnect)


def test_close_table_has_nothing_undocumented() -> None:
    assert set(CLOSE_ACTIONS) == set(DOCUMENTED) | {1000, 1001}
    assert 4006 not in CLOSE_ACTIONS  # only a voice close code


def test_fatal_set_is_exact() -> None:
    fatal = {code for code, action in CLOSE_ACTIONS.items() if action is FATAL}
    assert fatal == {4004, 4010, 4011, 4012, 4013, 4014}
    assert {c for c in range(1000, 5000) if is_fatal(c)} == fatal


def test_new_session_codes() -> None:
    assert close_action(4007) is NEW and close_action(4009) is NEW


@pytest.mark.parametrize("code", [None, 1000, 1001, 1006, 1011, 3000, 4006, 4015, 4999, 0, -1])
def test_unknown_codes_and_no_close_frame_resume(code: int | None) -> None:
    assert close_action(code) is RESUME
    assert not is_fatal(code)


def test_fatal_explanations() -> None:
    assert set(FATAL_EXPLANATIONS) == {4004, 4010, 4011, 4012, 4013, 4014}
    for code, line in FATAL_EXPLANATIONS.items():
        assert f"({code})" in line
        assert "\n" not in line
        assert explain_fatal(code) == line
    assert FATAL_EXPLANATIONS[4004] == "authentication failed (4004): check DISCORD_TOKEN"
    assert "4999" in explain_fatal(4999)


def test_resumable_close_code_is_4000() -> None:
    assert int(RESUMABLE_CLOSE_CODE) == 4000
    assert close_action(RESUMABLE_CLOSE_CODE) is RESUME


def test_opcodes() -> None:
    assert {op.value: op.name for op in Opcode} == {
        0: "DISPATCH",
        1: "HEARTBEAT",
        2: "IDENTIFY",
        3: "PRESENCE_UPDATE",
        4: "VOICE_STATE_UPDATE",
        6: "RESUME",
        7: "RECONNECT",
        8: "REQUEST_GUILD_MEMBERS",
        9: "INVALID_SESSION",
        10: "HELLO",
        11: "HEARTBEAT_ACK",
        31: "REQUEST_SOUNDBOARD_SOUNDS",
        43: "REQUEST_CHANNEL_INFO",
    }
    assert {3, 4, 8, 31, 43} == COMMAND_OPCODES
    assert {1, 2, 3, 4, 6, 8, 31, 43} == CLIENT_OPCODES
