"""What the gateway endpoint costs: CPU per event per connected client, cache memory, cache saves.

    python -m scripts.bench.gateway_cost [--events 20000] [--runs 3] [--clients 1,4]
        [--compress zlib-stream,none] [--parts cpu,memory,save]

Also the ``gateway`` benchmark of ``python -m scripts.bench`` (:func:`bench_gateway`,
rendered by :func:`gateway_section` into docs/BENCHMARKS.md).

``cpu``: real processes: ``cluster simulate`` (2 shards) and ``cluster up --gateway``
on it (a fresh state dir per start). In this process, N raw gateway clients (aiohttp,
zlib-stream or no transport compression) identify for shard 0 and read every event.
Events are ``MESSAGE_CREATE`` (the cluster's default intents: no message content,
about 0.9 KB each) emitted on shard 0 through the simulator's admin API in bursts of
500. The figure is the supervisor process's own CPU time (user + system; its workers
are not counted) from the first burst until every client has the last event. Per run:
the cost with no gateway (``cluster up`` without ``--gateway``), with the endpoint and
no client, and with N clients per compression; ``us/event/client`` = (CPU with N - CPU
with none) / (events * N). Runs interleave; medians are reported. Absolute figures
move between machines.

``memory``: in this process, the guild cache of 200 simulator guilds (8 channels, 6
roles, 7 members) measured with tracemalloc, then with a message in each text channel
(noted, then written into the channels' JSON).

``save``: in this process, a :class:`cluster.endpoint.server.GatewayEndpoint`'s cache of
``--save-guilds`` simulator guilds over ``--save-shards`` shards saved as the periodic
save does (:meth:`GatewayEndpoint.save`), while a task measures how late the event
loop runs (a 1 ms timer): the save's duration, its file, and the loop's worst wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

CLUSTER = [sys.executable, "-c", "from cluster.cli import main; main()"]
BURST = 500


def _child() -> dict[str, Any]:
    """cwd and environment of a child: the working tree, or ``--head``'s snapshot of it
    (:data:`scripts.bench.procs.CODE_DIR`)."""
    from scripts.bench import procs

    if procs.CODE_DIR is None:
        return {}
    path = f"{procs.CODE_DIR}{os.pathsep}{procs.REPO}"
    return {"cwd": str(procs.CODE_DIR), "env": {**os.environ, "PYTHONPATH": path}}


async def wait_line(process: asyncio.subprocess.Process, needle: str, within_s: float) -> str:
    assert process.stderr is not None
    async with asyncio.timeout(within_s):
        while True:
            line = (await process.stderr.readline()).decode()
            if not line:
                raise RuntimeError("the process ended")
            if needle in line:
                return line


async def drain(process: asyncio.subprocess.Process) -> None:
    assert process.stderr is not None
    with contextlib.suppress(Exception):
        while await process.stderr.readline():
            pass


class Reader:
    """One raw client on shard 0 that counts MESSAGE_CREATEs."""

    def __init__(self, url: str, compress: str) -> None:
        self.url = url
        self.compress = compress
        self.count = 0
        self.done = asyncio.Event()
        self.target = 0
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        query = "v=10&encoding=json" + ("" if self.compress == "none" else "&compress=zlib-stream")
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{self.url}?{query}", max_msg_size=0) as ws,
        ):
            inflate = zlib.decompressobj()
            await ws.send_str(
                json.dumps(
                    {
                        "op": 2,
                        "d": {"token": "simulated-token", "intents": 513, "shard": [0, 2]},
                    }
                )
            )
            beat = asyncio.get_running_loop().time()
            async for msg in ws:
                data = msg.data
                raw = inflate.decompress(data) if isinstance(data, bytes) else data
                if not raw:
                    continue
                payload = orjson.loads(raw)
                if payload.get("t") == "READY":
                    self.ready.set()
                elif payload.get("t") == "MESSAGE_CREATE":
                    self.count += 1
                    if self.target and self.count >= self.target:
                        self.done.set()
                now = asyncio.get_running_loop().time()
                if now - beat > 10:
                    beat = now
                    await ws.send_str('{"op":1,"d":null}')


async def measure(
    sim_admin: str, api: str, gateway: bool, clients: int, events: int, compress: str
) -> float:
    """The supervisor's CPU seconds for ``events`` with ``clients`` readers."""
    where = tempfile.mkdtemp(prefix="tc-gw-bench-")
    args = [
        *CLUSTER,
        "up",
        "--api-url",
        api,
        "--token",
        "simulated-token",
        "--health",
        "127.0.0.1:0",
        "--pub",
        f"ipc://{where}/pub",
        "--control",
        f"ipc://{where}/control",
        "--state-dir",
        f"{where}/state",
        "--identify-interval",
        "0.1",
        "--compress",
        "none",
    ]
    if gateway:
        args += ["--gateway", "127.0.0.1:0"]
    process = await asyncio.create_subprocess_exec(
        *args,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        start_new_session=True,
        **_child(),
    )
    drainer: asyncio.Task[None] | None = None
    readers: list[Reader] = []
    try:
        url = ""
        if gateway:
            line = await wait_line(process, "gateway endpoint on", 30)
            url = line.split("gateway endpoint on ")[1].split(" ")[0]
        await wait_line(process, "shards ready in", 30)
        drainer = asyncio.create_task(drain(process))
        for _ in range(clients):
            reader = Reader(url, compress)
            reader.task = asyncio.create_task(reader.run())
            readers.append(reader)
        for reader in readers:
            await asyncio.wait_for(reader.ready.wait(), 20)
            reader.target = events
        await asyncio.sleep(0.5)
        supervisor = psutil.Process(process.pid)
        before = supervisor.cpu_times()
        async with aiohttp.ClientSession() as http:
            for _ in range(events // BURST):
                async with http.post(
                    f"{sim_admin}/emit",
                    json={"shard_id": 0, "count": BURST, "event_type": "MESSAGE_CREATE"},
                ) as response:
                    response.raise_for_status()
                await asyncio.sleep(0.02)
        for reader in readers:
            await asyncio.wait_for(reader.done.wait(), 120)
        if not readers:
            await asyncio.sleep(1.0)  # let the relay publish the last burst
        after = supervisor.cpu_times()
        return float((after.user + after.system) - (before.user + before.system))
    finally:
        for reader in readers:
            if reader.task is not None:
                reader.task.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        if drainer is not None:
            drainer.cancel()
        shutil.rmtree(where, ignore_errors=True)


async def measure_cpu(
    events: int,
    runs: int,
    clients: list[int],
    compresses: list[str],
    progress: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """Supervisor CPU seconds per configuration ("no --gateway", "0 clients", "N clients
    COMPRESS"), ``runs`` samples each, the configurations interleaved."""
    sim = await asyncio.create_subprocess_exec(
        *CLUSTER,
        "simulate",
        "--port",
        "0",
        "--shards",
        "2",
        "--identify-window",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
        **_child(),
    )
    assert sim.stdout is not None
    base = (await sim.stdout.readline()).decode().split("listening on ")[1].strip()
    results: dict[str, list[float]] = {}
    try:
        for run in range(runs):
            plan: list[tuple[str, bool, int, str]] = [
                ("no --gateway", False, 0, "none"),
                ("0 clients", True, 0, "none"),
            ]
            plan += [(f"{n} clients {c}", True, n, c) for c in compresses for n in clients]
            for name, gateway, n, compress in plan:
                cpu = await measure(f"{base}/_sim", f"{base}/api/v10", gateway, n, events, compress)
                results.setdefault(name, []).append(cpu)
                progress(f"gateway cpu #{run + 1} {name}: {cpu * 1e6 / events:.2f} us/event")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sim.pid, signal.SIGKILL)
        await sim.wait()
    return results


def cpu_figures(
    results: dict[str, list[float]], events: int, clients: list[int], compresses: list[str]
) -> dict[str, float]:
    """Medians: the tap with no client, and us per event per connected client."""
    median = {k: statistics.median(v) for k, v in results.items()}
    none = median["0 clients"]
    out = {
        "no_gateway_us": median["no --gateway"] * 1e6 / events,
        "no_client_us": none * 1e6 / events,
        "tap_us": (none - median["no --gateway"]) * 1e6 / events,
    }
    for c in compresses:
        for n in clients:
            out[f"{n}_{c}"] = (median[f"{n} clients {c}"] - none) * 1e6 / (events * n)
    return out


def cache_memory(guilds: int = 200) -> dict[str, float]:
    """Bytes per simulator guild held by the cache (tracemalloc), its own estimate
    (``nbytes``), the GUILD_CREATE's JSON; then with a message in each text channel."""
    from cluster.endpoint.cache import GuildCache
    from simulator.config import SimulatorConfig
    from simulator.events import BotIdentity, EventFactory

    factory = EventFactory(SimulatorConfig(guilds=guilds), BotIdentity("simulated-token", 0))
    creates = [orjson.loads(orjson.dumps(factory.guild_create(i))) for i in range(guilds)]
    messages = [
        {"guild_id": c["id"], "channel_id": ch["id"], "id": str(1_300_000_000_000_000_000 + n)}
        for n, c in enumerate(creates)
        for ch in c["channels"]
        if ch["type"] == 0
    ]
    ready = {"user": {"id": "1", "username": "bot"}, "guilds": [{"id": c["id"]} for c in creates]}
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = GuildCache()
        cache.apply(0, b"READY", ready)
        for create in creates:
            cache.apply(0, b"GUILD_CREATE", create)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        for message in messages:
            cache.apply(0, b"MESSAGE_CREATE", message)
        gc.collect()
        noted = tracemalloc.get_traced_memory()[0] - before
        cache.guild_creates(0)
        gc.collect()
        folded = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {
        "guilds": guilds,
        "channels": sum(len(c["channels"]) for c in creates) / guilds,
        "roles": sum(len(c["roles"]) for c in creates) / guilds,
        "members": sum(len(c["members"]) for c in creates) / guilds,
        "bytes": held / guilds,
        "estimate": cache.stats().nbytes / guilds,
        "json": sum(len(orjson.dumps(c)) for c in creates) / guilds,
        "noted": noted / guilds,
        "folded": folded / guilds,
    }


async def save_cost(guilds: int, shards: int) -> dict[str, float]:
    """A periodic save of ``guilds`` simulator guilds on ``shards`` shards, timed, with the
    event loop's worst lateness (a 1 ms timer) while it ran."""
    from cluster.endpoint.server import GatewayEndpoint
    from cluster.endpoint.settings import GatewaySettings
    from simulator.config import SimulatorConfig
    from simulator.events import BotIdentity, EventFactory

    factory = EventFactory(SimulatorConfig(guilds=guilds), BotIdentity("simulated-token", 0))
    endpoint = GatewayEndpoint(GatewaySettings("127.0.0.1", 0), "t", shards, 1)

    async def send(shard_id: int, payload: bytes) -> None:
        return None

    endpoint.attach_owner(send, shards, range(shards))
    cache = endpoint.cache
    for shard in range(shards):
        mine = range(shard, guilds, shards)
        ids = [{"id": str(factory.guild(i).id)} for i in mine]
        cache.apply(shard, b"READY", {"user": {"id": "1", "username": "bot"}, "guilds": ids})
        for i in mine:
            cache.apply(shard, b"GUILD_CREATE", orjson.loads(orjson.dumps(factory.guild_create(i))))
        endpoint.stamps[shard] = (1, 1000)
    where = Path(tempfile.mkdtemp(prefix="tc-gw-save-"))
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while not done.is_set():
            due = loop.time() + 0.001
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - due)

    try:
        times = []
        for _ in range(3):
            tick = asyncio.create_task(ticker())
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            await endpoint.save(where / "gateway-cache.msgpack")
            times.append(time.perf_counter() - started)
            done.set()
            await tick
            done.clear()
        size = (where / "gateway-cache.msgpack").stat().st_size
        late = worst
        # the same timer for as long with no save: what the machine's load alone costs
        worst = 0.0
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05 + 3 * max(times))
        done.set()
        await tick
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return {
        "guilds": guilds,
        "shards": shards,
        "seconds": statistics.median(times),
        "bytes": size,
        "loop_stall_ms": endpoint.stats.save_stall_s * 1000,
        "pump_hold_ms": endpoint.stats.save_hold_s * 1000,
        "loop_late_ms": late * 1000,
        "idle_late_ms": worst * 1000,
    }


async def bench_gateway(res: Any, command: str) -> None:
    """The ``gateway`` benchmark of ``python -m scripts.bench`` into ``res.gateway``."""
    import platform

    from scripts.bench import report
    from scripts.bench.redis_bench import code_state
    from scripts.bench.run import log

    quick = bool(res.quick)
    events, runs = (1_000, 1) if quick else (20_000, max(3, int(res.repeat)))
    clients, compresses = ([1], ["zlib-stream"]) if quick else ([1, 4], ["zlib-stream", "none"])
    head, dirty, _ = code_state()
    res.gateway.update(
        command=command,
        commit=head,
        uncommitted=[f for f in dirty if f.startswith(("cluster/", "worker/", "protocol/"))],
        measured_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{report.cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
        events=events,
        runs=runs,
        clients=clients,
        compresses=compresses,
    )
    samples = await measure_cpu(events, runs, clients, compresses, log)
    res.gateway["cpu_samples"] = samples
    res.gateway["cpu"] = cpu_figures(samples, events, clients, compresses)
    res.gateway["memory"] = cache_memory()
    log(f"gateway cache memory: {res.gateway['memory']['bytes']:.0f} bytes per guild")
    guilds, shards = (200, 1) if quick else (5_000, 2)
    res.gateway["save"] = await save_cost(guilds, shards)
    log(f"gateway cache save: {res.gateway['save']}")


#: gateway-proxy's only published figure (README "Performance", at c9d7e25, 2025-01-21).
GATEWAY_PROXY = (
    "gateway-proxy (Rust; Gelbpunkt/gateway-proxy README, section Performance, unchanged"
    " from 2021-12-31 to its newest commit c9d7e25 of 2025-01-21) publishes one figure:"
    ' "Using 225 shards, with almost full caching (members, guilds, channels, roles, voice'
    " states) the proxy uses 11.7GB of memory and sits around 2% CPU usage over all 4c/8t of"
    ' my machine." It gives no event rate, guild count or client count, so neither a CPU'
    " time per event per client nor a memory per guild can be derived from it (11.7 GB over"
    " 225 shards is 52 MB per shard, members included, for an unstated number of guilds);"
    " it publishes no other benchmark."
)


def gateway_section(data: dict[str, Any]) -> list[str]:
    """``## Gateway endpoint (`--gateway`)``: the figures of :func:`bench_gateway`."""
    cpu = data.get("cpu", {})
    mem = data.get("memory", {})
    save = data.get("save", {})
    clients = data.get("clients", [1, 4])
    compresses = data.get("compresses", ["zlib-stream", "none"])
    nan = float("nan")
    save_shards = int(save.get("shards", 0))
    lines = [
        "## Gateway endpoint (`--gateway`)",
        "",
        f"Measured by `{data.get('command', 'python -m scripts.bench --only gateway')}` on"
        f" {data.get('measured_at', '?')} ({data.get('machine', '?')}; commit"
        f" {data.get('commit', '?')}"
        + (
            f" with uncommitted changes to {', '.join(data['uncommitted'])}"
            if data.get("uncommitted")
            else ""
        )
        + "), by scripts/bench/gateway_cost.py. CPU: the supervisor process's own CPU time"
        f" (its workers not counted) for {int(data.get('events', 0)):,} `MESSAGE_CREATE`"
        " (~0.9 KB, no message content) on one shard of `cluster up --gateway` against the"
        " simulator, read by N raw clients identified for that shard; medians of"
        f" {int(data.get('runs', 0))} interleaved runs. Per connected client = (CPU with N"
        " clients - CPU with the endpoint and no client) / (events x N).",
        "",
        "| | us per event |",
        "|---|---|",
        f"| supervisor without `--gateway` | {cpu.get('no_gateway_us', nan):.2f} |",
        f"| with `--gateway`, no client connected | {cpu.get('no_client_us', nan):.2f}"
        f" ({cpu.get('tap_us', nan):+.2f}) |",
    ]
    for c in compresses:
        for n in clients:
            label = "no transport compression" if c == "none" else c
            lines.append(
                f"| per connected client, {n} client{'s' if n > 1 else ''}, {label}"
                f" | {cpu.get(f'{n}_{c}', nan):.2f} |"
            )
    lines += [
        "",
        f"Cache memory per guild (tracemalloc, {int(mem.get('guilds', 0))} simulator guilds"
        f" of {mem.get('channels', nan):.0f} channels, {mem.get('roles', nan):.0f} roles,"
        f" {mem.get('members', nan):.0f} members): {mem.get('bytes', nan):,.0f} bytes"
        f" ({mem.get('bytes', nan) / max(1.0, mem.get('json', nan)):.2f}x the guild's"
        f" GUILD_CREATE JSON of {mem.get('json', nan):,.0f} bytes; the cache's own estimate,"
        f" /status `bytes_per_guild`, {mem.get('estimate', nan):,.0f}). After a message in"
        f" each text channel: {mem.get('noted', nan):,.0f} while the message ids are noted,"
        f" {mem.get('folded', nan):,.0f} once written into the channels' JSON"
        " (`last_message_id`; at the next render or save).",
        "",
        f"Cache save (the periodic save, every 30 s by default): {int(save.get('guilds', 0)):,}"
        f" simulator guilds on {save_shards} shard{'' if save_shards == 1 else 's'} in"
        f" {save.get('seconds', nan) * 1000:,.0f} ms (median of 3), a file of"
        f" {save.get('bytes', nan) / 1e6:.1f} MB, streamed (one ~1 MB piece in memory at a"
        " time). The loop packs a piece at a time and writes it in a thread: it waited at most"
        f" {save.get('loop_stall_ms', nan):.1f} ms for a piece; a shard's events wait for its"
        f" clients while the shard is packed, at most {save.get('pump_hold_ms', nan):.0f} ms"
        f" for a shard of {int(save.get('guilds', 0)) // max(1, save_shards):,}"
        " guilds (every 30 s). A 1 ms timer on the loop ran at most"
        f" {save.get('loop_late_ms', nan):.0f} ms late during the saves, and"
        f" {save.get('idle_late_ms', nan):.0f} ms late for as long without a save (the"
        " machine's other load).",
        "",
        GATEWAY_PROXY,
        "",
    ]
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--compress", default="zlib-stream,none")
    parser.add_argument("--parts", default="cpu,memory,save")
    parser.add_argument("--save-guilds", type=int, default=5_000)
    parser.add_argument("--save-shards", type=int, default=2)
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "cpu" in parts:
        counts = [int(c) for c in args.clients.split(",")]
        compresses = args.compress.split(",")
        samples = await measure_cpu(args.events, args.runs, counts, compresses)
        figures = cpu_figures(samples, args.events, counts, compresses)
        print(f"{args.events} MESSAGE_CREATE on one shard, medians of {args.runs}:")
        for name, cpu in samples.items():
            print(f"  {name:>22}: {statistics.median(cpu) * 1e6 / args.events:7.2f} us/event")
        print(f"  the endpoint's tap, no client: {figures['tap_us']:+.2f} us/event")
        for c in compresses:
            for n in counts:
                print(f"  {n} clients, {c}: {figures[f'{n}_{c}']:.2f} us per event per client")
    if "memory" in parts:
        print(f"cache memory: {cache_memory()}")
    if "save" in parts:
        print(f"cache save: {await save_cost(args.save_guilds, args.save_shards)}")


if __name__ == "__main__":
    asyncio.run(main())
