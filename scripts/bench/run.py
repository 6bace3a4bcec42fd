"""``python -m scripts.bench``: every benchmark of issue 5, repeated, written to docs/BENCHMARKS.md.

Benchmarks (``--only`` takes these names):

- ``throughput``: CPU seconds per event of the receiving process tree and
  events/s, 16 shards, the firehose's pre-generated zlib-stream (simulator/firehose.py)
  served as fast as each receiver reads: the floor loop, our worker alone,
  the cluster (``cluster up``, when it exists), discord.py, hikari, @discordjs/ws.
- ``latency``: p50/p99/p99.9 from the load source's send (``d._sent_ns``) to the
  consumer's receive at 1k, 10k and 50k events/s.
- ``startup``: 1,024 shards, max_concurrency 16, identify interval 0.05 s,
  against the full simulator: time to all READY vs ``(ceil(N/mc) - 1) * interval``.
- ``memory``: memory (PSS) per idle connected shard at 1,000 shards (zlib-stream).
- ``recovery``: a worker SIGKILLed, time until every shard RESUMED.
- ``redis``: ``cluster up --redis`` (scripts/bench/redis_bench.py): CPU per
  event with and without ``--redis`` at a paced 16,000 events/s (runs
  interleaved), identify grant latency through Redis (``/status`` and a
  micro-benchmark of the grant script), and a host SIGKILLed until a spare
  has RESUMED every shard of its range; the Redis Streams sink (``--sink
  redis``, msgpack and JSON): CPU per event and the most it appends
  (scripts/bench/sink_bench.py). ``--redis-parts`` picks some of these.
- ``reshard``: ``cluster up`` on 1,024 shards (max_concurrency 16, identify
  interval 0.05 s, events flowing) asked to reshard to 2,048
  (scripts/bench/reshard_bench.py): time to the switch against the new set's
  identify schedule, events lost and duplicated across it, the peak RSS of the overlap.
- ``gateway``: the gateway endpoint (``cluster up --gateway``,
  scripts/bench/gateway_cost.py): the supervisor's CPU per event per connected
  client (1 and 4 clients, zlib-stream and none), cache memory per guild, and
  what a cache save costs.

Each figure is measured ``--repeat`` times, the receivers interleaved so a
change of machine load hits all of them alike; the report gives the median,
the spread ((max - min) / median) and the load average seen. ``--quick`` runs
every path with tiny sizes (the CI smoke test) and skips receivers that are
not installed, saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import math
import os
import random
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from cluster.config import DEFAULT_PUB_HWM
from protocol.intents import PRIVILEGED_INTENTS
from scripts.bench import report
from scripts.bench.procs import REPO, Child, ChildError, stop_all, tree_cpu, tree_pss, tree_rss
from scripts.bench.stats import percentile
from simulator import discord_shaped_token

#: Discord-shaped (hikari reads the bot id from it); never a real one.
TOKEN = discord_shaped_token(1_234_567_890_123_456_789)
#: GUILDS | GUILD_MESSAGES | GUILD_PRESENCES | MESSAGE_CONTENT
INTENTS = 1 | 512 | 256 | 32768
NODE_DIR = REPO / "scripts" / "bench" / "node"
RECEIVERS = ("floor", "worker", "cluster", "discord.py", "hikari", "discordjs-ws")
BENCHMARKS = (
    "throughput",
    "latency",
    "startup",
    "memory",
    "recovery",
    "redis",
    "reshard",
    "gateway",
)
#: receiver -> py-spy output file (``--profile DIR``); the CPU figures include py-spy then.
PROFILE: dict[str, Path] = {}


@dataclass(frozen=True, slots=True)
class Sizes:
    shards: int
    events_per_shard: int
    latency_rates: tuple[int, ...]
    latency_seconds: float
    startup_shards: int
    startup_mc: int
    startup_interval: float
    memory_shards: int
    memory_baseline_shards: int
    #: wait after every shard is READY before measuring
    settle_s: float
    recovery_shards: int
    #: dispatches per second per shard while a worker is killed
    recovery_rate: float


FULL = Sizes(16, 20_000, (1_000, 10_000, 50_000), 5.0, 1024, 16, 0.05, 1000, 16, 0.5, 64, 20.0)
QUICK = Sizes(4, 2_000, (1_000,), 0.3, 16, 16, 0.05, 32, 16, 0.1, 16, 20.0)
#: max_concurrency of the memory benchmark (a divisor of both of its shard counts)
MEMORY_MC = 8
#: Added to the identify interval of the lone worker's in-process permits: the
#: simulator measures spacing on arrival, so exact spacing gets op 9 on a loaded machine.
WORKER_PERMIT_MARGIN_S = 0.01
#: The cluster's PUB high-water mark in the benchmarks (events per subscriber): the
#: default users get; BENCH_PUB_HWM overrides it.
PUB_HWM = int(os.environ.get("BENCH_PUB_HWM", str(DEFAULT_PUB_HWM)))


@dataclass
class Results:
    sizes: Sizes
    quick: bool
    repeat: int
    #: receiver -> {"cpu_us": Figure samples, "eps": ..., "pss_mb": ..., "paced_cpu_us": ...}
    throughput: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: the cluster's ``--pub-hwm`` in the throughput and latency runs (events per subscriber)
    pub_hwm: int = PUB_HWM
    latency: dict[str, dict[int, list[dict[str, float]]]] = field(default_factory=dict)
    startup: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    memory: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    recovery: list[dict[str, float]] = field(default_factory=list)
    #: the ``redis`` benchmark (scripts/bench/redis_bench.py): sizes, command, samples by part
    redis: dict[str, Any] = field(default_factory=dict)
    #: the ``reshard`` benchmark (scripts/bench/reshard_bench.py): sizes, command, runs
    reshard: dict[str, Any] = field(default_factory=dict)
    #: the ``gateway`` benchmark (scripts/bench/gateway_cost.py): CPU, cache memory, saves
    gateway: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    load: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- availability ------------------------------------------------------------------


def cluster_up_available() -> str | None:
    """None when ``cluster up`` can run a supervisor, else why not."""
    if importlib.util.find_spec("cluster.supervisor") is None:
        return "cluster/supervisor.py does not exist yet (cluster up has not landed)"
    return None


def unavailable(receiver: str) -> str | None:
    """Why a receiver cannot run here, or None."""
    if receiver == "cluster":
        return cluster_up_available()
    if receiver == "discord.py" and importlib.util.find_spec("discord") is None:
        return "discord.py is not installed"
    if receiver == "hikari" and importlib.util.find_spec("hikari") is None:
        return "hikari is not installed (pip install hikari)"
    if receiver == "discordjs-ws":
        if shutil.which("node") is None:
            return "node is not installed"
        if not (NODE_DIR / "node_modules" / "@discordjs" / "ws").exists():
            return f"@discordjs/ws is not installed (cd {NODE_DIR} && npm install)"
    return None


# -- the load sources ------------------------------------------------------------------


class Firehose:
    """The firehose in its own process, with its HTTP control."""

    def __init__(self, child: Child, port: int, http: aiohttp.ClientSession) -> None:
        self.child = child
        self.port = port
        self.http = http

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"{self.base}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @classmethod
    async def start(cls, shards: int, events: int, http: aiohttp.ClientSession) -> Firehose:
        child = await Child.python(
            "firehose",
            "simulator.firehose",
            "--shards",
            str(shards),
            "--events",
            str(events),
            "--token",
            TOKEN,
        )
        port = int(await child.expect("PORT ", 120))
        return cls(child, port, http)

    async def status(self) -> dict[str, int]:
        async with self.http.get(self.base + "/_fh/status") as r:
            body: dict[str, int] = await r.json()
            return body

    async def wait(self, pred: Callable[[dict[str, int]], bool], timeout: float, what: str) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while True:
            st = await self.status()
            if pred(st):
                return
            if time.monotonic() > deadline:
                raise ChildError(f"firehose: {what} not reached in {timeout} s: {st}")
            await asyncio.sleep(0.05)

    async def go(self, **body: Any) -> None:
        async with self.http.post(self.base + "/_fh/go", json=body) as r:
            r.raise_for_status()

    async def sent_ns(self) -> array[int]:
        """Send times of the last paced stream, by key (simulator/firehose.py)."""
        async with self.http.get(self.base + "/_fh/sent") as r:
            r.raise_for_status()
            out: array[int] = array("q")
            out.frombytes(await r.read())
            return out


async def start_receiver(
    name: str, fh: Firehose, shards: int, expect: int, sink: str | None
) -> Child:
    if name == "floor":
        assert sink is not None
        return await Child.python(
            "floor", "scripts.bench.floor", fh.gateway_url, str(shards), TOKEN, sink
        )
    if name == "worker":
        assert sink is not None
        return await Child.python(
            "worker", "scripts.bench.worker_proc", fh.gateway_url, str(shards), TOKEN, sink
        )
    if name == "discord.py":
        # the firehose enforces no identify spacing: discord.py's 5 s between shards is skipped
        return await Child.python(
            "discord.py",
            "scripts.bench.dpy_recv",
            fh.rest_url,
            fh.gateway_url,
            str(shards),
            TOKEN,
            str(expect),
            "0",
        )
    if name == "hikari":
        return await Child.python(
            "hikari", "scripts.bench.hikari_recv", fh.rest_url, str(shards), TOKEN, str(expect)
        )
    if name == "discordjs-ws":
        return await Child.start(
            "discordjs-ws",
            [
                "node",
                str(NODE_DIR / "receiver.mjs"),
                fh.rest_url,
                fh.gateway_url,
                str(shards),
                TOKEN,
                str(expect),
            ],
            cwd=NODE_DIR,
        )
    if name == "cluster":
        assert sink is not None
        return await start_cluster(fh.rest_url, sink)
    raise ValueError(f"unknown receiver {name}")


def sink_endpoint(receiver: str) -> str:
    """Where the sink listens (PULL binds any port) or connects (SUB: the cluster's PUB)."""
    return f"tcp://127.0.0.1:{free_port()}" if receiver == "cluster" else "tcp://127.0.0.1:*"


# Below Linux's ephemeral range (32768-60999): a port the kernel handed out for
# "any free port" is also one it may give the next outgoing connection before
# the cluster binds it (a CI run lost the redis identify part to that).
LISTEN_PORTS = range(20000, 32000)


def free_port() -> int:
    """A loopback TCP port free now, outside the range outgoing connections draw from."""
    for _ in range(200):
        port = random.choice(LISTEN_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS}")


async def start_cluster(
    rest_url: str,
    pub: str,
    workers: int | None = 1,
    health: str | None = None,
    interval: float = 0.01,
    shards: int | None = None,
    state_dir: str | None = None,
    extra: Sequence[str] = (),
) -> Child:
    """``cluster up`` (supervisor + worker processes) against ``rest_url``, publishing on ``pub``.

    ``workers=None`` leaves the count to ``cluster up`` (its default: what users run);
    ``shards=None`` takes Discord's (the simulator's) recommendation; ``extra`` is
    appended to the command line (e.g. ``--redis URL``).
    """
    state = state_dir
    if state is None:
        state = tempfile.mkdtemp(prefix="bench-cluster-")
        STATE_DIRS.append(state)  # removed when the command ends
    argv = [
        sys.executable,
        "-c",
        "from cluster.cli import main; main()",
        "up",
        "--token",
        TOKEN,
        "--api-url",
        rest_url,
        "--intents",
        str(INTENTS),
        "--pub",
        pub,
        "--control",
        f"tcp://127.0.0.1:{free_port()}",
        "--health",
        health or f"127.0.0.1:{free_port()}",
        "--state-dir",
        state,
        "--identify-interval",
        str(interval),
        # stated in the report; what the SUB client misses beyond it is counted (notes)
        "--pub-hwm",
        str(PUB_HWM),
    ]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if shards is not None:
        argv += ["--shards", str(shards)]
    argv += extra
    return await Child.start("cluster", argv)


SINK_MODE = {"floor": "floor", "worker": "ipc", "cluster": "sub"}
#: State dirs start_cluster made itself: removed at the end of the command.
STATE_DIRS: list[str] = []


PACED_RATE_PER_SHARD = report.PACED_RATE_PER_SHARD


@dataclass
class Streamed:
    """One receiver's run of a stream: CPU per event, its rate, its tree's peak PSS."""

    cpu_us: float
    eps: float
    peak_pss: int


async def _peak_pss(pid: int, peak: list[int]) -> None:
    """Sample the tree's PSS every 0.1 s into ``peak[0]`` until cancelled."""
    while True:
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], tree_pss(pid))
        await asyncio.sleep(0.1)


async def throughput_once(name: str, fh: Firehose, sizes: Sizes, paced: bool = False) -> Streamed:
    """One receiver on the whole pre-generated stream (flat out), or ``paced`` at
    :data:`PACED_RATE_PER_SHARD` per shard for ``sizes.latency_seconds``."""
    shards = sizes.shards
    per_shard = (
        int(PACED_RATE_PER_SHARD * sizes.latency_seconds) if paced else sizes.events_per_shard
    )
    total = shards * per_shard
    await fh.wait(lambda s: s["ready"] == 0 and s["streaming"] == 0, 30, "idle")
    sink: Child | None = None
    receiver: Child | None = None
    try:
        endpoint = None
        if name in SINK_MODE:
            sink = await Child.python(
                "sink", "scripts.bench.sink", SINK_MODE[name], sink_endpoint(name), str(total)
            )
            endpoint = await sink.expect("BOUND ", 30)
        receiver = await start_receiver(name, fh, shards, total, endpoint)
        await fh.wait(lambda s: s["ready"] == shards, 60, f"{shards} shards ready")
        await asyncio.sleep(
            sizes.settle_s
        )  # the handshake's tail (READY handling) is not the stream
        spies = await _profilers(name, receiver.pid, paced)
        if spies:
            await asyncio.sleep(1.0)  # attached (its CPU is not in the receiver's tree)
        peak = [tree_pss(receiver.pid)]
        sampler = asyncio.create_task(_peak_pss(receiver.pid, peak))
        if paced:  # answers once the paced frames are ready: the stream starts then
            await fh.go(rate=PACED_RATE_PER_SHARD * shards, count=per_shard)
        cpu0 = tree_cpu(receiver.pid)
        t0 = time.monotonic_ns()
        if not paced:
            await fh.go()
        timeout = 60 + total * 300e-6
        try:
            line = await (sink or receiver).expect("DONE ", timeout)
            cpu1 = tree_cpu(receiver.pid)
        finally:
            sampler.cancel()
        for spy in spies:
            await spy.interrupt()
        n, t1 = (int(x) for x in line.split()[:2])
        if n < total:
            if name != "cluster":
                raise ChildError(f"{name}: {n} of {total} events")
            key = f"throughput{' paced' if paced else ''}, {name}"
            DROPPED.setdefault(key, []).append(total - n)
        # CPU per event relayed (all of them); events/s as received
        return Streamed((cpu1 - cpu0) / total * 1e6, n / ((t1 - t0) / 1e9), peak[0])
    finally:
        for child in (receiver, sink):
            if child is not None:
                await child.stop(timeout=1.0)  # a drain is not measured
        if receiver is not None:
            LAST_STDERR[name] = receiver.stderr


async def _profilers(name: str, pid: int, paced: bool) -> list[Child]:
    """py-spy on the receiver (``--profile``), one per process of its tree (the cluster:
    the supervisor, its workers), raw stacks to ``PROFILE[name]`` with the process
    and, paced, ``-paced`` in the name."""
    path = PROFILE.get(name)
    if path is None:
        return []
    mode = "-paced" if paced else ""
    spies = [await Child.py_spy(pid, path.with_name(f"{path.stem}{mode}.txt"))]
    for kid in psutil.Process(pid).children(recursive=True):
        out = path.with_name(f"{path.stem}{mode}-{kid.pid}.txt")
        spies.append(await Child.py_spy(kid.pid, out))
    return spies


#: receiver -> events the SUB client did not get, per run (the PUB drops at its high-water mark)
DROPPED: dict[str, list[int]] = {}
#: receiver -> the end of its stderr in its last run (for failures)
LAST_STDERR: dict[str, str] = {}


async def bench_throughput(res: Results, receivers: list[str], http: aiohttp.ClientSession) -> None:
    sizes = res.sizes
    fh = await Firehose.start(sizes.shards, sizes.events_per_shard, http)
    try:
        for rep in range(res.repeat):
            for paced in (False, True):
                mode = f"paced {PACED_RATE_PER_SHARD * sizes.shards:,}/s" if paced else "flat out"
                for name in receivers:
                    try:
                        run = await throughput_once(name, fh, sizes, paced)
                    except ChildError as exc:
                        exc.add_note(LAST_STDERR.get(name, ""))
                        res.errors.append(f"throughput/{name} ({mode}): {exc}")
                        log(f"throughput {name} {mode}: FAILED {exc}\n{LAST_STDERR.get(name, '')}")
                        continue
                    fig = res.throughput.setdefault(name, {"cpu_us": [], "eps": []})
                    prefix = "paced_" if paced else ""
                    fig.setdefault(f"{prefix}cpu_us", []).append(run.cpu_us)
                    fig.setdefault(f"{prefix}eps", []).append(run.eps)
                    fig.setdefault(f"{prefix}pss_mb", []).append(run.peak_pss / 2**20)
                    log(
                        f"throughput {name} {mode} #{rep + 1}: {run.cpu_us:.1f} µs/event,"
                        f" {run.eps:,.0f} events/s, peak PSS {run.peak_pss / 2**20:.0f} MB"
                    )
    finally:
        await fh.child.stop()


# -- latency ---------------------------------------------------------------------------


async def latency_once(name: str, fh: Firehose, sizes: Sizes, rate: int) -> dict[str, float]:
    shards = sizes.shards
    per_shard = max(1, int(rate * sizes.latency_seconds / shards))
    total = per_shard * shards
    await fh.wait(lambda s: s["ready"] == 0 and s["streaming"] == 0, 30, "idle")
    sink: Child | None = None
    receiver: Child | None = None
    with tempfile.TemporaryDirectory(prefix="bench-lat-") as tmp:
        arrivals = Path(tmp) / "arrivals"
        try:
            sink = await Child.python(
                "sink",
                "scripts.bench.sink",
                SINK_MODE[name],
                sink_endpoint(name),
                str(total),
                "--latency",
                str(arrivals),
            )
            endpoint = await sink.expect("BOUND ", 30)
            receiver = await start_receiver(name, fh, shards, total, endpoint)
            await fh.wait(lambda s: s["ready"] == shards, 60, f"{shards} shards ready")
            await asyncio.sleep(sizes.settle_s)
            await fh.go(rate=rate, count=per_shard)  # answers once the frames are ready
            cpu0 = tree_cpu(receiver.pid)
            t0 = time.monotonic()
            done = await sink.expect("DONE ", 60 + sizes.latency_seconds * 3)
            cpu1 = tree_cpu(receiver.pid)
            elapsed = time.monotonic() - t0
            got = int(done.split()[0])
            if got < total:
                DROPPED.setdefault(f"latency, {name} at {rate}/s", []).append(total - got)
            await asyncio.wait_for(sink.proc.wait(), 30)  # the arrivals file is written
            lat = latency_summary(await fh.sent_ns(), arrivals.read_bytes())
        finally:
            for child in (receiver, sink):
                if child is not None:
                    await child.stop(timeout=1.0)
    lat["cpu_us"] = (cpu1 - cpu0) / total * 1e6
    lat["achieved_eps"] = total / elapsed
    return lat


def latency_summary(sent_ns: array[int], arrivals: bytes) -> dict[str, float]:
    """Percentiles (µs) of arrival - send per key: the sink's (keys, times) against the source's."""
    pairs: array[int] = array("q")
    pairs.frombytes(arrivals)
    half = len(pairs) // 2
    keys, times = pairs[:half], pairs[half:]
    lat = sorted(
        (at - sent_ns[key]) / 1000.0
        for key, at in zip(keys, times, strict=True)
        if 0 <= key < len(sent_ns) and sent_ns[key]
    )
    return {
        "n": len(lat),
        "p50": percentile(lat, 0.5),
        "p99": percentile(lat, 0.99),
        "p999": percentile(lat, 0.999),
        "max": lat[-1] if lat else math.nan,
    }


async def bench_latency(res: Results, receivers: list[str], http: aiohttp.ClientSession) -> None:
    sizes = res.sizes
    most = max(int(rate * sizes.latency_seconds / sizes.shards) for rate in sizes.latency_rates)
    fh = await Firehose.start(sizes.shards, max(most, 100), http)
    try:
        for rep in range(res.repeat):
            for rate in sizes.latency_rates:
                for name in receivers:
                    try:
                        lat = await latency_once(name, fh, sizes, rate)
                    except ChildError as exc:
                        res.errors.append(f"latency/{name}/{rate}: {exc}")
                        log(f"latency {name} {rate}/s: FAILED {exc}")
                        continue
                    res.latency.setdefault(name, {}).setdefault(rate, []).append(lat)
                    log(
                        f"latency {name} {rate}/s #{rep + 1}: p50 {lat['p50']:.0f} µs, "
                        f"p99 {lat['p99']:.0f} µs, p99.9 {lat['p999']:.0f} µs"
                    )
    finally:
        await fh.child.stop()


# -- startup and memory (the full simulator, its rules enforced) ------------------------


async def start_simulator(**config: Any) -> tuple[Child, str, str]:
    child = await Child.python("simulator", "scripts.bench.sim_proc", orjson.dumps(config).decode())
    line = await child.expect("URLS ", 60)
    rest, gateway = line.split()
    return child, rest, gateway


@dataclass
class Connected:
    """A simulator and a receiver with every shard READY (see :func:`connect_all`)."""

    sim: Child
    receiver: Child
    sink: Child | None
    #: seconds from the receiver's process start to the last READY
    total_s: float
    #: seconds from the first READY to the last
    span_s: float
    #: the cluster's worker processes (from its /status), else None
    workers: int | None = None
    state_dir: str | None = None
    #: the simulator's IDENTIFY outcomes (accepted, rate_limited, ...), when it told them
    identifies: dict[str, int] = field(default_factory=dict)

    async def stop(self) -> None:
        for child in (self.receiver, self.sink, self.sim):
            if child is not None:
                await child.stop(timeout=1.0)
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)


async def expect_alive(sink: Child, prefix: str, timeout: float, receiver: Child) -> str:  # noqa: ASYNC109
    """``sink.expect(prefix, timeout)``, failing at once should ``receiver`` exit first."""
    got = asyncio.ensure_future(sink.expect(prefix, timeout))
    died = asyncio.ensure_future(receiver.proc.wait())
    try:
        await asyncio.wait((got, died), return_when=asyncio.FIRST_COMPLETED)
    finally:
        died.cancel()
        if not got.done():
            got.cancel()
            with contextlib.suppress(asyncio.CancelledError, ChildError):
                await got
    if got.done() and not got.cancelled():
        return got.result()
    raise ChildError(
        f"{receiver.name} exited ({receiver.proc.returncode}) before the sink said {prefix!r}:"
        f" {await receiver.stderr_tail()}"
    )


async def cluster_workers(health: str) -> int | None:
    """How many worker processes the cluster behind ``health`` runs (its /status), or None."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError, ValueError):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(f"http://{health}/status") as r,
        ):
            return len((await r.json())["workers"])
    return None


async def identify_outcomes(rest_url: str) -> dict[str, int]:
    """How many IDENTIFYs the simulator accepted, refused as rate-limited (op 9), ... (its record)."""
    base = rest_url.split("/api/", 1)[0]
    out: dict[str, int] = {}
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError, ValueError, TypeError):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"{base}/_sim/record") as r,
        ):
            for ident in (await r.json())["identifies"]:
                out[str(ident["outcome"])] = out.get(str(ident["outcome"]), 0) + 1
    return out


async def connect_all(
    name: str, shards: int, mc: int, interval: float, cluster_workers_n: int | None = None
) -> Connected:
    """Start a simulator and ``name`` with ``shards`` shards; return when all are READY.

    worker and cluster: READY counted by a sink (the worker's PUSH; the cluster's
    PUB, as a SUB client); discord.py: by its own READY line. The cluster runs
    ``cluster_workers_n`` workers, by default as many as ``cluster up`` picks.
    Every child is stopped if anything fails.
    """
    sim, rest, gateway = await start_simulator(
        token=TOKEN,
        privileged_intents=PRIVILEGED_INTENTS,
        shards=shards,
        max_concurrency=mc,
        identify_window_s=interval,
        guilds=0,
        record_dispatches=False,
        heartbeat_interval_ms=41_250,
        session_start_total=100_000,  # Discord's default 1,000 a day would refuse shard 1,000 on
    )
    sink: Child | None = None
    receiver: Child | None = None
    state_dir: str | None = None
    workers: int | None = None
    try:
        if name in ("worker", "cluster"):
            sink = await Child.python(
                "sink",
                "scripts.bench.sink",
                SINK_MODE[name],
                sink_endpoint(name),
                str(shards),
                "--topic",
                "READY",
                "--idle-s",
                "60",
                "--hold",
            )
            endpoint = await sink.expect("BOUND ", 30)
            health = f"127.0.0.1:{free_port()}"
            if name == "cluster":
                state_dir = tempfile.mkdtemp(prefix="bench-cluster-")
            t0 = time.monotonic_ns()
            if name == "worker":
                receiver = await Child.python(
                    "worker",
                    "scripts.bench.worker_proc",
                    gateway,
                    str(shards),
                    TOKEN,
                    endpoint,
                    str(mc),
                    str(interval + WORKER_PERMIT_MARGIN_S),
                )
            else:
                # `cluster up` as users run it: its own worker count, its identify coordinator
                receiver = await start_cluster(
                    rest,
                    endpoint,
                    workers=cluster_workers_n,
                    health=health,
                    interval=interval,
                    shards=shards,
                    state_dir=state_dir,
                )
            first = int(await expect_alive(sink, "FIRST ", 120, receiver))
            done_line = await expect_alive(sink, "DONE ", 120 + shards * interval, receiver)
            count, done = (int(x) for x in done_line.split()[:2])
            if count < shards:
                raise ChildError(f"{name}: {count} of {shards} shards READY")
            if name == "cluster":
                workers = await cluster_workers(health)
        else:
            t0 = time.monotonic_ns()
            receiver = await Child.python(
                "discord.py",
                "scripts.bench.dpy_recv",
                rest,
                gateway,
                str(shards),
                TOKEN,
                "1000000000",
                str(interval),
            )
            done = int(await receiver.expect("READY ", 120 + shards * interval * 3))
            first = t0
        return Connected(
            sim,
            receiver,
            sink,
            (done - t0) / 1e9,
            (done - first) / 1e9,
            workers,
            state_dir,
            await identify_outcomes(rest),
        )
    except BaseException:
        for child in (receiver, sink, sim):
            if child is not None:
                await child.stop(timeout=1.0)
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
        raise


def identify_margin(interval: float) -> float:
    """The safety margin ``cluster up``'s identify scheduler adds to every bucket's interval."""
    from cluster.identify_scheduler import default_safety_margin

    return default_safety_margin(interval)


async def bench_startup(res: Results, receivers: list[str]) -> None:
    sizes = res.sizes
    n, mc, interval = sizes.startup_shards, sizes.startup_mc, sizes.startup_interval
    for rep in range(res.repeat):
        for name in receivers:
            try:
                conn = await connect_all(name, n, mc, interval)
            except ChildError as exc:
                res.errors.append(f"startup/{name}: {exc}")
                log(f"startup {name}: FAILED {exc}")
                continue
            await conn.stop()
            row = {"total_s": conn.total_s, "span_s": conn.span_s}
            if conn.identifies:
                row["identifies"] = float(sum(conn.identifies.values()))
                row["rate_limited"] = float(conn.identifies.get("rate_limited", 0))
            if name == "worker":
                row["margin_s"] = WORKER_PERMIT_MARGIN_S
            if name == "cluster":
                # buckets open one interval after the READY reached the supervisor (no fixed
                # margin: cluster/identify_scheduler.py answer_opens, the default margin)
                row["answer_opens"] = 1.0
                if conn.workers is not None:
                    row["workers"] = float(conn.workers)
            res.startup.setdefault(name, []).append(row)
            log(
                f"startup {name} #{rep + 1}: all READY after {conn.total_s:.2f} s"
                f" (first..last READY {conn.span_s:.2f} s"
                + (f", {conn.workers} workers" if conn.workers is not None else "")
                + (f", IDENTIFYs {conn.identifies}" if conn.identifies else "")
                + ")"
            )


def tree_size(pid: int) -> int:
    """Processes in the tree of ``pid`` (itself included)."""
    with contextlib.suppress(psutil.Error):
        return 1 + len(psutil.Process(pid).children(recursive=True))
    return 0


async def bench_memory(res: Results, receivers: list[str]) -> None:
    sizes = res.sizes
    for rep in range(res.repeat):
        for name in receivers:
            rss: dict[int, float] = {}
            extra: dict[str, float] = {}
            try:
                for shards in (sizes.memory_baseline_shards, sizes.memory_shards)[res.quick :]:
                    conn = await connect_all(name, shards, MEMORY_MC, 0.005)
                    try:
                        # idle: handshakes done, buffers settled
                        await asyncio.sleep(0.3 if res.quick else 2.0)
                        rss[shards] = float(tree_pss(conn.receiver.pid))
                        extra[f"rss_sum_mb_{shards}"] = tree_rss(conn.receiver.pid) / 2**20
                        extra[f"processes_{shards}"] = float(tree_size(conn.receiver.pid))
                        if conn.workers is not None:
                            extra[f"workers_{shards}"] = float(conn.workers)
                    finally:
                        await conn.stop()
            except ChildError as exc:
                res.errors.append(f"memory/{name}: {exc}")
                log(f"memory {name}: FAILED {exc}")
                continue
            big, small = sizes.memory_shards, sizes.memory_baseline_shards
            n_big, n_small = extra.get(f"workers_{big}"), extra.get(f"workers_{small}")
            if name == "cluster" and n_big is not None and n_small not in (None, n_big):
                # cluster up runs fewer workers for fewer shards: measure the small size once
                # more with the big size's worker count, for a marginal figure without the
                # extra processes' baseline
                try:
                    conn = await connect_all(name, small, MEMORY_MC, 0.005, int(n_big))
                    try:
                        await asyncio.sleep(2.0)
                        same = float(tree_pss(conn.receiver.pid))
                    finally:
                        await conn.stop()
                    extra["kb_per_shard_marginal_same_workers"] = (
                        (rss[big] - same) / (big - small) / 1024
                    )
                except ChildError as exc:
                    res.errors.append(f"memory/{name} ({n_big:.0f} workers at {small}): {exc}")
                    log(f"memory {name} at {small} with {n_big:.0f} workers: FAILED {exc}")
            per_total = rss[big] / big / 1024
            # quick mode measures one size only: no marginal figure
            marginal = (rss[big] - rss[small]) / (big - small) / 1024 if small in rss else math.nan
            res.memory.setdefault(name, []).append(
                {
                    "kb_per_shard_marginal": marginal,
                    "kb_per_shard_total": per_total,
                    "pss_mb": rss[big] / 2**20,
                    "pss_small_mb": rss[small] / 2**20 if small in rss else math.nan,
                    **extra,
                }
            )
            log(
                f"memory {name} #{rep + 1}: {marginal:.1f} KB per extra shard, PSS {rss[big] / 2**20:.0f} MB at {big}"
                + "".join(f", {k} {v:.0f}" for k, v in extra.items())
            )


# -- recovery (needs cluster up) ----------------------------------------------------------


async def _status(http: aiohttp.ClientSession, health: str) -> dict[str, Any]:
    async with http.get(f"http://{health}/status") as r:
        body: dict[str, Any] = await r.json()
        return body


async def recovery_once(sizes: Sizes, http: aiohttp.ClientSession) -> dict[str, float]:
    """SIGKILL the one worker of a cluster holding every shard; time until every shard RESUMED."""
    n = sizes.recovery_shards
    sim, rest, _gateway = await start_simulator(
        token=TOKEN,
        privileged_intents=PRIVILEGED_INTENTS,
        shards=n,
        max_concurrency=16,
        identify_window_s=0.05,
        event_rate=sizes.recovery_rate,
        record_dispatches=False,
    )
    pub = f"tcp://127.0.0.1:{free_port()}"
    health = f"127.0.0.1:{free_port()}"
    sink: Child | None = None
    cluster: Child | None = None
    try:
        sink = await Child.python("sink", "scripts.bench.sink", "sub", pub, "0", "--seqs")
        await sink.expect("BOUND ", 30)
        cluster = await start_cluster(rest, pub, workers=1, health=health, interval=0.05)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                st = await _status(http, health)
                if st["shards"] and all(s["state"] == "ready" for s in st["shards"]):
                    break
            if time.monotonic() > deadline:
                raise ChildError("cluster: shards not all ready in 60 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(2 * sizes.settle_s)  # events flowing
        [worker] = st["workers"]
        killed_at = time.monotonic_ns()
        os.kill(int(worker["pid"]), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                st = await _status(http, health)
                if all(s["state"] == "ready" and s["resumes"] >= 1 for s in st["shards"]):
                    break
            if time.monotonic() > deadline:
                raise ChildError("cluster: shards not all resumed in 60 s")
            await asyncio.sleep(0.02)
        await asyncio.sleep(2 * sizes.settle_s)  # later events prove nothing in between was lost
        await cluster.stop(timeout=10.0)
        cluster = None
        sink.proc.send_signal(signal.SIGTERM)
        seqs = orjson.loads(await sink.expect("SEQS ", 30))
        resumed = [t for _shard, t in seqs["resumed"] if t > killed_at]
        shards = seqs["shards"]
        return {
            "seconds": (max(resumed) - killed_at) / 1e9 if len(resumed) >= n else math.nan,
            "resumed": float(len(resumed)),
            "lost": float(sum(v["missing"] for v in shards.values())),
            "duplicates": float(sum(v["duplicates"] for v in shards.values())),
            "shards_seen": float(len(shards)),
        }
    finally:
        for child in (cluster, sink, sim):
            if child is not None:
                await child.stop(timeout=5.0)


async def bench_recovery(res: Results, http: aiohttp.ClientSession) -> None:
    why = cluster_up_available()
    if why is not None:
        res.skipped["recovery"] = why
        return
    for rep in range(res.repeat):
        try:
            r = await recovery_once(res.sizes, http)
        except ChildError as exc:
            res.errors.append(f"recovery: {exc}")
            log(f"recovery: FAILED {exc}")
            continue
        res.recovery.append(r)
        log(
            f"recovery #{rep + 1}: {r['seconds']:.2f} s to {r['resumed']:.0f} RESUMED,"
            f" {r['lost']:.0f} lost, {r['duplicates']:.0f} duplicates"
        )


# -- the command -------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> Results:
    sizes = QUICK if args.quick else FULL
    res = Results(sizes=sizes, quick=args.quick, repeat=args.repeat)
    only = set(args.only or BENCHMARKS)
    wanted = [r for r in RECEIVERS if not args.receivers or r in args.receivers]
    # receivers matter to these only (a run of recovery or redis alone skips no receiver)
    with_receivers = only & {"throughput", "latency", "startup", "memory"}
    receivers: list[str] = []
    for r in wanted:
        why = unavailable(r)
        if why is None:
            receivers.append(r)
        elif with_receivers:
            res.skipped[r] = why
            log(f"skipping {r}: {why}")
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
    async with aiohttp.ClientSession() as http:
        if "throughput" in only:
            steps.append(("throughput", lambda: bench_throughput(res, receivers, http)))
        if "latency" in only:
            lat_recv = [r for r in receivers if r in ("floor", "worker", "cluster")]
            steps.append(("latency", lambda: bench_latency(res, lat_recv, http)))
        if "startup" in only:
            steps.append(
                (
                    "startup",
                    lambda: bench_startup(
                        res, [r for r in receivers if r in ("worker", "cluster", "discord.py")]
                    ),
                )
            )
        if "recovery" in only:
            steps.append(("recovery", lambda: bench_recovery(res, http)))
        if "memory" in only:
            steps.append(
                (
                    "memory",
                    lambda: bench_memory(
                        res, [r for r in receivers if r in ("worker", "cluster", "discord.py")]
                    ),
                )
            )
        if "redis" in only:
            from scripts.bench import redis_bench

            command = "python -m scripts.bench " + " ".join(
                map(shlex.quote, getattr(args, "argv", []))
            )
            parts = getattr(args, "redis_parts", None)
            steps.append(("redis", lambda: redis_bench.bench_redis(res, http, command, parts)))
        if "reshard" in only:
            from scripts.bench import reshard_bench

            line = "python -m scripts.bench " + " ".join(
                map(shlex.quote, getattr(args, "argv", []))
            )
            steps.append(("reshard", lambda: reshard_bench.bench_reshard(res, http, line)))
        if "gateway" in only:
            from scripts.bench import gateway_cost

            gateway_line = "python -m scripts.bench " + " ".join(
                map(shlex.quote, getattr(args, "argv", []))
            )
            steps.append(("gateway", lambda: gateway_cost.bench_gateway(res, gateway_line)))
        try:
            for name, step in steps:
                res.load.append((f"before {name}", os.getloadavg()))
                log(f"== {name} (load average {os.getloadavg()[0]:.2f})")
                await step()
        finally:
            await stop_all()
            while STATE_DIRS:
                shutil.rmtree(STATE_DIRS.pop(), ignore_errors=True)
        res.load.append(("end", os.getloadavg()))
    for where, drops in DROPPED.items():
        res.notes.append(
            f"{where}: the SUB client missed {', '.join(map(str, drops))} events"
            " (dropped at the PUB high-water mark: the consumer in Python is slower than the relay)"
        )
    return res


def earlier_load(
    old: list[Any], now: list[tuple[str, tuple[float, float, float]]]
) -> list[tuple[str, tuple[float, float, float]]]:
    """The load averages an earlier run saw before the benchmarks this run did not measure.

    One entry per benchmark (a run merged several times keeps the latest), without the
    earlier runs' "end" entries: the machine line says what each figure shown was measured
    under, and no longer grows with every ``--merge``.
    """
    ran = {when for when, _ in now}
    kept = {when: (a, b, c) for when, (a, b, c) in old if when.startswith("before ")}
    return [(when, load) for when, load in kept.items() if when not in ran]


def merge(res: Results, old: dict[str, Any]) -> None:
    """Fill the benchmarks this run did not measure from an earlier run's JSON.

    The earlier run's notes come along unless they belong to a benchmark measured
    again now (a note names its benchmark first: ``"latency, cluster at ...: ..."``).
    """
    measured = {key for key in BENCHMARKS if getattr(res, key)}
    taken = []
    for key in ("throughput", "startup", "memory", "recovery", "redis", "reshard", "gateway"):
        if not getattr(res, key) and old.get(key):
            setattr(res, key, old[key])
            taken.append(key)
    if "throughput" in taken or not (res.throughput or res.latency):
        res.pub_hwm = int(old.get("pub_hwm", 400_000))  # runs before it was recorded: 400,000
    if not res.latency and old.get("latency"):
        res.latency = {k: {int(r): v for r, v in d.items()} for k, d in old["latency"].items()}
        taken.append("latency")
    for k, v in old.get("skipped", {}).items():
        res.skipped.setdefault(k, v)

    def current(note: str) -> bool:
        bench = note.split(",", 1)[0]
        if bench in BENCHMARKS:
            return bench not in measured
        # notes of runs before notes named their benchmark: drops at the PUB
        return "the SUB client missed" not in note or not {"throughput", "latency"} & measured

    merged_note = "figures of an earlier run (`--merge`)"
    kept = [n for n in old.get("notes", []) if current(n)]
    if taken and measured:  # this run says which figures are older: the earlier say drops
        kept = [n for n in kept if merged_note not in n]
    res.notes = kept + res.notes
    if taken and measured:
        res.notes.append(
            f"{', '.join(taken)}: {merged_note}; this run measured"
            f" {', '.join(sorted(measured))}. The Machine section describes the machine of"
            " this run: the earlier run's JSON does not record its own (the redis section"
            " names the machine it was measured on)."
        )
    if "redis" in measured and old.get("redis"):  # the redis parts not run now
        from scripts.bench.redis_bench import merge_parts

        merge_parts(res, old)


def _nan_for_null(value: Any) -> Any:
    """JSON writes NaN (a figure not measured) as null: read it back as NaN."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan_for_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return value


def render(path: Path, out: Path) -> None:
    """Write the markdown of an earlier run's ``--json`` output again (report changes)."""
    old = _nan_for_null(orjson.loads(path.read_bytes()))
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in old["sizes"].items()})
    res = Results(sizes, quick=sizes == QUICK, repeat=int(old.get("repeat", 3)))
    merge(res, old)
    res.load = [(str(w), (a, b, c)) for w, (a, b, c) in old.get("load", [])]
    res.errors = list(old.get("errors", []))
    from scripts.bench.sink_bench import with_sink

    text = report.markdown(res, float(old.get("elapsed_s", 0.0)), old.get("generated_at"))
    out.write_text(with_sink(text, res.redis))
    log(f"wrote {out}")


#: The packages children import; ``--head`` takes them from the committed tree.
RUNTIME_PACKAGES = ("cluster", "worker", "protocol", "simulator")


def head_snapshot() -> Path:
    """``git archive HEAD`` of the runtime packages into a temporary directory (read-only git)."""
    import subprocess

    from scripts.bench import procs

    out = Path(tempfile.mkdtemp(prefix="bench-head-"))
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD", *RUNTIME_PACKAGES],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    procs.CODE_DIR = out
    log(f"children run the committed HEAD's {', '.join(RUNTIME_PACKAGES)} from {out}")
    return out


def compile_bytecode() -> None:
    """Compile the children's modules to bytecode once, as installing the package does.

    pip compiles a package's modules when it installs it, and an editable install's are
    written on their first import; where ``PYTHONDONTWRITEBYTECODE`` is set (this
    machine; many container images, which then compile at build, see the Dockerfile)
    nothing is written, and every child would compile every module it imports again
    at each start: measured, 0.14 s more CPU for the supervisor's imports alone.
    """
    import compileall

    from scripts.bench import procs

    code = procs.CODE_DIR or REPO  # --head: the children's packages come from the snapshot
    for root in (*(code / package for package in RUNTIME_PACKAGES), REPO / "scripts"):
        compileall.compile_dir(root, quiet=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: tiny sizes, every path once"
    )
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--receivers", nargs="+", choices=RECEIVERS, help="only these receivers")
    parser.add_argument(
        "--redis-parts",
        nargs="+",
        choices=("cpu", "identify", "takeover", "sink"),
        help="redis: only these parts (with --merge the others keep the earlier figures)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per figure (default 3, quick 1)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="markdown output (default docs/BENCHMARKS.md; quick: none)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the raw samples as JSON"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="take the figures of benchmarks not run now from this earlier --json output",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="run nothing: write the markdown of this earlier --json output to --out",
    )
    parser.add_argument(
        "--head",
        action="store_true",
        help="run every child (cluster up, simulators, load sources, sinks) on the committed"
        " HEAD of cluster/ worker/ protocol/ simulator/ (a git archive snapshot), not on the"
        " working tree that others may be editing",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run floor/worker/cluster under py-spy (each process of the tree), raw stacks"
        " in DIR (redis sink: one extra profiled flood run per encoding)",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.render is not None:
        render(args.render, args.out or REPO / "docs" / "BENCHMARKS.md")
        return
    if args.profile is not None:
        for r in ("floor", "worker", "cluster"):
            PROFILE[r] = args.profile / f"{r}.txt"
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    started = time.time()
    # SIGTERM ends the run like Ctrl-C: the children are stopped on the way out
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    snapshot = head_snapshot() if args.head else None
    compile_bytecode()
    try:
        res = asyncio.run(run(args))
    finally:
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)
    if args.merge is not None:
        earlier = orjson.loads(args.merge.read_bytes())
        merge(res, earlier)
        res.load = earlier_load(earlier.get("load", []), res.load) + res.load
    out: Path | None = args.out
    if out is None and not args.quick:
        out = REPO / "docs" / "BENCHMARKS.md"
    elapsed = time.time() - started
    from scripts.bench.sink_bench import with_sink

    text = with_sink(report.markdown(res, elapsed), res.redis)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log(f"wrote {out}")
    if args.json is not None:
        args.json.write_text(report.to_json(res, elapsed))
    if args.quick:
        print(text)
    if res.errors:
        for e in res.errors:
            log(f"error: {e}")
        sys.exit(1)


__all__ = ["main", "run"]
