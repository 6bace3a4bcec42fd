"""titanium_client against a real ``cluster up`` process: events on PUB, commands on control.

The cluster runs against a simulator in the test (so the simulator's record says
what was sent); every endpoint is an ipc:// path in a private directory.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SimFactory
from tests.e2e.cluster_process import clusters, wait_http
from titanium_client import Event, connect, subscribe

__all__ = ["clusters"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for ipc:// paths (a socket path must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tc-client-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_events_and_commands_through_a_real_cluster(
    sim_factory: SimFactory, clusters: Any, short_dir: Path
) -> None:
    sim = await sim_factory(shards=2, identify_window_s=0.05, event_rate=100.0)
    gaps: list[tuple[int, str | None, int, int]] = []
    received: list[Event] = []
    changed = asyncio.Event()

    async def consume() -> None:
        async with sub:
            async for event in sub:
                received.append(event)
                changed.set()

    async def until(predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                changed.clear()
                await changed.wait()

    run = await clusters(
        "--api-url", sim.rest_url,
        "--token", sim.config.token,
        "--compress", "none",
        "--health", "127.0.0.1:0",
        "--pub", f"ipc://{short_dir}/pub",
        "--control", f"ipc://{short_dir}/control",
        "--state-dir", str(short_dir / "state"),
        "--identify-interval", "0.1",
    )  # fmt: skip
    listening = await run.listening()
    # Subscribed once the PUB is bound: a SUB connecting to an ipc path that does not
    # exist yet backs off between retries and could join after the first events.
    sub = subscribe(listening["pub"], on_gap=lambda *gap: gaps.append(gap))
    consumer = asyncio.create_task(consume())
    await wait_http(f"{listening['http']}/health", lambda status, _: status == 200, 20)
    await until(lambda: len(received) >= 100)

    async with connect(f"ipc://{short_dir}/control") as cluster:
        assert await cluster.update_presence("dnd") == (0, 1)
    await sim.record.wait_for(
        lambda r: {c.shard_id for c in r.commands if c.op == 3} == {0, 1}, timeout=10
    )

    sim.set_event_rate(0)
    expected = {(d.shard_id, d.seq): d for d in sim.record.dispatches}
    await until(lambda: {(e.shard_id, e.seq) for e in received} == set(expected))
    sub.stop()
    await consumer

    assert len(received) == len(expected)  # each exactly once
    assert gaps == [] and sub.stats.gaps == 0 and sub.stats.duplicates == 0
    for event in received:
        record = expected[(event.shard_id, event.seq)]
        assert event.name == record.t
        assert event.session_id in (None, record.session_id)
        assert event.payload["s"] == event.seq
    assert sum(e.name == "READY" for e in received) == 2
    assert sub.stats.delivered == len(received)
