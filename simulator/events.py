"""Payloads the simulated Discord sends: the bot's identity, guilds, READY and load events.

Shapes follow Discord's documented objects (shared/PROTOCOL.md section 8).
The hot path is the event generator: each event type is a pre-serialized
JSON template split at its variable fields, so producing one dispatch is a
``bytes.join`` (no dict building, no JSON encoding per event). Every
generated dispatch carries ``d._sim_event_id``, an integer that identifies
the event within the simulator: the same in every session the event reaches
(two shard sets side by side while resharding), so tests can prove
exactly-once delivery.

Guild ids are snowflakes whose timestamp part is ``GUILD_BASE + i`` for guild
index ``i``; ``GUILD_BASE`` is a multiple of 720720 (lcm of 1..16), so for
shard counts up to 16 (and any divisor of 720720) guild ``i`` lands on shard
``i % num_shards`` by the shard formula ``(guild_id >> 22) % num_shards``; for
other counts the spread is still even.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import random
import re
import time
from collections.abc import Sequence
from typing import Any, Final

import orjson

from simulator.config import EVENT_INTENTS, SimulatorConfig

DISCORD_EPOCH_MS: Final = 1_420_070_400_000
#: Timestamp part of guild snowflakes (~2020); a multiple of 720720.
GUILD_BASE: Final = 720_720 * 220_000
USER_BASE: Final = 720_720 * 230_000
DEFAULT_BOT_ID: Final = 1_234_567_890_123_456_789
_JOINED_AT: Final = "2021-06-01T12:00:00.000000+00:00"
#: Guilds whose event ids are kept pre-encoded (the cache is dropped when full).
_GUILD_CACHE_MAX: Final = 65536


def snowflake(ts_part: int, low: int = 0) -> int:
    return (ts_part << 22) | (low & 0x3FFFFF)


class BotIdentity:
    """The bot user and application the simulator answers for."""

    def __init__(self, token: str, privileged_intents: int) -> None:
        self.bot_id = bot_id_from_token(token) or DEFAULT_BOT_ID
        self.username = "Titanium Simulator"
        self.privileged_intents = privileged_intents

    @property
    def user(self) -> dict[str, Any]:
        return {
            "id": str(self.bot_id),
            "username": self.username,
            "global_name": None,
            "avatar": None,
            "discriminator": "0",
            "public_flags": 0,
            "flags": 0,
            "bot": True,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "collectibles": None,
            "primary_guild": None,
        }

    def me(self) -> dict[str, Any]:
        """``GET /users/@me`` for a bot."""
        return {
            **self.user,
            "verified": True,
            "mfa_enabled": False,
            "locale": "en-US",
            "premium_type": 0,
            "email": None,
            "bio": "",
        }

    @property
    def application_flags(self) -> int:
        # GATEWAY_PRESENCE 1<<12, GATEWAY_GUILD_MEMBERS 1<<14, GATEWAY_MESSAGE_CONTENT 1<<18
        flags = 1 << 23  # APPLICATION_COMMAND_BADGE, as most bots have
        if self.privileged_intents & (1 << 8):
            flags |= 1 << 12
        if self.privileged_intents & (1 << 1):
            flags |= 1 << 14
        if self.privileged_intents & (1 << 15):
            flags |= 1 << 18
        return flags

    def application(self) -> dict[str, Any]:
        """``GET /oauth2/applications/@me`` for the bot's application."""
        owner_id = str(snowflake(USER_BASE - 1, 1))
        return {
            "id": str(self.bot_id),
            "name": self.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "5f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766554433221100",
            "owner": {
                "id": owner_id,
                "username": "owner",
                "global_name": "Owner",
                "avatar": None,
                "discriminator": "0",
                "public_flags": 0,
                "flags": 0,
            },
            "flags": self.application_flags,
            "team": None,
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "tags": [],
            "approximate_guild_count": 0,
            "integration_types_config": {"0": {}},
            "bot": self.user,
            "is_monetized": False,
        }


def bot_id_from_token(token: str) -> int | None:
    """The bot id encoded in a Discord-shaped token (``base64(id).timestamp.hmac``), if any."""
    head, dot, _ = token.partition(".")
    if not dot or not head:
        return None
    try:
        raw = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
    except (binascii.Error, ValueError):
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
        return None
    value = int(raw)
    return value if 0 < value < 1 << 64 else None


def discord_shaped_token(bot_id: int) -> str:
    """A token with Discord's shape for ``bot_id`` (for tests of libraries that parse it)."""
    head = base64.urlsafe_b64encode(str(bot_id).encode()).decode().rstrip("=")
    return f"{head}.GsiMmA.simulated-hmac-0123456789abcdefghijklmnop"


class _Template:
    """A JSON document with ``@@NAME@@`` slots, rendered by one ``bytes % tuple``.

    ``"@@EVENT@@"`` and ``"@@CONTENT@@"`` (quotes included) take a whole JSON
    value (an integer, an encoded string); other slots sit inside JSON
    strings and take JSON-safe ASCII (ids, timestamps).
    """

    __slots__ = ("fmt", "names")
    _SLOT = re.compile(rb'"@@(EVENT|CONTENT)@@"|@@([A-Z]+)@@')

    def __init__(self, doc: dict[str, Any]) -> None:
        raw = orjson.dumps(doc).replace(b"%", b"%%")
        self.names: tuple[str, ...] = tuple(
            (m.group(1) or m.group(2)).decode() for m in self._SLOT.finditer(raw)
        )
        self.fmt = self._SLOT.sub(b"%s", raw)

    def render(self, values: dict[str, bytes]) -> bytes:
        return self.fmt % tuple(values[name] for name in self.names)


def _user(id_slot: str, name: str) -> dict[str, Any]:
    return {
        "username": name,
        "public_flags": 0,
        "id": id_slot,
        "global_name": name.title(),
        "discriminator": "0",
        "clan": None,
        "avatar_decoration_data": None,
        "avatar": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
    }


def _member() -> dict[str, Any]:
    return {
        "roles": ["@@ROLE@@"],
        "premium_since": None,
        "pending": False,
        "nick": None,
        "mute": False,
        "joined_at": _JOINED_AT,
        "flags": 0,
        "deaf": False,
        "communication_disabled_until": None,
        "banner": None,
        "avatar": None,
    }


_WORDS: Final = [
    "the",
    "a",
    "to",
    "and",
    "of",
    "is",
    "in",
    "it",
    "you",
    "that",
    "for",
    "on",
    "this",
    "with",
    "be",
    "are",
    "was",
    "have",
    "not",
    "but",
    "what",
    "all",
    "just",
    "can",
    "so",
    "like",
    "get",
    "one",
    "my",
    "do",
    "if",
    "we",
    "they",
    "your",
    "about",
    "out",
    "up",
    "no",
    "time",
    "when",
    "there",
    "how",
    "raid",
    "tonight",
    "guild",
    "server",
    "channel",
    "role",
    "bot",
    "ping",
    "lag",
    "patch",
    "update",
    "queue",
    "match",
    "ranked",
    "gg",
    "lol",
    "nice",
    "thanks",
    "anyone",
    "help",
    "please",
    "check",
    "link",
    "image",
    "voice",
    "stream",
    "event",
    "meme",
    "build",
    "deploy",
    "shard",
    "gateway",
    "latency",
    "sweet",
    "really",
    "maybe",
    "tomorrow",
    "later",
    "someone",
    "everyone",
    "here",
]


def _content_pool(size: int = 512, seed: int = 1) -> tuple[bytes, ...]:
    """JSON-encoded message contents of varied length and words, so streams compress
    about as well as real chat does (not 30x, as one repeated text would)."""
    rng = random.Random(seed)
    pool = []
    for _ in range(size):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 140))]
        if rng.random() < 0.3:
            words.append(f"https://example.com/{rng.getrandbits(48):x}")
        pool.append(orjson.dumps(" ".join(words)))
    return tuple(pool)


_CONTENTS: Final = _content_pool()

_TEMPLATES: Final[dict[str, dict[str, Any]]] = {
    "MESSAGE_CREATE": {
        "type": 0,
        "tts": False,
        "timestamp": "@@TS@@",
        "pinned": False,
        "nonce": "@@ID@@",
        "mentions": [],
        "mention_roles": [],
        "mention_everyone": False,
        "member": _member(),
        "id": "@@ID@@",
        "flags": 0,
        "embeds": [],
        "edited_timestamp": None,
        "content": "@@CONTENT@@",
        "components": [],
        "channel_type": 0,
        "channel_id": "@@CHANNEL@@",
        "author": _user("@@USER@@", "simulated_user"),
        "attachments": [],
        "guild_id": "@@GUILD@@",
        "_sim_event_id": "@@EVENT@@",
    },
    "PRESENCE_UPDATE": {
        "user": {"id": "@@USER@@"},
        "status": "online",
        "guild_id": "@@GUILD@@",
        "client_status": {"desktop": "online"},
        "activities": [
            {
                "type": 0,
                "timestamps": {"start": 1700000000000},
                "state": "In a match",
                "name": "Simulated Game",
                "id": "c1a2b3c4d5e6f708",
                "details": "Ranked, map 7",
                "created_at": 1700000000001,
                "assets": {"large_text": "Simulated", "large_image": "1234567890123456789"},
                "application_id": "1234567890123456780",
            }
        ],
        "_sim_event_id": "@@EVENT@@",
    },
    "TYPING_START": {
        "user_id": "@@USER@@",
        "timestamp": 1700000000,
        "member": {**_member(), "user": _user("@@USER@@", "simulated_user")},
        "channel_id": "@@CHANNEL@@",
        "guild_id": "@@GUILD@@",
        "_sim_event_id": "@@EVENT@@",
    },
    "GUILD_MEMBER_UPDATE": {
        **_member(),
        "user": _user("@@USER@@", "simulated_user"),
        "nick": "renamed",
        "guild_id": "@@GUILD@@",
        "_sim_event_id": "@@EVENT@@",
    },
    "MESSAGE_REACTION_ADD": {
        "user_id": "@@USER@@",
        "type": 0,
        "message_id": "@@ID@@",
        "message_author_id": "@@USER@@",
        "member": {**_member(), "user": _user("@@USER@@", "simulated_user")},
        "emoji": {"name": "\N{FIRE}", "id": None},
        "channel_id": "@@CHANNEL@@",
        "burst": False,
        "guild_id": "@@GUILD@@",
        "_sim_event_id": "@@EVENT@@",
    },
}


class GuildShape:
    """Ids inside guild ``index``: channels, roles and members are derived, never stored."""

    __slots__ = ("channels", "index", "members", "roles")

    def __init__(self, index: int, config: SimulatorConfig) -> None:
        self.index = index
        self.channels = config.channels_per_guild
        self.roles = config.roles_per_guild
        self.members = config.members_per_guild

    @property
    def id(self) -> int:
        return snowflake(GUILD_BASE + self.index, self.index & 0xFFF)

    def child(self, k: int) -> int:
        """Id of the k-th object of the guild (k >= 1): channels, then roles."""
        return snowflake(GUILD_BASE + self.index, (k << 12) | (self.index & 0xFFF))

    def channel_id(self, k: int) -> int:
        return self.child(1 + k)

    def text_channel(self, n: int) -> int:
        """The n-th text channel (channel 0 is a category, the last one is voice)."""
        return self.channel_id(1 + n % (self.channels - 2))

    def role_id(self, k: int) -> int:
        return self.child(1 + self.channels + k)

    def user_id(self, n: int) -> int:
        j = self.index * 1000 + n % max(1, self.members)
        return snowflake(USER_BASE + j, j & 0xFFF)


def guild_index_range(shard_id: int, num_shards: int, total: int) -> range:
    """Indices of the guilds that ``(guild_id >> 22) % num_shards`` sends to ``shard_id``."""
    start = (shard_id - GUILD_BASE) % num_shards
    return range(start, total, num_shards)


class EventFactory:
    """Builds READY, GUILD_CREATE and generated load events as bytes."""

    def __init__(self, config: SimulatorConfig, bot: BotIdentity) -> None:
        self.config = config
        self.bot = bot
        self.templates = {name: _Template(doc) for name, doc in _TEMPLATES.items()}
        # Without the MESSAGE_CONTENT intent, guild messages arrive with empty
        # content, embeds, attachments and components (PROTOCOL.md section 8).
        self.templates_without_content = {
            **self.templates,
            "MESSAGE_CREATE": _Template({**_TEMPLATES["MESSAGE_CREATE"], "content": ""}),
        }
        self._next_event_id = 1
        self._id_counter = 0
        self._ts_second = -1
        self._ts_bytes = b""
        self._guild_cache: dict[int, tuple[bytes, bytes, tuple[bytes, ...], tuple[bytes, ...]]] = {}

    def guild(self, index: int) -> GuildShape:
        return GuildShape(index, self.config)

    def guild_indices(self, shard_id: int, num_shards: int) -> range:
        return guild_index_range(shard_id, num_shards, self.config.guild_count)

    # -- READY and GUILD_CREATE -------------------------------------------------

    def ready(
        self, session_id: str, resume_url: str, shard: tuple[int, int] | None, guilds: Sequence[int]
    ) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": 10,
            "user_settings": {},
            "user": {**self.bot.user, "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(self.guild(i).id), "unavailable": True} for i in guilds],
            "session_type": "normal",
            "session_id": session_id,
            "resume_gateway_url": resume_url,
            "relationships": [],
            "private_channels": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["us-east", "us-central", "us-south", "us-west", "newark"],
            "auth_session_id_hash": "c2ltdWxhdGVk",
            "application": {"id": str(self.bot.bot_id), "flags": self.bot.application_flags},
            "_trace": ['["gateway-prd-sim-1",{"micros":1000,"calls":[]}]'],
        }
        if shard is not None:
            d["shard"] = [shard[0], shard[1]]
        return d

    def guild_create(self, index: int) -> dict[str, Any]:
        g = self.guild(index)
        gid = str(g.id)
        category = str(g.channel_id(0))
        channels: list[dict[str, Any]] = [
            {
                "id": category,
                "type": 4,
                "name": "Text Channels",
                "position": 0,
                "permission_overwrites": [],
                "flags": 0,
                "version": 0,
            }
        ]
        for k in range(1, g.channels):
            cid = str(g.channel_id(k))
            if k == g.channels - 1:
                channels.append(
                    {
                        "id": cid,
                        "type": 2,
                        "name": "General Voice",
                        "position": 0,
                        "parent_id": category,
                        "permission_overwrites": [],
                        "bitrate": 64000,
                        "user_limit": 0,
                        "rtc_region": None,
                        "rate_limit_per_user": 0,
                        "nsfw": False,
                        "last_message_id": None,
                        "flags": 0,
                        "version": 0,
                    }
                )
                continue
            channels.append(
                {
                    "id": cid,
                    "type": 0,
                    "name": f"channel-{k}",
                    "position": k,
                    "parent_id": category,
                    "permission_overwrites": [
                        {"id": gid, "type": 0, "allow": "0", "deny": "0"},
                    ],
                    "topic": f"Topic of channel {k}: simulated traffic lives here",
                    "nsfw": False,
                    "last_message_id": None,
                    "rate_limit_per_user": 0,
                    "icon_emoji": {"id": None, "name": "\N{SPEECH BALLOON}"},
                    "theme_color": None,
                    "flags": 0,
                    "version": 0,
                }
            )
        roles: list[dict[str, Any]] = [_role(gid, "@everyone", 0, "1071698660929")]
        for k in range(self.config.roles_per_guild):
            roles.append(_role(str(g.role_id(k)), f"role-{k}", k + 1, "1071698660929"))
        member_role = [str(g.role_id(0))] if self.config.roles_per_guild else []
        members = [_guild_member(self.bot.user, [])]
        for n in range(g.members):
            uid = str(g.user_id(n))
            members.append(_guild_member(_user(uid, f"member_{n}"), member_role))
        return {
            "id": gid,
            "name": f"Simulated Guild {index}",
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(g.user_id(0)),
            "region": "deprecated",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "widget_enabled": False,
            "verification_level": 1,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "features": ["NEWS", "COMMUNITY"],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": str(g.text_channel(0)),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "max_presences": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "nsfw_level": 0,
            "nsfw": False,
            "premium_progress_bar_enabled": False,
            "incidents_data": None,
            "emojis": [],
            "stickers": [],
            "roles": roles,
            "joined_at": _JOINED_AT,
            "large": False,
            "unavailable": False,
            "lazy": True,
            "member_count": len(members),
            "voice_states": [],
            "members": members,
            "channels": channels,
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
            "activity_instances": [],
            "application_command_counts": {},
            "hub_type": None,
            "latest_onboarding_question_id": None,
            "home_header": None,
            "version": 1700000000000,
        }

    # -- load events ---------------------------------------------------------------

    def allowed_types(self, intents: int) -> list[str]:
        """The configured event mix expanded to a 64-slot table, filtered by intents."""
        mix = [(t, w) for t, w in self.config.event_mix if intents & EVENT_INTENTS[t] and w > 0]
        if not mix:
            return []
        total = sum(w for _, w in mix)
        table: list[str] = []
        for t, w in mix:
            table.extend([t] * max(1, round(64 * w / total)))
        # interleave so short runs still see the mix
        step = 37 if len(table) % 37 else 41
        return [table[(i * step) % len(table)] for i in range(len(table))]

    def next_event_id(self) -> int:
        """A new event identity: one per generated event, however many sessions it reaches."""
        event_id = self._next_event_id
        self._next_event_id = event_id + 1
        return event_id

    def _guild_values(
        self, guild_index: int
    ) -> tuple[bytes, bytes, tuple[bytes, ...], tuple[bytes, ...]]:
        """(guild id, first role id, text channel ids, member ids) of a guild, as bytes (cached)."""
        cached = self._guild_cache.get(guild_index)
        if cached is None:
            g = GuildShape(guild_index, self.config)
            gid = str(g.id).encode()
            role = str(g.role_id(0)).encode() if self.config.roles_per_guild else gid
            texts = self.config.channels_per_guild - 2
            channels = tuple(str(g.text_channel(k)).encode() for k in range(texts))
            users = tuple(str(g.user_id(k)).encode() for k in range(max(1, g.members)))
            cached = (gid, role, channels, users)
            if len(self._guild_cache) >= _GUILD_CACHE_MAX:
                self._guild_cache.clear()
            self._guild_cache[guild_index] = cached
        return cached

    def event(self, t: str, guild_index: int, n: int, content: bool = True) -> tuple[bytes, int]:
        """The ``d`` of one new ``t`` event in guild ``guild_index`` and its event id.

        ``content``: whether the session has the MESSAGE_CONTENT intent.
        """
        event_id = self.next_event_id()
        return self.render(t, self.event_values(guild_index, n, event_id), content), event_id

    def event_values(self, guild_index: int, n: int, event_id: int) -> dict[str, bytes]:
        """The variable fields of event ``event_id`` (the same in every session it reaches)."""
        self._id_counter = counter = (self._id_counter + 1) & 0x3FFFFF
        now = time.time()
        second = int(now)
        if second != self._ts_second:
            self._ts_second = second
            self._ts_bytes = (
                datetime.datetime.fromtimestamp(second, datetime.UTC)
                .isoformat(timespec="microseconds")
                .encode()
            )
        gid, role, channels, users = self._guild_values(guild_index)
        return {
            "ID": b"%d" % (((int(now * 1000) - DISCORD_EPOCH_MS) << 22) | counter),
            "GUILD": gid,
            "CHANNEL": channels[n % len(channels)],
            "USER": users[n % len(users)],
            "ROLE": role,
            "TS": self._ts_bytes,
            "EVENT": b"%d" % event_id,
            "CONTENT": _CONTENTS[event_id % len(_CONTENTS)],
        }

    def render(self, t: str, values: dict[str, bytes], content: bool) -> bytes:
        """The ``d`` of a ``t`` event from its :meth:`event_values`, with or without content."""
        templates = self.templates if content else self.templates_without_content
        return templates[t].render(values)


def _role(rid: str, name: str, position: int, permissions: str) -> dict[str, Any]:
    return {
        "id": rid,
        "name": name,
        "description": None,
        "color": 0 if position == 0 else 3447003,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": position > 0,
        "icon": None,
        "unicode_emoji": None,
        "position": position,
        "permissions": permissions,
        "managed": False,
        "mentionable": position > 0,
        "flags": 0,
    }


def _guild_member(user: dict[str, Any], roles: list[str]) -> dict[str, Any]:
    return {
        "user": user,
        "roles": roles,
        "nick": None,
        "avatar": None,
        "banner": None,
        "joined_at": _JOINED_AT,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
        "communication_disabled_until": None,
    }
