"""Which dispatches a gateway client gets for the intents it asked for (pure).

The cluster's shards identify with the cluster's ``--intents``; each client of
the endpoint identifies with its own, and gets only the dispatches Discord would
have sent it (shared/PROTOCOL.md section 9). The table :data:`EVENT_INTENTS`
maps an event name to ``(guild intent, DM intent)``: a guild event needs the
first, a DM event the second (0: never sent in DMs). Events not in the table
(READY, RESUMED, USER_UPDATE, INTERACTION_CREATE, ...) are not tied to an
intent and always pass.

:func:`delivers` decides without parsing in the common cases: a client with
both intents of a pair, or neither, does not care whether the event has a
``guild_id``. Only a client with exactly one of them makes the caller look
(``has_guild`` is a callable, so the payload is parsed only then). One quirk:
GUILD_MEMBER_UPDATE about the bot itself is sent whatever the intents
(``about_self``).

Content fields (MESSAGE_CONTENT) are not blanked: a client gets them when the
cluster's intents have MESSAGE_CONTENT, whatever it asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from protocol.intents import Intent

_G: Final = Intent.GUILDS.value
_MEMBERS: Final = Intent.GUILD_MEMBERS.value

#: event name -> (intent for guild events, intent for DM events; 0: not sent in DMs)
EVENT_INTENTS: Final[dict[bytes, tuple[int, int]]] = {
    **{
        name: (_G, 0)
        for name in (
            b"GUILD_CREATE",
            b"GUILD_UPDATE",
            b"GUILD_DELETE",
            b"GUILD_ROLE_CREATE",
            b"GUILD_ROLE_UPDATE",
            b"GUILD_ROLE_DELETE",
            b"CHANNEL_CREATE",
            b"CHANNEL_UPDATE",
            b"CHANNEL_DELETE",
            b"THREAD_CREATE",
            b"THREAD_UPDATE",
            b"THREAD_DELETE",
            b"THREAD_LIST_SYNC",
            b"THREAD_MEMBER_UPDATE",
            b"STAGE_INSTANCE_CREATE",
            b"STAGE_INSTANCE_UPDATE",
            b"STAGE_INSTANCE_DELETE",
            b"VOICE_CHANNEL_STATUS_UPDATE",
            b"VOICE_CHANNEL_START_TIME_UPDATE",
        )
    },
    b"CHANNEL_PINS_UPDATE": (_G, Intent.DIRECT_MESSAGES.value),
    **{
        name: (_MEMBERS, 0)
        for name in (
            b"GUILD_MEMBER_ADD",
            b"GUILD_MEMBER_UPDATE",
            b"GUILD_MEMBER_REMOVE",
            b"THREAD_MEMBERS_UPDATE",
        )
    },
    **{
        name: (Intent.GUILD_MODERATION.value, 0)
        for name in (b"GUILD_AUDIT_LOG_ENTRY_CREATE", b"GUILD_BAN_ADD", b"GUILD_BAN_REMOVE")
    },
    **{
        name: (Intent.GUILD_EXPRESSIONS.value, 0)
        for name in (
            b"GUILD_EMOJIS_UPDATE",
            b"GUILD_STICKERS_UPDATE",
            b"GUILD_SOUNDBOARD_SOUND_CREATE",
            b"GUILD_SOUNDBOARD_SOUND_UPDATE",
            b"GUILD_SOUNDBOARD_SOUND_DELETE",
            b"GUILD_SOUNDBOARD_SOUNDS_UPDATE",
        )
    },
    **{
        name: (Intent.GUILD_INTEGRATIONS.value, 0)
        for name in (
            b"GUILD_INTEGRATIONS_UPDATE",
            b"INTEGRATION_CREATE",
            b"INTEGRATION_UPDATE",
            b"INTEGRATION_DELETE",
        )
    },
    b"WEBHOOKS_UPDATE": (Intent.GUILD_WEBHOOKS.value, 0),
    b"INVITE_CREATE": (Intent.GUILD_INVITES.value, 0),
    b"INVITE_DELETE": (Intent.GUILD_INVITES.value, 0),
    b"VOICE_STATE_UPDATE": (Intent.GUILD_VOICE_STATES.value, 0),
    b"VOICE_CHANNEL_EFFECT_SEND": (Intent.GUILD_VOICE_STATES.value, 0),
    b"PRESENCE_UPDATE": (Intent.GUILD_PRESENCES.value, 0),
    **{
        name: (Intent.GUILD_MESSAGES.value, Intent.DIRECT_MESSAGES.value)
        for name in (b"MESSAGE_CREATE", b"MESSAGE_UPDATE", b"MESSAGE_DELETE")
    },
    b"MESSAGE_DELETE_BULK": (Intent.GUILD_MESSAGES.value, 0),
    **{
        name: (Intent.GUILD_MESSAGE_REACTIONS.value, Intent.DIRECT_MESSAGE_REACTIONS.value)
        for name in (
            b"MESSAGE_REACTION_ADD",
            b"MESSAGE_REACTION_REMOVE",
            b"MESSAGE_REACTION_REMOVE_ALL",
            b"MESSAGE_REACTION_REMOVE_EMOJI",
        )
    },
    b"TYPING_START": (Intent.GUILD_MESSAGE_TYPING.value, Intent.DIRECT_MESSAGE_TYPING.value),
    **{
        name: (Intent.GUILD_SCHEDULED_EVENTS.value, 0)
        for name in (
            b"GUILD_SCHEDULED_EVENT_CREATE",
            b"GUILD_SCHEDULED_EVENT_UPDATE",
            b"GUILD_SCHEDULED_EVENT_DELETE",
            b"GUILD_SCHEDULED_EVENT_USER_ADD",
            b"GUILD_SCHEDULED_EVENT_USER_REMOVE",
        )
    },
    **{
        name: (Intent.AUTO_MODERATION_CONFIGURATION.value, 0)
        for name in (
            b"AUTO_MODERATION_RULE_CREATE",
            b"AUTO_MODERATION_RULE_UPDATE",
            b"AUTO_MODERATION_RULE_DELETE",
        )
    },
    b"AUTO_MODERATION_ACTION_EXECUTION": (Intent.AUTO_MODERATION_EXECUTION.value, 0),
    **{
        name: (Intent.GUILD_MESSAGE_POLLS.value, Intent.DIRECT_MESSAGE_POLLS.value)
        for name in (b"MESSAGE_POLL_VOTE_ADD", b"MESSAGE_POLL_VOTE_REMOVE")
    },
}

#: Shard-level dispatches a client never gets forwarded: the endpoint makes its own
#: READY and RESUMED for each client session (the shard's belong to the shard's session).
SHARD_ONLY: Final = frozenset({b"READY", b"RESUMED"})
#: Answers routed by nonce to the one client that asked (never to the others).
BY_NONCE: Final = frozenset({b"GUILD_MEMBERS_CHUNK", b"RATE_LIMITED"})


def delivers(
    t: bytes,
    intents: int,
    has_guild: Callable[[], bool],
    about_self: Callable[[], bool] | None = None,
) -> bool:
    """Whether a client with ``intents`` gets dispatch ``t`` (see the module docstring)."""
    pair = EVENT_INTENTS.get(t)
    if pair is None:
        return True
    guild_intent, dm_intent = pair
    wants_guild = bool(intents & guild_intent)
    wants_dm = bool(dm_intent and intents & dm_intent)
    if wants_guild and (wants_dm or not dm_intent):
        return True
    if about_self is not None and t == b"GUILD_MEMBER_UPDATE" and about_self():
        return True
    if not wants_guild and not wants_dm:
        return False
    return has_guild() if wants_guild else not has_guild()


def needs_guild_check(t: bytes, intents: int) -> bool:
    """True when :func:`delivers` would have to look at ``guild_id`` for this client."""
    pair = EVENT_INTENTS.get(t)
    if pair is None or not pair[1]:
        return False
    return bool(intents & pair[0]) != bool(intents & pair[1])


class IntentFilter:
    """:func:`delivers` for one client's intents, precomputed into two sets.

    ``blocked``: never delivered; ``checked``: depends on the payload (guild or DM,
    or GUILD_MEMBER_UPDATE about the bot); anything else is delivered.
    """

    __slots__ = ("blocked", "checked", "intents")

    def __init__(self, intents: int) -> None:
        self.intents = intents
        blocked: set[bytes] = set()
        checked: set[bytes] = set()
        for t, (guild_intent, dm_intent) in EVENT_INTENTS.items():
            if needs_guild_check(t, intents):
                checked.add(t)
            elif not intents & guild_intent and not (dm_intent and intents & dm_intent):
                blocked.add(t)
        if b"GUILD_MEMBER_UPDATE" in blocked:
            blocked.discard(b"GUILD_MEMBER_UPDATE")
            checked.add(b"GUILD_MEMBER_UPDATE")
        self.blocked = frozenset(blocked)
        self.checked = frozenset(checked)

    def allows(
        self, t: bytes, has_guild: Callable[[], bool], about_self: Callable[[], bool]
    ) -> bool:
        if t in self.blocked:
            return False
        if t not in self.checked:
            return True
        return delivers(t, self.intents, has_guild, about_self)
