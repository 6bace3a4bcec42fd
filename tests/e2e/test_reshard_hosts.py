"""``cluster reshard`` across hosts that share Redis: every host switches at the marker.

Real processes: the simulator (both shard counts live at once), a real
``redis-server``, four ``cluster up --redis --shard-ids auto --hosts 4`` on
loopback (each its own ipc:// sockets and state dir), a spare, and a ZeroMQ
subscriber per host. Checked against the simulator's record: every event
generated while the subscribers listened reaches exactly one of them exactly
once across the switch, although a guild's old and new shards may run on
different hosts; each host's subscriber gets one marker; each new shard
identified once, the buckets kept; Redis's layout is the new count; and a host
killed after the switch is taken over by the spare in the new layout, by
RESUME.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio

from simulator.record import ResumeOutcome, ViolationKind
from tests.conftest import SimFactory
from tests.e2e.cluster_process import (
    ClusterProcess,
    Subscriber,
    clusters,
    http_get,
    subscribers,
    wait_http,
)
from tests.e2e.test_up import all_ready, short_dir
from tests.redis_server import RedisServer

__all__ = ["clusters", "short_dir", "subscribers"]

pytestmark = pytest.mark.timeout(150)

HOSTS = 4
LEASE = ["--lease-ttl", "3", "--lease-renew", "0.5", "--fence-after", "2", "--takeover-wait", "0.5"]


def host_args(
    sim: Any, redis: RedisServer, where: Path, index: int | None, *extra: str
) -> list[str]:
    name = f"h{index}" if index is not None else "spare"
    home = where / name
    home.mkdir(exist_ok=True)
    return [
        "--api-url", sim.rest_url,
        "--token", sim.config.token,
        "--redis", redis.url,
        "--shard-ids", "auto",
        "--hosts", str(HOSTS),
        *(["--host-index", str(index)] if index is not None else []),
        "--workers", "1",
        "--compress", "none",
        "--health", "127.0.0.1:0",
        "--pub", f"ipc://{home}/pub",
        "--control", f"ipc://{home}/control",
        "--state-dir", str(home / "state"),
        "--identify-interval", "0.1",
        # spacing 0.25 s against the simulator's 0.1 s window: the simulator shares the test
        # process with four subscribers and HTTP polls, and a stall of its loop makes two
        # IDENTIFYs that arrived 0.15 s apart look a few ms apart
        "--identify-margin", "0.15",
        "--report-interval", "0.2",
        *LEASE,
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("sink", [False, True], ids=["pub", "sink"])
async def test_four_hosts_reshard_8_to_16_and_a_spare_follows_the_new_layout(
    sink: bool,
    sim_factory: SimFactory,
    redis_server: RedisServer,
    clusters: Callable[..., Any],
    subscribers: Callable[..., Subscriber],
    short_dir: Path,
) -> None:
    sim = await sim_factory(
        shards=8, max_concurrency=4, identify_window_s=0.1, event_rate=20.0, guilds=48
    )
    extra = ["--sink", "redis"] if sink else []
    hosts: list[ClusterProcess] = [
        await clusters(*host_args(sim, redis_server, short_dir, i, *extra)) for i in range(HOSTS)
    ]
    urls = [await all_ready(h, within_s=40) for h in hosts]
    subs = [subscribers((await h.listening())["pub"]) for h in hosts]
    spare = await clusters(*host_args(sim, redis_server, short_dir, None, *extra))
    try:
        spare_url = (await spare.listening())["http"]
    except TimeoutError:
        raise AssertionError(spare.text()[-3000:]) from None
    await wait_http(f"{spare_url}/health", lambda code, body: body.get("role") == "spare", 20)
    await asyncio.gather(*(s.wait_for(lambda s: len(s.event_ids) >= 5, 20) for s in subs))
    since = time.monotonic()  # every event generated from here on must arrive once
    await asyncio.sleep(0.5)

    command = await clusters(
        "--shards", "16", "--control", f"ipc://{short_dir}/h1/control", command="reshard"
    )
    assert await command.wait(90) == 0, command.text() + "\n".join(hosts[1].raw[-30:])
    assert "switched" in command.text(), command.text()
    for url in urls:  # every host switched
        await wait_http(
            f"{url}/status",
            lambda code, body: (body.get("reshard") or {}).get("switched_total") == 1,
            20,
        )
    await asyncio.sleep(1.0)  # events keep flowing on the new sets
    sim.set_event_rate(0.0)

    generated = {
        d.event_id for d in sim.record.dispatches if d.event_id is not None and d.at >= since
    }

    def union() -> Counter[Any]:
        total: Counter[Any] = Counter()
        for s in subs:
            total.update(s.event_ids)
        return total

    if not await eventually(lambda: generated <= set(union()), 20):
        missing = sorted(generated - set(union()))
        raise AssertionError(f"{len(missing)} events never arrived: {missing[:10]}")
    received = union()
    twice = {i: n for i, n in received.items() if n > 1}
    assert not twice, f"published twice: {sorted(twice)[:10]}"
    assert len(generated) > 100
    assert [s.topics["TITANIUM_RESHARD"] for s in subs] == [1] * HOSTS

    if sink:  # the streams too: every event once, and every host's marker
        await streams_hold_once(redis_server, generated)

    record = sim.record
    assert not record.violations_of(ViolationKind.IDENTIFY_RATE_LIMIT), identify_history(sim)
    new = record.accepted_identifies(num_shards=16)
    assert sorted(r.shard_id or 0 for r in new) == list(range(16)), "each new shard once"
    old_conns = [c for c in record.connections.values() if c.num_shards == 8]
    assert await eventually(lambda: all(c.closed_at is not None for c in old_conns), 10), (
        "an old session is still open"
    )
    for i, url in enumerate(urls):
        await wait_http(
            f"{url}/health", lambda code, body: code == 200 and body["shards_ready"] == 4, 10
        )
        _, status = await http_get(f"{url}/status")
        assert len(status["shards"]) == 4, (i, status["shards"])
        assert {s["shard_id"] for s in status["shards"]} == set(range(4 * i, 4 * i + 4))

    # host 3 dies: the spare takes its range of the new layout and RESUMEs it
    await hosts[3].kill()
    await wait_http(
        f"{spare_url}/health",
        lambda code, body: code == 200 and body.get("role") == "owner",
        30,
    )
    _, status = await http_get(f"{spare_url}/status")
    assert {s["shard_id"] for s in status["shards"]} == set(range(12, 16))
    resumed = {
        r.shard_id for r in record.resumes_for(outcome=ResumeOutcome.ACCEPTED, num_shards=16)
    }
    assert set(range(12, 16)) <= resumed
    assert len(record.accepted_identifies(num_shards=16)) == 16, "the takeover identified"
    with contextlib.suppress(Exception):
        for s in subs:
            await s.close()


async def streams_hold_once(server: RedisServer, generated: set[Any]) -> None:
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        found: Counter[Any] = Counter()
        async with asyncio.timeout(20):
            while True:
                found.clear()
                for stream in await client.keys("[A-Z]*"):
                    if stream == b"TITANIUM_RESHARD":
                        continue
                    for _, fields in await client.xrange(stream):
                        d = msgpack.unpackb(fields[b"data"], raw=False)["payload"].get("d")
                        if isinstance(d, dict) and "_sim_event_id" in d:
                            found[d["_sim_event_id"]] += 1
                if generated <= set(found):
                    break
                await asyncio.sleep(0.2)
        twice = {i: n for i, n in found.items() if n > 1}
        assert not twice, f"appended twice: {sorted(twice)[:10]}"
        markers = await client.xrange("TITANIUM_RESHARD")
        assert len(markers) == HOSTS, markers
        marker = msgpack.unpackb(markers[0][1][b"data"], raw=False)["payload"]
        assert marker["t"] == "TITANIUM_RESHARD" and marker["d"]["new_shards"] == 16
    finally:
        await client.aclose()


async def eventually(predicate: Callable[[], bool], within_s: float) -> bool:
    """Whether ``predicate()`` holds within ``within_s`` (looked at every 0.1 s)."""
    deadline = time.monotonic() + within_s
    for _ in itertools.count():
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return False


async def test_a_host_killed_mid_reshard_rejoins_it_when_restarted(
    sim_factory: SimFactory,
    redis_server: RedisServer,
    clusters: Callable[..., Any],
    subscribers: Callable[..., Subscriber],
    short_dir: Path,
) -> None:
    """SIGKILL of a host whose new set is starting: the others wait; restarted, it takes
    its old range back by RESUME, joins the reshard again and every host switches; no event
    is published by both hosts (the replay of what it missed is recorded as its old set
    publishes it)."""
    sim = await sim_factory(
        shards=4, max_concurrency=1, identify_window_s=0.1, event_rate=10.0, guilds=16
    )

    def args(index: int) -> list[str]:
        full = host_args(sim, redis_server, short_dir, index)
        full[full.index("--hosts") + 1] = "2"
        return full

    hosts = [await clusters(*args(i)) for i in range(2)]
    urls = [await all_ready(h, within_s=40) for h in hosts]
    subs = [subscribers((await h.listening())["pub"]) for h in hosts]
    await asyncio.gather(*(s.wait_for(lambda s: len(s.event_ids) >= 3, 20) for s in subs))
    since = time.monotonic()

    command = await clusters(
        "--shards", "8", "--control", f"ipc://{short_dir}/h0/control", command="reshard"
    )
    # killed once its new set started (every old set records): the other host's new set
    # holds events of guilds whose old shards it ran, which its restart replays
    await hosts[1].wait_text("shards 4-7 identify beside the running ones", 20)
    await hosts[1].kill()  # SIGKILL: its workers follow it within a parent check
    await asyncio.sleep(0.5)
    hosts[1] = await clusters(*args(1))
    assert await command.wait(90) == 0, command.text() + "\n".join(hosts[1].raw[-40:])
    try:
        urls[1] = await all_ready(hosts[1], within_s=40)
    except TimeoutError:
        raise AssertionError("\n".join(hosts[1].raw[-60:])) from None
    for url in urls:
        await wait_http(
            f"{url}/status",
            lambda code, body: (body.get("reshard") or {}).get("switched_total") == 1,
            30,
        )
    await asyncio.sleep(1.0)
    sim.set_event_rate(0.0)

    generated = {
        d.event_id for d in sim.record.dispatches if d.event_id is not None and d.at >= since
    }

    def union() -> set[Any]:
        return {i for s in subs for i in s.event_ids}

    if not await eventually(lambda: generated <= union(), 20):
        missing = sorted(generated - union())
        raise AssertionError(f"{len(missing)} events never arrived: {missing[:10]}")
    # The restarted host's old set replays what it missed, recording from its first event:
    # no event is published by both hosts. (Its own replay from the last checkpoint may
    # repeat what its first life published: at least once on PUB across a supervisor's
    # SIGKILL, DESIGN.md rule 8.)
    both = set(subs[0].event_ids) & set(subs[1].event_ids) & generated
    assert not both, f"published by both hosts: {sorted(both)[:10]}"
    record = sim.record
    assert not record.violations_of(ViolationKind.IDENTIFY_RATE_LIMIT), identify_history(sim)
    old = [c for c in record.connections.values() if c.num_shards == 4]
    assert await eventually(lambda: all(c.closed_at is not None for c in old), 10)
    new_open = {
        c.shard_id for c in record.connections.values() if c.num_shards == 8 and c.closed_at is None
    }
    assert new_open == set(range(8)), new_open
    resumed = {r.shard_id for r in record.resumes_for(outcome=ResumeOutcome.ACCEPTED, num_shards=4)}
    assert {2, 3} <= resumed, "the restarted host took its old range back by RESUME"

    # a second reshard: the hosts that switched follow it as ranges of the new layout
    again = await clusters(
        "--shards", "16", "--control", f"ipc://{short_dir}/h1/control", command="reshard"
    )
    assert await again.wait(90) == 0, again.text() + "\n".join(hosts[0].raw[-30:])
    for url in urls:
        await wait_http(
            f"{url}/status",
            lambda code, body: (body.get("reshard") or {}).get("switched_total") == 2,
            30,
        )
    assert sorted(r.shard_id or 0 for r in record.accepted_identifies(num_shards=16)) == list(
        range(16)
    ), identify_history(sim) + "\n".join(hosts[0].raw[-60:])


def identify_history(sim: Any) -> str:
    """Every IDENTIFY by bucket and time (what a bucket violation needs to be read)."""
    mc = sim.config.max_concurrency
    lines = [
        f"bucket {(r.shard_id or 0) % mc} at {r.at:.3f}: shard {r.shard_id}/{r.num_shards} "
        f"conn {r.conn_id} {r.outcome.value}"
        for r in sorted(sim.record.identifies, key=lambda r: ((r.shard_id or 0) % mc, r.at))
    ]
    return "\n".join(lines)
