"""The gateway endpoint in process, fed through its relay tap: filters, nonces, overload.

A :class:`cluster.endpoint.server.GatewayEndpoint` on 127.0.0.1:0 with one shard
and a recording ``send_command``; events go in as the relay hands them over
(``tap.add`` + ``tap.flush``), raw clients (``tests.conftest.RawClient``) read
what comes out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from cluster.endpoint import server as endpoint_server
from cluster.endpoint.server import GatewayEndpoint
from cluster.endpoint.settings import GatewaySettings
from protocol.intents import NON_PRIVILEGED_INTENTS
from tests.conftest import RawClient

TOKEN = "bot-token-for-the-test"
BOT = "1234567890123456789"
GUILD = "555000000000000001"


def dispatch(t: str, seq: int, d: Any) -> tuple[bytes, bytes]:
    """(topic, payload) as the relay has them, in Discord's key order."""
    return t.encode(), b'{"t":"%s","s":%d,"op":0,"d":%s}' % (t.encode(), seq, orjson.dumps(d))


class Feed:
    def __init__(self, endpoint: GatewayEndpoint) -> None:
        self.endpoint = endpoint
        self.seq = 0

    def __call__(self, *events: tuple[str, Any]) -> None:
        run = []
        for t, d in events:
            self.seq += 1
            run.append(dispatch(t, self.seq, d))
        self.endpoint.tap.add(0, 7, self.seq - len(run) + 1, run)
        self.endpoint.tap.flush()


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[GatewayEndpoint, Feed, list[bytes]]]:
    server = GatewayEndpoint(GatewaySettings("127.0.0.1", 0), TOKEN, 1, NON_PRIVILEGED_INTENTS)
    sent: list[bytes] = []

    async def send(shard_id: int, payload: bytes) -> None:
        sent.append(payload)

    await server.start()
    server.attach_owner(send, 1, [0])
    feed = Feed(server)
    feed(
        ("READY", {"user": {"id": BOT, "username": "bot"}, "guilds": [{"id": GUILD}], "v": 10}),
        ("GUILD_CREATE", {"id": GUILD, "name": "g", "channels": [], "roles": [], "members": []}),
    )
    try:
        yield server, feed, sent
    finally:
        await server.stop()


async def client(server: GatewayEndpoint, intents: int) -> RawClient:
    raw = await RawClient.connect(f"ws://127.0.0.1:{server.port}/")
    await raw.ready(token=TOKEN, shard=[0, 1], intents=intents)
    return raw


def names(raw: RawClient) -> list[str]:
    return [p["t"] for p in raw.received if p.get("op") == 0]


async def test_each_client_gets_what_its_intents_take(
    endpoint: tuple[GatewayEndpoint, Feed, list[bytes]],
) -> None:
    server, feed, _ = endpoint
    guild_only = await client(server, 1 << 9)  # GUILD_MESSAGES
    dm_only = await client(server, 1 << 12)  # DIRECT_MESSAGES
    everything = await client(server, NON_PRIVILEGED_INTENTS)
    try:
        feed(
            ("MESSAGE_CREATE", {"id": "1", "guild_id": GUILD, "channel_id": "9"}),
            ("MESSAGE_CREATE", {"id": "2", "channel_id": "8"}),  # a DM
            ("TYPING_START", {"channel_id": "9", "guild_id": GUILD}),
            ("INTERACTION_CREATE", {"id": "3"}),  # no intent: everyone
            ("RESUMED", {}),  # the shard's own: nobody
            ("MESSAGE_CREATE", {"id": "4", "guild_id": GUILD, "channel_id": "9"}),
        )
        for raw, count in ((guild_only, 4), (dm_only, 3), (everything, 7)):
            await raw.recv_until(lambda p, r=raw, n=count: len(names(r)) >= n)  # type: ignore[misc]
        feed(("INTERACTION_CREATE", {"id": "end"}))  # after it, nothing else may have come
        for raw in (guild_only, dm_only, everything):
            await raw.recv_event("INTERACTION_CREATE")
            assert raw.received[-1]["d"]["id"] == "end"
            raw.received.pop()
        assert names(guild_only) == [
            "READY",
            "MESSAGE_CREATE",
            "INTERACTION_CREATE",
            "MESSAGE_CREATE",
        ]
        assert names(dm_only) == ["READY", "MESSAGE_CREATE", "INTERACTION_CREATE"]
        assert [p["d"]["id"] for p in dm_only.received if p.get("t") == "MESSAGE_CREATE"] == ["2"]
        assert names(everything) == [
            "READY",
            "GUILD_CREATE",
            "MESSAGE_CREATE",
            "MESSAGE_CREATE",
            "TYPING_START",
            "INTERACTION_CREATE",
            "MESSAGE_CREATE",
        ]
        # each client's own numbering, no gap
        for raw in (guild_only, dm_only, everything):
            seqs = [p["s"] for p in raw.received if p.get("op") == 0]
            assert seqs == list(range(1, len(seqs) + 1))
    finally:
        for raw in (guild_only, dm_only, everything):
            await raw.close()


async def test_member_chunks_follow_the_endpoints_nonce_back_to_the_asker(
    endpoint: tuple[GatewayEndpoint, Feed, list[bytes]],
) -> None:
    server, feed, sent = endpoint
    asker = await client(server, NON_PRIVILEGED_INTENTS)
    other = await client(server, NON_PRIVILEGED_INTENTS)
    try:
        await asker.send(
            {"op": 8, "d": {"guild_id": GUILD, "query": "a", "limit": 5, "nonce": "x"}}
        )
        await asker.heartbeat()
        await asker.recv_op(11)
        [command] = sent
        ours = orjson.loads(command)["d"]["nonce"]
        assert ours != "x" and ours.startswith("tc")
        chunk = {"guild_id": GUILD, "members": [], "chunk_index": 0, "chunk_count": 1}
        feed(
            ("GUILD_MEMBERS_CHUNK", {**chunk, "nonce": "someone-else"}),  # not ours: nobody
            ("GUILD_MEMBERS_CHUNK", {**chunk, "nonce": ours}),
            ("MESSAGE_CREATE", {"id": "5", "guild_id": GUILD}),
        )
        got = await asker.recv_event("GUILD_MEMBERS_CHUNK")
        assert got["d"]["nonce"] == "x"
        await other.recv_event("MESSAGE_CREATE")
        assert "GUILD_MEMBERS_CHUNK" not in names(other)
        # a bad command is one close, with the reason
        await other.send({"op": 3, "d": {"status": "nope"}})
        closed = await other.expect_close()
        assert closed.code == 4001
    finally:
        await asker.close()
        await other.close()


async def test_an_endpoint_far_behind_the_relay_keeps_the_cache_and_restarts_clients(
    endpoint: tuple[GatewayEndpoint, Feed, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, feed, _ = endpoint
    monkeypatch.setattr(endpoint_server, "MAX_PENDING_EVENTS", 1000)
    raw = await client(server, NON_PRIVILEGED_INTENTS)
    try:
        # 3000 events handed over before the pump runs once: more than the bound
        server.tap.add(
            0,
            7,
            feed.seq + 1,
            [dispatch("MESSAGE_CREATE", feed.seq + 1 + i, {"id": str(i)}) for i in range(3000)]
            + [
                dispatch(
                    "CHANNEL_CREATE", feed.seq + 3001, {"id": "77", "type": 0, "guild_id": GUILD}
                )
            ],
        )
        feed.seq += 3001
        server.tap.flush()
        invalid = await raw.recv_op(9)
        assert invalid["d"] is False
        assert server.stats.overloads == 1 and server.tap.events == 0
        entry = server.cache.guild(0, int(GUILD))
        assert entry is not None and 77 in entry.channels  # the cache kept up
    finally:
        await raw.close()
