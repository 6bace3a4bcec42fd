"""The endpoint's intent filter (cluster/endpoint/filters.py): Discord's table, and the fast path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.endpoint.filters import EVENT_INTENTS, IntentFilter, delivers, needs_guild_check
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
