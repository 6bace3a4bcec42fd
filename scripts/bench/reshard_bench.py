"""The ``reshard`` benchmark: a running cluster moves to twice its shards, timed against the schedule.

``cluster up`` runs ``old_shards`` shards (max_concurrency ``max_concurrency``,
identify interval ``interval``: the startup benchmark's scaled-interval mode)
against the full simulator (its identify rules enforced, ``guilds`` guilds,
``rate_per_shard`` dispatches/s per shard, each with its ``_sim_event_id``).
Once every shard is READY and events flow, this process sends the control
request ``cluster reshard --shards N`` sends (``{"reshard": {"shards": N}}``)
and measures:

- **time to switch**: from the request to the ``TITANIUM_RESHARD`` marker at a
  SUB client of the cluster's PUB socket (and the cluster's own figure, the
  ``elapsed_s`` of ``/status``'s reshard section);
- the **bound**: the new set's identify schedule, ``ceil(new / mc)`` windows x
  the interval (the identify scheduler's safety margin adds a fixed amount per
  window: shown beside it); where the rest went, from the simulator's record
  (times on CLOCK_MONOTONIC like ours): request -> the new set's first
  IDENTIFY (spawning its workers), first -> last IDENTIFY (the schedule), last
  IDENTIFY -> switch (READY, every GUILD_CREATE, the switch itself);
- **lost** and **duplicated**: every event the simulator generated from before
  the request until the events stop (``settle_s`` after the switch), by its
  ``_sim_event_id``, against what the SUB client received; the marker's count;
- **deduplicated at the switch**: new-set events dropped because the old set
  had published them (the switch's log line, and ``/status`` at the end, which
  also counts the ``SWITCH_WINDOW_S`` after it);
- the **peak RSS** of the cluster's process tree (supervisor, both sets'
  workers, multiprocessing's tracker), sampled every 0.25 s from the request
  until the end, beside the RSS just before the request.

Every process is stopped at the end, also on failure. ``--quick`` runs a tiny
version (16 -> 32 shards) for the smoke test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import zmq
import zmq.asyncio

from protocol.intents import PRIVILEGED_INTENTS
from scripts.bench import report
from scripts.bench.procs import Child, ChildError, tree_rss
from scripts.bench.run import (
    INTENTS,
    PUB_HWM,
    TOKEN,
    cluster_up_available,
    free_port,
    identify_margin,
    log,
    start_simulator,
)

if TYPE_CHECKING:
    from scripts.bench.run import Results

__all__ = ["FULL", "QUICK", "ReshardSizes", "bench_reshard", "bound_s"]


@dataclass(frozen=True, slots=True)
class ReshardSizes:
    old_shards: int
    new_shards: int
    max_concurrency: int
    #: the identify interval of the simulator and of ``cluster up`` (scaled down from 5 s)
    interval: float
    #: dispatches per second per shard of the old set (the simulator's ``event_rate``)
    rate_per_shard: float
    #: events flow this long before the request, and after the switch
    settle_s: float
    guilds: int


FULL = ReshardSizes(1024, 2048, 16, 0.05, 0.2, 2.0, 2048)
QUICK = ReshardSizes(16, 32, 16, 0.05, 4.0, 0.5, 32)
#: How often the cluster's RSS is sampled during the overlap.
RSS_EVERY_S = 0.25
#: The switch's log line (cluster/range_owner.py), for the events it published and dropped.
SWITCH_LINE = re.compile(
    r"switched from \d+ to \d+ shards after [\d.]+ s \((\d+) held events published, "
    r"(\d+) duplicates dropped"
)
MARKER = b"TITANIUM_RESHARD"
EVENT_ID = b'"_sim_event_id":'


def bound_s(sizes: ReshardSizes) -> float:
    """The new set's identify schedule: ``ceil(new / mc)`` windows of one interval."""
    return math.ceil(sizes.new_shards / sizes.max_concurrency) * sizes.interval


class Listener:
    """A SUB client of the cluster's PUB socket: event ids received, the marker's arrival."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(endpoint)
        self.event_ids: Counter[int] = Counter()
        self.markers: list[float] = []
        self.received = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            self.received += 1
            if frames[0] == MARKER:
                self.markers.append(time.monotonic())
                continue
            payload = frames[-1]
            at = payload.find(EVENT_ID)
            if at >= 0:
                end = digits = at + len(EVENT_ID)
                while digits < len(payload) and 48 <= payload[digits] <= 57:
                    digits += 1
                self.event_ids[int(payload[end:digits])] += 1

    async def until(self, predicate: Any, timeout: float, what: str) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise ChildError(f"reshard: {what} not within {timeout:.0f} s")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self.socket.close(0)
        self.context.term()


async def _request(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """One control request (what ``cluster reshard`` sends), its answer."""
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        await sock.send(orjson.dumps(body))
        async with asyncio.timeout(10):
            answer: dict[str, Any] = orjson.loads(await sock.recv())
        return answer
    except TimeoutError:
        raise ChildError(f"reshard: no answer from the control socket {endpoint}") from None
    finally:
        sock.close(0)
        context.term()


async def _status(http: aiohttp.ClientSession, health: str) -> dict[str, Any]:
    async with http.get(f"http://{health}/status") as r:
        body: dict[str, Any] = await r.json()
        return body


async def _drain(stream: asyncio.StreamReader | None, lines: deque[str]) -> None:
    """Keep reading the cluster's log (a full pipe would stall it); the tail is kept."""
    if stream is None:
        return
    while raw := await stream.readline():
        lines.append(raw.decode(errors="replace").rstrip("\n"))


async def _sample_rss(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(Exception):
            peak[0] = max(peak[0], float(tree_rss(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_EVERY_S)


async def reshard_once(sizes: ReshardSizes, http: aiohttp.ClientSession) -> dict[str, float]:
    """One cluster, one reshard from ``old_shards`` to ``new_shards``; its figures."""
    old, new, mc, interval = (
        sizes.old_shards,
        sizes.new_shards,
        sizes.max_concurrency,
        sizes.interval,
    )
    sim, rest, _gateway = await start_simulator(
        token=TOKEN,
        privileged_intents=PRIVILEGED_INTENTS,
        shards=old,
        max_concurrency=mc,
        identify_window_s=interval,
        guilds=sizes.guilds,
        event_rate=0.0,
        record_dispatches=True,
        heartbeat_interval_ms=41_250,
        session_start_total=100_000,
    )
    admin = rest.split("/api/", 1)[0] + "/_sim"
    pub = f"tcp://127.0.0.1:{free_port()}"
    control = f"tcp://127.0.0.1:{free_port()}"
    health = f"127.0.0.1:{free_port()}"
    state = tempfile.mkdtemp(prefix="bench-reshard-")
    cluster: Child | None = None
    listener: Listener | None = None
    drain: asyncio.Task[None] | None = None
    sampler: asyncio.Task[None] | None = None
    stop_sampling = asyncio.Event()
    log_tail: deque[str] = deque(maxlen=400)
    try:
        cluster = await Child.start(
            "cluster",
            [
                sys.executable,
                "-c",
                "from cluster.cli import main; main()",
                "up",
                "--token",
                TOKEN,
                "--api-url",
                rest,
                "--intents",
                str(INTENTS),
                "--shards",
                str(old),
                "--pub",
                pub,
                "--control",
                control,
                "--health",
                health,
                "--state-dir",
                state,
                "--identify-interval",
                str(interval),
                "--pub-hwm",
                str(PUB_HWM),
            ],
        )
        drain = asyncio.create_task(_drain(cluster.proc.stderr, log_tail))
        listener = Listener(pub)
        deadline = time.monotonic() + 120 + old * interval
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                st = await _status(http, health)
                if len(st["shards"]) == old and all(s["state"] == "ready" for s in st["shards"]):
                    break
            if cluster.proc.returncode is not None:
                raise ChildError(f"cluster exited: {list(log_tail)[-5:]}")
            if time.monotonic() > deadline:
                raise ChildError(f"reshard: {old} shards not all READY in time")
            await asyncio.sleep(0.1)
        async with http.post(f"{admin}/config", json={"event_rate": sizes.rate_per_shard}) as r:
            r.raise_for_status()
        await listener.until(lambda: len(listener.event_ids) >= 5, 30, "the first events")
        # every event generated from here on must arrive once
        since = time.monotonic()
        await asyncio.sleep(sizes.settle_s)
        rss_before = float(tree_rss(cluster.pid))
        peak = [rss_before]
        sampler = asyncio.create_task(_sample_rss(cluster.pid, peak, stop_sampling))
        t0 = time.monotonic()
        answer = await _request(control, {"reshard": {"shards": new}})
        if not answer.get("ok"):
            raise ChildError(f"reshard refused: {answer.get('error')}")
        timeout = 120 + 4 * bound_s(sizes)
        await listener.until(lambda: bool(listener.markers), timeout, "the TITANIUM_RESHARD marker")
        switched_at = listener.markers[0]
        status = await _status(http, health)
        progress = status.get("reshard") or {}
        await asyncio.sleep(sizes.settle_s)  # events flow on the new set
        async with http.post(f"{admin}/config", json={"event_rate": 0.0}) as r:
            r.raise_for_status()
        async with http.get(f"{admin}/record", timeout=aiohttp.ClientTimeout(total=120)) as r:
            record = await r.json()
        generated = {
            d["event_id"]
            for d in record["dispatches"]
            if d["event_id"] is not None and d["at"] >= since
        }
        with contextlib.suppress(ChildError):  # what is missing after 20 s is lost
            await listener.until(lambda: generated <= set(listener.event_ids), 20, "every event")
        stop_sampling.set()
        final = (await _status(http, health)).get("reshard") or {}
        new_identifies = sorted(
            i["at"]
            for i in record["identifies"]
            if i["num_shards"] == new and i["outcome"] == "accepted"
        )
        rate_limited = sum(
            1
            for i in record["identifies"]
            if i["num_shards"] == new and i["outcome"] == "rate_limited"
        )
        switch = next((m for line in log_tail if (m := SWITCH_LINE.search(line))), None)
        received = listener.event_ids
        first = new_identifies[0] if new_identifies else math.nan
        last = new_identifies[-1] if new_identifies else math.nan
        return {
            "switch_s": switched_at - t0,
            "cluster_elapsed_s": float(progress.get("elapsed_s") or math.nan),
            "bound_s": bound_s(sizes),
            "ratio": (switched_at - t0) / bound_s(sizes),
            "spawn_s": first - t0,
            "identify_span_s": last - first,
            "tail_s": switched_at - last,
            "new_identifies": float(len(new_identifies)),
            "rate_limited": float(rate_limited),
            "events": float(len(generated)),
            "lost": float(len(generated - set(received))),
            "duplicated": float(sum(n - 1 for n in received.values() if n > 1)),
            "markers": float(len(listener.markers)),
            "deduplicated_at_switch": float(switch[2]) if switch else math.nan,
            "held_published": float(switch[1]) if switch else math.nan,
            "deduplicated_total": float(final.get("deduplicated_total") or 0),
            "shards_after": float(len((await _status(http, health))["shards"])),
            "peak_rss_mb": peak[0] / 2**20,
            "rss_before_mb": rss_before / 2**20,
            "load1": os.getloadavg()[0],
        }
    finally:
        stop_sampling.set()
        if sampler is not None:
            with contextlib.suppress(Exception):
                await sampler
        if listener is not None:
            await listener.close()
        if drain is not None:  # Child.stop reads what is left of the log
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drain
        if cluster is not None:
            await cluster.stop(timeout=15.0)
        await sim.stop(timeout=5.0)
        shutil.rmtree(state, ignore_errors=True)


async def bench_reshard(res: Results, http: aiohttp.ClientSession, command: str) -> None:
    """``--repeat`` reshards of a fresh cluster each; ``--quick``: 16 -> 32 shards once."""
    why = cluster_up_available()
    if why is not None:
        res.skipped["reshard"] = why
        log(f"skipping reshard: {why}")
        return
    sizes = QUICK if res.quick else FULL
    res.reshard.update(
        sizes=dataclasses.asdict(sizes),
        bound_s=bound_s(sizes),
        margin_s=identify_margin(sizes.interval),
        command=command,
        measured_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{report.cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
        runs=[],
    )
    for rep in range(res.repeat):
        try:
            row = await reshard_once(sizes, http)
        except ChildError as exc:
            res.errors.append(f"reshard: {exc}")
            log(f"reshard: FAILED {exc}")
            continue
        res.reshard["runs"].append(row)
        log(
            f"reshard #{rep + 1}: {sizes.old_shards} -> {sizes.new_shards} switched after"
            f" {row['switch_s']:.2f} s (bound {row['bound_s']:.2f} s, {row['ratio']:.2f}x),"
            f" {row['lost']:.0f} lost, {row['duplicated']:.0f} duplicated of"
            f" {row['events']:.0f}, marker x{row['markers']:.0f},"
            f" {row['deduplicated_at_switch']:.0f} deduplicated at the switch,"
            f" peak RSS {row['peak_rss_mb']:.0f} MB (before {row['rss_before_mb']:.0f} MB),"
            f" load {row['load1']:.2f}"
        )
