"""The endpoint's guild cache (cluster/endpoint/cache.py) and its file (cluster/endpoint/persist.py)."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.endpoint.cache import ENTRY_OVERHEAD, MESSAGE_BACKLOG, GuildCache
from cluster.endpoint.persist import cache_path, load_cache, save_cache, snapshot, write_cache
from simulator.config import SimulatorConfig
from simulator.events import BotIdentity, EventFactory

BOT = "1234567890123456789"
GUILD = "555000000000000001"


def ready(*guilds: str) -> dict[str, Any]:
    return {
        "v": 10,
        "user": {"id": BOT, "username": "bot", "bot": True},
        "guilds": [{"id": g, "unavailable": True} for g in guilds],
        "session_id": "shard-session",
        "resume_gateway_url": "wss://example",
        "application": {"id": BOT, "flags": 0},
        "_trace": ["x"],
    }


def guild(gid: str = GUILD, **extra: Any) -> dict[str, Any]:
    return {
        "id": gid,
        "name": "g",
        "owner_id": "1",
        "roles": [{"id": gid, "name": "@everyone", "position": 0, "permissions": "0"}],
        "emojis": [],
        "stickers": [],
        "channels": [{"id": "10", "type": 0, "name": "general", "position": 0}],
        "threads": [],
        "members": [{"user": {"id": BOT, "username": "bot"}, "roles": []}],
        "presences": [],
        "voice_states": [],
        "member_count": 1,
        "large": False,
        "joined_at": "2021-01-01T00:00:00+00:00",
        **extra,
    }


def rendered(cache: GuildCache, shard: int = 0) -> list[dict[str, Any]]:
    return [orjson.loads(d) for d in cache.guild_creates(shard)]


def test_ready_then_guild_create_then_updates() -> None:
    cache = GuildCache()
    assert cache.apply(0, b"READY", ready(GUILD, "555000000000000002"))
    assert cache.is_ready(0) and cache.bot_id == int(BOT)
    assert cache.guild_creates(0) == []  # all unavailable until their GUILD_CREATE
    client_ready = orjson.loads(cache.ready_d(0, "client-session", "ws://here/", (0, 1)))
    assert client_ready["session_id"] == "client-session"
    assert client_ready["resume_gateway_url"] == "ws://here/"
    assert client_ready["guilds"] == [
        {"id": GUILD, "unavailable": True},
        {"id": "555000000000000002", "unavailable": True},
    ]
    assert client_ready["shard"] == [0, 1] and "_trace" not in client_ready

    assert cache.apply(0, b"GUILD_CREATE", guild())
    apply = [
        (b"CHANNEL_CREATE", {"id": "11", "type": 2, "name": "voice", "guild_id": GUILD}),
        (b"CHANNEL_UPDATE", {"id": "10", "type": 0, "name": "renamed", "guild_id": GUILD}),
        (b"GUILD_ROLE_CREATE", {"guild_id": GUILD, "role": {"id": "20", "name": "mods"}}),
        (b"THREAD_CREATE", {"id": "30", "type": 11, "parent_id": "10", "guild_id": GUILD}),
        (b"GUILD_MEMBER_ADD", {"guild_id": GUILD, "user": {"id": "40"}, "roles": []}),
        (b"GUILD_MEMBER_UPDATE", {"guild_id": GUILD, "user": {"id": "40"}, "nick": "n"}),
        (b"PRESENCE_UPDATE", {"guild_id": GUILD, "user": {"id": "40", "x": 1}, "status": "idle"}),
        (
            b"VOICE_STATE_UPDATE",
            {"guild_id": GUILD, "channel_id": "11", "user_id": "40", "session_id": "s"},
        ),
        (b"GUILD_EMOJIS_UPDATE", {"guild_id": GUILD, "emojis": [{"id": "50", "name": "e"}]}),
        (b"GUILD_UPDATE", {"id": GUILD, "name": "new name", "roles": None}),
    ]
    for t, d in apply:
        assert cache.apply(0, t, d), t
    [g] = rendered(cache)
    assert g["name"] == "new name" and g["unavailable"] is False
    assert {c["id"]: c["name"] for c in g["channels"]} == {"10": "renamed", "11": "voice"}
    assert all("guild_id" not in c for c in g["channels"])
    assert {r["id"] for r in g["roles"]} == {GUILD, "20"}
    assert [t["id"] for t in g["threads"]] == ["30"]
    assert g["member_count"] == 2
    member = next(m for m in g["members"] if m["user"]["id"] == "40")
    assert member["nick"] == "n" and member["roles"] == []  # merged, not replaced
    assert g["presences"] == [{"status": "idle", "user": {"id": "40"}}]
    assert g["voice_states"][0]["user_id"] == "40"
    assert g["emojis"] == [{"id": "50", "name": "e"}]
    assert orjson.loads(cache.guild_creates(0, with_presences=False)[0])["presences"] == []

    for t, d in [
        (b"CHANNEL_DELETE", {"id": "10", "guild_id": GUILD}),  # its thread goes with it
        (b"GUILD_ROLE_DELETE", {"guild_id": GUILD, "role_id": "20"}),
        (b"VOICE_STATE_UPDATE", {"guild_id": GUILD, "channel_id": None, "user_id": "40"}),
        (b"PRESENCE_UPDATE", {"guild_id": GUILD, "user": {"id": "40"}, "status": "offline"}),
        (b"GUILD_MEMBER_REMOVE", {"guild_id": GUILD, "user": {"id": "40"}}),
    ]:
        assert cache.apply(0, t, d), t
    [g] = rendered(cache)
    assert [c["id"] for c in g["channels"]] == ["11"] and g["threads"] == []
    assert [r["id"] for r in g["roles"]] == [GUILD]
    assert g["voice_states"] == [] and g["presences"] == [] and g["member_count"] == 1

    # an outage, then back; then the bot leaves
    assert cache.apply(0, b"GUILD_DELETE", {"id": GUILD, "unavailable": True})
    assert cache.guild_creates(0) == [] and cache.guild_ids(0)[0] == int(GUILD)
    assert cache.apply(0, b"GUILD_CREATE", guild())
    assert cache.apply(0, b"GUILD_DELETE", {"id": GUILD})
    assert cache.guild_ids(0) == [555000000000000002]


def test_malformed_or_unknown_events_are_ignored_not_raised() -> None:
    cache = GuildCache()
    assert not cache.apply(0, b"CHANNEL_CREATE", {"id": "1", "guild_id": GUILD})  # unknown guild
    assert not cache.apply(0, b"GUILD_CREATE", None)
    assert not cache.apply(0, b"GUILD_MEMBER_ADD", "not an object")
    assert not cache.apply(0, b"READY", {"user": 5})
    assert not cache.apply(0, b"TYPING_START", {})  # not a cache event
    assert not cache.apply(0, b"MESSAGE_CREATE", {"channel_id": "10", "id": "1"})  # a DM
    cache.apply(0, b"READY", ready(GUILD))
    cache.apply(0, b"GUILD_CREATE", guild())
    # bad items inside a good event are skipped; the rest still applies
    cache.apply(0, b"GUILD_MEMBERS_CHUNK", {"guild_id": GUILD, "members": [1, "x"]})
    cache.apply(0, b"THREAD_LIST_SYNC", {"guild_id": GUILD, "channel_ids": 5, "threads": [7]})
    cache.apply(0, b"GUILD_UPDATE", {"id": GUILD, "roles": "not a list", "name": "still"})
    [g] = rendered(cache)
    assert g["name"] == "still" and len(g["members"]) == 1
    assert cache.ignored >= 4


def test_members_and_presences_are_capped_per_guild_but_the_bot_always_fits() -> None:
    cache = GuildCache(member_cap=3, presence_cap=2)
    cache.apply(0, b"READY", ready(GUILD))
    cache.apply(0, b"GUILD_CREATE", guild(members=[]))
    members = [{"user": {"id": str(100 + i)}, "roles": []} for i in range(10)]
    cache.apply(0, b"GUILD_MEMBERS_CHUNK", {"guild_id": GUILD, "members": members})
    cache.apply(0, b"GUILD_MEMBER_ADD", {"guild_id": GUILD, "user": {"id": BOT}, "roles": []})
    for i in range(5):
        cache.apply(
            0,
            b"PRESENCE_UPDATE",
            {"guild_id": GUILD, "user": {"id": str(100 + i)}, "status": "online"},
        )
    entry = cache.guild(0, int(GUILD))
    assert entry is not None
    assert len(entry.members) == 4 and int(BOT) in entry.members
    assert entry.members_dropped == 7 and len(entry.presences) == 2
    stats = cache.stats()
    assert stats.members_dropped == 7 and stats.presences_dropped == 3


# -- a model: the cache's channels, roles and members always equal a plain dict's -----------------

_ops = st.lists(
    st.tuples(
        st.sampled_from(
            [
                b"CHANNEL_CREATE",
                b"CHANNEL_DELETE",
                b"GUILD_ROLE_UPDATE",
                b"GUILD_ROLE_DELETE",
                b"GUILD_MEMBER_ADD",
                b"GUILD_MEMBER_REMOVE",
                b"GUILD_MEMBER_UPDATE",
            ]
        ),
        st.integers(1, 8),
        st.text(max_size=5),
    ),
    max_size=60,
)


@settings(max_examples=150)
@given(ops=_ops)
def test_the_cache_follows_its_events_like_a_plain_model(ops: list[tuple[bytes, int, str]]) -> None:
    cache = GuildCache()
    cache.apply(0, b"READY", ready(GUILD))
    cache.apply(0, b"GUILD_CREATE", guild(channels=[], roles=[], members=[], member_count=0))
    channels: dict[str, str] = {}
    roles: dict[str, str] = {}
    members: dict[str, str] = {}
    count = 0
    for t, n, name in ops:
        key = str(n)
        if t == b"CHANNEL_CREATE":
            cache.apply(0, t, {"id": key, "type": 0, "name": name, "guild_id": GUILD})
            channels[key] = name
        elif t == b"CHANNEL_DELETE":
            cache.apply(0, t, {"id": key, "guild_id": GUILD})
            channels.pop(key, None)
        elif t == b"GUILD_ROLE_UPDATE":
            cache.apply(0, t, {"guild_id": GUILD, "role": {"id": key, "name": name}})
            roles[key] = name
        elif t == b"GUILD_ROLE_DELETE":
            cache.apply(0, t, {"guild_id": GUILD, "role_id": key})
            roles.pop(key, None)
        elif t == b"GUILD_MEMBER_ADD":
            cache.apply(0, t, {"guild_id": GUILD, "user": {"id": key}, "nick": name})
            members[key] = name
            count += 1
        elif t == b"GUILD_MEMBER_REMOVE":
            cache.apply(0, t, {"guild_id": GUILD, "user": {"id": key}})
            members.pop(key, None)
            count = max(0, count - 1)
        else:
            cache.apply(0, t, {"guild_id": GUILD, "user": {"id": key}, "nick": name})
            members[key] = name
    [g] = rendered(cache)
    assert {c["id"]: c["name"] for c in g["channels"]} == channels
    assert {r["id"]: r["name"] for r in g["roles"]} == roles
    assert {m["user"]["id"]: m["nick"] for m in g["members"]} == members
    assert g["member_count"] == count
    entry = cache.guild(0, int(GUILD))
    assert entry is not None
    # the kept size is exactly the JSON held plus the overhead per object
    held = len(entry.base) + len(entry.emojis) + len(entry.stickers) + 2 * ENTRY_OVERHEAD
    held += sum(
        len(v) + ENTRY_OVERHEAD
        for name in (
            "channels",
            "roles",
            "members",
            "threads",
            "presences",
            "voice_states",
            "stage_instances",
            "guild_scheduled_events",
            "soundboard_sounds",
        )
        for v in entry.collection(name).values()
    )
    assert entry.nbytes == held


def channel(g: dict[str, Any], channel_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in g["channels"] + g["threads"] if c["id"] == channel_id)
    return found


def test_last_message_id_pins_and_voice_channel_fields_follow_their_events() -> None:
    cache = GuildCache()
    cache.apply(0, b"READY", ready(GUILD))
    channels = [
        {"id": "10", "type": 0, "name": "general", "last_message_id": None},
        {"id": "11", "type": 2, "name": "voice"},
    ]
    thread = {"id": "30", "type": 11, "parent_id": "10", "last_message_id": "5", "member_count": 1}
    cache.apply(0, b"GUILD_CREATE", guild(channels=channels, threads=[thread]))
    entry = cache.guild(0, int(GUILD))
    assert entry is not None
    size = entry.nbytes
    for message_id in ("1001", "1003", "1002"):  # the newest id wins, not the last one seen
        assert cache.apply(
            0, b"MESSAGE_CREATE", {"guild_id": GUILD, "channel_id": "10", "id": message_id}
        )
    assert cache.apply(0, b"MESSAGE_CREATE", {"guild_id": GUILD, "channel_id": "30", "id": "900"})
    assert not cache.apply(0, b"MESSAGE_CREATE", {"guild_id": GUILD, "channel_id": "99", "id": "1"})
    assert entry.channels[10] == compact(channels[0])  # noted, written at the next render
    assert entry.nbytes == size + 2 * ENTRY_OVERHEAD
    [g] = rendered(cache)
    assert channel(g, "10")["last_message_id"] == "1003"
    assert channel(g, "30")["last_message_id"] == "900"
    # the JSON now holds the ids; nothing is noted any more
    assert entry.nbytes == size + len(b'"1003"') - len(b"null") + len(b'"900"') - len(b'"5"')

    assert cache.apply(
        0,
        b"CHANNEL_PINS_UPDATE",
        {"guild_id": GUILD, "channel_id": "10", "last_pin_timestamp": "2024-01-01T00:00:00+00:00"},
    )
    assert not cache.apply(0, b"CHANNEL_PINS_UPDATE", {"channel_id": "10"})  # a DM channel
    assert cache.apply(
        0, b"VOICE_CHANNEL_STATUS_UPDATE", {"id": "11", "guild_id": GUILD, "status": "s"}
    )
    assert cache.apply(
        0,
        b"VOICE_CHANNEL_START_TIME_UPDATE",
        {"id": "11", "guild_id": GUILD, "voice_start_time": 7},
    )
    # a CHANNEL_UPDATE with an older last_message_id does not move it back
    assert cache.apply(0, b"MESSAGE_CREATE", {"guild_id": GUILD, "channel_id": "10", "id": "1004"})
    assert cache.apply(
        0,
        b"CHANNEL_UPDATE",
        {"id": "10", "type": 0, "name": "renamed", "last_message_id": "1", "guild_id": GUILD},
    )
    [g] = rendered(cache)
    assert channel(g, "10")["name"] == "renamed" and channel(g, "10")["last_message_id"] == "1004"
    assert channel(g, "11")["status"] == "s" and channel(g, "11")["voice_start_time"] == 7


def message_dispatch(channel_id: str, message_id: str, **extra: Any) -> bytes:
    d = {"id": message_id, "channel_id": channel_id, "guild_id": GUILD, "content": "", **extra}
    return orjson.dumps({"t": "MESSAGE_CREATE", "s": 1, "op": 0, "d": d})


def test_message_creates_wait_unparsed_one_per_channel_until_a_render() -> None:
    cache = GuildCache()
    cache.apply(0, b"READY", ready(GUILD))
    channels = [{"id": "10", "type": 0}, {"id": "11", "type": 0}]
    cache.apply(0, b"GUILD_CREATE", guild(channels=channels))
    for n in range(50):  # a busy channel: one payload waits, however many came
        cache.message_seen(0, memoryview(message_dispatch("10", str(2000 + n))))
    cache.message_seen(0, message_dispatch("11", "1500"))
    assert cache.stats().messages_pending == 2
    # a reply names another channel_id (its message_reference): parsed at once
    reply = message_dispatch(
        "11", "1600", message_reference={"channel_id": "10", "message_id": "5"}
    )
    cache.message_seen(0, reply)
    assert cache.stats().messages_pending == 2
    [g] = rendered(cache)
    assert cache.stats().messages_pending == 0
    assert {c["id"]: c["last_message_id"] for c in g["channels"]} == {"10": "2049", "11": "1600"}
    # a full backlog is parsed at once; a shard forgotten drops its own
    for n in range(MESSAGE_BACKLOG - 1):
        cache.message_seen(1, message_dispatch(str(100_000 + n), "1"))
    cache.message_seen(0, message_dispatch("10", "3000"))
    assert cache.stats().messages_pending == 0
    cache.message_seen(1, message_dispatch("12", "1"))
    cache.message_seen(0, message_dispatch("10", "3001"))
    cache.forget_shard(1)
    assert cache.stats().messages_pending == 1
    assert channel(rendered(cache)[0], "10")["last_message_id"] == "3001"


def compact(obj: Any) -> bytes:
    return orjson.dumps(obj)


def test_the_bots_thread_member_and_thread_member_counts_follow_their_events() -> None:
    cache = GuildCache()
    cache.apply(0, b"READY", ready(GUILD))
    joined = {"id": "30", "user_id": BOT, "join_timestamp": "2024-01-01T00:00:00+00:00", "flags": 0}
    threads = [
        {"id": "30", "type": 11, "parent_id": "10", "member_count": 2, "member": joined},
        {"id": "31", "type": 11, "parent_id": "10", "member_count": 1},
    ]
    cache.apply(0, b"GUILD_CREATE", guild(threads=threads))
    # THREAD_UPDATE carries no member: the bot's stays
    assert cache.apply(
        0,
        b"THREAD_UPDATE",
        {"id": "30", "type": 11, "parent_id": "10", "name": "x", "guild_id": GUILD},
    )
    # the bot is added to 31 (with its guild member), someone leaves 30
    added = {
        "id": "31",
        "user_id": BOT,
        "join_timestamp": "2024-02-01T00:00:00+00:00",
        "flags": 1,
        "member": {"user": {"id": BOT, "username": "bot"}, "roles": [], "nick": "me"},
        "presence": None,
    }
    assert cache.apply(
        0,
        b"THREAD_MEMBERS_UPDATE",
        {"id": "31", "guild_id": GUILD, "member_count": 2, "added_members": [added]},
    )
    assert cache.apply(
        0,
        b"THREAD_MEMBERS_UPDATE",
        {"id": "30", "guild_id": GUILD, "member_count": 1, "removed_member_ids": ["777"]},
    )
    [g] = rendered(cache)
    assert channel(g, "30")["member"] == joined and channel(g, "30")["member_count"] == 1
    assert channel(g, "30")["name"] == "x"
    assert channel(g, "31")["member"] == {
        k: added[k] for k in ("id", "user_id", "join_timestamp", "flags")
    }
    assert channel(g, "31")["member_count"] == 2
    assert next(m for m in g["members"] if m["user"]["id"] == BOT)["nick"] == "me"
    # the bot's flags change; then it leaves 30
    assert cache.apply(0, b"THREAD_MEMBER_UPDATE", {**joined, "flags": 2, "guild_id": GUILD})
    assert channel(rendered(cache)[0], "30")["member"]["flags"] == 2
    assert cache.apply(
        0,
        b"THREAD_MEMBERS_UPDATE",
        {"id": "30", "guild_id": GUILD, "member_count": 0, "removed_member_ids": [BOT]},
    )
    assert "member" not in channel(rendered(cache)[0], "30")
    # THREAD_LIST_SYNC brings threads with the bot's thread members
    sync = {
        "guild_id": GUILD,
        "channel_ids": ["10"],
        "threads": [{"id": "32", "type": 11, "parent_id": "10"}],
        "members": [{"id": "32", "user_id": BOT, "join_timestamp": "t", "flags": 0}],
    }
    assert cache.apply(0, b"THREAD_LIST_SYNC", sync)
    [g] = rendered(cache)
    assert [t["id"] for t in g["threads"]] == ["32"]
    assert g["threads"][0]["member"] == sync["members"][0]


def test_scheduled_event_user_counts_follow_user_add_and_remove() -> None:
    cache = GuildCache()
    cache.apply(0, b"READY", ready(GUILD))
    events = [{"id": "60", "name": "e", "user_count": 3}, {"id": "61", "name": "no count"}]
    cache.apply(0, b"GUILD_CREATE", guild(guild_scheduled_events=events))
    user = {"guild_id": GUILD, "user_id": "1"}
    assert cache.apply(
        0, b"GUILD_SCHEDULED_EVENT_USER_ADD", {**user, "guild_scheduled_event_id": "60"}
    )
    assert cache.apply(
        0, b"GUILD_SCHEDULED_EVENT_USER_ADD", {**user, "guild_scheduled_event_id": "61"}
    )
    assert cache.apply(
        0, b"GUILD_SCHEDULED_EVENT_USER_REMOVE", {**user, "guild_scheduled_event_id": "60"}
    )
    assert cache.apply(
        0, b"GUILD_SCHEDULED_EVENT_USER_ADD", {**user, "guild_scheduled_event_id": "60"}
    )
    assert not cache.apply(
        0, b"GUILD_SCHEDULED_EVENT_USER_ADD", {**user, "guild_scheduled_event_id": "62"}
    )
    [g] = rendered(cache)
    assert {e["id"]: e.get("user_count") for e in g["guild_scheduled_events"]} == {
        "60": 4,
        "61": None,
    }


def test_saved_and_loaded_the_cache_renders_the_same(tmp_path: Path) -> None:
    cache = GuildCache()
    cache.apply(3, b"READY", ready(GUILD, "555000000000000002"))
    cache.apply(3, b"GUILD_CREATE", guild())
    path = cache_path(tmp_path, [2, 3], 8)
    assert path.name == "gateway-cache-2-3.msgpack"
    assert cache_path(tmp_path, range(8), 8).name == "gateway-cache.msgpack"
    assert (
        save_cache(path, cache, {3: (77, 12)}, [2, 3], [["session", 3, 8, 1, 5, 5, 0, 0, []]]) == 1
    )
    assert path.stat().st_mode & 0o777 == 0o600
    saved = load_cache(path)
    assert set(saved.shards) == {3} and (saved.shards[3].epoch, saved.shards[3].seq) == (77, 12)
    assert saved.sessions == [["session", 3, 8, 1, 5, 5, 0, 0, []]]
    back = GuildCache()
    back.load_shard(3, saved.shards[3].data)
    assert back.guild_creates(3) == cache.guild_creates(3)
    assert back.ready_d(3, "s", "u", (3, 8)) == cache.ready_d(3, "s", "u", (3, 8))
    assert back.stats() == cache.stats()
    path.write_bytes(b"\x00 not msgpack")
    assert load_cache(path).shards == {}


def test_a_cache_file_of_the_earlier_layout_still_loads(tmp_path: Path) -> None:
    """Entries once held their collections as [key, value] pairs (now a dict each)."""
    cache = GuildCache()
    cache.apply(0, b"READY", ready(GUILD))
    cache.apply(0, b"GUILD_CREATE", guild())
    data = cache.dump_shard(0)
    assert data is not None
    for _, entry in data["guilds"]:
        entry[4] = {name: list(items.items()) for name, items in entry[4].items()}
    back = GuildCache()
    back.load_shard(0, data)
    assert back.guild_creates(0) == cache.guild_creates(0)


def test_a_save_is_written_piece_by_piece_into_one_msgpack_document(tmp_path: Path) -> None:
    """write_cache packs one guild per call; msgpack reads the whole file as one map."""
    factory = EventFactory(SimulatorConfig(guilds=40), BotIdentity("simulated-token", 0))
    cache = GuildCache()
    creates = [orjson.loads(orjson.dumps(factory.guild_create(i))) for i in range(40)]
    for shard in (0, 1):
        mine = creates[shard::2]
        cache.apply(shard, b"READY", {**ready(), "guilds": [{"id": c["id"]} for c in mine]})
        for create in mine:
            cache.apply(shard, b"GUILD_CREATE", create)
    shards = snapshot(cache, {0: (5, 100), 1: (6, 200)}, [0, 1, 2])
    path = tmp_path / "gateway-cache.msgpack"
    size = write_cache(path, shards, [])
    assert size == path.stat().st_size
    doc = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
    assert set(doc) == {"version", "shards", "sessions"} and set(doc["shards"]) == {0, 1}
    saved = load_cache(path)
    back = GuildCache()
    for shard in (0, 1):
        back.load_shard(shard, saved.shards[shard].data)
        assert back.guild_creates(shard) == cache.guild_creates(shard)
    assert (saved.shards[1].epoch, saved.shards[1].seq) == (6, 200)


def test_memory_per_cached_guild_measured() -> None:
    """The simulator's guilds (7 channels, 5 roles, 6 members + the bot): the cache's own
    estimate (``nbytes``, /status) against what tracemalloc measures; both printed. Then a
    message in every text channel: noted (a dict entry per channel until the next render
    or save), and written into the channels' JSON (``last_message_id``)."""
    factory = EventFactory(SimulatorConfig(guilds=200), BotIdentity("simulated-token", 0))
    creates = [orjson.loads(orjson.dumps(factory.guild_create(i))) for i in range(200)]
    messages = [
        {"guild_id": c["id"], "channel_id": ch["id"], "id": str(1_300_000_000_000_000_000 + n)}
        for n, c in enumerate(creates)
        for ch in c["channels"]
        if ch["type"] == 0
    ]
    json_bytes = sum(len(orjson.dumps(c)) for c in creates) / len(creates)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = GuildCache()
    cache.apply(0, b"READY", {**ready(), "guilds": [{"id": c["id"]} for c in creates]})
    for create in creates:
        cache.apply(0, b"GUILD_CREATE", create)
    del create
    gc.collect()
    measured = (tracemalloc.get_traced_memory()[0] - before) / len(creates)
    for message in messages:
        assert cache.apply(0, b"MESSAGE_CREATE", message)
    del message
    gc.collect()
    noted = (tracemalloc.get_traced_memory()[0] - before) / len(creates)
    rendered_once = cache.guild_creates(0)
    del rendered_once
    gc.collect()
    folded = (tracemalloc.get_traced_memory()[0] - before) / len(creates)
    tracemalloc.stop()
    estimate = cache.stats().nbytes / len(creates)
    print(
        f"\ncache memory per guild: {measured:.0f} bytes measured (tracemalloc), "
        f"{estimate:.0f} estimated (nbytes), GUILD_CREATE JSON {json_bytes:.0f} bytes; "
        f"with a message in each of its {len(messages) // len(creates)} text channels "
        f"{noted:.0f} (noted), {folded:.0f} (written into the JSON)"
    )
    # compact JSON bytes: less than the GUILD_CREATE itself plus a little per object
    assert measured < 1.5 * json_bytes
    assert 0.5 * folded < estimate < 2 * folded
    assert folded < noted < measured + 1500
