"""discord.py under the simulator's seeded chaos: it keeps resuming and sees every event exactly once.

The chaos kinds are those a Discord gateway really produces (op 7, resumable
closes, dropped TCP connections, heartbeat requests, unknown opcodes); the
events produced while discord.py was away reach it only by RESUME replay.
"""

from __future__ import annotations

import asyncio
import contextlib

import discord
import orjson
import pytest

from simulator import IdentifyOutcome, ResumeOutcome
from tests.conftest import SimFactory
from tests.integration.test_discordpy_fidelity import TOKEN, pointed_at, running

CHAOS_KINDS = ("reconnect", "close", "drop", "heartbeat_request", "unknown_opcode")


@pytest.mark.timeout(90)
async def test_discordpy_survives_chaos_with_exactly_once_delivery(sim_factory: SimFactory) -> None:
    sim = await sim_factory(
        token=TOKEN,
        guilds=2,
        event_rate=100.0,
        heartbeat_interval_ms=1000,
        chaos_rate=0.0,
        chaos_seed=2024,
        chaos_kinds=CHAOS_KINDS,
    )
    client = discord.Client(
        intents=discord.Intents.default(), guild_ready_timeout=0.2, enable_debug_events=True
    )
    seen: list[int] = []
    ready = asyncio.Event()
    progressed = asyncio.Event()

    @client.event
    async def on_ready() -> None:
        ready.set()

    @client.event
    async def on_socket_raw_receive(raw: str) -> None:
        payload = orjson.loads(raw)
        d = payload.get("d")
        if payload.get("op") == 0 and isinstance(d, dict) and "_sim_event_id" in d:
            seen.append(d["_sim_event_id"])
            progressed.set()

    with pointed_at(sim):
        async with running(client) as task:
            async with asyncio.timeout(15):
                await ready.wait()
            sim.set_chaos_rate(3.0)
            await sim.record.wait_for(lambda r: len(r.faults) >= 8, timeout=30)
            sim.set_chaos_rate(0.0)
            sim.set_event_rate(0.0)
            # once no fault is pending, the client catches up with everything produced
            sessions = {r.session_id for r in sim.record.sent_events(0)}
            assert len(sessions) == 1, "discord.py had to start a new session"
            expected = [r.event_id for r in sim.record.sent_events(0) if r.event_id is not None]
            async with asyncio.timeout(30):
                while len(set(seen)) < len(expected):
                    progressed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(progressed.wait(), 1.0)
            assert not task.done()

    assert len(seen) == len(set(seen)), "an event reached discord.py twice"
    assert sorted(seen) == sorted(expected)
    assert all(f.chaos for f in sim.record.faults) and len(sim.record.faults) >= 8
    assert [i.outcome for i in sim.record.identifies] == [IdentifyOutcome.ACCEPTED]
    resumes = sim.record.resumes
    assert resumes and all(r.outcome is ResumeOutcome.ACCEPTED for r in resumes)
    assert not sim.record.violations
