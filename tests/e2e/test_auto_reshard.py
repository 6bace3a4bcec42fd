"""``cluster up --auto-reshard``: Discord recommends more shards, the cluster reshards by itself.

Real processes: the simulator (its ``GET /gateway/bot`` recommendation raised at
run time, as Discord raises it when a bot grows), ``cluster up --auto-reshard``
with a half-second check instead of an hour, and a ZeroMQ subscriber. The
cluster runs the 4 shards recommended at its start, then reshards to the 8
recommended later, once: the marker once on PUB, ``/status`` says switched, and
every event generated meanwhile arrives exactly once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SimFactory
from tests.e2e.cluster_process import Subscriber, clusters, http_get, subscribers, wait_http
from tests.e2e.test_up import all_ready, args_for, short_dir

__all__ = ["clusters", "short_dir", "subscribers"]

pytestmark = pytest.mark.timeout(60)

INTERVAL_S = 0.5


async def test_auto_reshard_follows_discords_recommendation_up_once(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    subscribers: Callable[..., Subscriber],
    short_dir: Path,
) -> None:
    sim = await sim_factory(
        shards=4, max_concurrency=4, identify_window_s=0.1, event_rate=10.0, guilds=16
    )
    args = args_for(
        sim,
        short_dir,
        "--identify-margin",
        "0.05",
        "--auto-reshard",
        "--auto-reshard-interval",
        str(INTERVAL_S),
    )
    run = await clusters(*args)
    sub = subscribers((await run.listening())["pub"])
    url = await all_ready(run, within_s=20)
    await run.wait_text("auto-reshard: checking Discord's recommended shard count every 0.5 s", 5)
    await asyncio.sleep(3 * INTERVAL_S)  # checks that find Discord recommending what runs
    _, status = await http_get(f"{url}/status")
    # no reshard started: the section holds only the (zero) counts, no phase
    assert len(status["shards"]) == 4 and "phase" not in status["reshard"], status["reshard"]
    assert status["reshard"]["switched_total"] == 0
    await sub.wait_for(lambda s: len(s.event_ids) >= 10, 10)
    since = time.monotonic()  # every event generated from here on must arrive once

    sim.set_recommended_shards(8)
    status = await wait_http(
        f"{url}/status",
        lambda code, body: code == 200 and (body.get("reshard") or {}).get("phase") == "switched",
        15,
    )
    reshard = status["reshard"]
    assert (reshard["old_shards"], reshard["new_shards"]) == (4, 8)
    assert reshard["switched_total"] == 1 and reshard["abandoned_total"] == 0
    assert len(status["shards"]) == 8
    await run.wait_text("auto-reshard: Discord recommends 8 shards, the cluster runs 4", 5)

    await asyncio.sleep(3 * INTERVAL_S)  # more checks: the cluster runs what Discord asks
    sim.set_event_rate(0.0)
    generated = {
        d.event_id for d in sim.record.dispatches if d.event_id is not None and d.at >= since
    }
    await sub.wait_for(lambda s: generated <= set(s.event_ids), 10)
    assert max(sub.event_ids.values()) == 1, "an event published twice"
    assert sub.topics["TITANIUM_RESHARD"] == 1
    _, status = await http_get(f"{url}/status")
    assert status["reshard"]["switched_total"] == 1, "one reshard, not one per check"
    assert sum("auto-reshard: Discord recommends" in line for line in run.raw) == 1
    new = sim.record.accepted_identifies(num_shards=8)
    assert sorted(r.shard_id or 0 for r in new) == list(range(8))

    run.signal(signal.SIGTERM)
    assert await run.wait(20) == 0
