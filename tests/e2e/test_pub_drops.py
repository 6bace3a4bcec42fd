"""``cluster up`` with a slow PUB subscriber: /metrics counts exactly the events it missed.

The issue's test (DESIGN.md rule 3: drops at a slow subscriber's high-water
mark are counted per event): a real SUB socket that reads slowly, its misses
counted from the ``(shard_id, seq)`` it did not get against the simulator's
record, compared with ``titanium_relay_dropped_total{reason="pub_hwm"}``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.conftest import SimFactory
from tests.e2e.cluster_process import clusters, http_get, wait_http
from tests.e2e.test_up import StartCluster, all_ready, args_for, short_dir
from tests.integration.test_publisher import SlowReader

__all__ = ["clusters", "short_dir"]

pytestmark = pytest.mark.timeout(90)

PUB_HWM = 500


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


async def test_a_slow_subscriber_misses_exactly_the_events_metrics_count(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path
) -> None:
    sim = await sim_factory(shards=2, identify_window_s=0.05)
    run = await clusters(*args_for(sim, short_dir, "--pub-hwm", str(PUB_HWM)))
    url = await all_ready(run)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 10)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"ipc://{short_dir}/pub")
    slow = SlowReader(sock, pause_s=0.0003)
    try:
        await wait_http(f"{url}/status", lambda _, b: b["relay"]["subscribers"] == 1, 10)
        before = len(sim.record.dispatches)  # READY and GUILD_CREATE, published before it came
        slow.start()
        for _ in range(8):
            for shard_id in (0, 1):
                sim.emit(shard_id, 2500)
            await asyncio.sleep(0.2)
        total = len(sim.record.dispatches)
        await wait_http(f"{url}/status", lambda _, b: b["relay"]["published"] >= total, 30)
        async with asyncio.timeout(60):
            while time.monotonic() - slow.last_at < 1.0:  # noqa: ASYNC110 (a thread reads)
                await asyncio.sleep(0.1)
    finally:
        slow.stopping.set()
        await asyncio.to_thread(slow.join, 5)
        sock.close(0)
        context.term()
    expected = {(d.shard_id, d.seq) for d in sim.record.dispatches[before:]}
    got = slow.keys
    assert len(got) == len(set(got)), "duplicates"
    assert set(got) <= expected
    missed = len(expected - set(got))
    _, body = await http_get(f"{url}/status")
    _, text = await http_get(f"{url}/metrics")
    counted = metric(text, 'titanium_relay_dropped_total{reason="pub_hwm"}')
    assert missed > 0, "the subscriber kept up: no drop to count"
    assert counted == missed == body["relay"]["pub_dropped"]
    assert body["relay"]["pub_disconnected_dropped"] == 0
    stats: Any = body["relay"]
    assert stats["published"] == total
