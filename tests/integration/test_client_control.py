"""titanium_client's commands against a real ``cluster.control.ControlServer`` and raw ROUTERs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import zmq
import zmq.asyncio

from cluster.control import ControlServer
from protocol.sharding import shard_for_guild
from titanium_client import (
    CommandRefusedError,
    CommandTimeoutError,
    ControlCluster,
    InvalidCommandError,
    ReplyFormatError,
    connect,
)

pytestmark = pytest.mark.timeout(20)

TOTAL = 16
LOCAL = range(12)  # shards 12-15 run on another host
GUILD = 81384788765712384  # on shard 2 of 16


@dataclass
class Recorder:
    """The supervisor's ``send_command`` as the control server calls it."""

    calls: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    not_running: set[int] = field(default_factory=set)

    async def send(self, shard_id: int, payload: bytes) -> None:
        await asyncio.sleep(0)
        if shard_id in self.not_running:
            raise LookupError(f"shard {shard_id} is not running")
        self.calls.append((shard_id, orjson.loads(payload)))


@pytest.fixture
async def served() -> AsyncIterator[tuple[ControlServer, Recorder]]:
    recorder = Recorder()
    server = ControlServer("tcp://127.0.0.1:0", TOTAL, LOCAL, recorder.send)
    await server.start()
    try:
        yield server, recorder
    finally:
        await server.stop()


async def test_typed_helpers_reach_the_right_shards(
    served: tuple[ControlServer, Recorder],
) -> None:
    server, recorder = served
    async with connect(server.endpoint) as cluster:
        assert isinstance(cluster, ControlCluster)
        shards = await cluster.update_presence("idle", [{"name": "the shards", "type": 3}])
        assert shards == tuple(LOCAL)
        assert await cluster.update_voice_state(GUILD, 1234) == (shard_for_guild(GUILD, TOTAL),)
        assert await cluster.request_guild_members(GUILD, user_ids=[1, "2"], nonce="n1") == (
            shard_for_guild(GUILD, TOTAL),
        )
        assert await cluster.send(3, recorder.calls[0][1]["d"], shard_id=7) == (7,)
    presence = [d for s, d in recorder.calls if d["op"] == 3]
    assert len(presence) == len(LOCAL) + 1
    assert presence[0]["d"] == {
        "since": None,
        "activities": [{"name": "the shards", "type": 3}],
        "status": "idle",
        "afk": False,
    }
    voice = next(d for _, d in recorder.calls if d["op"] == 4)
    assert voice["d"] == {
        "guild_id": str(GUILD),
        "channel_id": "1234",
        "self_mute": False,
        "self_deaf": False,
    }
    members = next((s, d) for s, d in recorder.calls if d["op"] == 8)
    assert members == (
        2,
        {"op": 8, "d": {"guild_id": str(GUILD), "user_ids": ["1", "2"], "nonce": "n1"}},
    )


async def test_refusals_become_typed_errors(served: tuple[ControlServer, Recorder]) -> None:
    server, recorder = served
    recorder.not_running.add(5)
    presence = {"since": None, "activities": [], "status": "online", "afk": False}
    async with ControlCluster(server.endpoint) as cluster:
        with pytest.raises(CommandRefusedError, match="not run by this supervisor") as remote:
            await cluster.send(3, presence, shard_id=13)
        assert remote.value.shard_ids == ()
        with pytest.raises(CommandRefusedError, match="unknown shard 99"):
            await cluster.send(3, presence, shard_id=99)
        with pytest.raises(CommandRefusedError, match="op 2"):
            await cluster.send(2, {"token": "x"}, shard_id=0)
        with pytest.raises(CommandRefusedError, match="shard 5") as partial:
            await cluster.send(3, presence, all=True)
        assert partial.value.shard_ids == tuple(s for s in LOCAL if s != 5)
        # the connection is still usable after refusals
        assert await cluster.send(3, presence, shard_id=0) == (0,)


async def test_bad_commands_are_refused_before_sending() -> None:
    async with ControlCluster("tcp://127.0.0.1:9") as cluster:  # nothing listens: never sent
        with pytest.raises(InvalidCommandError, match="exactly one target"):
            await cluster.send(3, {}, shard_id=1, guild_id=2)
        with pytest.raises(InvalidCommandError, match="exactly one target"):
            await cluster.send(3, {})
        with pytest.raises(InvalidCommandError, match="JSON"):
            await cluster.send(3, {"x": {1, 2}}, shard_id=0)
        with pytest.raises(InvalidCommandError, match="status"):
            await cluster.update_presence("sleeping")
        with pytest.raises(InvalidCommandError, match="guild_id"):
            await cluster.update_voice_state("not-a-snowflake", None)


Replier = Callable[[int, bytes], Awaitable[list[bytes] | None]]


async def raw_router(reply: Replier) -> tuple[str, asyncio.Task[None], zmq.asyncio.Context]:
    """A ROUTER on 127.0.0.1:0 answering request n with ``reply(n, body)`` (None: no answer)."""
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    async def serve() -> None:
        n = 0
        try:
            while True:
                peer, delimiter, body = await sock.recv_multipart()
                assert delimiter == b""
                n += 1
                frames = await reply(n, body)
                if frames is not None:
                    await sock.send_multipart([peer, *frames])
        finally:
            sock.close(0)

    return endpoint, asyncio.create_task(serve()), context


async def stop(task: asyncio.Task[None], context: zmq.asyncio.Context) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    context.term()


async def test_malformed_replies_are_reply_format_errors() -> None:
    replies = [
        [b"", b"not json"],
        [b"", b"[1, 2]"],
        [b"", b'{"ok": "yes"}'],
        [b"", b'{"ok": true, "shard_ids": ["1"]}'],
        [b"", b"{}", b"extra"],
        [b"", b'{"ok": false, "error": "nope", "kind": "not_local"}'],
        [b"", b'{"ok": true, "shard_ids": [3]}'],
    ]

    async def reply(n: int, body: bytes) -> list[bytes]:
        return replies[n - 1]

    endpoint, task, context = await raw_router(reply)
    try:
        async with ControlCluster(endpoint) as cluster:
            for _ in range(5):
                with pytest.raises(ReplyFormatError):
                    await cluster.send(3, {}, shard_id=3)
            with pytest.raises(CommandRefusedError) as refused:
                await cluster.send(3, {}, shard_id=3)
            assert (refused.value.reason, refused.value.kind) == ("nope", "not_local")
            assert await cluster.send(3, {}, shard_id=3) == (3,)
    finally:
        await stop(task, context)


async def test_a_late_reply_never_answers_the_next_request() -> None:
    async def reply(n: int, body: bytes) -> list[bytes]:
        request = orjson.loads(body)
        if n == 1:
            await asyncio.sleep(0.4)  # after the client gave up
        return [b"", orjson.dumps({"ok": True, "shard_ids": [request["shard_id"]]})]

    endpoint, task, context = await raw_router(reply)
    try:
        async with ControlCluster(endpoint, timeout=0.2) as cluster:
            with pytest.raises(CommandTimeoutError) as timed_out:
                await cluster.send(3, {}, shard_id=1)
            assert timed_out.value.timeout == 0.2
            await asyncio.sleep(0.3)  # the late reply for shard 1 has been sent by now
            assert await cluster.send(3, {}, shard_id=2) == (2,)
    finally:
        await stop(task, context)


async def test_no_cluster_at_all_is_a_timeout() -> None:
    async with ControlCluster("tcp://127.0.0.1:9", timeout=0.2) as cluster:
        with pytest.raises(CommandTimeoutError):
            await cluster.send(3, {}, shard_id=0)
