"""The supervisor in this process (real worker processes): loopback tcp, commands, request_stop."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson
import pytest

from cluster.config import SupervisorConfig
from cluster.supervisor import ShardNotRunningError, Supervisor, UnknownShardError
from protocol.compression import Compression
from tests.conftest import SimFactory

pytestmark = pytest.mark.timeout(60)


async def test_over_loopback_tcp_commands_reach_the_right_shard(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    sim = await sim_factory(shards=2, identify_window_s=0.05)
    config = SupervisorConfig(
        token=sim.config.token,
        api_url=sim.rest_url,
        compression=Compression.NONE,
        pub="tcp://127.0.0.1:0",
        control="tcp://127.0.0.1:0",
        health_port=0,
        state_dir=tmp_path / "state",
        identify_interval_s=0.1,
        report_interval_s=0.2,
        private_transport="tcp",
    )
    supervisor = Supervisor(config)
    with pytest.raises(ShardNotRunningError):
        await supervisor.send_command(0, b"{}")  # not started
    run = asyncio.create_task(supervisor.run())
    try:
        async with asyncio.timeout(20):
            while supervisor.status is None or supervisor.status.shards_ready < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert supervisor.publisher is not None
        assert supervisor.publisher.endpoint.startswith("tcp://127.0.0.1:")
        with pytest.raises(UnknownShardError):
            await supervisor.send_command(7, b"{}")
        presence: dict[str, object] = {
            "since": None,
            "activities": [],
            "status": "idle",
            "afk": False,
        }
        await supervisor.send_command(1, orjson.dumps({"op": 3, "d": presence}))
        await sim.record.wait_for(
            lambda r: any(c.op == 3 and c.shard_id == 1 for c in r.commands), timeout=5
        )
        assert not [c for c in sim.record.commands if c.shard_id == 0]
        supervisor.request_stop()
        await asyncio.wait_for(asyncio.shield(run), 15)
    finally:
        if not run.done():
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
    assert (tmp_path / "state" / "sessions.json").exists()
    with pytest.raises(ShardNotRunningError):
        await supervisor.send_command(1, b"{}")
