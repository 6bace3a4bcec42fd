"""The endpoint's guild cache: each shard's READY and guilds, kept by applying dispatches (pure).

A client that IDENTIFYs at the endpoint gets a READY and a GUILD_CREATE per
guild of its shard built from here, never from Discord: a bot restarted costs
no IDENTIFY. The cache is fed every dispatch of :data:`CACHE_EVENTS` (parsed
JSON ``d``) by :meth:`GuildCache.apply`; nothing else is parsed for it.

What one guild holds (:class:`GuildEntry`): the guild object's own fields
(``base``: everything GUILD_CREATE has except the collections below), and
per collection the objects by id as compact JSON bytes (a few times smaller
than dicts, and a GUILD_CREATE is a ``bytes.join``): channels, active
threads, roles, members, presences, voice states, stage instances,
scheduled events, soundboard sounds; emojis and stickers as one JSON array
each (their update events replace the whole list).

Bounds: at most ``member_cap`` members and ``presence_cap`` presences per
guild (the bot's own member always fits). Beyond the cap new ones are not
cached and are counted (``members_dropped``); the dispatches themselves still
reach clients. ``member_count`` follows GUILD_MEMBER_ADD/REMOVE. ``nbytes``
per guild is the JSON bytes held plus :data:`ENTRY_OVERHEAD` per object,
kept as it changes (what /status shows; the unit test measures the real
memory with tracemalloc).

Events applied: READY (the shard's guild list, all unavailable until their
GUILD_CREATE; user and application), USER_UPDATE (the bot), GUILD_CREATE /
UPDATE / DELETE, GUILD_ROLE_*, CHANNEL_*, CHANNEL_PINS_UPDATE
(``last_pin_timestamp``), THREAD_CREATE / UPDATE / DELETE / LIST_SYNC,
THREAD_MEMBER_UPDATE and THREAD_MEMBERS_UPDATE (a thread's ``member_count``,
and its ``member``: the bot's own thread member, as GUILD_CREATE lists it for
threads the bot joined), MESSAGE_CREATE (``last_message_id`` of the channel or
thread), GUILD_EMOJIS_UPDATE, GUILD_STICKERS_UPDATE, GUILD_MEMBER_ADD / UPDATE
/ REMOVE, GUILD_MEMBERS_CHUNK, PRESENCE_UPDATE, VOICE_STATE_UPDATE,
VOICE_CHANNEL_STATUS_UPDATE, VOICE_CHANNEL_START_TIME_UPDATE, STAGE_INSTANCE_*,
GUILD_SCHEDULED_EVENT_* (``user_count`` where the object has one),
GUILD_SOUNDBOARD_SOUND(S)_*.

MESSAGE_CREATE is the one busy event the cache follows, and it is not parsed as
it comes (:meth:`GuildCache.message_seen`): its channel is found in its bytes and
the newest payload per channel waits, unparsed, until the next render, save or
:data:`MESSAGE_BACKLOG` channels waiting (:meth:`GuildCache.flush_messages`); then
each is parsed once and its id noted per channel (:meth:`GuildEntry.note_message`),
and the channel's JSON is rewritten once (:meth:`GuildEntry.fold_messages`). A busy
channel costs one parse per flush, not one per message.

Not kept (a client gets only what later dispatches tell it): threads'
``message_count`` and ``total_message_sent``, the thread members of other
users, DM channels, members' user objects as PRESENCE_UPDATE changes them, and
anything a client would fetch over REST.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

#: Default bounds per guild (``--gateway-member-cap``).
DEFAULT_MEMBER_CAP: Final = 5000
DEFAULT_PRESENCE_CAP: Final = 5000
#: What one cached object costs besides its JSON bytes: the bytes object's header
#: (33), its dict slot and int key (~60); used for ``nbytes``.
ENTRY_OVERHEAD: Final = 100

#: MESSAGE_CREATE payloads waiting unparsed (one per channel) before they are all parsed.
MESSAGE_BACKLOG: Final = 1024
_CHANNEL_KEY: Final = b'"channel_id":"'

#: The dispatches the cache needs (the endpoint parses these, but MESSAGE_CREATE, when no
#: client is connected; see :meth:`GuildCache.message_seen`).
CACHE_EVENTS: Final = frozenset(
    {
        b"READY",
        b"USER_UPDATE",
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
        b"THREAD_MEMBERS_UPDATE",
        b"CHANNEL_PINS_UPDATE",
        b"MESSAGE_CREATE",
        b"VOICE_CHANNEL_STATUS_UPDATE",
        b"VOICE_CHANNEL_START_TIME_UPDATE",
        b"GUILD_EMOJIS_UPDATE",
        b"GUILD_STICKERS_UPDATE",
        b"GUILD_MEMBER_ADD",
        b"GUILD_MEMBER_UPDATE",
        b"GUILD_MEMBER_REMOVE",
        b"GUILD_MEMBERS_CHUNK",
        b"PRESENCE_UPDATE",
        b"VOICE_STATE_UPDATE",
        b"STAGE_INSTANCE_CREATE",
        b"STAGE_INSTANCE_UPDATE",
        b"STAGE_INSTANCE_DELETE",
        b"GUILD_SCHEDULED_EVENT_CREATE",
        b"GUILD_SCHEDULED_EVENT_UPDATE",
        b"GUILD_SCHEDULED_EVENT_DELETE",
        b"GUILD_SCHEDULED_EVENT_USER_ADD",
        b"GUILD_SCHEDULED_EVENT_USER_REMOVE",
        b"GUILD_SOUNDBOARD_SOUND_CREATE",
        b"GUILD_SOUNDBOARD_SOUND_UPDATE",
        b"GUILD_SOUNDBOARD_SOUND_DELETE",
        b"GUILD_SOUNDBOARD_SOUNDS_UPDATE",
    }
)

#: GUILD_CREATE's collections, in the order they are written, and the key of each object.
_KEYED: Final = (
    ("channels", "id"),
    ("threads", "id"),
    ("roles", "id"),
    ("members", None),  # member.user.id
    ("voice_states", "user_id"),
    ("presences", None),  # presence.user.id
    ("stage_instances", "id"),
    ("guild_scheduled_events", "id"),
    ("soundboard_sounds", "sound_id"),
)
_LISTS: Final = ("emojis", "stickers")
#: Fields of GUILD_CREATE that are not the guild's own (kept apart, or made up when written).
_NOT_BASE: Final = frozenset(
    {name for name, _ in _KEYED} | set(_LISTS) | {"member_count", "unavailable"}
)
#: Thread channel types (public, private, announcement threads).
_THREAD_TYPES: Final = frozenset({10, 11, 12})
#: The fields of a thread member object as GUILD_CREATE's threads carry the bot's own.
_THREAD_MEMBER_FIELDS: Final = ("id", "user_id", "join_timestamp", "flags")


class _Delete:
    __slots__ = ()


#: :meth:`GuildEntry.patch_channel`: remove the field
_DELETE: Final[Any] = _Delete()

_loads = orjson.loads


def compact_json(value: Any) -> bytes:
    """``orjson.dumps(value)`` in a bytes object of its own size.

    orjson's result keeps the buffer it was written into (about 4 KiB for a small
    document, measured with tracemalloc): a cache of thousands of small objects would
    hold ten times its JSON. One copy per stored object costs far less.
    """
    return bytes(memoryview(orjson.dumps(value)))


_dumps = compact_json


def _snowflake(value: Any) -> int | None:
    """A snowflake (string or int) as an int; None if it is not one."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 21:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _user_id(obj: Any) -> int | None:
    user = obj.get("user") if isinstance(obj, dict) else None
    return _snowflake(user.get("id")) if isinstance(user, dict) else None


def _without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


class GuildEntry:
    """One available guild: its own fields and its collections as JSON bytes by id."""

    __slots__ = (
        "_base",
        "_last_messages",
        "channels",
        "emojis",
        "guild_scheduled_events",
        "member_count",
        "members",
        "members_dropped",
        "nbytes",
        "presences",
        "presences_dropped",
        "roles",
        "soundboard_sounds",
        "stage_instances",
        "stickers",
        "threads",
        "voice_states",
    )

    def __init__(self) -> None:
        self._base = b"{}"
        self.member_count = 0
        self.channels: dict[int, bytes] = {}
        self.threads: dict[int, bytes] = {}
        self.roles: dict[int, bytes] = {}
        self.members: dict[int, bytes] = {}
        self.voice_states: dict[int, bytes] = {}
        self.presences: dict[int, bytes] = {}
        self.stage_instances: dict[int, bytes] = {}
        self.guild_scheduled_events: dict[int, bytes] = {}
        self.soundboard_sounds: dict[int, bytes] = {}
        self.emojis = b"[]"
        self.stickers = b"[]"
        self.members_dropped = 0
        self.presences_dropped = 0
        #: channel or thread id -> the newest MESSAGE_CREATE's id not yet in its JSON
        self._last_messages: dict[int, int] | None = None
        #: the JSON bytes held, plus ENTRY_OVERHEAD per object (and two for the entry itself)
        self.nbytes = 2 * ENTRY_OVERHEAD + len(self._base) + len(self.emojis) + len(self.stickers)

    # -- bookkeeping ----------------------------------------------------------------------

    def collection(self, name: str) -> dict[int, bytes]:
        value: dict[int, bytes] = getattr(self, name)
        return value

    def put(self, collection: dict[int, bytes], key: int, value: bytes) -> None:
        old = collection.get(key)
        self.nbytes += len(value) - (len(old) if old is not None else -ENTRY_OVERHEAD)
        collection[key] = value

    def drop(self, collection: dict[int, bytes], key: int) -> bytes | None:
        old = collection.pop(key, None)
        if old is not None:
            self.nbytes -= len(old) + ENTRY_OVERHEAD
        return old

    def clear(self, collection: dict[int, bytes]) -> None:
        for key in list(collection):
            self.drop(collection, key)

    @property
    def base(self) -> bytes:
        return self._base

    def set_base(self, fields: Mapping[str, Any]) -> None:
        new = _dumps(dict(fields))
        self.nbytes += len(new) - len(self._base)
        self._base = new

    def set_list(self, name: str, value: Any) -> None:
        new = _dumps(value if isinstance(value, list) else [])
        old: bytes = getattr(self, name)
        self.nbytes += len(new) - len(old)
        setattr(self, name, new)

    def note_message(self, channel_id: int, message_id: int) -> None:
        """A MESSAGE_CREATE in ``channel_id`` (a channel or thread of this guild): its
        ``last_message_id`` from now on (written into the JSON by :meth:`fold_messages`)."""
        pending = self._last_messages
        if pending is None:
            self._last_messages = {channel_id: message_id}
            self.nbytes += ENTRY_OVERHEAD
            return
        if channel_id not in pending:
            self.nbytes += ENTRY_OVERHEAD
        elif pending[channel_id] > message_id:
            return  # an older message (snowflakes grow with time)
        pending[channel_id] = message_id

    def fold_messages(self) -> None:
        """Write the noted ``last_message_id`` of each channel into its JSON (once per
        channel, however many messages came since the last fold)."""
        pending = self._last_messages
        if not pending:
            return
        self._last_messages = None
        self.nbytes -= ENTRY_OVERHEAD * len(pending)
        for channel_id, message_id in pending.items():
            self.patch_channel(channel_id, {"last_message_id": message_id}, newer=True)

    def patch_channel(
        self, channel_id: int, fields: Mapping[str, Any], *, newer: bool = False
    ) -> dict[str, Any] | None:
        """Update fields of a channel or thread (None: the guild has no such channel).

        ``newer``: ``last_message_id`` only moves forward (a snowflake is a time).
        Returns the updated object.
        """
        collection = self.channels if channel_id in self.channels else self.threads
        raw = collection.get(channel_id)
        if raw is None:
            return None
        obj: dict[str, Any] = _loads(raw)
        for key, value in fields.items():
            if key == "last_message_id" and isinstance(value, int):
                if newer and (_snowflake(obj.get(key)) or 0) >= value:
                    continue
                value = str(value)
            if value is _DELETE:
                obj.pop(key, None)
            else:
                obj[key] = value
        self.put(collection, channel_id, _dumps(obj))
        return obj

    @property
    def objects(self) -> int:
        return sum(len(self.collection(name)) for name, _ in _KEYED)

    # -- saving (cluster.endpoint.persist) ------------------------------------------------

    def dump(self) -> list[Any]:
        """Plain values (bytes, ints, dicts) that :meth:`load` turns back into the entry.

        The collections are the entry's own dicts, not copies: pack the result before
        the cache changes (:class:`cluster.endpoint.persist.CacheWriter`)."""
        self.fold_messages()
        return [
            self._base,
            self.member_count,
            self.emojis,
            self.stickers,
            {name: self.collection(name) for name, _ in _KEYED},
            self.members_dropped,
            self.presences_dropped,
        ]

    @classmethod
    def load(cls, data: list[Any]) -> GuildEntry:
        base, member_count, emojis, stickers, collections, m_dropped, p_dropped = data
        entry = cls()
        entry.nbytes += len(base) - len(entry._base) + len(emojis) + len(stickers) - 4
        entry._base, entry.emojis, entry.stickers = bytes(base), bytes(emojis), bytes(stickers)
        entry.member_count = int(member_count)
        for name, _ in _KEYED:
            collection = entry.collection(name)
            items = collections.get(name, ())
            # a dict (this version), or [key, value] pairs (files of an earlier one)
            for key, value in items.items() if isinstance(items, dict) else items:
                entry.put(collection, int(key), bytes(value))
        entry.members_dropped, entry.presences_dropped = int(m_dropped), int(p_dropped)
        return entry

    # -- GUILD_CREATE ---------------------------------------------------------------------

    def render(self, with_presences: bool = True) -> bytes:
        """The ``d`` of a GUILD_CREATE for this guild (``unavailable: false``)."""
        self.fold_messages()
        base = self._base
        parts = [base[:-1]] if len(base) > 2 else [b"{"]
        sep = b"," if len(base) > 2 else b""
        parts.append(b'%s"unavailable":false,"member_count":%d' % (sep, self.member_count))
        for name, _ in _KEYED:
            values = self.collection(name).values() if with_presences or name != "presences" else ()
            parts.append(b',"%s":[' % name.encode())
            parts.append(b",".join(values))
            parts.append(b"]")
        parts.append(b',"emojis":%s,"stickers":%s}' % (self.emojis, self.stickers))
        return b"".join(parts)


@dataclass(slots=True)
class ShardCache:
    """One shard as the cache knows it: its READY (None until one arrived) and its guilds."""

    #: The shard's READY ``d`` without guilds, session id, resume URL and trace.
    ready: dict[str, Any] | None = None
    #: guild id -> entry, or None while the guild is unavailable (READY order, then joins)
    guilds: dict[int, GuildEntry | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Totals for /status and /metrics."""

    shards_ready: int
    guilds: int
    guilds_unavailable: int
    nbytes: int
    largest_guild_nbytes: int
    members: int
    presences: int
    members_dropped: int
    presences_dropped: int
    #: MESSAGE_CREATEs waiting unparsed (:meth:`GuildCache.message_seen`)
    messages_pending: int = 0


class GuildCache:
    """Every shard's READY and guilds, updated by :meth:`apply`; renders READY and GUILD_CREATE."""

    def __init__(
        self, member_cap: int = DEFAULT_MEMBER_CAP, presence_cap: int = DEFAULT_PRESENCE_CAP
    ) -> None:
        if member_cap < 1 or presence_cap < 0:
            raise ValueError("the member cap must be at least 1 and the presence cap at least 0")
        self.member_cap = member_cap
        self.presence_cap = presence_cap
        self.shards: dict[int, ShardCache] = {}
        #: the bot's user id, from the first READY
        self.bot_id: int | None = None
        #: dispatches applied, and dispatches ignored as malformed or about unknown guilds
        self.applied = 0
        self.ignored = 0
        #: (shard, channel id bytes) -> the newest MESSAGE_CREATE payload there, unparsed
        self._messages: dict[tuple[int, bytes], bytes] = {}

    # -- reading ----------------------------------------------------------------------------

    def is_ready(self, shard_id: int) -> bool:
        shard = self.shards.get(shard_id)
        return shard is not None and shard.ready is not None

    def guild_ids(self, shard_id: int) -> list[int]:
        shard = self.shards.get(shard_id)
        return [] if shard is None else list(shard.guilds)

    def guild(self, shard_id: int, guild_id: int) -> GuildEntry | None:
        shard = self.shards.get(shard_id)
        return None if shard is None else shard.guilds.get(guild_id)

    def ready_d(
        self, shard_id: int, session_id: str, resume_url: str, shard: tuple[int, int]
    ) -> bytes:
        """The ``d`` of a client's READY: the shard's user and application, its guilds
        unavailable, the client's own session id and resume URL."""
        cached = self.shards[shard_id]
        assert cached.ready is not None
        d = dict(cached.ready)
        d["guilds"] = [{"id": str(g), "unavailable": True} for g in cached.guilds]
        d["session_id"] = session_id
        d["resume_gateway_url"] = resume_url
        d["shard"] = [shard[0], shard[1]]
        return _dumps(d)

    def guild_creates(self, shard_id: int, with_presences: bool = True) -> list[bytes]:
        """The ``d`` of a GUILD_CREATE for every available guild of the shard."""
        self.flush_messages()
        shard = self.shards.get(shard_id)
        if shard is None:
            return []
        return [g.render(with_presences) for g in shard.guilds.values() if g is not None]

    def entries(self) -> Iterator[tuple[int, int, GuildEntry]]:
        """(shard id, guild id, entry) of every available guild."""
        for shard_id, shard in self.shards.items():
            for guild_id, entry in shard.guilds.items():
                if entry is not None:
                    yield shard_id, guild_id, entry

    def stats(self) -> CacheStats:
        guilds = unavailable = nbytes = largest = members = presences = 0
        m_dropped = p_dropped = 0
        for shard in self.shards.values():
            for entry in shard.guilds.values():
                if entry is None:
                    unavailable += 1
                    continue
                guilds += 1
                nbytes += entry.nbytes
                largest = max(largest, entry.nbytes)
                members += len(entry.members)
                presences += len(entry.presences)
                m_dropped += entry.members_dropped
                p_dropped += entry.presences_dropped
        ready = sum(1 for s in self.shards.values() if s.ready is not None)
        return CacheStats(
            ready,
            guilds,
            unavailable,
            nbytes,
            largest,
            members,
            presences,
            m_dropped,
            p_dropped,
            len(self._messages),
        )

    # -- writing ----------------------------------------------------------------------------

    def forget_shard(self, shard_id: int) -> None:
        self.shards.pop(shard_id, None)
        if any(key[0] == shard_id for key in self._messages):
            self._messages = {k: v for k, v in self._messages.items() if k[0] != shard_id}

    def dump_shard(self, shard_id: int) -> dict[str, Any] | None:
        """The shard as plain values (None: no READY yet), for :mod:`cluster.endpoint.persist`."""
        self.flush_messages()
        shard = self.shards.get(shard_id)
        if shard is None or shard.ready is None:
            return None
        return {
            "ready": _dumps(shard.ready),
            "guilds": [
                [guild_id, None if entry is None else entry.dump()]
                for guild_id, entry in shard.guilds.items()
            ],
        }

    def load_shard(self, shard_id: int, data: dict[str, Any]) -> None:
        """Put back a shard :meth:`dump_shard` made (raises on malformed data)."""
        ready = _loads(data["ready"])
        guilds: dict[int, GuildEntry | None] = {}
        for guild_id, entry in data["guilds"]:
            guilds[int(guild_id)] = None if entry is None else GuildEntry.load(entry)
        self.shards[shard_id] = ShardCache(ready, guilds)
        bot_id = _snowflake(ready.get("user", {}).get("id"))
        if bot_id is not None:
            self.bot_id = bot_id

    def apply(self, shard_id: int, t: bytes, d: Any) -> bool:
        """Apply one dispatch of ``shard_id``; False if it was ignored (malformed, unknown guild)."""
        handler = _HANDLERS.get(t)
        if handler is None:
            return False
        try:
            done = bool(handler(self, shard_id, d))
        except (KeyError, TypeError, ValueError, AttributeError, orjson.JSONDecodeError):
            done = False
        if done:
            self.applied += 1
        else:
            self.ignored += 1
        return done

    def _entry(self, shard_id: int, d: Any, key: str = "guild_id") -> GuildEntry | None:
        if not isinstance(d, dict):
            return None
        guild_id = _snowflake(d.get(key))
        return None if guild_id is None else self.guild(shard_id, guild_id)

    # READY, USER_UPDATE

    def _ready(self, shard_id: int, d: Any) -> bool:
        if not isinstance(d, dict) or not isinstance(d.get("user"), dict):
            return False
        ready = {
            k: v
            for k, v in d.items()
            if k not in ("guilds", "session_id", "resume_gateway_url", "_trace", "shard")
        }
        guilds: dict[int, GuildEntry | None] = {}
        for g in d.get("guilds") or ():
            guild_id = _snowflake(g.get("id")) if isinstance(g, dict) else None
            if guild_id is not None:
                guilds[guild_id] = None
        self.shards[shard_id] = ShardCache(ready, guilds)
        bot_id = _snowflake(d["user"].get("id"))
        if bot_id is not None:
            self.bot_id = bot_id
        return True

    def _user_update(self, shard_id: int, d: Any) -> bool:
        if not isinstance(d, dict) or _snowflake(d.get("id")) != self.bot_id:
            return False
        for shard in self.shards.values():
            if shard.ready is not None:
                shard.ready["user"] = {**shard.ready.get("user", {}), **d}
        return True

    # guilds

    def _guild_create(self, shard_id: int, d: Any) -> bool:
        guild_id = _snowflake(d.get("id")) if isinstance(d, dict) else None
        if guild_id is None:
            return False
        shard = self.shards.setdefault(shard_id, ShardCache())
        if d.get("unavailable") is True:
            shard.guilds[guild_id] = None
            return True
        entry = GuildEntry()
        entry.set_base({k: v for k, v in d.items() if k not in _NOT_BASE})
        count = d.get("member_count")
        entry.member_count = count if isinstance(count, int) else 0
        for name in _LISTS:
            entry.set_list(name, d.get(name))
        for name, key in _KEYED:
            items = d.get(name)
            if not isinstance(items, list):
                continue
            if name == "members":
                for member in items:
                    self._put_member(entry, member)
            elif name == "presences":
                for presence in items:
                    self._put_presence(entry, presence)
            elif name == "voice_states":
                for state in items:
                    if isinstance(state, dict):
                        self._put_voice_state(entry, state)
            else:
                assert key is not None
                collection = entry.collection(name)
                for item in items:
                    item_id = _snowflake(item.get(key)) if isinstance(item, dict) else None
                    if item_id is not None:
                        entry.put(collection, item_id, _dumps(item))
        shard.guilds[guild_id] = entry
        return True

    def _guild_update(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d, "id")
        if entry is None:
            return False
        base = _loads(entry.base)
        base.update({k: v for k, v in d.items() if k not in _NOT_BASE})
        entry.set_base(base)
        if isinstance(d.get("roles"), list):
            entry.clear(entry.roles)
            for role in d["roles"]:
                role_id = _snowflake(role.get("id")) if isinstance(role, dict) else None
                if role_id is not None:
                    entry.put(entry.roles, role_id, _dumps(role))
        for name in _LISTS:
            if isinstance(d.get(name), list):
                entry.set_list(name, d[name])
        return True

    def _guild_delete(self, shard_id: int, d: Any) -> bool:
        guild_id = _snowflake(d.get("id")) if isinstance(d, dict) else None
        shard = self.shards.get(shard_id)
        if guild_id is None or shard is None:
            return False
        if d.get("unavailable") is True:
            shard.guilds[guild_id] = None  # an outage: a GUILD_CREATE brings it back
        else:
            shard.guilds.pop(guild_id, None)  # the bot left or was removed
        return True

    # roles, channels, threads, expressions

    def _role_put(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        role = d.get("role") if entry is not None else None
        role_id = _snowflake(role.get("id")) if isinstance(role, dict) else None
        if entry is None or role_id is None:
            return False
        entry.put(entry.roles, role_id, _dumps(role))
        return True

    def _role_delete(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        role_id = _snowflake(d.get("role_id")) if entry is not None else None
        if entry is None or role_id is None:
            return False
        entry.drop(entry.roles, role_id)
        return True

    def _channel_put(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        channel_id = _snowflake(d.get("id")) if entry is not None else None
        if entry is None or channel_id is None:
            return False  # a DM channel, or a guild the cache does not have
        collection = entry.threads if d.get("type") in _THREAD_TYPES else entry.channels
        entry.put(collection, channel_id, _dumps(_without(d, "guild_id")))
        return True

    def _channel_delete(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        channel_id = _snowflake(d.get("id")) if entry is not None else None
        if entry is None or channel_id is None:
            return False
        entry.drop(entry.channels, channel_id)
        entry.drop(entry.threads, channel_id)
        for thread_id, raw in list(entry.threads.items()):
            if _snowflake(_loads(raw).get("parent_id")) == channel_id:
                entry.drop(entry.threads, thread_id)
        return True

    def _thread_put(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        thread_id = _snowflake(d.get("id")) if entry is not None else None
        if entry is None or thread_id is None:
            return False
        metadata = d.get("thread_metadata")
        if isinstance(metadata, dict) and metadata.get("archived") is True:
            entry.drop(entry.threads, thread_id)  # GUILD_CREATE lists active threads only
            return True
        thread = _without(d, "guild_id", "newly_created")
        old = entry.threads.get(thread_id)
        if "member" not in thread and old is not None and b'"member":' in old:
            # THREAD_UPDATE has no member: the bot's own, from THREAD_CREATE or
            # THREAD_MEMBER_UPDATE, stays
            member = _loads(old).get("member")
            if member is not None:
                thread["member"] = member
        elif isinstance(thread.get("member"), dict):
            thread["member"] = _thread_member(thread["member"])
        entry.put(entry.threads, thread_id, _dumps(thread))
        return True

    def _thread_delete(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        thread_id = _snowflake(d.get("id")) if entry is not None else None
        if entry is None or thread_id is None:
            return False
        entry.drop(entry.threads, thread_id)
        return True

    def _thread_list_sync(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        if entry is None:
            return False
        raw_ids = d.get("channel_ids")
        if isinstance(raw_ids, list):
            parents = {_snowflake(c) for c in raw_ids}
            for thread_id, raw in list(entry.threads.items()):
                if _snowflake(_loads(raw).get("parent_id")) in parents:
                    entry.drop(entry.threads, thread_id)
        else:
            entry.clear(entry.threads)
        members: dict[int, dict[str, Any]] = {}
        for member in d.get("members") or ():  # the bot's own thread members
            joined = _snowflake(member.get("id")) if isinstance(member, dict) else None
            if joined is not None:
                members[joined] = _thread_member(member)
        for thread in d.get("threads") or ():
            synced = _snowflake(thread.get("id")) if isinstance(thread, dict) else None
            if synced is not None:
                thread = _without(thread, "guild_id")
                if synced in members:
                    thread["member"] = members[synced]
                entry.put(entry.threads, synced, _dumps(thread))
        return True

    def _thread_member_update(self, shard_id: int, d: Any) -> bool:
        """The bot's own thread member changed (or it joined): the thread's ``member``."""
        entry = self._entry(shard_id, d)
        thread_id = _snowflake(d.get("id")) if entry is not None else None
        if entry is None or thread_id is None or thread_id not in entry.threads:
            return False
        entry.patch_channel(thread_id, {"member": _thread_member(d)})
        return True

    def _thread_members_update(self, shard_id: int, d: Any) -> bool:
        """Members joined or left a thread: its ``member_count``, and ``member`` if the bot
        was one of them (their guild members, when the event carries them, are cached)."""
        entry = self._entry(shard_id, d)
        thread_id = _snowflake(d.get("id")) if entry is not None else None
        if entry is None or thread_id is None or thread_id not in entry.threads:
            return False
        fields: dict[str, Any] = {}
        if isinstance(d.get("member_count"), int):
            fields["member_count"] = d["member_count"]
        bot = self.bot_id
        for added in d.get("added_members") or ():
            if not isinstance(added, dict):
                continue
            if isinstance(added.get("member"), dict):
                self._put_member(entry, added["member"], merge=True)
            if bot is not None and _snowflake(added.get("user_id")) == bot:
                fields["member"] = _thread_member(added)
        removed = d.get("removed_member_ids") or ()
        if bot is not None and isinstance(removed, list) and bot in map(_snowflake, removed):
            fields["member"] = _DELETE
        if fields:
            entry.patch_channel(thread_id, fields)
        return True

    def _pins_update(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        channel_id = _snowflake(d.get("channel_id")) if entry is not None else None
        if entry is None or channel_id is None:
            return False  # a DM channel, or a guild the cache does not have
        fields = {"last_pin_timestamp": d.get("last_pin_timestamp")}
        return entry.patch_channel(channel_id, fields) is not None

    def message_seen(self, shard_id: int, payload: bytes | memoryview) -> None:
        """A MESSAGE_CREATE dispatch as the relay has it (the endpoint's pump), not parsed.

        Its channel is the one ``"channel_id"`` in its bytes (JSON strings hold no bare
        quote, so a key cannot hide in a value; a message with another, a reply, is
        parsed now): it waits as that channel's newest until :meth:`flush_messages`."""
        raw = bytes(payload)
        at = raw.find(_CHANNEL_KEY)
        end = raw.find(b'"', at + len(_CHANNEL_KEY)) if at >= 0 else -1
        if end < 0 or raw.find(_CHANNEL_KEY, end) >= 0:
            self._message_now(shard_id, raw)
            return
        pending = self._messages
        pending[shard_id, raw[at + len(_CHANNEL_KEY) : end]] = raw
        if len(pending) >= MESSAGE_BACKLOG:
            self.flush_messages()

    def flush_messages(self) -> None:
        """Parse the waiting MESSAGE_CREATEs, one per channel (a render, a save, a full backlog)."""
        pending = self._messages
        if not pending:
            return
        self._messages = {}
        for (shard_id, _), raw in pending.items():
            self._message_now(shard_id, raw)

    def _message_now(self, shard_id: int, raw: bytes) -> None:
        try:
            obj = _loads(raw)
        except orjson.JSONDecodeError:
            return
        self.message_created(shard_id, obj.get("d") if isinstance(obj, dict) else None)

    def message_created(self, shard_id: int, d: Any) -> bool:
        """MESSAGE_CREATE: the channel's (or thread's) ``last_message_id``.

        The shortest path (:meth:`flush_messages` calls it without :meth:`apply`, which
        also counts): three dict lookups and ``int()`` of the ids; a DM, an unknown guild
        or channel, or a malformed message fails a lookup and is ignored."""
        try:
            entry = self.shards[shard_id].guilds[int(d["guild_id"])]
            channel_id = int(d["channel_id"])
            message_id = int(d["id"])
        except (KeyError, TypeError, ValueError):
            return False
        if entry is None or (channel_id not in entry.channels and channel_id not in entry.threads):
            return False
        entry.note_message(channel_id, message_id)
        return True

    def _channel_field(self, shard_id: int, d: Any, name: str) -> bool:
        """VOICE_CHANNEL_STATUS_UPDATE (``status``), VOICE_CHANNEL_START_TIME_UPDATE
        (``voice_start_time``): one field of a voice channel."""
        entry = self._entry(shard_id, d)
        channel_id = _snowflake(d.get("id")) if entry is not None else None
        if entry is None or channel_id is None:
            return False
        return entry.patch_channel(channel_id, {name: d.get(name)}) is not None

    def _emojis(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        if entry is None or not isinstance(d.get("emojis"), list):
            return False
        entry.set_list("emojis", d["emojis"])
        return True

    def _stickers(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        if entry is None or not isinstance(d.get("stickers"), list):
            return False
        entry.set_list("stickers", d["stickers"])
        return True

    # members, presences, voice states

    def _put_member(self, entry: GuildEntry, member: Any, merge: bool = False) -> bool:
        user_id = _user_id(member)
        if user_id is None:
            return False
        old = entry.members.get(user_id)
        if old is None and len(entry.members) >= self.member_cap and user_id != self.bot_id:
            entry.members_dropped += 1
            return False
        fields = _without(member, "guild_id")
        if merge and old is not None:
            fields = {**_loads(old), **fields}
        entry.put(entry.members, user_id, _dumps(fields))
        return True

    def _put_presence(self, entry: GuildEntry, presence: Any) -> bool:
        user_id = _user_id(presence)
        if user_id is None:
            return False
        if presence.get("status") == "offline":
            entry.drop(entry.presences, user_id)  # Discord lists no offline presences
            return True
        if (
            user_id not in entry.presences
            and len(entry.presences) >= self.presence_cap
            and user_id != self.bot_id
        ):
            entry.presences_dropped += 1
            return False
        fields = _without(presence, "guild_id", "user")
        fields["user"] = {"id": str(user_id)}
        entry.put(entry.presences, user_id, _dumps(fields))
        return True

    def _put_voice_state(self, entry: GuildEntry, state: dict[str, Any]) -> bool:
        user_id = _snowflake(state.get("user_id"))
        if user_id is None:
            return False
        if state.get("channel_id") is None:
            entry.drop(entry.voice_states, user_id)  # left voice
            return True
        member = state.get("member")
        if isinstance(member, dict):
            self._put_member(entry, member, merge=True)
        entry.put(entry.voice_states, user_id, _dumps(_without(state, "guild_id", "member")))
        return True

    def _member_add(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        if entry is None:
            return False
        entry.member_count += 1
        self._put_member(entry, d)
        return True

    def _member_update(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        return entry is not None and self._put_member(entry, d, merge=True)

    def _member_remove(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        user_id = _user_id(d) if entry is not None else None
        if entry is None or user_id is None:
            return False
        entry.member_count = max(0, entry.member_count - 1)
        entry.drop(entry.members, user_id)
        entry.drop(entry.presences, user_id)
        entry.drop(entry.voice_states, user_id)
        return True

    def _members_chunk(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        if entry is None:
            return False
        for member in d.get("members") or ():
            self._put_member(entry, member, merge=True)
        for presence in d.get("presences") or ():
            self._put_presence(entry, presence)
        return True

    def _presence(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        return entry is not None and self._put_presence(entry, d)

    def _voice_state(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        return entry is not None and self._put_voice_state(entry, d)

    # stage instances, scheduled events, soundboard

    def _keyed_put(self, shard_id: int, d: Any, name: str, key: str) -> bool:
        entry = self._entry(shard_id, d)
        item_id = _snowflake(d.get(key)) if entry is not None else None
        if entry is None or item_id is None:
            return False
        entry.put(entry.collection(name), item_id, _dumps(d))
        return True

    def _keyed_delete(self, shard_id: int, d: Any, name: str, key: str) -> bool:
        entry = self._entry(shard_id, d)
        item_id = _snowflake(d.get(key)) if entry is not None else None
        if entry is None or item_id is None:
            return False
        entry.drop(entry.collection(name), item_id)
        return True

    def _event_user(self, shard_id: int, d: Any, step: int) -> bool:
        """GUILD_SCHEDULED_EVENT_USER_ADD / REMOVE: the event's ``user_count``, where the
        cached object has one (Discord gives it only on request)."""
        entry = self._entry(shard_id, d)
        event_id = _snowflake(d.get("guild_scheduled_event_id")) if entry is not None else None
        raw = entry.guild_scheduled_events.get(event_id) if entry and event_id else None
        if entry is None or event_id is None or raw is None:
            return False
        if b'"user_count":' in raw:
            event = _loads(raw)
            if isinstance(event.get("user_count"), int):
                event["user_count"] = max(0, event["user_count"] + step)
                entry.put(entry.guild_scheduled_events, event_id, _dumps(event))
        return True

    def _sounds_update(self, shard_id: int, d: Any) -> bool:
        entry = self._entry(shard_id, d)
        sounds = d.get("soundboard_sounds") if entry is not None else None
        if entry is None or not isinstance(sounds, list):
            return False
        entry.clear(entry.soundboard_sounds)
        for sound in sounds:
            sound_id = _snowflake(sound.get("sound_id")) if isinstance(sound, dict) else None
            if sound_id is not None:
                entry.put(entry.soundboard_sounds, sound_id, _dumps(sound))
        return True


def _thread_member(member: Mapping[str, Any]) -> dict[str, Any]:
    """A thread member object as GUILD_CREATE's threads carry it (no member, presence)."""
    return {k: member[k] for k in _THREAD_MEMBER_FIELDS if k in member}


def _keyed(name: str, key: str, delete: bool = False) -> Any:
    if delete:
        return lambda cache, shard_id, d: cache._keyed_delete(shard_id, d, name, key)
    return lambda cache, shard_id, d: cache._keyed_put(shard_id, d, name, key)


_HANDLERS: Final[dict[bytes, Any]] = {
    b"READY": GuildCache._ready,
    b"USER_UPDATE": GuildCache._user_update,
    b"GUILD_CREATE": GuildCache._guild_create,
    b"GUILD_UPDATE": GuildCache._guild_update,
    b"GUILD_DELETE": GuildCache._guild_delete,
    b"GUILD_ROLE_CREATE": GuildCache._role_put,
    b"GUILD_ROLE_UPDATE": GuildCache._role_put,
    b"GUILD_ROLE_DELETE": GuildCache._role_delete,
    b"CHANNEL_CREATE": GuildCache._channel_put,
    b"CHANNEL_UPDATE": GuildCache._channel_put,
    b"CHANNEL_DELETE": GuildCache._channel_delete,
    b"THREAD_CREATE": GuildCache._thread_put,
    b"THREAD_UPDATE": GuildCache._thread_put,
    b"THREAD_DELETE": GuildCache._thread_delete,
    b"THREAD_LIST_SYNC": GuildCache._thread_list_sync,
    b"THREAD_MEMBER_UPDATE": GuildCache._thread_member_update,
    b"THREAD_MEMBERS_UPDATE": GuildCache._thread_members_update,
    b"CHANNEL_PINS_UPDATE": GuildCache._pins_update,
    b"MESSAGE_CREATE": GuildCache.message_created,
    b"VOICE_CHANNEL_STATUS_UPDATE": lambda cache, shard_id, d: cache._channel_field(
        shard_id, d, "status"
    ),
    b"VOICE_CHANNEL_START_TIME_UPDATE": lambda cache, shard_id, d: cache._channel_field(
        shard_id, d, "voice_start_time"
    ),
    b"GUILD_EMOJIS_UPDATE": GuildCache._emojis,
    b"GUILD_STICKERS_UPDATE": GuildCache._stickers,
    b"GUILD_MEMBER_ADD": GuildCache._member_add,
    b"GUILD_MEMBER_UPDATE": GuildCache._member_update,
    b"GUILD_MEMBER_REMOVE": GuildCache._member_remove,
    b"GUILD_MEMBERS_CHUNK": GuildCache._members_chunk,
    b"PRESENCE_UPDATE": GuildCache._presence,
    b"VOICE_STATE_UPDATE": GuildCache._voice_state,
    b"STAGE_INSTANCE_CREATE": _keyed("stage_instances", "id"),
    b"STAGE_INSTANCE_UPDATE": _keyed("stage_instances", "id"),
    b"STAGE_INSTANCE_DELETE": _keyed("stage_instances", "id", delete=True),
    b"GUILD_SCHEDULED_EVENT_CREATE": _keyed("guild_scheduled_events", "id"),
    b"GUILD_SCHEDULED_EVENT_UPDATE": _keyed("guild_scheduled_events", "id"),
    b"GUILD_SCHEDULED_EVENT_DELETE": _keyed("guild_scheduled_events", "id", delete=True),
    b"GUILD_SCHEDULED_EVENT_USER_ADD": lambda cache, shard_id, d: cache._event_user(shard_id, d, 1),
    b"GUILD_SCHEDULED_EVENT_USER_REMOVE": lambda cache, shard_id, d: cache._event_user(
        shard_id, d, -1
    ),
    b"GUILD_SOUNDBOARD_SOUND_CREATE": _keyed("soundboard_sounds", "sound_id"),
    b"GUILD_SOUNDBOARD_SOUND_UPDATE": _keyed("soundboard_sounds", "sound_id"),
    b"GUILD_SOUNDBOARD_SOUND_DELETE": _keyed("soundboard_sounds", "sound_id", delete=True),
    b"GUILD_SOUNDBOARD_SOUNDS_UPDATE": GuildCache._sounds_update,
}
assert set(_HANDLERS) == CACHE_EVENTS
