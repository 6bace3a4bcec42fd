"""Several hosts on one Redis: real supervisors, each in its own network namespace.

Every "host" is a network namespace joined to the server side by a veth pair
(:mod:`tests.e2e.netns`); the simulator and a real ``redis-server`` listen on
the server side. Where namespaces are unavailable the hosts get distinct
loopback addresses instead (said in the output), and the partition test is
skipped. Lease timing is scaled down (TTL 3 s, renew 0.5 s, fence after 2 s)
and the identify interval is 0.2 s; what is asserted comes from the
simulator's record (identifies, resumes, connection times, violations) and
from what the subscribers received, never from how fast a machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator import Simulator, ViolationKind
from simulator.record import ClosedBy, ResumeOutcome
from tests.conftest import RedisFactory, SimFactory
from tests.e2e.cluster_process import (
    ClusterProcess,
    CurveKeys,
    Subscriber,
    clusters,
    http_get,
    subscribers,
    wait_http,
)
from tests.e2e.netns import Host, HostNet, NetnsUnavailable
from tests.redis_server import RedisServer

__all__ = ["clusters", "subscribers"]

pytestmark = pytest.mark.timeout(180)

INTERVAL = 0.2
LEASE = ["--lease-ttl", "3", "--lease-renew", "0.5", "--fence-after", "2", "--takeover-wait", "0.5"]
StartCluster = Callable[..., Any]


@pytest.fixture
def state_root() -> Iterator[Path]:
    """The hosts' --state-dir parent, removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="tc-e2e-state-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def net_of_5() -> Iterator[HostNet]:
    with HostNet(5) as net:
        print(f"hosts: {net}")
        yield net


_KEYS: dict[Path, CurveKeys] = {}


def keys_for(state_root: Path) -> CurveKeys:
    """The hosts' CURVE keys and HTTP token (off loopback they are required), one set per test."""
    if state_root not in _KEYS:
        _KEYS[state_root] = CurveKeys.make(state_root / "keys")
    return _KEYS[state_root]


def host_args(
    sim: Simulator,
    redis: RedisServer,
    host: Host,
    hosts: int,
    index: int | None,
    state_root: Path,
    *extra: str,
) -> list[str]:
    args = [
        "--api-url",
        sim.rest_url,
        "--token",
        sim.config.token,
        "--redis",
        redis.url,
        "--shard-ids",
        "auto",
        "--hosts",
        str(hosts),
        "--compress",
        "none",
        "--health",
        f"{host.ip}:8080",
        "--pub",
        f"tcp://{host.ip}:5555",
        "--control",
        "tcp://127.0.0.1:5556" if host.mode == "netns" else f"tcp://{host.ip}:5556",
        "--state-dir",
        str(state_root / host.name),
        "--identify-interval",
        str(INTERVAL),
        "--report-interval",
        "0.2",
        *LEASE,
        *keys_for(state_root).args(),
        *extra,
    ]
    if index is not None:
        args += ["--host-index", str(index)]
    return args


async def start_host(
    clusters: StartCluster,
    sim: Simulator,
    redis: RedisServer,
    host: Host,
    hosts: int,
    index: int | None,
    state_root: Path,
) -> ClusterProcess:
    run: ClusterProcess = await clusters(
        *host_args(sim, redis, host, hosts, index, state_root), wrap=host.command
    )
    await run.listening(within_s=30)
    return run


async def health(host: Host) -> tuple[int, Any]:
    return await http_get(f"http://{host.ip}:8080/health")


async def ready_shards(hosts: list[Host]) -> int:
    total = 0
    for host in hosts:
        try:
            _, body = await health(host)
        except Exception:
            continue
        if isinstance(body, dict) and body.get("role") == "owner":
            total += int(body["shards_ready"])
    return total


async def wait_all_ready(hosts: list[Host], shards: int, within_s: float) -> None:
    async with asyncio.timeout(within_s):
        while await ready_shards(hosts) < shards:  # noqa: ASYNC110 (polling other processes)
            await asyncio.sleep(0.1)


def kill_tree(run: ClusterProcess) -> None:
    """SIGKILL a host's whole process tree (the supervisor and its workers: one process group)."""
    os.killpg(run.process.pid, signal.SIGKILL)


def every_event_arrived(sim: Simulator, subs: list[Subscriber]) -> set[int]:
    """Generated event ids not seen by any subscriber (from each shard's first seen seq on)."""
    seen_ids: set[int] = set()
    first_seen: dict[int, int] = {}
    for sub in subs:
        seen_ids.update(sub.event_ids)
        for shard, seq in sub.seen:
            first_seen[shard] = min(seq, first_seen.get(shard, seq))
    # events only count once the shard's first session was seen (a SUB joins a moment late)
    first_session = {
        shard: next(d.session_id for d in sim.record.sent_events(shard)) for shard in first_seen
    }
    return {
        d.event_id
        for d in sim.record.sent_events()
        if d.shard_id in first_seen
        and (d.session_id != first_session[d.shard_id] or d.seq >= first_seen[d.shard_id])
        and d.event_id not in seen_ids
        and d.event_id is not None
    }


async def wait_every_event(sim: Simulator, subs: list[Subscriber], within_s: float) -> None:
    async with asyncio.timeout(within_s):
        while missing := every_event_arrived(sim, subs):  # noqa: ASYNC110 (a record we poll)
            await asyncio.sleep(0.1)
    assert not missing


async def test_four_hosts_and_a_spare_share_one_redis(
    net_of_5: HostNet,
    sim_factory: SimFactory,
    redis_factory: RedisFactory,
    clusters: StartCluster,
    subscribers: Callable[..., Subscriber],
    state_root: Path,
) -> None:
    net = net_of_5
    redis = redis_factory(bind=net.server_ip)
    sim = await sim_factory(
        host=net.server_ip, shards=16, max_concurrency=4, identify_window_s=INTERVAL, event_rate=8
    )
    owners, spare_host = net.hosts[:4], net.hosts[4]
    subs = [subscribers(f"tcp://{h.ip}:5555", curve=keys_for(state_root)) for h in net.hosts]
    started = time.monotonic()
    runs = await asyncio.gather(
        *(start_host(clusters, sim, redis, h, 4, i, state_root) for i, h in enumerate(owners))
    )
    spare = await start_host(clusters, sim, redis, spare_host, 4, None, state_root)
    await wait_all_ready(owners, 16, within_s=60)
    code, body = await health(spare_host)
    assert code == 200 and body["role"] == "spare"
    record = sim.record

    # startup: every shard identified once, no bucket broken across hosts
    accepted = record.accepted_identifies()
    assert sorted(r.shard_id or 0 for r in accepted) == list(range(16))
    assert not record.violations_of(ViolationKind.IDENTIFY_RATE_LIMIT)
    times = sorted(r.at for r in accepted)
    bound = (16 // 4 - 1) * INTERVAL  # 4 windows per bucket at max_concurrency 4
    span = times[-1] - times[0]
    print(
        f"startup: first to last IDENTIFY {span:.2f} s (Discord's bound {bound:.2f} s, "
        f"+1 interval cold-start guard); {time.monotonic() - started:.1f} s from the first spawn"
    )
    assert span <= bound + INTERVAL + 10.0  # process start of 5 supervisors on 2 cores

    # a host dies with its whole process tree: the spare resumes its range
    await subs[2].wait_for(lambda s: {shard for shard, _ in s.seen} >= set(range(8, 12)), 20)
    kill_tree(runs[2])
    killed_at = time.monotonic()
    await wait_http(
        f"http://{spare_host.ip}:8080/health",
        lambda code, body: code == 200 and body.get("role") == "owner",
        within_s=30,
    )
    print(
        f"host loss -> every shard of its range RESUMED on the spare in {time.monotonic() - killed_at:.2f} s"
    )
    assert len(record.accepted_identifies()) == 16, (
        "the takeover spent an identify",
        sorted(r.shard_id or 0 for r in record.accepted_identifies()),
        [(r.shard_id, r.outcome.value, r.seq) for r in record.resumes],
    )
    resumed = {r.shard_id for r in record.resumes_for(outcome=ResumeOutcome.ACCEPTED)}
    assert set(range(8, 12)) <= resumed
    await wait_every_event(sim, subs, within_s=20)

    # a rolling restart of every other host: not one identify in the whole bot
    hosts_up = [owners[0], owners[1], owners[3], spare_host]
    for index in (0, 1, 3):
        runs[index].signal(signal.SIGTERM)
        assert await runs[index].wait(20) == 0
        runs[index] = await start_host(clusters, sim, redis, owners[index], 4, index, state_root)
        await wait_all_ready(hosts_up, 16, within_s=40)
    assert len(record.accepted_identifies()) == 16, "the rolling restart spent an identify"
    assert not record.violations_of(ViolationKind.IDENTIFY_RATE_LIMIT)
    await wait_every_event(sim, subs, within_s=20)
    across = Counter(key for s in subs for key, n in s.seen.items() for _ in range(n))
    duplicates = sum(n - 1 for n in across.values() if n > 1)
    print(f"{duplicates} duplicates on the PUB taps (events after a checkpoint, replayed)")
    spare.signal(signal.SIGTERM)
    assert await spare.wait(20) == 0


def live_overlaps(sim: Simulator, shard_ids: range) -> list[tuple[int, float]]:
    """Per shard: how long two connections were both live for it (a RESUME or READY to a close)."""
    starts = {r.conn_id: r.at for r in sim.record.resumes if r.outcome is ResumeOutcome.ACCEPTED}
    for r in sim.record.identifies:
        starts.setdefault(r.conn_id, r.at)
    overlaps: list[tuple[int, float]] = []
    for shard in shard_ids:
        spans = sorted(
            (starts[c.conn_id], c.closed_at if c.closed_at is not None else float("inf"))
            for c in sim.record.connections_for(shard)
            if c.conn_id in starts
        )
        for (_, end), (start, _) in itertools.pairwise(spans):
            if end > start:
                overlaps.append((shard, end - start))
    return overlaps


async def test_a_host_cut_off_from_redis_fences_itself_before_the_spare_takes_over(
    sim_factory: SimFactory,
    redis_factory: RedisFactory,
    clusters: StartCluster,
    subscribers: Callable[..., Subscriber],
    state_root: Path,
) -> None:
    with HostNet(3) as net:
        if net.mode != "netns":
            pytest.skip(f"a partition needs network namespaces ({net.fallback_reason})")
        redis = redis_factory(bind=net.server_ip)
        sim = await sim_factory(
            host=net.server_ip,
            shards=8,
            max_concurrency=2,
            identify_window_s=INTERVAL,
            event_rate=8,
        )
        a, b, spare_host = net.hosts
        subs = [subscribers(f"tcp://{h.ip}:5555", curve=keys_for(state_root)) for h in net.hosts]
        run_a = await start_host(clusters, sim, redis, a, 2, 0, state_root)
        await start_host(clusters, sim, redis, b, 2, 1, state_root)
        await start_host(clusters, sim, redis, spare_host, 2, None, state_root)
        await wait_all_ready([a, b], 8, within_s=60)
        identifies = len(sim.record.accepted_identifies())

        a.partition_from(net.server_ip, redis.port)  # Discord still reachable, Redis not
        try:
            await run_a.wait_text("fencing this host", within_s=15)
            await wait_http(
                f"http://{spare_host.ip}:8080/health",
                lambda code, body: code == 200 and body.get("role") == "owner",
                within_s=30,
            )
        finally:
            a.heal()
        # never two live connections for one shard (the simulator would close the older
        # one when the newer RESUMEs: that must not be what ended it)
        assert live_overlaps(sim, range(0, 4)) == []
        resumed_elsewhere = [
            c
            for c in sim.record.connections.values()
            if c.closed_by == ClosedBy.SERVER and c.close_code == 4000 and (c.shard_id or 0) < 4
        ]
        assert resumed_elsewhere == []
        assert len(sim.record.accepted_identifies()) == identifies
        # healed, the fenced host is a spare: it does not take its range back
        await wait_http(
            f"http://{a.ip}:8080/health",
            lambda code, body: code == 200 and body.get("role") == "spare",
            within_s=20,
        )
        await wait_every_event(sim, subs, within_s=20)


def test_the_partition_helper_refuses_in_loopback_mode() -> None:
    with HostNet(1, mode="loopback") as net, pytest.raises(NetnsUnavailable):
        net.hosts[0].partition_from(net.server_ip, 1)
