"""The control socket on real ZeroMQ sockets: REQ and DEALER clients, every ok and refusal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import zmq
import zmq.asyncio

from cluster.control import MAX_FRAME_BYTES, MAX_REQUEST_BYTES, ControlServer
from protocol.sharding import shard_for_guild

pytestmark = pytest.mark.timeout(30)

TOTAL = 16
LOCAL = range(12)  # shards 12-15 run on another host
PRESENCE: dict[str, Any] = {"since": None, "activities": [], "status": "idle", "afk": False}


def voice(guild_id: str) -> dict[str, Any]:
    return {"guild_id": guild_id, "channel_id": None, "self_mute": False, "self_deaf": False}


@dataclass
class SendRecorder:
    """The supervisor's ``send_command`` as the control server sees it."""

    calls: list[tuple[int, bytes]] = field(default_factory=list)
    not_running: set[int] = field(default_factory=set)

    async def send(self, shard_id: int, payload: bytes) -> None:
        await asyncio.sleep(0)  # a real await point, as a socket send has
        if shard_id in self.not_running:
            raise LookupError(f"shard {shard_id} is not running")
        self.calls.append((shard_id, payload))


@dataclass
class Served:
    server: ControlServer
    recorder: SendRecorder
    context: zmq.asyncio.Context

    def socket(self, kind: int) -> zmq.asyncio.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.server.endpoint)
        return sock

    async def request(self, body: Any) -> dict[str, Any]:
        """One REQ round trip; ``body`` is sent as is when bytes, else as JSON."""
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        sock = self.socket(zmq.REQ)
        try:
            await sock.send(raw)
            async with asyncio.timeout(5):
                reply: dict[str, Any] = orjson.loads(await sock.recv())
            return reply
        finally:
            sock.close(0)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    recorder = SendRecorder()
    server = ControlServer("tcp://127.0.0.1:0", TOTAL, LOCAL, recorder.send)
    await server.start()
    context = zmq.asyncio.Context()
    try:
        yield Served(server, recorder, context)
    finally:
        await server.stop()
        context.term()


async def test_a_command_for_one_shard_reaches_send_as_its_gateway_payload(served: Served) -> None:
    assert served.server.endpoint.startswith("tcp://127.0.0.1:")
    reply = await served.request({"op": 3, "d": PRESENCE, "shard_id": 4})
    assert reply == {"ok": True, "shard_ids": [4]}
    ((shard_id, payload),) = served.recorder.calls
    assert shard_id == 4
    assert orjson.loads(payload) == {"op": 3, "d": PRESENCE}


async def test_guild_ids_route_by_the_shard_formula(served: Served) -> None:
    guilds = [str((k << 22) | (k * 7919 % 4096)) for k in range(12)] + ["41771983423143937"]
    guilds = [g for g in guilds if shard_for_guild(g, TOTAL) in LOCAL]
    for guild in guilds:
        reply = await served.request({"op": 4, "d": voice(guild), "guild_id": guild})
        assert reply == {"ok": True, "shard_ids": [(int(guild) >> 22) % TOTAL]}
    assert [call[0] for call in served.recorder.calls] == [(int(g) >> 22) % TOTAL for g in guilds]
    assert [orjson.loads(call[1])["d"]["guild_id"] for call in served.recorder.calls] == guilds
    assert len({call[0] for call in served.recorder.calls}) >= 10  # many shards, not one


async def test_all_goes_to_every_local_shard_in_order(served: Served) -> None:
    reply = await served.request({"op": 3, "d": PRESENCE, "all": True})
    assert reply == {"ok": True, "shard_ids": list(LOCAL)}
    assert [c[0] for c in served.recorder.calls] == list(LOCAL)
    assert len({c[1] for c in served.recorder.calls}) == 1  # one encoding for all


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"op": 3,', "not valid JSON"),
        (b"\x00\x01garbage", "not valid JSON"),
        (b"[3, 4]", "must be a JSON object"),
        ({"op": 2, "d": {"token": "x"}, "shard_id": 0}, "op 2 is not a command"),
        ({"op": 6, "d": {}, "shard_id": 0}, "op 6 is not a command"),
        ({"op": 3, "d": PRESENCE}, "no target"),
        ({"op": 3, "d": PRESENCE, "shard_id": 1, "guild_id": "1"}, "2 targets"),
        ({"op": 3, "d": PRESENCE, "shard_id": 16}, "unknown shard 16"),
        ({"op": 3, "d": PRESENCE, "shard_id": 13}, "not run by this supervisor"),
        ({"op": 4, "d": voice("1"), "guild_id": str(14 << 22)}, "shard 14 is not run by this"),
        ({"op": 4, "d": voice("1"), "guild_id": "guild"}, "snowflake"),
        (
            {
                "op": 3,
                "d": {**PRESENCE, "activities": [{"name": "y" * 5000, "type": 0}]},
                "shard_id": 0,
            },
            "over the gateway limit of 4096",
        ),
        (b" " * (MAX_REQUEST_BYTES + 1), f"over the limit of {MAX_REQUEST_BYTES}"),
    ],
)
async def test_bad_requests_get_a_reason_and_never_reach_a_shard(
    served: Served, body: Any, words: str
) -> None:
    reply = await served.request(body)
    assert reply["ok"] is False
    assert words in reply["error"]
    assert set(reply) == {"ok", "error"}
    assert served.recorder.calls == []
    # and the server goes on serving
    assert (await served.request({"op": 3, "d": PRESENCE, "shard_id": 0}))["ok"] is True


async def test_a_shard_that_is_not_running_gets_ok_false(served: Served) -> None:
    served.recorder.not_running = {3}
    reply = await served.request({"op": 3, "d": PRESENCE, "shard_id": 3})
    assert reply == {
        "ok": False,
        "error": "shard 3 did not take the command (LookupError: shard 3 is not running)",
    }
    # with all, the others still get it, and the reply says which did
    served.recorder.not_running = {3, 7}
    reply = await served.request({"op": 3, "d": PRESENCE, "all": True})
    assert reply["ok"] is False
    assert (
        reply["error"].startswith("shard 3 did not take the command") and "1 more" in reply["error"]
    )
    assert reply["shard_ids"] == [s for s in LOCAL if s not in (3, 7)]
    assert served.server.stats.send_failures == 3


async def test_a_send_that_hangs_times_out_and_the_server_goes_on() -> None:
    release = asyncio.Event()
    calls: list[int] = []

    async def send(shard_id: int, payload: bytes) -> None:
        if shard_id == 0:
            await release.wait()  # a worker that never takes it
        calls.append(shard_id)

    server = ControlServer("tcp://127.0.0.1:0", 2, [0, 1], send, send_timeout_s=0.2)
    await server.start()
    context = zmq.asyncio.Context()
    served = Served(server, SendRecorder(), context)
    try:
        reply = await served.request({"op": 3, "d": PRESENCE, "shard_id": 0})
        assert reply == {"ok": False, "error": "shard 0 did not take the command within 0.2 s"}
        assert await served.request({"op": 3, "d": PRESENCE, "shard_id": 1}) == {
            "ok": True,
            "shard_ids": [1],
        }
    finally:
        await server.stop()
        context.term()
    assert calls == [1]


async def test_dealer_clients_with_and_without_a_delimiter(served: Served) -> None:
    dealer = served.socket(zmq.DEALER)
    try:
        request = orjson.dumps({"op": 3, "d": PRESENCE, "shard_id": 1})
        await dealer.send_multipart([b"", request])
        async with asyncio.timeout(5):
            frames = await dealer.recv_multipart()
        assert frames[0] == b"" and orjson.loads(frames[1]) == {"ok": True, "shard_ids": [1]}
        await dealer.send_multipart([request])  # bare: the reply comes back bare
        async with asyncio.timeout(5):
            frames = await dealer.recv_multipart()
        assert len(frames) == 1 and orjson.loads(frames[0])["ok"] is True
    finally:
        dealer.close(0)
    assert [c[0] for c in served.recorder.calls] == [1, 1]


async def test_multipart_garbage_gets_an_error_and_costs_nothing_else(served: Served) -> None:
    dealer = served.socket(zmq.DEALER)
    try:
        for frames in ([b"", b"{}", b"{}"], [b"", b"a", b"b", b"c"], [b""], [b"x", b"y"]):
            await dealer.send_multipart(frames)
            async with asyncio.timeout(5):
                reply = await dealer.recv_multipart()
            body = orjson.loads(reply[-1])
            assert body["ok"] is False
            assert "one frame" in body["error"] or "not valid JSON" in body["error"]
    finally:
        dealer.close(0)
    assert served.recorder.calls == []
    assert served.server.running


async def test_a_frame_over_the_hard_limit_drops_that_peer_only(served: Served) -> None:
    dealer = served.socket(zmq.DEALER)
    try:
        await dealer.send_multipart([b"", b"x" * (MAX_FRAME_BYTES + 1)])
        # the other clients are served, and the server never answered the giant frame
        reply = await served.request({"op": 3, "d": PRESENCE, "shard_id": 2})
        assert reply == {"ok": True, "shard_ids": [2]}
        assert await dealer.poll(200) == 0
    finally:
        dealer.close(0)
    assert served.server.running
    assert served.server.stats.requests == 1  # the giant frame never became a request


async def test_requests_from_one_client_are_sent_in_order(served: Served) -> None:
    dealer = served.socket(zmq.DEALER)
    statuses = ["online", "idle", "dnd", "invisible"] * 10
    try:
        for status in statuses:
            d = {**PRESENCE, "status": status}
            await dealer.send_multipart([b"", orjson.dumps({"op": 3, "d": d, "shard_id": 5})])
        async with asyncio.timeout(5):
            replies = [orjson.loads((await dealer.recv_multipart())[1]) for _ in statuses]
    finally:
        dealer.close(0)
    assert all(r["ok"] for r in replies)
    assert [orjson.loads(p)["d"]["status"] for _, p in served.recorder.calls] == statuses


async def test_stop_releases_the_endpoint() -> None:
    recorder = SendRecorder()
    first = ControlServer("tcp://127.0.0.1:0", 1, [0], recorder.send)
    await first.start()
    endpoint = first.endpoint
    await first.stop()
    assert not first.running
    again = ControlServer(endpoint, 1, [0], recorder.send)
    await again.start()
    try:
        assert again.endpoint == endpoint
    finally:
        await again.stop()


def test_local_shards_outside_the_cluster_are_a_programming_error() -> None:
    async def send(shard_id: int, payload: bytes) -> None:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="outside"):
        ControlServer("tcp://127.0.0.1:0", 4, [3, 4], send)
