"""The ``redis`` benchmark: what ``cluster up --redis`` costs, and how fast a spare takes over.

One ``redis-server`` (:class:`tests.redis_server.RedisServer`: TCP loopback, no
snapshots, no AOF) for the whole benchmark, a database per part, emptied
(FLUSHDB) before each ``cluster up`` so no lease, bucket or checkpoint of an
earlier run is found. The parts run one after the other (``--quick``: all at
once, tiny, for the smoke test), each ``--repeat`` times:

- ``cpu``: the same ``cluster up`` command (1 worker, the firehose's paced
  mode: ``rate_per_shard`` events/s on each of ``shards`` shards, keyed frames
  compressed before the stream starts) without and with ``--redis``, runs
  interleaved in ``cpu_pairs`` pairs per repeat so a change of machine load hits
  both alike, the side that runs first alternating (off-on, on-off, ...). CPU of
  the cluster's process tree (supervisor + worker, psutil) and of the
  supervisor alone (the relay, the checkpointer and the Redis client live
  there) from the stream's start to the last event at a SUB sink, per event;
  the worker alone never talks to Redis, so its on/off ratio is each pair's
  control. Beside them: redis-server's own CPU, and the requests the cluster
  sent it during the stream (INFO commandstats).
- ``identify``: ``cluster up --redis`` starting ``identify_shards`` shards at
  max_concurrency ``identify_mc`` against the full simulator (its identify rules
  enforced): ``identify_redis`` of ``GET /status`` (the arbiter's own timing of
  each grant script call, event loop included) once every shard is READY.
- ``micro``: :meth:`cluster.state.redis_state.RedisState.try_identify` round
  trips from this process (uvloop), one bucket granted, then freed with
  :meth:`~cluster.state.redis_state.RedisState.identify_sent` (spacing 0), and
  granted again; PING round trips of the same client as the floor.
- ``takeover``: two owners (``--shard-ids auto --hosts 2 --host-index 0/1``) and
  a spare (no index), each its own ``cluster up`` process group with its own
  health/PUB/control ports and state dir, the lease timing ``cluster up``'s
  default (``--quick``: scaled down). Owner 1's process group is SIGKILLed right
  after it renewed its lease (the lease's PTTL in Redis is read until it jumps
  back up: the worst case of the lease part), then the simulator's record
  (``/_sim/record``, times on CLOCK_MONOTONIC like ours) is polled until every
  shard of range 1 has an accepted RESUME after the kill; IDENTIFYs after the
  kill are counted (the target is 0).

- ``sink``: ``cluster up --redis`` without the sink, with ``--sink redis``
  (msgpack) and with ``--sink-encoding json``: CPU per event at the ``cpu``
  part's paced rate, and the most the sink appends with the firehose unpaced,
  every event checked to be in the streams exactly once
  (scripts/bench/sink_bench.py).

``--redis-parts`` runs some of the parts only; with ``--merge`` the others keep
an earlier run's figures (:func:`merge_parts`).

Every process and the redis-server are stopped at the end, also on failure.
The children import the working tree, or with ``--head`` a snapshot of the
commit (:func:`scripts.bench.run.head_snapshot`); the section records which.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import psutil
import redis.asyncio

from protocol.intents import PRIVILEGED_INTENTS
from scripts.bench import procs, report
from scripts.bench.procs import REPO, Child, ChildError, tree_cpu
from scripts.bench.run import (
    PUB_HWM,
    TOKEN,
    Firehose,
    cluster_up_available,
    free_port,
    log,
    start_cluster,
    start_simulator,
)
from scripts.bench.stats import percentile

if TYPE_CHECKING:
    from scripts.bench.run import Results
    from tests.redis_server import RedisServer

__all__ = [
    "FULL",
    "PARTS",
    "QUICK",
    "RedisSizes",
    "bench_redis",
    "lease_timing",
    "merge_parts",
    "redis_unavailable",
]


@dataclass(frozen=True, slots=True)
class RedisSizes:
    #: cpu: shards, events/s per shard, seconds of stream per run
    shards: int
    rate_per_shard: int
    seconds: float
    #: identify: shards, max_concurrency and identify interval of the cluster up start
    identify_shards: int
    identify_mc: int
    identify_interval: float
    #: micro: timed try_identify calls per run (after ``micro_warmup`` untimed ones)
    micro_calls: int
    micro_warmup: int
    #: takeover: shards (two ranges), max_concurrency, dispatches/s per shard
    takeover_shards: int
    takeover_mc: int
    takeover_rate: float
    #: hidden lease flags given to every takeover host; () = cluster up's defaults
    lease_args: tuple[str, ...]
    #: wait after every shard is READY before measuring
    settle_s: float
    #: cpu: (off, on) pairs per --repeat (the on/off ratio needs many on a shared machine)
    cpu_pairs: int


FULL = RedisSizes(16, 1_000, 10.0, 64, 16, 0.05, 5_000, 200, 32, 16, 5.0, (), 2.0, 2)
QUICK = RedisSizes(
    4,
    250,
    1.0,
    16,
    16,
    0.05,
    200,
    20,
    4,
    4,
    5.0,
    ("--lease-ttl", "2", "--lease-renew", "0.5", "--fence-after", "1.2", "--takeover-wait", "0.3"),
    0.3,
    1,
)
#: The takeover hosts' identify interval (the simulator's identify window too).
TAKEOVER_INTERVAL_S = 0.05


def redis_unavailable() -> str | None:
    """Why the redis benchmark cannot run here, or None."""
    why = cluster_up_available()
    if why is not None:
        return why
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    return None


def lease_timing(lease_args: tuple[str, ...]) -> dict[str, float]:
    """ttl, renew, fence, wait (seconds): cluster up's defaults, overridden by ``lease_args``."""
    from cluster.config import RedisSettings

    defaults = RedisSettings("redis://127.0.0.1:6379/0")
    timing = {
        "ttl": defaults.ttl_s,
        "renew": defaults.renew_s,
        "fence": defaults.fence_after_s,
        "wait": defaults.takeover_wait_s,
        "spare_poll": defaults.spare_poll_s,
    }
    flags = {"--lease-ttl": "ttl", "--lease-renew": "renew", "--fence-after": "fence"}
    flags["--takeover-wait"] = "wait"
    for flag, value in zip(lease_args[::2], lease_args[1::2], strict=True):
        timing[flags[flag]] = float(value)
    return timing


# -- redis-server ------------------------------------------------------------------------


def code_state() -> tuple[str, list[str], str]:
    """(HEAD, files with uncommitted changes, a digest of those changes), read-only git."""

    def git(*args: str) -> str:
        argv = ["git", "--no-optional-locks", *args]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True).stdout

    diff = git("diff", "HEAD")
    files = [f for f in git("diff", "--name-only", "HEAD").splitlines() if f]
    return (
        git("rev-parse", "--short", "HEAD").strip(),
        files,
        hashlib.sha1(diff.encode()).hexdigest(),
    )


def redis_server_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())


def start_redis() -> RedisServer:
    """A redis-server on a free loopback port (it dies with this process, too)."""
    from tests.redis_server import RedisServer

    return RedisServer().start()


#: The database of each part: they never see each other's keys (--quick runs them at once).
DB = {"cpu": 0, "identify": 1, "micro": 2, "takeover": 3, "sink": 4}
#: The parts ``--redis-parts`` selects (identify includes micro), in the order they run.
PARTS = ("cpu", "identify", "takeover", "sink")
#: The keys of the benchmark's ``redis`` section each part fills.
PART_KEYS = {
    "cpu": ("cpu",),
    "identify": ("identify", "micro"),
    "takeover": ("takeover",),
    "sink": ("sink", "sink_rate", "sink_meta"),
}
#: The section's description of the run that measured cpu, identify and takeover.
RUN_KEYS = (
    "commit",
    "snapshot",
    "uncommitted",
    "sizes",
    "lease",
    "command",
    "measured_at",
    "machine",
    "redis_version",
    "pub_hwm",
)


def db_url(server: RedisServer, part: str) -> str:
    return f"redis://{server.bind}:{server.port}/{DB[part]}"


async def flush(url: str) -> None:
    """Empty the database: no lease, bucket, budget or checkpoint of an earlier run is left."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


#: The commands the cluster sends itself (a script's own redis.call()s are counted by
#: redis-server under their names too, and never call these).
CLIENT_COMMANDS = ("evalsha", "evalsha_ro", "eval", "eval_ro", "ping", "scan", "mget", "info")


async def redis_commands(url: str) -> tuple[float, float]:
    """(calls sent by clients, every command executed incl. inside scripts) so far.

    The INFO that reads them is counted by the next reading (stats are updated after
    a command ran): subtract 1 from a difference of two readings.
    """
    client = redis.asyncio.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return float(sum(calls.get(c, 0) for c in CLIENT_COMMANDS)), float(sum(calls.values()))


def own_cpu(pid: int) -> float:
    """CPU seconds of one process (its children not included)."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return math.nan
    return float(t.user + t.system)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        return await r.json(content_type=None)


async def wait_status(
    http: aiohttp.ClientSession,
    health: str,
    ready: Any,
    timeout: float,  # noqa: ASYNC109
    what: str,
    child: Child,
) -> dict[str, Any]:
    """Poll ``/status`` of ``health`` until ``ready(body)``; fail at once if ``child`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if child.proc.returncode is not None:
            raise ChildError(f"{child.name} exited: {await child.stderr_tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            body: dict[str, Any] = await get_json(http, f"http://{health}/status")
            if ready(body):
                return body
        if time.monotonic() > deadline:
            raise ChildError(f"{child.name}: {what} not reached in {timeout:.0f} s")
        await asyncio.sleep(0.05)


def all_ready(n: int) -> Any:
    def ready(body: dict[str, Any]) -> bool:
        shards = body.get("shards") or []
        return len(shards) == n and all(s["state"] == "ready" for s in shards)

    return ready


# -- 1. CPU per event, --redis off and on ----------------------------------------------------


async def cpu_once(
    fh: Firehose, sizes: RedisSizes, server: RedisServer | None, http: aiohttp.ClientSession
) -> dict[str, float]:
    """One paced stream through ``cluster up`` (with ``--redis`` when ``server``)."""
    shards = sizes.shards
    per_shard = max(1, int(sizes.rate_per_shard * sizes.seconds))
    total = per_shard * shards
    await fh.wait(lambda s: s["ready"] == 0 and s["streaming"] == 0, 30, "idle")
    url = db_url(server, "cpu") if server is not None else None
    if url is not None:
        await flush(url)
    state = tempfile.mkdtemp(prefix="bench-redis-cpu-")
    sink: Child | None = None
    cluster: Child | None = None
    try:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        sink = await Child.python("sink", "scripts.bench.sink", "sub", endpoint, str(total))
        await sink.expect("BOUND ", 30)
        health = f"127.0.0.1:{free_port()}"
        cluster = await start_cluster(
            fh.rest_url,
            endpoint,
            workers=1,
            health=health,
            state_dir=state,
            extra=["--redis", url] if url is not None else [],
        )
        await wait_status(http, health, all_ready(shards), 60, f"{shards} shards ready", cluster)
        await asyncio.sleep(sizes.settle_s)  # READY handled, first checkpoints written
        before = await get_json(http, f"http://{health}/status")
        cmds0 = await redis_commands(url) if url is not None else (math.nan, math.nan)
        await fh.go(rate=sizes.rate_per_shard * shards, count=per_shard)
        cpu0, sup0 = tree_cpu(cluster.pid), own_cpu(cluster.pid)
        red0 = own_cpu(server.pid) if server is not None else math.nan
        t0 = time.monotonic()
        done = await sink.expect("DONE ", 60 + sizes.seconds * 3)
        cpu1, sup1 = tree_cpu(cluster.pid), own_cpu(cluster.pid)
        red1 = own_cpu(server.pid) if server is not None else math.nan
        elapsed = time.monotonic() - t0
        cmds1 = await redis_commands(url) if url is not None else (math.nan, math.nan)
        after = await get_json(http, f"http://{health}/status")
        got = int(done.split()[0])
    finally:
        await asyncio.gather(*(c.stop(timeout=5.0) for c in (cluster, sink) if c is not None))
        shutil.rmtree(state, ignore_errors=True)
    ckpt0, ckpt1 = before.get("checkpoint") or {}, after.get("checkpoint") or {}
    return {
        "us": (cpu1 - cpu0) / total * 1e6,
        "supervisor_us": (sup1 - sup0) / total * 1e6,
        "redis_server_us": (red1 - red0) / total * 1e6,
        "eps": total / elapsed,
        "events": float(total),
        "received": float(got),
        "seconds": elapsed,
        "checkpoints": float(ckpt1.get("writes", 0) - ckpt0.get("writes", 0)),
        # what reached redis-server during the stream (all of it the cluster's: this part
        # runs alone, but for --quick): round trips, and every command run incl. in scripts
        "redis_calls": cmds1[0] - cmds0[0] - 1,
        "redis_commands": cmds1[1] - cmds0[1] - 1,
        "checkpoint_errors": float(ckpt1.get("errors", 0)),
        "load1": os.getloadavg()[0],
    }


async def bench_cpu(
    res: Results, sizes: RedisSizes, server: RedisServer, http: aiohttp.ClientSession
) -> None:
    per_shard = max(1, int(sizes.rate_per_shard * sizes.seconds))
    fh = await Firehose.start(sizes.shards, per_shard, http)
    try:
        for rep in range(res.repeat * sizes.cpu_pairs):
            # interleaved, and which side runs first alternates (off-on, on-off, ...): a
            # difference between a pair's first and second run cancels out over the pairs
            first_on = rep % 2 == 1
            try:
                if first_on:
                    on = await cpu_once(fh, sizes, server, http)
                    off = await cpu_once(fh, sizes, None, http)
                else:
                    off = await cpu_once(fh, sizes, None, http)
                    on = await cpu_once(fh, sizes, server, http)
            except Exception as exc:  # any failure is reported; the other parts still run
                res.errors.append(f"redis/cpu: {exc!r}")
                log(f"redis cpu: FAILED {exc}")
                continue
            for run, fig in (("off", off), ("on", on)):
                if fig["received"] < fig["events"]:
                    res.notes.append(
                        f"redis, cpu (--redis {run}, pair {rep + 1}): the SUB sink got"
                        f" {fig['received']:.0f} of {fig['events']:.0f} events"
                    )
            row: dict[str, Any] = {f"off_{k}": v for k, v in off.items()}
            row |= {f"on_{k}": v for k, v in on.items()}
            row["ratio"] = on["us"] / off["us"]
            row["supervisor_ratio"] = on["supervisor_us"] / off["supervisor_us"]
            # the worker never talks to Redis: its ratio is the pair's control
            row["worker_ratio"] = (on["us"] - on["supervisor_us"]) / (
                off["us"] - off["supervisor_us"]
            )
            row["first"] = "on" if first_on else "off"
            res.redis.setdefault("cpu", []).append(row)
            log(
                f"redis cpu #{rep + 1}: off {off['us']:.1f} µs/event (supervisor"
                f" {off['supervisor_us']:.1f}), on {on['us']:.1f} (supervisor"
                f" {on['supervisor_us']:.1f}, redis-server {on['redis_server_us']:.2f},"
                f" {on['checkpoints']:.0f} checkpoints): on/off {row['ratio']:.3f}, worker"
                f" alone {row['worker_ratio']:.3f} ({row['first']} first)"
            )
    finally:
        await fh.child.stop()
    rows = res.redis.get("cpu", [])
    if rows:
        loads = [r[f"{run}_load1"] for r in rows for run in ("off", "on")]
        res.notes.append(
            f"redis, cpu: the 1-minute load average was {min(loads):.2f}-{max(loads):.2f} at the"
            f" ends of the runs ({os.cpu_count()} cores; other jobs share the machine), so the"
            " µs per event are noisy; the runs with and without --redis were interleaved"
            " (off-on, on-off, off-on, ...: the side that runs first alternates) and each ratio"
            " is taken within its pair, so a change of load hits both sides of a ratio alike."
        )


# -- 2. identify grants through Redis ------------------------------------------------------


async def identify_once(
    sizes: RedisSizes, server: RedisServer, http: aiohttp.ClientSession
) -> dict[str, float]:
    """``cluster up --redis`` starting ``identify_shards``: its /status identify_redis at READY."""
    n, mc, interval = sizes.identify_shards, sizes.identify_mc, sizes.identify_interval
    url = db_url(server, "identify")
    await flush(url)
    sim, rest, _gateway = await start_simulator(
        token=TOKEN,
        privileged_intents=PRIVILEGED_INTENTS,
        shards=n,
        max_concurrency=mc,
        identify_window_s=interval,
        guilds=0,
        record_dispatches=False,
        session_start_total=100_000,
    )
    state = tempfile.mkdtemp(prefix="bench-redis-identify-")
    cluster: Child | None = None
    try:
        health = f"127.0.0.1:{free_port()}"
        t0 = time.monotonic()
        cluster = await start_cluster(
            rest,
            f"tcp://127.0.0.1:{free_port()}",
            workers=None,
            health=health,
            interval=interval,
            shards=n,
            state_dir=state,
            extra=["--redis", url],
        )
        st = await wait_status(
            http, health, all_ready(n), 60 + n * interval, f"{n} shards ready", cluster
        )
        total_s = time.monotonic() - t0
        record = await get_json(http, rest.split("/api/", 1)[0] + "/_sim/record")
    finally:
        await asyncio.gather(*(c.stop(timeout=5.0) for c in (cluster, sim) if c is not None))
        shutil.rmtree(state, ignore_errors=True)
    grants = st.get("identify_redis") or {}
    lat = grants.get("latency_ms") or {}
    outcomes = [str(i["outcome"]) for i in record["identifies"]]
    return {
        "asked": float(grants.get("asked", 0)),
        "granted": float(grants.get("granted", 0)),
        "refused": float(sum((grants.get("refused") or {}).values())),
        "errors": float(grants.get("errors", 0)),
        "mean_ms": float(lat["mean"]) if lat.get("mean") is not None else math.nan,
        "max_ms": float(lat["max"]) if lat.get("max") is not None else math.nan,
        "total_s": total_s,
        "accepted": float(outcomes.count("accepted")),
        "rate_limited": float(outcomes.count("rate_limited")),
        "load1": os.getloadavg()[0],
    }


async def micro_once(sizes: RedisSizes, server: RedisServer) -> dict[str, float]:
    """try_identify (and identify_sent, PING) round trips of one RedisState client, in µs."""
    from cluster.state.redis_state import GrantOutcome, RedisState

    url = db_url(server, "micro")
    await flush(url)
    state = RedisState(url, "1234567890", holder=f"bench:{os.getpid()}:micro")
    try:
        await state.connect()
        lease = await state.acquire_lease((0, 15), 600_000)
        assert lease is not None
        await state.sync_budget(10_000_000, 10_000_000, 86_400_000)
        grant: list[float] = []
        sent: list[float] = []
        ping: list[float] = []
        cpu_ns = 0
        now, cpu = time.perf_counter_ns, time.process_time_ns
        for i in range(sizes.micro_warmup + sizes.micro_calls):
            shard = i % 16
            c0 = cpu()
            t0 = now()
            r = await state.try_identify(
                lease, shard, max_concurrency=16, hold_ms=5_000, reserve=0, cold_start_ms=0
            )
            t1 = now()
            c1 = cpu()
            if r.outcome is not GrantOutcome.GRANTED:
                raise ChildError(f"redis micro: try_identify answered {r.outcome.value}")
            await state.identify_sent(lease, shard, max_concurrency=16, spacing_ms=0)  # free
            t2 = now()
            await state.ping()
            t3 = now()
            if i >= sizes.micro_warmup:
                cpu_ns += c1 - c0
                grant.append((t1 - t0) / 1000)
                sent.append((t2 - t1) / 1000)
                ping.append((t3 - t2) / 1000)
    finally:
        await state.close()
    grant.sort()
    sent.sort()
    ping.sort()
    return {
        "n": float(len(grant)),
        "p50_us": percentile(grant, 0.5),
        "p99_us": percentile(grant, 0.99),
        "max_us": grant[-1],
        "mean_us": sum(grant) / len(grant),
        # this process's CPU per try_identify call (redis-py, hiredis, the event loop)
        "client_cpu_us": cpu_ns / len(grant) / 1000,
        "sent_p50_us": percentile(sent, 0.5),
        "ping_p50_us": percentile(ping, 0.5),
        "ping_p99_us": percentile(ping, 0.99),
        "load1": os.getloadavg()[0],
    }


# -- 3. host death -> every shard RESUMED on the spare ----------------------------------------


async def lease_key(client: redis.asyncio.Redis, shard_range: tuple[int, int]) -> bytes | None:
    """The range's lease key (the bot id is the simulator's), None when there is none."""
    suffix = f":lease:{shard_range[0]}-{shard_range[1]}".encode()
    async for key in client.scan_iter(match="tc:*:lease:*"):
        if isinstance(key, bytes) and key.endswith(suffix):
            return key
    return None


async def lease_pttl_ms(client: redis.asyncio.Redis, shard_range: tuple[int, int]) -> int:
    """PTTL of the range's lease key, -2 when there is none."""
    key = await lease_key(client, shard_range)
    return -2 if key is None else int(await client.pttl(key))


async def wait_role(
    http: aiohttp.ClientSession,
    health: str,
    role: str,
    shards: int,
    timeout: float,  # noqa: ASYNC109
    child: Child,
) -> None:
    """Poll ``/health`` until ``role`` (an owner: with ``shards`` READY and answering 200)."""
    deadline = time.monotonic() + timeout
    while True:
        if child.proc.returncode is not None:
            raise ChildError(f"{child.name} exited: {await child.stderr_tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with http.get(
                f"http://{health}/health", timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                body = await r.json(content_type=None)
                if (
                    r.status == 200
                    and body.get("role") == role
                    and (role != "owner" or body.get("shards_ready") == shards)
                ):
                    return
        if time.monotonic() > deadline:
            raise ChildError(f"{child.name}: not {role} in {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def takeover_once(
    sizes: RedisSizes, server: RedisServer, http: aiohttp.ClientSession
) -> dict[str, float]:
    from cluster.planner import host_ranges

    n = sizes.takeover_shards
    timing = lease_timing(sizes.lease_args)
    ranges = host_ranges(n, 2)
    victim = ranges[1]
    victim_shards = set(range(victim[0], victim[1] + 1))
    url = db_url(server, "takeover")
    await flush(url)
    sim, rest, _gateway = await start_simulator(
        token=TOKEN,
        privileged_intents=PRIVILEGED_INTENTS,
        shards=n,
        max_concurrency=sizes.takeover_mc,
        identify_window_s=TAKEOVER_INTERVAL_S,
        event_rate=sizes.takeover_rate,
        guilds=0,
        record_dispatches=False,
        session_start_total=100_000,
    )
    record_url = rest.split("/api/", 1)[0] + "/_sim/record"
    client = redis.asyncio.Redis.from_url(url)
    hosts: list[Child] = []
    dirs: list[str] = []

    async def host(index: int | None) -> tuple[Child, str]:
        health = f"127.0.0.1:{free_port()}"
        dirs.append(tempfile.mkdtemp(prefix=f"bench-redis-host{index}-"))
        extra = ["--redis", url, "--shard-ids", "auto", "--hosts", "2"]
        if index is not None:
            extra += ["--host-index", str(index)]
        child = await start_cluster(
            rest,
            f"tcp://127.0.0.1:{free_port()}",
            workers=None,
            health=health,
            interval=TAKEOVER_INTERVAL_S,
            shards=n,
            state_dir=dirs[-1],
            extra=[*extra, *sizes.lease_args],
        )
        child.name = "cluster (spare)" if index is None else f"cluster (owner {index})"
        hosts.append(child)
        return child, health

    try:
        (o0, h0), (o1, h1) = await asyncio.gather(host(0), host(1))
        # the spare starts once both owners hold their leases: it would take any free range
        deadline = time.monotonic() + 60
        while min([await lease_pttl_ms(client, r) for r in ranges]) <= 0:
            for child in (o0, o1):
                if child.proc.returncode is not None:
                    raise ChildError(f"{child.name} exited: {await child.stderr_tail()}")
            if time.monotonic() > deadline:
                raise ChildError("the owners took no lease in 60 s")
            await asyncio.sleep(0.05)
        spare, hs = await host(None)
        await asyncio.gather(
            wait_role(http, h0, "owner", ranges[0][1] - ranges[0][0] + 1, 90, o0),
            wait_role(http, h1, "owner", len(victim_shards), 90, o1),
            wait_role(http, hs, "spare", 0, 60, spare),
        )
        await asyncio.sleep(sizes.settle_s)  # events flowing, sessions checkpointed
        # kill right after a renewal: the lease then has (almost) its whole TTL to run
        ttl_ms = timing["ttl"] * 1000
        deadline = time.monotonic() + timing["renew"] * 3 + 5
        last = await lease_pttl_ms(client, victim)
        while True:
            pttl = await lease_pttl_ms(client, victim)
            if pttl > last + 100 or pttl > ttl_ms - 50:
                break
            if time.monotonic() > deadline:
                raise ChildError(f"the lease of shards {victim} was not renewed (PTTL {pttl})")
            last = pttl
            await asyncio.sleep(0.01)
        key = await lease_key(client, victim)
        held_by = await client.get(key) if key is not None else None
        os.killpg(o1.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        lease_left = pttl / 1000 if pttl > 0 else math.nan
        owner_at = taken_at = math.nan
        deadline = killed_at + timing["ttl"] + timing["wait"] + 60
        while True:
            record = await get_json(http, record_url)
            resumed: dict[int, float] = {}
            for r in record["resumes"]:
                if (
                    r["outcome"] == "accepted"
                    and r["at"] > killed_at
                    and r["shard_id"] in victim_shards
                ):
                    resumed.setdefault(int(r["shard_id"]), float(r["at"]))
            if len(resumed) == len(victim_shards):
                break
            if math.isnan(taken_at) and key is not None:
                holder = await client.get(key)
                if holder is not None and holder != held_by:
                    taken_at = time.monotonic() - killed_at  # the spare holds the lease
            if math.isnan(owner_at):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    body = await get_json(http, f"http://{hs}/health")
                    if body.get("role") == "owner":
                        owner_at = time.monotonic() - killed_at
            if spare.proc.returncode is not None:
                raise ChildError(f"the spare exited: {await spare.stderr_tail()}")
            if time.monotonic() > deadline:
                raise ChildError(
                    f"takeover: {len(resumed)} of {len(victim_shards)} shards RESUMED in"
                    f" {deadline - killed_at:.0f} s"
                )
            await asyncio.sleep(0.05)
        after = [i for i in record["identifies"] if i["at"] > killed_at]
        refused = [
            r
            for r in record["resumes"]
            if r["at"] > killed_at and r["outcome"] != "accepted" and r["shard_id"] in victim_shards
        ]
    finally:
        await asyncio.gather(*(child.stop(timeout=10.0) for child in hosts))
        await sim.stop(timeout=5.0)
        await client.aclose()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    return {
        "seconds": max(resumed.values()) - killed_at,
        "first_resume_s": min(resumed.values()) - killed_at,
        "lease_left_s": lease_left,
        "lease_taken_s": taken_at,
        "spare_owner_s": owner_at,
        "identifies": float(len(after)),
        "resumed": float(len(resumed)),
        "resume_refused": float(len(refused)),
        "shards": float(len(victim_shards)),
        "target_s": timing["ttl"] + timing["wait"] + 2.0,
        "load1": os.getloadavg()[0],
    }


# -- the benchmark ------------------------------------------------------------------------


async def bench_identify(
    res: Results, sizes: RedisSizes, server: RedisServer, http: aiohttp.ClientSession
) -> None:
    for rep in range(res.repeat):
        try:
            ident = await identify_once(sizes, server, http)
        except Exception as exc:  # any failure is reported; the other parts still run
            res.errors.append(f"redis/identify: {exc!r}")
            log(f"redis identify: FAILED {exc!r}")
        else:
            res.redis.setdefault("identify", []).append(ident)
            log(
                f"redis identify #{rep + 1}: {ident['granted']:.0f} granted of"
                f" {ident['asked']:.0f} asked, mean {ident['mean_ms']:.2f} ms, max"
                f" {ident['max_ms']:.2f} ms; all READY in {ident['total_s']:.2f} s,"
                f" op 9 {ident['rate_limited']:.0f}"
            )
        try:
            micro = await micro_once(sizes, server)
        except Exception as exc:
            res.errors.append(f"redis/micro: {exc!r}")
            log(f"redis micro: FAILED {exc!r}")
            continue
        res.redis.setdefault("micro", []).append(micro)
        log(
            f"redis micro #{rep + 1}: try_identify p50 {micro['p50_us']:.0f} µs, p99"
            f" {micro['p99_us']:.0f} µs, max {micro['max_us']:.0f} µs (PING p50"
            f" {micro['ping_p50_us']:.0f} µs)"
        )


async def bench_takeover(
    res: Results, sizes: RedisSizes, server: RedisServer, http: aiohttp.ClientSession
) -> None:
    from cluster.config import host_ordinal

    if host_ordinal(socket.gethostname()) is not None:
        # a supervisor without --host-index takes its index from such a name: no spare
        why = f"the host name {socket.gethostname()!r} ends in -N (read as --host-index)"
        res.skipped["redis takeover"] = why
        log(f"skipping redis takeover: {why}")
        return
    for rep in range(res.repeat):
        try:
            take = await takeover_once(sizes, server, http)
        except Exception as exc:
            res.errors.append(f"redis/takeover: {exc!r}")
            log(f"redis takeover: FAILED {exc!r}")
            continue
        res.redis.setdefault("takeover", []).append(take)
        log(
            f"redis takeover #{rep + 1}: every shard RESUMED {take['seconds']:.2f} s after the"
            f" SIGKILL (lease left {take['lease_left_s']:.2f} s, spare owner after"
            f" {take['spare_owner_s']:.2f} s), {take['identifies']:.0f} IDENTIFY"
        )


async def bench_redis(
    res: Results,
    http: aiohttp.ClientSession,
    command: str,
    parts: Sequence[str] | None = None,
) -> None:
    """Every part (or ``parts``) against one redis-server (a database each); ``--quick``
    runs them at once."""
    from scripts.bench.sink_bench import bench_sink

    why = redis_unavailable()
    if why is not None:
        res.skipped["redis"] = why
        log(f"skipping redis: {why}")
        return
    chosen = [p for p in PARTS if parts is None or p in parts]
    sizes = QUICK if res.quick else FULL
    head, dirty, digest = code_state()
    snapshot = procs.CODE_DIR is not None
    runtime = ("cluster/", "worker/", "protocol/", "simulator/")
    dirty = [f for f in dirty if f.startswith(runtime)]
    res.redis.update(
        commit=head,
        snapshot=snapshot,
        # what the children ran beyond the commit (nothing with --head)
        uncommitted=[] if snapshot else dirty,
        sizes=dataclasses.asdict(sizes),
        lease=lease_timing(sizes.lease_args),
        command=command,
        measured_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{report.cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
        redis_version=redis_server_version(),
        pub_hwm=PUB_HWM,
        parts=chosen,
    )
    server = start_redis()
    try:
        log(f"redis-server {server.url} (pid {server.pid}); parts {', '.join(chosen)}")
        steps = {
            "cpu": lambda: bench_cpu(res, sizes, server, http),
            "identify": lambda: bench_identify(res, sizes, server, http),
            "takeover": lambda: bench_takeover(res, sizes, server, http),
            "sink": lambda: bench_sink(res, server, http, command),
        }
        if res.quick:  # the smoke test: every path, tiny, at once (the figures mean nothing)
            await asyncio.gather(*(steps[p]() for p in chosen))
        else:  # one at a time: nothing else competes for the 2 cores
            for p in chosen:
                await steps[p]()
    finally:
        server.close()
    in_process = [f for f in dirty if f.startswith("cluster/state/redis")]
    if snapshot and in_process:
        res.notes.append(
            "redis, micro: the micro-benchmark runs in the benchmark's own process, on the"
            f" working tree's {', '.join(in_process)} (uncommitted changes), not on the commit"
        )
    if not snapshot and code_state()[2] != digest:  # cluster up imports the working tree
        res.notes.append(
            "redis: the working tree changed while this benchmark ran (other edits):"
            " its runs did not all measure the same code"
        )


def merge_parts(res: Results, old: dict[str, Any]) -> None:
    """``--merge`` after a run of some parts: the other parts' figures from the earlier JSON.

    Their notes come along, and when this run measured none of cpu, identify and takeover
    the section's description of the run (command, commit, sizes, ...) stays the earlier
    run's: it is theirs. The sink part describes its own run (``sink_meta``).
    """
    prev: dict[str, Any] = old.get("redis") or {}
    now = res.redis
    measured = set(now.get("parts") or PARTS)
    for part, keys in PART_KEYS.items():
        if part in measured:
            continue
        for key in keys:
            if key in prev:
                now[key] = prev[key]
    earlier_run = not measured & {"cpu", "identify", "takeover"}
    if earlier_run:
        for key in RUN_KEYS:
            if key in prev:
                now[key] = prev[key]
    now["parts"] = [p for p in PARTS if p in measured or any(k in prev for k in PART_KEYS[p])]

    def part_of(note: str) -> str | None:
        head = note.split(":", 1)[0].split(",")
        if head[0].strip() != "redis":
            return None
        name = head[1].strip().split()[0] if len(head) > 1 and head[1].strip() else ""
        return {"micro": "identify"}.get(name, name)

    kept = []
    for note in old.get("notes", []):
        which = part_of(note)
        if which is None or note in res.notes:
            continue
        if (which in PARTS and which not in measured) or (which not in PARTS and earlier_run):
            kept.append(note)
    res.notes = kept + res.notes
    if earlier_run:
        res.notes.append(
            f"redis: this run measured only {', '.join(sorted(measured))} (`--redis-parts`);"
            " the other Redis subsections are an earlier run's (the command above them)."
        )
    res.notes = list(dict.fromkeys(res.notes))  # a note merged again is said once
