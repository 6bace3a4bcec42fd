"""``cluster up --gateway`` killed by SIGKILL costs no IDENTIFY: the saved cache catches up by RESUME.

A real ``cluster up --gateway`` against the simulator saves its guild cache every
1.5 s (``--gateway-cache-save-interval``). Events flow to a raw client and the
PUB socket; right after a periodic save more events come (a message in each of
several channels: their ``last_message_id`` is only in memory), are published
and checkpointed, and the supervisor is SIGKILLed (its workers notice and go).
The next ``cluster up`` RESUMEs every shard from its saved cache's seq (below the
checkpoint): 0 IDENTIFY at the simulator, the replayed events reach the cache
only (nothing twice on PUB), and a client identifying at the endpoint gets
GUILD_CREATEs with every channel's newest ``last_message_id``. The cluster has
MESSAGE_CONTENT; the clients have not, so they get message content blanked
(one check of that rule end to end).
"""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol.intents import NON_PRIVILEGED_INTENTS, Intent
from tests.conftest import RawClient, SimFactory
from tests.e2e.cluster_process import (
    ClusterProcess,
    Subscriber,
    clusters,
    http_get,
    subscribers,
    wait_http,
)
from tests.e2e.gateway_harness import gateway_url
from tests.e2e.test_up import all_ready, args_for, short_dir

__all__ = ["clusters", "short_dir", "subscribers"]

pytestmark = pytest.mark.timeout(120)

SHARDS = 2
INTENTS = NON_PRIVILEGED_INTENTS | Intent.MESSAGE_CONTENT


async def gateway_status(http: str) -> dict[str, Any]:
    _, status = await http_get(f"{http}/status")
    gateway: dict[str, Any] = status["gateway"]
    return gateway


def messages(client: RawClient) -> list[dict[str, Any]]:
    return [p["d"] for p in client.received if p.get("t") == "MESSAGE_CREATE"]


async def identified(url: str, shard: int) -> tuple[RawClient, list[dict[str, Any]]]:
    """A client without MESSAGE_CONTENT on ``shard``: its READY's guilds' GUILD_CREATEs."""
    client = await RawClient.connect(url)
    ready = await client.ready(shard=[shard, SHARDS], intents=NON_PRIVILEGED_INTENTS)
    creates = [(await client.recv_event("GUILD_CREATE", 15))["d"] for _ in ready["guilds"]]
    return client, creates


async def test_a_supervisor_sigkill_with_the_gateway_costs_no_identify(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    subscribers: Callable[..., Subscriber],
    short_dir: Path,
) -> None:
    sim = await sim_factory(
        shards=SHARDS,
        guilds=4,
        identify_window_s=0.1,
        privileged_intents=int(Intent.MESSAGE_CONTENT),
    )
    args = args_for(
        sim,
        short_dir,
        "--intents",
        str(int(INTENTS)),
        "--gateway",
        "127.0.0.1:0",
        "--gateway-heartbeat-interval",
        "60000",
        "--gateway-cache-save-interval",
        "1.5",
        "--checkpoint-interval",
        "0.2",
    )
    first: ClusterProcess = await clusters(*args)
    sub = subscribers((await first.listening())["pub"])
    url = await gateway_url(first)
    http = await all_ready(first)
    client, _ = await identified(url, 0)
    try:
        ids = sim.emit(0, 6, "MESSAGE_CREATE") + sim.emit(1, 6, "MESSAGE_CREATE")
        await client.recv_until(lambda _: len(messages(client)) >= 6, 10)
        saves = (await gateway_status(http))["cache"]["saves"]

        await wait_http(
            f"{http}/status", lambda _, body: body["gateway"]["cache"]["saves"] > saves, 10
        )  # a periodic save
        # right after a save: events the saved cache lacks, published and checkpointed
        # (0.2 s), then the kill before the next save (1.5 s)
        for _ in range(5):
            saves = (await gateway_status(http))["cache"]["saves"]
            ids += sim.emit(0, 9, "MESSAGE_CREATE") + sim.emit(1, 9, "MESSAGE_CREATE")
            wanted = set(ids)
            await sub.wait_for(lambda s, w=wanted: w <= set(s.event_ids), 10)  # type: ignore[misc]
            await asyncio.sleep(0.6)
            if (await gateway_status(http))["cache"]["saves"] == saves:
                break
        else:
            raise AssertionError("a save came within 0.6 s of the events every time")
        await client.recv_until(lambda _: len(messages(client)) >= len(ids) // 2, 10)
        published = {shard: max(seq for s, seq in sub.seen if s == shard) for shard in (0, 1)}
        first.signal(signal.SIGKILL)  # the supervisor only: its workers notice and go
        await first.wait(10)
    finally:
        await client.close()

    def all_closed(record: Any) -> bool:
        return all(c.closed_at is not None for c in record.connections.values())

    await sim.record.wait_for(all_closed, timeout=15)
    assert len(sim.record.accepted_identifies()) == SHARDS
    resumes_before = len(sim.record.accepted_resumes())

    second: ClusterProcess = await clusters(*args)
    url = await gateway_url(second)
    http = await all_ready(second, within_s=30)
    assert len(sim.record.accepted_identifies()) == SHARDS, "an identify was spent"
    resumed = sim.record.accepted_resumes()[resumes_before:]
    assert sorted(r.shard_id or 0 for r in resumed) == [0, 1]
    for r in resumed:  # from the saved cache's seq, below what had been published
        assert r.shard_id is not None and r.seq is not None, r
        assert r.seq < published[r.shard_id] <= r.seq + r.replayed, r

    def caught_up(_: int, body: Any) -> bool:
        gateway = body["gateway"]
        return bool(gateway["shards_catching_up"] == 0 and gateway["events_replayed_to_cache"])

    await wait_http(f"{http}/status", caught_up, 15)  # the caches caught up by the replay
    print(await second.wait_text("behind their resume point", 5))

    # a client identifying now gets every channel's newest message id in its GUILD_CREATEs
    newest: dict[str, int] = defaultdict(int)
    for d in messages(client):
        newest[d["channel_id"]] = max(newest[d["channel_id"]], int(d["id"]))
    again, creates = await identified(url, 0)
    try:
        assert {c["id"] for c in creates} == {str(sim.factory.guild(i).id) for i in (0, 2)}
        cached = {
            ch["id"]: int(ch["last_message_id"])
            for c in creates
            for ch in c["channels"]
            if ch.get("last_message_id")
        }
        assert cached == newest
        # events after the restart: once on PUB, once to the client, content blanked for it
        later = sim.emit(0, 5, "MESSAGE_CREATE")
        await sub.wait_for(lambda s: set(later) <= set(s.event_ids), 10)
        await again.recv_until(lambda _: len(messages(again)) >= 5, 10)
        assert [d["_sim_event_id"] for d in messages(again)] == later
        assert {d["content"] for d in messages(again)} == {""}
        assert all(d["content"] == "" for d in messages(client))
    finally:
        await again.close()
    assert sub.duplicates() == [], "an event was published twice"
    assert set(ids) <= set(sub.event_ids)
    assert max(sub.event_ids.values()) == 1
    second.signal(signal.SIGTERM)
    assert await second.wait(15) == 0
