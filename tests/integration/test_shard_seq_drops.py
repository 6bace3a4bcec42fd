"""Dispatches a worker does not relay are counted per reason, logged once per connection.

Against a tiny gateway of our own that numbers its dispatches the way an
independent server implementation did (READY, GUILD_CREATE and RESUMED all
``s: 0``) and breaks the numbering in every other way too (a repeated seq,
``s: null``, ``t: null``): nothing of it is relayed under a made-up seq, every
such event is in the shard's report (what /status and /metrics show), the
connection is kept, and the session still starts and resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType, web

from protocol.ipc import session_epoch
from tests.chaos.supervisor_harness import (
    StartGroup,
    SupervisorHarness,
    harness,
    start_group,
)
from tests.conftest import SimFactory
from tests.scripted_gateway import ScriptedGateway

__all__ = ["harness", "start_group"]

pytestmark = pytest.mark.timeout(60)

GUILDS = 12


def dispatch(t: str | None, s: int | None, d: Any = None) -> str:
    return orjson.dumps({"t": t, "s": s, "op": 0, "d": d or {}}).decode()


class ZeroSeqGateway(ScriptedGateway):
    """IDENTIFY: READY and 12 GUILD_CREATE at ``s: 0``, then broken and good numbering, then op 7.

    RESUME: RESUMED at ``s: 0``, then one good event.
    """

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.connections = 0
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        self.connections += 1
        await ws.send_str('{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":45000}}')
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            payload = orjson.loads(msg.data)
            self.received.append(payload)
            self.changed.set()
            if payload["op"] == 2:
                ready = {"session_id": "zero-1", "resume_gateway_url": self.url, "v": 10}
                await ws.send_str(dispatch("READY", 0, ready))
                for guild in range(GUILDS):
                    await ws.send_str(dispatch("GUILD_CREATE", 0, {"id": str(guild)}))
                for t, s in [
                    ("MESSAGE_CREATE", 1),
                    ("MESSAGE_CREATE", 2),
                    ("MESSAGE_CREATE", 2),  # repeated
                    ("MESSAGE_CREATE", None),
                    (None, 3),
                    ("MESSAGE_CREATE", 3),
                ]:
                    await ws.send_str(dispatch(t, s))
                await ws.send_str('{"t":null,"s":null,"op":7,"d":null}')
            elif payload["op"] == 6:
                await ws.send_str(dispatch("RESUMED", 0))
                await ws.send_str(dispatch("MESSAGE_CREATE", 4))
        return ws


@pytest.fixture
async def zero_gateway() -> AsyncIterator[ZeroSeqGateway]:
    gw = ZeroSeqGateway()
    await gw.start()
    try:
        yield gw
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(gw.stop(), 5)


async def test_a_server_numbering_dispatches_zero_loses_nothing_unseen(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    start_group: StartGroup,
    zero_gateway: ZeroSeqGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = await sim_factory(shards=1)  # only for the fixture's parameters
    await start_group(sim, (0,), gateway_url=zero_gateway.url)
    expected = {"seq_invalid": 1 + GUILDS + 1, "seq_not_increasing": 1}
    expected |= {"seq_missing": 1, "t_missing": 1}
    await harness.wait_for(
        lambda got: 0 in got.latest and got.latest[0].dropped == expected and got.events, 10
    )
    epoch = session_epoch("zero-1")
    await harness.wait_for(lambda got: (0, epoch, 4) in got.events, 10)
    report = harness.got.latest[0]
    # the session started and resumed as usual, from the last seq relayed
    assert report.phase == "ready" and report.session_id == "zero-1"
    assert (report.identifies, report.resumes, report.seq) == (1, 1, 4)
    resume = next(p for p in zero_gateway.received if p["op"] == 6)
    assert resume["d"]["seq"] == 3
    # only the events with a usable seq were relayed, each once, under their own seq
    assert sorted(harness.got.events) == [(0, epoch, seq) for seq in (1, 2, 3, 4)]
    assert harness.got.topics(0) == [b"MESSAGE_CREATE"] * 4
    assert not harness.got.duplicates and not harness.got.problems
    assert report.events == 4
    # broken numbering costs no reconnect: the one reconnect is the server's op 7
    assert zero_gateway.connections == 2
    # one line per reason and connection, never one per event
    lines = [r.getMessage() for r in caplog.records if "dropped dispatch" in r.getMessage()]
    reasons = [line.split("(")[1].split(";")[0] for line in lines]
    assert sorted(reasons) == sorted(
        ["seq_invalid", "seq_not_increasing", "seq_missing", "t_missing", "seq_invalid"]
    ), lines
    assert any("READY with s=0" in line for line in lines), lines
    assert any("RESUMED with s=0" in line for line in lines), lines


class LongNameGateway(ScriptedGateway):
    """IDENTIFY: READY, a dispatch whose ``t`` is 70,000 characters, then a good event."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False, max_msg_size=0)
        await ws.prepare(request)
        self.connections += 1
        await ws.send_str('{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":45000}}')
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            if orjson.loads(msg.data)["op"] == 2:
                ready = {"session_id": "long-1", "resume_gateway_url": self.url, "v": 10}
                await ws.send_str(dispatch("READY", 1, ready))
                await ws.send_str(dispatch("X" * 70_000, 2))
                await ws.send_str(dispatch("MESSAGE_CREATE", 3))
        return ws


async def test_an_event_name_too_long_to_relay_is_a_counted_drop_not_a_dead_worker(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    start_group: StartGroup,
) -> None:
    """The run format holds names up to 65,535 bytes; a longer one used to raise in the
    worker's read loop. Now: dropped and counted (``t_invalid``), its seq stands, the
    connection and the worker go on."""
    gateway = LongNameGateway()
    await gateway.start()
    try:
        sim = await sim_factory(shards=1)  # only for the fixture's parameters
        await start_group(sim, (0,), gateway_url=gateway.url)
        epoch = session_epoch("long-1")
        await harness.wait_for(lambda got: (0, epoch, 3) in got.events, 10)
        await harness.wait_for(
            lambda got: 0 in got.latest and got.latest[0].dropped == {"t_invalid": 1}, 10
        )
        assert sorted(harness.got.events) == [(0, epoch, 1), (0, epoch, 3)]
        assert gateway.connections == 1
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(gateway.stop(), 5)
