"""Gateway intents: names <-> bits, parsing of user input, the privileged set.

Bit values from Discord's "Gateway Intents" (shared/PROTOCOL.md section 9).
"""

from __future__ import annotations

import enum
from typing import Final

from protocol.errors import UnknownIntentError


class Intent(enum.IntFlag):
    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_MODERATION = 1 << 2
    GUILD_EXPRESSIONS = 1 << 3
    GUILD_INTEGRATIONS = 1 << 4
    GUILD_WEBHOOKS = 1 << 5
    GUILD_INVITES = 1 << 6
    GUILD_VOICE_STATES = 1 << 7
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    GUILD_MESSAGE_TYPING = 1 << 11
    DIRECT_MESSAGES = 1 << 12
    DIRECT_MESSAGE_REACTIONS = 1 << 13
    DIRECT_MESSAGE_TYPING = 1 << 14
    MESSAGE_CONTENT = 1 << 15
    GUILD_SCHEDULED_EVENTS = 1 << 16
    AUTO_MODERATION_CONFIGURATION = 1 << 20
    AUTO_MODERATION_EXECUTION = 1 << 21
    GUILD_MESSAGE_POLLS = 1 << 24
    DIRECT_MESSAGE_POLLS = 1 << 25


#: Former names that users still type.
ALIASES: Final[dict[str, Intent]] = {
    "GUILD_BANS": Intent.GUILD_MODERATION,
    "GUILD_EMOJIS_AND_STICKERS": Intent.GUILD_EXPRESSIONS,
}

ALL_INTENTS: Final = sum(i.value for i in Intent)  # 53608447
PRIVILEGED_INTENTS: Final = (
    Intent.GUILD_MEMBERS.value | Intent.GUILD_PRESENCES.value | Intent.MESSAGE_CONTENT.value
)
NON_PRIVILEGED_INTENTS: Final = ALL_INTENTS & ~PRIVILEGED_INTENTS  # 53575421


def parse_intents(text: str | int) -> int:
    """Parse ``"GUILDS,GUILD_MESSAGES"``, ``"513"`` or ``513`` into an intent bitfield.

    Names are case-insensitive and may be separated by commas, ``|`` or
    spaces. Unknown names and undefined bits raise :class:`UnknownIntentError`.
    """
    if isinstance(text, int):
        return validate_intents(text)
    stripped = text.strip()
    if not stripped:
        raise UnknownIntentError("no intents given")
    if stripped.isascii() and stripped.isdigit():  # not "²": str.isdigit takes it, int() not
        return validate_intents(int(stripped))
    value = 0
    for raw in stripped.replace("|", ",").replace(" ", ",").split(","):
        name = raw.strip().upper()
        if not name:
            continue
        if name in Intent.__members__:
            value |= Intent[name].value
        elif name in ALIASES:
            value |= ALIASES[name].value
        else:
            raise UnknownIntentError(
                f"unknown intent {raw.strip()!r}; known intents: {', '.join(Intent.__members__)}"
            )
    return value


def validate_intents(value: int) -> int:
    if value < 0:
        raise UnknownIntentError(f"intents must not be negative: {value}")
    undefined = value & ~ALL_INTENTS
    if undefined:
        raise UnknownIntentError(f"intents {value} has undefined bits {undefined:#x}")
    return value


def intent_names(value: int) -> list[str]:
    """The names of the intents set in ``value`` (undefined bits are ignored)."""
    return [i.name for i in Intent if value & i.value and i.name is not None]


def privileged_in(value: int) -> int:
    return value & PRIVILEGED_INTENTS


#: How the privileged intents are written in messages and help texts.
PRIVILEGED_NAMES: Final = ",".join(intent_names(PRIVILEGED_INTENTS))


def parse_privileged_intents(text: str | int) -> int:
    """Parse the privileged intents an application has enabled (Developer Portal toggles).

    Accepts what :func:`parse_intents` accepts, plus ``none`` (or an empty
    string) for no privileged intent and ``all`` for the three of them; a
    non-privileged intent raises :class:`UnknownIntentError` naming it, since
    only GUILD_MEMBERS, GUILD_PRESENCES and MESSAGE_CONTENT need enabling.
    """
    if isinstance(text, str):
        word = text.strip().lower()
        if word in ("", "none"):
            return 0
        if word == "all":
            return PRIVILEGED_INTENTS
    value = parse_intents(text)
    other = intent_names(value & ~PRIVILEGED_INTENTS)
    if other:
        raise UnknownIntentError(
            f"{', '.join(other)} {'is' if len(other) == 1 else 'are'} not privileged; "
            f"privileged intents: {PRIVILEGED_NAMES.replace(',', ', ')}"
        )
    return value
