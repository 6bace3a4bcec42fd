"""The endpoint's intent filter (cluster/endpoint/filters.py): Discord's table, and the fast path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.endpoint.filters import (
    CONTENT_EVENTS,
    EVENT_INTENTS,
    IntentFilter,
    delivers,
    needs_guild_check,
    without_content,
)
from protocol.intents import ALL_INTENTS, NON_PRIVILEGED_INTENTS, Intent

GUILD = lambda: True  # noqa: E731
DM = lambda: False  # noqa: E731
NOT_SELF = lambda: False  # noqa: E731


@pytest.mark.parametrize(
    ("t", "intents", "has_guild", "expected"),
    [
        (b"GUILD_CREATE", Intent.GUILDS, GUILD, True),
        (b"GUILD_CREATE", Intent.GUILD_MESSAGES, GUILD, False),
        (b"MESSAGE_CREATE", Intent.GUILD_MESSAGES, GUILD, True),
        (b"MESSAGE_CREATE", Intent.GUILD_MESSAGES, DM, False),
        (b"MESSAGE_CREATE", Intent.DIRECT_MESSAGES, DM, True),
        (b"MESSAGE_CREATE", Intent.DIRECT_MESSAGES, GUILD, False),
        (b"MESSAGE_CREATE", Intent.GUILDS, GUILD, False),
        (b"MESSAGE_DELETE_BULK", Intent.GUILD_MESSAGES, GUILD, True),
        (b"TYPING_START", Intent.DIRECT_MESSAGE_TYPING, DM, True),
        (b"PRESENCE_UPDATE", Intent.GUILDS, GUILD, False),
        (b"PRESENCE_UPDATE", Intent.GUILD_PRESENCES, GUILD, True),
        (b"VOICE_STATE_UPDATE", Intent.GUILD_VOICE_STATES, GUILD, True),
        (b"CHANNEL_PINS_UPDATE", Intent.DIRECT_MESSAGES, DM, True),
        (b"CHANNEL_PINS_UPDATE", Intent.GUILDS, DM, False),
        (b"GUILD_MEMBER_ADD", Intent.GUILDS, GUILD, False),
        (b"GUILD_EMOJIS_UPDATE", Intent.GUILD_EXPRESSIONS, GUILD, True),
        # not tied to an intent: always
        (b"INTERACTION_CREATE", 0, DM, True),
        (b"USER_UPDATE", 0, DM, True),
        (b"READY", 0, DM, True),
    ],
)
def test_discords_table(t: bytes, intents: int, has_guild: object, expected: bool) -> None:
    assert delivers(t, int(intents), has_guild) is expected  # type: ignore[arg-type]


def test_guild_member_update_about_the_bot_passes_without_the_members_intent() -> None:
    assert delivers(b"GUILD_MEMBER_UPDATE", Intent.GUILDS, GUILD, lambda: True)
    assert not delivers(b"GUILD_MEMBER_UPDATE", Intent.GUILDS, GUILD, NOT_SELF)
    flt = IntentFilter(Intent.GUILDS)
    assert flt.allows(b"GUILD_MEMBER_UPDATE", GUILD, lambda: True)
    assert not flt.allows(b"GUILD_MEMBER_UPDATE", GUILD, NOT_SELF)


def test_the_payload_is_looked_at_only_with_one_intent_of_a_pair() -> None:
    looked: list[str] = []

    def has_guild() -> bool:
        looked.append("x")
        return True

    both = Intent.GUILD_MESSAGES | Intent.DIRECT_MESSAGES
    assert delivers(b"MESSAGE_CREATE", both, has_guild)
    assert not delivers(b"MESSAGE_CREATE", Intent.GUILDS, has_guild)
    assert looked == []
    assert not needs_guild_check(b"MESSAGE_CREATE", NON_PRIVILEGED_INTENTS)
    assert needs_guild_check(b"MESSAGE_CREATE", Intent.GUILD_MESSAGES)
    assert IntentFilter(NON_PRIVILEGED_INTENTS).checked == frozenset({b"GUILD_MEMBER_UPDATE"})


@given(
    intents=st.integers(0, ALL_INTENTS).map(lambda v: v & ALL_INTENTS),
    t=st.sampled_from([*EVENT_INTENTS, b"MESSAGE_CREATE", b"INTERACTION_CREATE", b"READY"]),
    guild=st.booleans(),
    about_self=st.booleans(),
)
def test_the_precomputed_filter_decides_as_the_table(
    intents: int, t: bytes, guild: bool, about_self: bool
) -> None:
    flt = IntentFilter(intents)
    expected = delivers(t, intents, lambda: guild, lambda: about_self)
    assert flt.allows(t, lambda: guild, lambda: about_self) is expected
    if t in flt.blocked:
        assert expected is False


# -- MESSAGE_CONTENT: what a client without the intent gets -----------------------------------

BOT_ID = 1234567890123456789


def message(**extra: object) -> dict[str, object]:
    return {
        "id": "900",
        "channel_id": "10",
        "guild_id": "555",
        "author": {"id": "42", "username": "someone"},
        "mentions": [],
        "content": "hello",
        "embeds": [{"title": "t"}],
        "attachments": [{"id": "1", "url": "u"}],
        "components": [{"type": 1, "components": []}],
        "poll": {"question": {"text": "?"}},
        "tts": False,
        **extra,
    }


def stripped(t: bytes, d: dict[str, object]) -> dict[str, Any]:
    out = without_content(t, d, BOT_ID)
    assert isinstance(out, dict)
    return out


def test_a_guild_message_loses_its_content_fields_and_poll() -> None:
    expected = {k: v for k, v in message().items() if k != "poll"}
    expected |= {"content": "", "embeds": [], "attachments": [], "components": []}
    assert stripped(b"MESSAGE_CREATE", message()) == expected  # poll: left out, as Discord does
    # MESSAGE_UPDATE is partial: only the fields it has are blanked
    update = {"id": "900", "channel_id": "10", "guild_id": "555", "embeds": [{"x": 1}]}
    assert without_content(b"MESSAGE_UPDATE", update, BOT_ID) == {**update, "embeds": []}
    # nothing to blank: unchanged (None: the shared bytes are sent as they are)
    plain = {"id": "900", "guild_id": "555", "content": "", "embeds": [], "author": {"id": "1"}}
    assert without_content(b"MESSAGE_CREATE", plain, BOT_ID) is None


@pytest.mark.parametrize(
    ("why", "d"),
    [
        ("a DM", {k: v for k, v in message().items() if k != "guild_id"}),
        ("the bot's own message", message(author={"id": str(BOT_ID), "bot": True})),
        ("a message that mentions the bot", message(mentions=[{"id": str(BOT_ID)}])),
    ],
)
def test_discords_exceptions_keep_the_content(why: str, d: dict[str, object]) -> None:
    assert without_content(b"MESSAGE_CREATE", d, BOT_ID) is None, why


def test_the_replied_to_and_forwarded_messages_follow_the_rule_too() -> None:
    replied = message(
        referenced_message=message(id="800"),
        message_snapshots=[{"message": {"content": "fwd", "embeds": [], "attachments": []}}],
    )
    out = stripped(b"MESSAGE_CREATE", replied)
    assert out["referenced_message"]["content"] == ""
    assert out["message_snapshots"] == [
        {"message": {"content": "", "embeds": [], "attachments": []}}
    ]
    # a reply to the bot's own message: that one keeps its content
    to_bot = message(referenced_message=message(author={"id": str(BOT_ID)}))
    assert stripped(b"MESSAGE_CREATE", to_bot)["referenced_message"]["content"] == "hello"


def test_automod_executions_lose_content_and_matched_content() -> None:
    d = {"guild_id": "555", "rule_id": "1", "content": "bad word", "matched_content": "bad"}
    assert without_content(b"AUTO_MODERATION_ACTION_EXECUTION", d, BOT_ID) == {
        **d,
        "content": "",
        "matched_content": "",
    }
    assert without_content(b"GUILD_CREATE", {"guild_id": "555", "content": "x"}, BOT_ID) is None


def test_only_a_client_without_the_intent_looks_at_message_events() -> None:
    """A client with MESSAGE_CONTENT (or on a cluster without it) pays nothing per event."""
    with_intent = IntentFilter(NON_PRIVILEGED_INTENTS | Intent.MESSAGE_CONTENT, False)
    assert not with_intent.blanks and CONTENT_EVENTS.isdisjoint(with_intent.checked)
    without = IntentFilter(NON_PRIVILEGED_INTENTS, True)
    assert without.blanks and without.checked >= CONTENT_EVENTS
    # still Discord's table for what is delivered at all
    assert without.allows(b"MESSAGE_CREATE", GUILD, NOT_SELF)
    guild_only = IntentFilter(Intent.GUILDS, True)
    assert b"MESSAGE_CREATE" in guild_only.blocked
    assert not guild_only.allows(b"MESSAGE_CREATE", GUILD, NOT_SELF)
