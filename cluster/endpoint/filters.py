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

Content fields: a client without MESSAGE_CONTENT (privileged, bit 15) gets
message dispatches as Discord would send them to it, while the cluster's shards
have the intent (:func:`without_content`; shared/PROTOCOL.md section 8, Discord's
"Message Content Intent"): ``content`` empty, ``embeds``, ``attachments`` and
``components`` empty lists, ``poll`` left out, except in DMs, in messages that
mention the bot and in the bot's own messages; AUTO_MODERATION_ACTION_EXECUTION
loses ``content`` and ``matched_content``. Only such a client's filter looks at
those events (:attr:`IntentFilter.blanks`); a client with the intent pays nothing
for the rule, and the blanked ``d`` is made once per event for all clients that
need it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

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
#: Dispatches whose fields MESSAGE_CONTENT gates (:func:`without_content`).
CONTENT_EVENTS: Final = frozenset(
    {b"MESSAGE_CREATE", b"MESSAGE_UPDATE", b"AUTO_MODERATION_ACTION_EXECUTION"}
)
#: A message's fields a client without MESSAGE_CONTENT gets empty (``poll``: left out).
_EMPTY_FIELDS: Final[tuple[tuple[str, Any], ...]] = (
    ("content", ""),
    ("embeds", []),
    ("attachments", []),
    ("components", []),
)


def _message_without_content(message: dict[str, Any], bot_id: str | None) -> dict[str, Any] | None:
    """A guild message as an app without MESSAGE_CONTENT sees it (None: unchanged).

    Discord keeps the content of the app's own messages and of messages that mention
    it; the message it replies to (``referenced_message``) and forwarded snapshots
    follow the same rule.
    """
    author = message.get("author")
    if bot_id is not None:
        if isinstance(author, dict) and str(author.get("id")) == bot_id:
            return None
        mentions = message.get("mentions")
        if isinstance(mentions, list) and any(
            isinstance(m, dict) and str(m.get("id")) == bot_id for m in mentions
        ):
            return None
    changed: dict[str, Any] | None = None
    for name, empty in _EMPTY_FIELDS:
        if name in message and message[name] != empty:
            changed = changed if changed is not None else dict(message)
            changed[name] = "" if name == "content" else []
    if "poll" in message:
        changed = changed if changed is not None else dict(message)
        del changed["poll"]
    referenced = message.get("referenced_message")
    if isinstance(referenced, dict):
        inner = _message_without_content(referenced, bot_id)
        if inner is not None:
            changed = changed if changed is not None else dict(message)
            changed["referenced_message"] = inner
    snapshots = message.get("message_snapshots")
    if isinstance(snapshots, list):
        stripped = [
            {**snap, "message": inner}
            if isinstance(snap, dict)
            and isinstance(snap.get("message"), dict)
            and (inner := _message_without_content(snap["message"], None)) is not None
            else snap
            for snap in snapshots
        ]
        if any(a is not b for a, b in zip(stripped, snapshots, strict=True)):
            changed = changed if changed is not None else dict(message)
            changed["message_snapshots"] = stripped
    return changed


def without_content(t: bytes, d: Any, bot_id: int | None) -> Any | None:
    """``d`` of ``t`` as a client without MESSAGE_CONTENT gets it (None: unchanged).

    DMs (no ``guild_id``) keep their content; see the module docstring.
    """
    if not isinstance(d, dict):
        return None
    if t == b"AUTO_MODERATION_ACTION_EXECUTION":
        if not d.get("content") and not d.get("matched_content"):
            return None
        return {**d, "content": "", "matched_content": ""}
    if t not in CONTENT_EVENTS or d.get("guild_id") is None:
        return None
    return _message_without_content(d, None if bot_id is None else str(bot_id))


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
    or GUILD_MEMBER_UPDATE about the bot), or (``blanks``: a client without
    MESSAGE_CONTENT on a cluster with it) may need :func:`without_content`;
    anything else is delivered as it is.
    """

    __slots__ = ("blanks", "blocked", "checked", "intents")

    def __init__(self, intents: int, blank_content: bool = False) -> None:
        self.intents = intents
        self.blanks = blank_content
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
        if blank_content:
            checked |= CONTENT_EVENTS - blocked
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
