"""What the gateway endpoint costs the supervisor per event per connected client.

    python -m scripts.bench.gateway_cost [--events 20000] [--runs 3] [--clients 0,1,4]

Real processes: ``cluster simulate`` (2 shards) and ``cluster up --gateway`` on
it (a fresh state dir per start). In this process, N raw gateway clients
(aiohttp, zlib-stream, or ``--compress none``) identify for shard 0 and read
every event. Events are ``MESSAGE_CREATE`` (the cluster's default intents: no
message content, about 0.9 KB each) emitted on shard 0 through the simulator's
admin API in bursts of 500. The figure is the supervisor process's own CPU time
(user + system; its workers are not counted) from the first burst until every
client has the last event. Per run: the cost with no gateway (``cluster up``
without ``--gateway``), with the endpoint and no client, and with N clients;
``us/event/client`` = (CPU with N - CPU with none) / (events * N). Runs
interleave; medians are printed. Absolute figures move between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import zlib

import aiohttp
import orjson
import psutil

CLUSTER = [sys.executable, "-c", "from cluster.cli import main; main()"]
BURST = 500


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
        return (after.user + after.system) - (before.user + before.system)
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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--compress", default="zlib-stream", choices=("zlib-stream", "none"))
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
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
    )
    assert sim.stdout is not None
    base = (await sim.stdout.readline()).decode().split("listening on ")[1].strip()
    try:
        results: dict[str, list[float]] = {}
        for _ in range(args.runs):
            plan: list[tuple[str, bool, int]] = [("no --gateway", False, 0), ("0 clients", True, 0)]
            plan += [(f"{n} clients", True, n) for n in counts]
            for name, gateway, n in plan:
                cpu = await measure(
                    f"{base}/_sim", f"{base}/api/v10", gateway, n, args.events, args.compress
                )
                results.setdefault(name, []).append(cpu)
        median: dict[str, float] = {k: statistics.median(v) for k, v in results.items()}
        print(f"{args.events} MESSAGE_CREATE on one shard, compress={args.compress}, medians:")
        for name, cpu in median.items():
            print(f"  {name:>12}: {cpu * 1e6 / args.events:7.2f} us/event (supervisor CPU)")
        none = median["0 clients"]
        print(
            f"  the endpoint's tap, no client: {(none - median['no --gateway']) * 1e6 / args.events:+.2f} us/event"
        )
        for n in counts:
            per = (median[f"{n} clients"] - none) * 1e6 / (args.events * n)
            print(f"  {n} clients: {per:.2f} us per event per connected client")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sim.pid, signal.SIGKILL)
        await sim.wait()


if __name__ == "__main__":
    asyncio.run(main())
