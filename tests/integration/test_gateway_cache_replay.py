"""The endpoint's saved cache behind its shard's resume point, and content for clients without it.

In process: a :class:`cluster.relay.Relay` (its ``_runs``, as a worker's message
would reach it, with a recording publisher) feeding a started
:class:`cluster.endpoint.server.GatewayEndpoint` through its tap, and raw
clients (``tests.conftest.RawClient``):

- a cache saved at seq 2 of a session whose events were published up to 10:
  the shard RESUMEs from 2 (``SessionBook.resume_from``), the replayed 3..10 go to
  the cache only (never the publisher, never a client), 11.. flow as usual, and a
  client that identified meanwhile gets its READY once the cache caught up, with
  what the replay brought;
- a cache saved after the checkpoint: what it has is not applied or sent again;
- a client without MESSAGE_CONTENT on a cluster with it gets message content
  blanked; one with the intent gets it unchanged.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cluster.channel import EventChannel
from cluster.endpoint import server as endpoint_server
from cluster.endpoint.cache import GuildCache
from cluster.endpoint.persist import CacheWriter, cache_path, load_cache, save_cache
from cluster.endpoint.server import GatewayEndpoint
from cluster.endpoint.settings import GatewaySettings
from cluster.relay import Relay, SessionBook
from cluster.status import RelayCounters
from protocol import ipc
from protocol.intents import NON_PRIVILEGED_INTENTS, Intent
from protocol.ipc import pub_events
from protocol.session import Session
from tests.conftest import RawClient
from tests.unit.test_ipc import encode_runs

TOKEN = "bot-token-for-the-test"
BOT = "1234567890123456789"
GUILD = "555000000000000001"
SESSION = Session("shard-session-id", 10, "wss://resume.example")
EPOCH = ipc.session_epoch(SESSION.session_id)


def dispatch(t: str, seq: int, d: Any) -> tuple[bytes, bytes]:
    return t.encode(), b'{"t":"%s","s":%d,"op":0,"d":%s}' % (t.encode(), seq, orjson.dumps(d))


def shard_events(first: int, last: int, **special: tuple[str, Any]) -> list[tuple[bytes, bytes]]:
    """seqs first..last: MESSAGE_CREATEs, except ``special[str(seq)]``."""
    out = []
    for seq in range(first, last + 1):
        t, d = special.get(f"s{seq}", ("MESSAGE_CREATE", {"id": str(seq), "guild_id": GUILD}))
        out.append(dispatch(t, seq, d))
    return out


class Recorder:
    """The publisher as the relay's ``_runs`` uses it: what went to the PUB socket."""

    def __init__(self) -> None:
        self.seqs: list[int] = []

    def publish(self, topic: Any, header: bytes, payload: Any) -> None:
        self.seqs.append(orjson.loads(header)["seq"])

    def publish_frames(self, frames: memoryview, heads: memoryview, count: int) -> None:
        for topic, header, payload in pub_events(frames, heads):
            self.publish(topic, bytes(header), payload)


def saved_cache(state_dir: Path, seq: int) -> None:
    cache = GuildCache()
    cache.apply(0, b"READY", {"user": {"id": BOT, "username": "bot"}, "guilds": [{"id": GUILD}]})
    cache.apply(0, b"GUILD_CREATE", {"id": GUILD, "name": "g", "channels": [], "roles": []})
    save_cache(cache_path(state_dir, [0], 1), cache, {0: (EPOCH, seq)}, [0])


@pytest.fixture
async def endpoint() -> AsyncIterator[GatewayEndpoint]:
    intents = NON_PRIVILEGED_INTENTS | Intent.MESSAGE_CONTENT
    server = GatewayEndpoint(GatewaySettings("127.0.0.1", 0), TOKEN, 1, intents)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def pull() -> Any:
    channel = EventChannel("tcp://127.0.0.1:0")
    try:
        yield channel
    finally:
        channel.close()


def start_range(
    server: GatewayEndpoint, state_dir: Path, pull: Any
) -> tuple[SessionBook, Relay, Recorder]:
    """What RangeOwner._start does with the endpoint, the book and the relay."""

    async def send(shard_id: int, payload: bytes) -> None:
        return None

    book = SessionBook()
    kept = server.adopt(state_dir, {0: SESSION}, [0], 1)
    for shard_id, session in kept.items():
        book.seed(shard_id, session)
    server.rewind(book)
    recorder = Recorder()
    relay = Relay(
        pull,
        recorder,  # type: ignore[arg-type]
        book,
        RelayCounters(),
        lambda _: None,
        taps=(server.tap,),
    )
    server.attach_owner(send, 1, [0])
    return book, relay, recorder


def deliver(relay: Relay, server: GatewayEndpoint, events: list[tuple[bytes, bytes]]) -> None:
    """One worker message: a run of shard 0 starting at the first event's seq."""
    first = orjson.loads(events[0][1])["s"]
    _, body = encode_runs([(0, EPOCH, first, events)])
    relay._runs(1, len(events), body)
    server.tap.flush()


async def test_a_cache_behind_the_resume_point_catches_up_by_the_replay(
    endpoint: GatewayEndpoint, tmp_path: Path, pull: Any
) -> None:
    server = endpoint
    saved_cache(tmp_path, 2)
    book, relay, recorder = start_range(server, tmp_path, pull)
    point = book.resume_point(0)
    assert point is not None and point.seq == 2  # the worker RESUMEs from the cache's seq
    assert book.published(0, EPOCH) == 10  # ... while the relay dedupes at the published one

    client = await RawClient.connect(f"ws://127.0.0.1:{server.port}/")
    try:
        await client.hello()
        await client.identify(token=TOKEN, shard=[0, 1], intents=NON_PRIVILEGED_INTENTS)
        async with asyncio.timeout(5):  # it waits: the cache is not at the resume point yet
            while server.status_json()["clients_waiting"] != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        channel = {"id": "77", "type": 0, "name": "made-while-down", "guild_id": GUILD}
        # Discord replays 3..10 (published before the crash), then 11 and 12 are new
        deliver(relay, server, shard_events(3, 6, s5=("CHANNEL_CREATE", channel)))
        assert book.resume_point(0).seq == 6  # type: ignore[union-attr]
        deliver(relay, server, shard_events(7, 12))
        assert recorder.seqs == [11, 12]  # nothing published twice
        assert book.resuming == {} and book.resume_point(0).seq == 12  # type: ignore[union-attr]

        ready = await client.recv_event("READY")
        create = await client.recv_event("GUILD_CREATE")
        assert [c["id"] for c in create["d"]["channels"]] == ["77"]
        await client.recv_until(lambda p: p.get("d", {}).get("id") == "12")
        messages = [p["d"]["id"] for p in client.received if p.get("t") == "MESSAGE_CREATE"]
        assert messages == ["11", "12"]  # the replayed ones went to the cache only
        assert ready["s"] == 1
        status = server.status_json()
        assert status["events_replayed_to_cache"] == 8 and status["shards_catching_up"] == 0
        assert server.stamps[0] == (EPOCH, 12)
    finally:
        await client.close()


async def test_a_cache_saved_after_the_checkpoint_skips_what_it_has(
    endpoint: GatewayEndpoint, tmp_path: Path, pull: Any
) -> None:
    server = endpoint
    saved_cache(tmp_path, 13)  # the checkpoint says 10
    book, relay, recorder = start_range(server, tmp_path, pull)
    assert book.resume_point(0).seq == 10 and book.resuming == {}  # type: ignore[union-attr]
    client = await RawClient.connect(f"ws://127.0.0.1:{server.port}/")
    try:
        await client.ready(token=TOKEN, shard=[0, 1], intents=NON_PRIVILEGED_INTENTS)
        channel = {"id": "78", "type": 0, "name": "again", "guild_id": GUILD}
        deliver(relay, server, shard_events(11, 15, s12=("CHANNEL_CREATE", channel)))
        assert recorder.seqs == [11, 12, 13, 14, 15]  # published again (rule 8: at least once)
        await client.recv_until(lambda p: p.get("d", {}).get("id") == "15")
        sent = [
            p["d"]["id"]
            for p in client.received
            if p.get("t") in ("MESSAGE_CREATE", "CHANNEL_CREATE")
        ]
        assert sent == ["14", "15"]  # 11-13: the cache (and so the client's READY) had them
        entry = server.cache.guild(0, int(GUILD))
        assert entry is not None and 78 not in entry.channels  # not applied twice
    finally:
        await client.close()


async def test_content_is_blanked_only_for_clients_without_message_content(
    endpoint: GatewayEndpoint, tmp_path: Path, pull: Any
) -> None:
    server = endpoint
    saved_cache(tmp_path, 10)
    _, relay, _ = start_range(server, tmp_path, pull)
    url = f"ws://127.0.0.1:{server.port}/"
    plain, privileged = await RawClient.connect(url), await RawClient.connect(url)
    try:
        await plain.ready(token=TOKEN, shard=[0, 1], intents=NON_PRIVILEGED_INTENTS)
        await privileged.ready(
            token=TOKEN, shard=[0, 1], intents=NON_PRIVILEGED_INTENTS | Intent.MESSAGE_CONTENT
        )
        base = {"guild_id": GUILD, "channel_id": "9", "content": "secret", "embeds": [{"a": 1}]}
        deliver(
            relay,
            server,
            shard_events(
                11,
                13,
                s11=("MESSAGE_CREATE", {**base, "id": "a", "author": {"id": "5"}}),
                s12=("MESSAGE_CREATE", {**base, "id": "b", "mentions": [{"id": BOT}]}),
                s13=("MESSAGE_CREATE", {**base, "id": "c", "author": {"id": "5"}}),
            ),
        )
        for raw in (plain, privileged):
            await raw.recv_until(lambda p: p.get("d", {}).get("id") == "c")
        got = {p["d"]["id"]: p["d"] for p in plain.received if p.get("t") == "MESSAGE_CREATE"}
        assert (got["a"]["content"], got["a"]["embeds"]) == ("", [])
        assert got["b"]["content"] == "secret"  # it mentions the bot
        assert got["c"]["content"] == ""
        full = [p["d"] for p in privileged.received if p.get("t") == "MESSAGE_CREATE"]
        assert [d["content"] for d in full] == ["secret"] * 3
    finally:
        await plain.close()
        await privileged.close()


async def test_a_save_streams_a_consistent_snapshot_while_events_wait(
    endpoint: GatewayEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save writes the shard as it was at its stamp; an event handed over meanwhile
    waits for the pump and is in the next save."""
    server = endpoint
    monkeypatch.setattr(endpoint_server, "SAVE_CHUNK_BYTES", 4000)  # many pieces

    async def send(shard_id: int, payload: bytes) -> None:
        return None

    server.attach_owner(send, 1, [0])
    guilds = [str(555000000000000100 + i) for i in range(30)]
    ready = {"user": {"id": BOT, "username": "bot"}, "guilds": [{"id": g} for g in guilds]}
    server.tap.add(0, EPOCH, 1, [dispatch("READY", 1, ready)])
    server.tap.add(
        0,
        EPOCH,
        2,
        [
            dispatch("GUILD_CREATE", 2 + i, {"id": g, "name": "x" * 500, "channels": []})
            for i, g in enumerate(guilds)
        ],
    )
    server.tap.flush()
    async with asyncio.timeout(5):
        while server.stamps.get(0) != (EPOCH, 31):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    before = server.cache.guild_creates(0)
    path = tmp_path / "gateway-cache.msgpack"
    saving = asyncio.create_task(server.save(path))
    async with asyncio.timeout(5):  # the save packs the shard: the pump waits
        while server._pump_free.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0)
    channel = {"id": "9", "type": 0, "name": "later", "guild_id": guilds[0]}
    server.tap.add(0, EPOCH, 32, [dispatch("CHANNEL_CREATE", 32, channel)])
    server.tap.flush()
    assert await saving == 1
    saved = load_cache(path)
    assert (saved.shards[0].epoch, saved.shards[0].seq) == (EPOCH, 31)
    back = GuildCache()
    back.load_shard(0, saved.shards[0].data)
    assert back.guild_creates(0) == before
    async with asyncio.timeout(5):
        while server.stamps.get(0) != (EPOCH, 32):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert server.status_json()["cache"]["saves"] == 1


async def test_a_save_stuck_on_the_disk_is_abandoned_and_events_flow_again(
    endpoint: GatewayEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = endpoint
    monkeypatch.setattr(endpoint_server, "SAVE_CHUNK_BYTES", 100)
    monkeypatch.setattr(endpoint_server, "SAVE_WRITE_TIMEOUT_S", 0.05)
    write = CacheWriter.write

    def slow_write(self: CacheWriter, data: bytes) -> None:
        time.sleep(0.3)  # a stuck disk
        write(self, data)

    monkeypatch.setattr(CacheWriter, "write", slow_write)

    async def send(shard_id: int, payload: bytes) -> None:
        return None

    server.attach_owner(send, 1, [0])
    ready = {"user": {"id": BOT, "username": "bot"}, "guilds": [{"id": GUILD}]}
    server.tap.add(
        0,
        EPOCH,
        1,
        [dispatch("READY", 1, ready), dispatch("GUILD_CREATE", 2, {"id": GUILD, "name": "g"})],
    )
    server.tap.flush()
    async with asyncio.timeout(5):
        while server.stamps.get(0) != (EPOCH, 2):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    saving = asyncio.create_task(server.save(tmp_path / "gateway-cache.msgpack"))
    with pytest.raises(Exception, match="a write took over"):
        await saving
    server.tap.add(0, EPOCH, 3, [dispatch("MESSAGE_CREATE", 3, {"id": "1", "guild_id": GUILD})])
    server.tap.flush()
    async with asyncio.timeout(2):  # the pump is not held any more
        while server.stamps.get(0) != (EPOCH, 3):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # the abandoned write ends, its temporary file is removed
    assert os.listdir(tmp_path) == []
