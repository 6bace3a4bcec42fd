"""Bad input costs one connection, never the worker; the send path never earns a 4008.

Against the simulator on real sockets (one case, the oversized frame, against
a tiny purpose-built gateway), asserting on what the server recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType, web

from protocol.compression import Compression, make_compressor
from simulator import Simulator
from simulator.record import ViolationKind
from tests.chaos.supervisor_harness import (
    StartGroup,
    SupervisorHarness,
    all_ready,
    harness,
    start_group,
    wait_delivered,
)
from tests.scripted_gateway import ScriptedGateway

__all__ = ["harness", "start_group"]

pytestmark = pytest.mark.timeout(60)

SimFactory = Any


async def ready_pair(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    start_group: StartGroup,
    compression: Compression = Compression.NONE,
    **sim_kw: Any,
) -> Simulator:
    sim = await sim_factory(shards=2, identify_window_s=0.05, **sim_kw)
    await start_group(sim, (0, 1), compression=compression)
    await harness.wait_for(all_ready([0, 1]), 10)
    return sim


def assert_neighbour_untouched(sim: Simulator) -> None:
    assert len(sim.record.connections_for(1)) == 1
    assert len(sim.record.accepted_identifies(1)) == 1
    assert not sim.record.resumes_for(1)


@pytest.mark.parametrize(
    ("fault", "compression"),
    [
        ("malformed_json", Compression.NONE),
        ("malformed_json", Compression.ZLIB_STREAM),
        ("truncated_frame", Compression.NONE),
        ("truncated_frame", Compression.ZLIB_STREAM),
        ("truncated_frame", Compression.ZSTD_STREAM),
    ],
)
async def test_bad_input_costs_one_connection_and_resumes(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    start_group: StartGroup,
    fault: str,
    compression: Compression,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = await ready_pair(sim_factory, harness, start_group, compression)
    sim.emit(0, 3)
    sim.emit(1, 3)
    sim.inject(0, fault)
    sim.emit(0, 3)  # whatever follows the bad frame is what reveals a truncated one
    await sim.record.wait_for(lambda r: len(r.accepted_resumes(0)) == 1, 10)
    sim.emit(0, 3)
    sim.emit(1, 3)
    await wait_delivered(sim, harness)
    (first, _second) = sim.record.connections_for(0)
    assert first.closed_by == "client" and first.close_code == 4000
    assert len(sim.record.accepted_identifies(0)) == 1
    assert_neighbour_untouched(sim)
    assert not sim.record.violations
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.shard"]
    assert any("shard 0" in m and "reconnecting to resume" in m for m in lines), lines


async def test_unknown_opcode_is_ignored_not_worth_a_reconnect(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    # Discord adds opcodes over time; dropping the connection for one would turn
    # every new server opcode into a reconnect storm. One log line, nothing else.
    sim = await ready_pair(sim_factory, harness, start_group)
    sim.inject(0, "unknown_opcode")
    sim.emit(0, 5)
    await wait_delivered(sim, harness)
    assert len(sim.record.connections_for(0)) == 1
    assert_neighbour_untouched(sim)


async def test_an_unknown_opcode_is_logged_once_per_connection(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    start_group: StartGroup,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = await ready_pair(sim_factory, harness, start_group)

    def unknown_op_lines() -> list[str]:
        return [m for r in caplog.records if "unknown opcode" in (m := r.getMessage())]

    for connection in (1, 2):
        sim.inject(0, "unknown_opcode")
        sim.inject(0, "unknown_opcode")
        sim.emit(0, 2)  # read after the two unknown opcodes: they were seen once delivered
        await wait_delivered(sim, harness)
        assert len(unknown_op_lines()) == connection, unknown_op_lines()
        if connection == 1:
            sim.inject(0, "reconnect")
            await sim.record.wait_for(lambda r: len(r.accepted_resumes(0)) == 1, 10)
    assert len(sim.record.connections_for(0)) == 2
    assert all(line.startswith("shard 0:") for line in unknown_op_lines())


async def test_a_flood_of_commands_never_earns_a_4008(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    # The simulator enforces 120 payloads per 1 s window here (60 s on Discord);
    # heartbeats every 100 ms fill 10 of them, so commands get at most 110.
    sim = await sim_factory(
        shards=1, identify_window_s=0.05, send_window_s=1.0, heartbeat_interval_ms=100
    )
    run = await start_group(sim, (0,), send_window_s=1.05)
    await harness.wait_for(all_ready([0]), 10)
    command = orjson.dumps(
        {"op": 3, "d": {"since": None, "activities": [], "status": "online", "afk": False}}
    )
    total = 300
    for _ in range(total):
        await harness.send_command(run.spec.worker_id, 0, command)
    await sim.record.wait_for(lambda r: len(r.commands) == total, 15)
    assert not sim.record.violations_of(ViolationKind.SEND_RATE_LIMIT)
    assert not sim.record.violations
    assert len(sim.record.connections_for(0)) == 1  # never closed with 4008
    # they were spread over at least three windows, not sent in one burst
    times = sorted(c.at for c in sim.record.commands)
    assert times[-1] - times[0] >= 2.0
    await harness.wait_for(lambda got: got.latest[0].commands_sent == total, 5)


async def test_an_oversized_command_is_refused_before_sending(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    sim = await sim_factory(shards=1, identify_window_s=0.05)
    run = await start_group(sim, (0,))
    await harness.wait_for(all_ready([0]), 10)
    big = orjson.dumps({"op": 3, "d": {"status": "online", "pad": "x" * 5000}})
    small = orjson.dumps(
        {"op": 3, "d": {"since": None, "activities": [], "status": "idle", "afk": False}}
    )
    await harness.send_command(run.spec.worker_id, 0, big)
    await harness.send_command(run.spec.worker_id, 0, small)
    await sim.record.wait_for(lambda r: len(r.commands) == 1, 5)
    await harness.wait_for(lambda got: got.latest[0].commands_refused == 1, 5)
    assert not sim.record.violations
    assert sim.record.commands[0].d["status"] == "idle"


# -- big frames: a purpose-built gateway that sends one huge message after READY -------


class OversizeGateway(ScriptedGateway):
    """Hello; READY for an Identify, then one huge message; RESUMED for a Resume."""

    def __init__(self, oversize: int) -> None:
        self.oversize = oversize
        self.compression = Compression.NONE
        self.received: list[dict[str, Any]] = []
        self.closes: list[int | None] = []
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False, max_msg_size=0)
        await ws.prepare(request)
        compressor = make_compressor(Compression(request.query.get("compress", "none")))

        async def send(text: str) -> None:
            if compressor is None:
                await ws.send_str(text)
            else:
                await ws.send_bytes(compressor.compress(text.encode()))

        await send('{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":45000}}')
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            payload = orjson.loads(msg.data)
            self.received.append(payload)
            self.changed.set()
            if payload["op"] == 2:
                ready = {"session_id": "s-1", "resume_gateway_url": self.url, "v": 10}
                await send(orjson.dumps({"t": "READY", "s": 1, "op": 0, "d": ready}).decode())
                pad = "x" * self.oversize
                await send('{"t":"MESSAGE_CREATE","s":2,"op":0,"d":"' + pad + '"}')
            elif payload["op"] == 6:
                await send('{"t":"RESUMED","s":2,"op":0,"d":{}}')
        self.closes.append(ws.close_code)
        return ws


@pytest.fixture
async def oversize_gateway() -> AsyncIterator[OversizeGateway]:
    gw = OversizeGateway(oversize=2 * 1024 * 1024)
    await gw.start()
    try:
        yield gw
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(gw.stop(), 5)


async def test_an_oversized_frame_costs_one_connection_and_resumes(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    start_group: StartGroup,
    oversize_gateway: OversizeGateway,
) -> None:
    sim = await sim_factory(shards=1)  # only for the fixture's parameters
    await start_group(sim, (0,), gateway_url=oversize_gateway.url, max_message_size=1024 * 1024)
    async with asyncio.timeout(10):
        while not any(p["op"] == 6 for p in oversize_gateway.received):
            oversize_gateway.changed.clear()
            await oversize_gateway.changed.wait()
    ops = [p["op"] for p in oversize_gateway.received if p["op"] != 1]
    assert ops == [2, 6]  # one IDENTIFY, then a RESUME: the session survived
    resume = next(p for p in oversize_gateway.received if p["op"] == 6)["d"]
    assert resume["session_id"] == "s-1" and resume["seq"] == 1
    assert oversize_gateway.closes and oversize_gateway.closes[0] not in (1000, 1001)
    await harness.wait_for(all_ready([0]), 5)


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZLIB_STREAM])
async def test_tens_of_megabytes_in_one_message_are_relayed(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    start_group: StartGroup,
    oversize_gateway: OversizeGateway,
    compression: Compression,
) -> None:
    oversize_gateway.oversize = 24 * 1024 * 1024
    sim = await sim_factory(shards=1)
    await start_group(sim, (0,), gateway_url=oversize_gateway.url, compression=compression)
    await harness.wait_for(lambda got: any(k[2] == 2 for k in got.events), 30)
    (payload,) = [p for (t, p) in harness.got.events.values() if t == b"MESSAGE_CREATE"]
    assert len(payload) > 24 * 1024 * 1024
    assert payload.startswith(b'{"t":"MESSAGE_CREATE","s":2,') and payload.endswith(b'"}')
    assert [p["op"] for p in oversize_gateway.received if p["op"] != 1] == [2]  # no reconnect
