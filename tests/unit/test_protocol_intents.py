"""Intents: names <-> bits per PROTOCOL.md section 9, and parsing of user input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError, UnknownIntentError
from protocol.intents import (
    ALIASES,
    ALL_INTENTS,
    NON_PRIVILEGED_INTENTS,
    PRIVILEGED_INTENTS,
    Intent,
    intent_names,
    parse_intents,
    privileged_in,
    validate_intents,
)

#: PROTOCOL.md section 9, bit by bit.
TABLE = {
    0: "GUILDS",
    1: "GUILD_MEMBERS",
    2: "GUILD_MODERATION",
    3: "GUILD_EXPRESSIONS",
    4: "GUILD_INTEGRATIONS",
    5: "GUILD_WEBHOOKS",
    6: "GUILD_INVITES",
    7: "GUILD_VOICE_STATES",
    8: "GUILD_PRESENCES",
    9: "GUILD_MESSAGES",
    10: "GUILD_MESSAGE_REACTIONS",
    11: "GUILD_MESSAGE_TYPING",
    12: "DIRECT_MESSAGES",
    13: "DIRECT_MESSAGE_REACTIONS",
    14: "DIRECT_MESSAGE_TYPING",
    15: "MESSAGE_CONTENT",
    16: "GUILD_SCHEDULED_EVENTS",
    20: "AUTO_MODERATION_CONFIGURATION",
    21: "AUTO_MODERATION_EXECUTION",
    24: "GUILD_MESSAGE_POLLS",
    25: "DIRECT_MESSAGE_POLLS",
}


def test_table() -> None:
    assert {i.value: i.name for i in Intent} == {1 << bit: name for bit, name in TABLE.items()}
    assert ALL_INTENTS == 53608447
    assert NON_PRIVILEGED_INTENTS == 53575421
    assert PRIVILEGED_INTENTS == 2 | 256 | 32768
    assert intent_names(PRIVILEGED_INTENTS) == [
        "GUILD_MEMBERS",
        "GUILD_PRESENCES",
        "MESSAGE_CONTENT",
    ]
    assert privileged_in(513) == 0
    assert privileged_in(ALL_INTENTS) == PRIVILEGED_INTENTS


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("GUILDS,GUILD_MESSAGES", 513),
        ("guilds, guild_messages", 513),
        ("Guilds|Guild_Messages", 513),
        ("GUILDS GUILD_MESSAGES", 513),
        ("GUILDS,,GUILD_MESSAGES,", 513),
        ("513", 513),
        (" 513 ", 513),
        (513, 513),
        ("0", 0),
        ("GUILD_BANS", 4),
        ("guild_emojis_and_stickers", 8),
        ("MESSAGE_CONTENT", 32768),
        (str(ALL_INTENTS), ALL_INTENTS),
    ],
)
def test_parse(text: str | int, value: int) -> None:
    assert parse_intents(text) == value


def test_aliases() -> None:
    assert ALIASES == {
        "GUILD_BANS": Intent.GUILD_MODERATION,
        "GUILD_EMOJIS_AND_STICKERS": Intent.GUILD_EXPRESSIONS,
    }


def test_unknown_name_is_clear() -> None:
    with pytest.raises(
        UnknownIntentError, match=r"unknown intent 'GUILD_MESAGES'; known intents: GUILDS, "
    ) as info:
        parse_intents("GUILDS,GUILD_MESAGES")
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (1 << 17, "undefined bits 0x20000"),
        (1 << 26, "undefined bits"),
        (ALL_INTENTS + (1 << 22), "undefined bits 0x400000"),
        (-1, "must not be negative"),
        ("131072", "undefined bits"),
        ("", "no intents given"),
        ("   ", "no intents given"),
        ("-5", "unknown intent"),
        ("0x201", "unknown intent"),
    ],
)
def test_rejects(value: int | str, fragment: str) -> None:
    with pytest.raises(UnknownIntentError, match=fragment):
        parse_intents(value)


def test_validate() -> None:
    assert validate_intents(NON_PRIVILEGED_INTENTS) == NON_PRIVILEGED_INTENTS
    with pytest.raises(UnknownIntentError):
        validate_intents(1 << 18)


valid_values = st.sets(st.sampled_from(list(Intent))).map(lambda s: sum(i.value for i in s))


@given(valid_values, st.sampled_from([",", "|", " ", ", "]), st.booleans())
def test_names_round_trip(value: int, sep: str, lower: bool) -> None:
    names = intent_names(value)
    text = sep.join(n.lower() if lower else n for n in names)
    assert parse_intents(text if names else "0") == value
    assert parse_intents(str(value)) == value == parse_intents(value)
