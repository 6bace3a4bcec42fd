"""The ``sink`` part of the ``redis`` benchmark: what ``cluster up --sink redis`` costs, and its top rate.

Run by :func:`scripts.bench.redis_bench.bench_redis` (``--only redis``, or
``--only redis --redis-parts sink`` for this part alone) against the
benchmark's redis-server, database :data:`scripts.bench.redis_bench.DB` ``sink``,
emptied (FLUSHDB) before every ``cluster up``. Three configurations of the same
``cluster up --redis`` command (1 worker): the sink off, ``--sink redis``
(msgpack, the default) and ``--sink redis --sink-encoding json``; every sink run
also gets ``--sink-retention`` of :data:`RETENTION_S` so that no entry is
trimmed before it is read back.

- ``paced`` (CPU per event): the firehose's paced mode, ``rate_per_shard``
  events/s on each of ``shards`` shards for ``seconds``, the three
  configurations run one after the other in groups (``groups`` per ``--repeat``),
  the order rotating from group to group (off-msgpack-json, msgpack-json-off,
  json-off-msgpack, ...) so that a change of machine load hits all three alike
  and no configuration always runs first. CPU of the process tree and of the
  supervisor alone (the relay and the sink live there) and redis-server's own
  CPU, from the stream's start until the SUB sink has every event *and* the
  sink has appended every event (the sink's tail is inside the window); the
  worker alone never talks to Redis: its ratio is each group's control.
  Beside them, what redis-server spent its time on (INFO commandstats).
- ``flood`` (the most the sink appends): the firehose unpaced (its
  pre-generated stream of ``flood_per_shard`` events per shard, as fast as the
  cluster reads), the three configurations in the same rotating order, one
  group per ``--repeat``. ``/status`` is read every :data:`SAMPLE_S`: events/s
  the relay published and the sink appended over the same window (from the
  start to the relay's last event), the sink's backlog (``sink.pending``) then
  and at its largest, when the last event was appended, and the slowest
  ``/status`` answer (how long the supervisor's event loop went unserved).
  Above ``max_pending`` (100,000) waiting events the relay stops reading (back
  pressure), so with the sink on the relay's rate is then the sink's.

Every sink run is checked before it counts: ``/status`` sink.appended +
sink.skipped grew by exactly the events sent with nothing pending (a round
whose reply was lost runs again and skips what its first run appended),
unencodable and dropped_fenced 0, the streams hold exactly that many entries more, and every entry is read back
(XRANGE) and decoded: each shard's seqs exactly once each, every paced key
(``d._k``) exactly once, in its event's stream, in the run's encoding. A run
that fails raises :class:`SinkCheckError`: an error of the benchmark (the
command exits 1), never a figure.

With ``--profile DIR`` one extra flood run per encoding runs with py-spy
attached to the supervisor (not measured; its summary goes into the section).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import redis.asyncio

from cluster.config import SinkSettings
from protocol.brokerformat import COMMAND_STREAM, decode_object
from protocol.errors import WireFormatError
from scripts.bench import procs, report
from scripts.bench.procs import REPO, Child, ChildError, tree_cpu
from scripts.bench.redis_bench import (
    all_ready,
    code_state,
    db_url,
    flush,
    get_json,
    own_cpu,
    redis_commands,
    redis_server_version,
    wait_status,
)
from scripts.bench.run import PROFILE, PUB_HWM, Firehose, free_port, log, start_cluster
from scripts.bench.stats import Figure

if TYPE_CHECKING:
    from scripts.bench.run import Results
    from tests.redis_server import RedisServer

__all__ = [
    "FULL",
    "QUICK",
    "SinkCheckError",
    "SinkSizes",
    "bench_sink",
    "sink_section",
    "with_sink",
]


@dataclass(frozen=True, slots=True)
class SinkSizes:
    #: paced: shards, events/s per shard, seconds of stream per run
    shards: int
    rate_per_shard: int
    seconds: float
    #: paced: (off, msgpack, json) groups per --repeat
    groups: int
    #: flood: pre-generated events per shard, streamed as fast as the cluster reads
    flood_per_shard: int
    #: wait after every shard is READY before measuring
    settle_s: float


FULL = SinkSizes(16, 1_000, 10.0, 1, 20_000, 2.0)
QUICK = SinkSizes(4, 250, 1.0, 1, 500, 0.3)
#: The configurations: the sink off (``--redis`` alone), msgpack (the default), JSON.
CONFIGS = ("off", "msgpack", "json")
#: ``--sink-retention`` of every sink run: no entry is trimmed before it is read back.
RETENTION_S = 3600
#: How often the flood runs read ``/status``.
SAMPLE_S = 0.1
#: Streams that are not the firehose's dispatches (READY is appended too, before the stream).
OTHER_STREAMS = frozenset(("READY", "RESUMED", "GUILD_CREATE", COMMAND_STREAM))
#: Entries per XRANGE page when reading the streams back.
PAGE = 5_000


class SinkCheckError(ChildError):
    """The sink lost, duplicated, misplaced or mis-encoded events: the run is not a figure."""


def cluster_args(url: str, config: str) -> list[str]:
    """``--redis URL`` and, for a sink configuration, the sink's flags."""
    args = ["--redis", url]
    if config != "off":
        args += ["--sink", "redis", "--sink-encoding", config]
        args += ["--sink-retention", str(RETENTION_S)]
    return args


def rotated(index: int) -> tuple[str, ...]:
    """The configurations in group ``index``'s order (each position in turn for each)."""
    k = index % len(CONFIGS)
    return CONFIGS[k:] + CONFIGS[:k]


# -- reading Redis back ----------------------------------------------------------------------


async def stream_lengths(url: str) -> dict[str, int]:
    """XLEN of every stream in the database."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        names = [k async for k in client.scan_iter(_type="STREAM", count=1000)]
        return {
            (n.decode() if isinstance(n, bytes) else str(n)): int(await client.xlen(n))
            for n in names
        }
    finally:
        await client.aclose()


#: Commands whose time redis-server reports separately (INFO commandstats): the script
#: call itself (its whole run, the commands inside included) and what it runs.
STAT_COMMANDS = ("evalsha", "xadd", "get", "set")


async def command_usec(url: str) -> dict[str, tuple[int, int]]:
    """(calls, µs) of each of STAT_COMMANDS so far (the whole server)."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    out = {}
    for name in STAT_COMMANDS:
        row = stats.get(f"cmdstat_{name}") or {}
        out[name] = (int(row.get("calls", 0)), int(row.get("usec", 0)))
    return out


def usec_per_event(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], events: int
) -> dict[str, float]:
    """Per event: redis-server's µs in each command, the script's own share, calls of each."""
    fig: dict[str, float] = {}
    for name in STAT_COMMANDS:
        calls = after[name][0] - before[name][0]
        usec = after[name][1] - before[name][1]
        fig[f"{name}_calls"] = calls / events
        fig[f"{name}_us"] = usec / events
    # the script's time includes the commands it ran: what is left is Lua and its arguments
    fig["script_own_us"] = fig["evalsha_us"] - fig["xadd_us"] - fig["get_us"] - fig["set_us"]
    return fig


def dispatched(lengths: dict[str, int]) -> int:
    """Entries in the dispatch streams (not READY's, not gateway_send's)."""
    return sum(n for name, n in lengths.items() if name not in OTHER_STREAMS)


async def verify_streams(
    url: str, config: str, shards: int, per_shard: int, keyed: bool
) -> dict[str, float]:
    """Read every dispatch entry back; SinkCheckError unless each event is there exactly once.

    Each shard's seqs must be exactly ``2 .. per_shard + 1`` once each (the firehose's
    stream; READY is seq 1), every entry in the stream named after its event, encoded as
    ``config``; ``keyed`` (the paced mode): every key ``d._k`` ``0 .. total - 1`` once.
    """
    total = shards * per_shard
    seqs: dict[int, Counter[int]] = {}
    keys: Counter[int] = Counter()
    problems: Counter[str] = Counter()
    entries = 0
    started = time.process_time()
    client = redis.asyncio.Redis.from_url(url)
    try:
        names = sorted([k async for k in client.scan_iter(_type="STREAM", count=1000)])
        for raw_name in names:
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            if name in OTHER_STREAMS:
                continue
            start: str = "-"
            while True:
                page = await client.xrange(raw_name, min=start, max="+", count=PAGE)
                if not page:
                    break
                for _entry_id, fields in page:
                    entries += 1
                    data = (fields or {}).get(b"data")
                    try:
                        obj, encoding = decode_object(data if isinstance(data, bytes) else b"")
                        payload = obj["payload"]
                        shard, seq, event = int(obj["shardId"]), int(payload["s"]), payload["t"]
                    except (WireFormatError, KeyError, TypeError, ValueError):
                        problems["undecodable entries"] += 1
                        continue
                    if encoding.value != config:
                        problems[f"entries encoded as {encoding.value}"] += 1
                    if event != name:
                        problems["entries in another event's stream"] += 1
                    if not 0 <= shard < shards:
                        problems["entries of an unknown shard"] += 1
                    seqs.setdefault(shard, Counter())[seq] += 1
                    if keyed:
                        try:
                            keys[int(payload["d"]["_k"])] += 1
                        except (KeyError, TypeError, ValueError):
                            problems["entries without a key"] += 1
                last = page[-1][0]
                start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    finally:
        await client.aclose()
    expected = range(2, per_shard + 2)
    missing = duplicated = 0
    worst: list[str] = []
    for shard in range(shards):
        got = seqs.get(shard, Counter())
        lost = [s for s in expected if got[s] == 0]
        twice = sum(n - 1 for n in got.values() if n > 1)
        extra = sum(n for s, n in got.items() if not 2 <= s <= per_shard + 1)
        missing += len(lost)
        duplicated += twice
        if extra:
            problems["entries with a seq never sent"] += extra
        if lost or twice:
            first = f", first missing seq {lost[0]}" if lost else ""
            worst.append(f"shard {shard}: {len(lost)} missing, {twice} twice{first}")
    if keyed:
        lost_keys = sum(1 for k in range(total) if keys[k] == 0)
        twice_keys = sum(n - 1 for n in keys.values() if n > 1)
        if lost_keys:
            problems["keys (d._k) missing"] += lost_keys
        if twice_keys:
            problems["extra copies of keys (d._k)"] += twice_keys
    if entries != total or missing or duplicated or problems:
        detail = "; ".join(worst[:4])
        raise SinkCheckError(
            f"sink ({config}): {entries:,} entries for {total:,} events sent: {missing:,}"
            f" lost, {duplicated:,} duplicated"
            + (f" ({detail})" if detail else "")
            + (
                "; " + ", ".join(f"{n:,} {what}" for what, n in problems.items())
                if problems
                else ""
            )
        )
    return {"entries": float(entries), "read_cpu_s": time.process_time() - started}


def handled(sink: dict[str, Any]) -> int:
    """Events the sink is done with: appended, or skipped as already in the streams.

    A round whose reply was lost (a timeout) runs again and then skips what its first
    run appended: those events are in the streams but counted as skipped.
    """
    return int(sink.get("appended", 0)) + int(sink.get("skipped", 0))


def check_status(
    config: str, before: dict[str, Any], after: dict[str, Any], total: int
) -> dict[str, float]:
    """The sink's own counters over a run; SinkCheckError unless it handled every event.

    Whether each event is in the streams exactly once is :func:`verify_streams`'s to say.
    """
    s0, s1 = before.get("sink") or {}, after.get("sink") or {}
    if not s1:
        raise SinkCheckError(f"sink ({config}): /status has no sink section")
    delta = {
        k: int(s1.get(k, 0)) - int(s0.get(k, 0))
        for k in ("appended", "skipped", "rounds", "errors")
    }
    bad = {k: int(s1.get(k, 0)) for k in ("unencodable", "dropped_fenced") if s1.get(k)}
    if delta["appended"] + delta["skipped"] != total or s1.get("pending") or bad:
        raise SinkCheckError(
            f"sink ({config}): /status appended {delta['appended']:,} and skipped"
            f" {delta['skipped']:,} of {total:,} events sent"
            + "".join(f", {k} {v:,}" for k, v in bad.items())
            + f" (pending {s1.get('pending')}, errors {delta['errors']},"
            f" last error {s1.get('last_error')!r})"
        )
    return {k: float(v) for k, v in delta.items()}


def sink_idle(body: dict[str, Any]) -> bool:
    """No sink, or a sink with nothing waiting (READY appended before the stream starts)."""
    sink = body.get("sink")
    return sink is None or (sink.get("pending") == 0 and sink.get("age_s") is not None)


def appended_all(before: dict[str, Any], total: int) -> Any:
    """``/status`` predicate: the sink appended ``total`` more than ``before`` (none: no sink)."""
    base = handled(before.get("sink") or {})

    def ready(body: dict[str, Any]) -> bool:
        sink = body.get("sink")
        return sink is None or (handled(sink) - base >= total and sink.get("pending") == 0)

    return ready


# -- 1. CPU per event at a paced rate ----------------------------------------------------


async def paced_once(
    fh: Firehose, sizes: SinkSizes, server: RedisServer, http: aiohttp.ClientSession, config: str
) -> dict[str, Any]:
    """One paced stream through ``cluster up --redis`` with the sink ``config``."""
    shards = sizes.shards
    per_shard = max(1, int(sizes.rate_per_shard * sizes.seconds))
    total = per_shard * shards
    await fh.wait(lambda s: s["ready"] == 0 and s["streaming"] == 0, 30, "idle")
    url = db_url(server, "sink")
    await flush(url)
    state = tempfile.mkdtemp(prefix="bench-sink-paced-")
    sub: Child | None = None
    cluster: Child | None = None
    try:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        sub = await Child.python("sink", "scripts.bench.sink", "sub", endpoint, str(total))
        await sub.expect("BOUND ", 30)
        health = f"127.0.0.1:{free_port()}"
        cluster = await start_cluster(
            fh.rest_url,
            endpoint,
            workers=1,
            health=health,
            state_dir=state,
            extra=cluster_args(url, config),
        )
        await wait_status(http, health, all_ready(shards), 60, f"{shards} shards ready", cluster)
        await asyncio.sleep(sizes.settle_s)  # READY handled (and appended), checkpoints written
        before = await wait_status(http, health, sink_idle, 30, "the sink idle", cluster)
        lengths0 = dispatched(await stream_lengths(url))
        cmds0 = await redis_commands(url)
        usec0 = await command_usec(url)
        await fh.go(rate=sizes.rate_per_shard * shards, count=per_shard)
        cpu0, sup0, red0 = tree_cpu(cluster.pid), own_cpu(cluster.pid), own_cpu(server.pid)
        t0 = time.monotonic()
        done = await sub.expect("DONE ", 60 + sizes.seconds * 3)
        at_sub = time.monotonic() - t0
        # the sink's tail is part of the run: the window ends once it appended every event
        after = await wait_status(
            http, health, appended_all(before, total), 60, f"{total:,} events appended", cluster
        )
        cpu1, sup1, red1 = tree_cpu(cluster.pid), own_cpu(cluster.pid), own_cpu(server.pid)
        elapsed = time.monotonic() - t0
        cmds1 = await redis_commands(url)
        usec1 = await command_usec(url)
        lengths1 = dispatched(await stream_lengths(url))
    except Exception as exc:
        await _add_log(exc, cluster)
        raise
    finally:
        warnings = await stop_with_log(cluster)
        if sub is not None:
            await sub.stop(timeout=5.0)
        shutil.rmtree(state, ignore_errors=True)
    relay0, relay1 = before.get("relay") or {}, after.get("relay") or {}
    fig = {
        "us": (cpu1 - cpu0) / total * 1e6,
        "supervisor_us": (sup1 - sup0) / total * 1e6,
        "redis_server_us": (red1 - red0) / total * 1e6,
        "events": float(total),
        "received": float(int(done.split()[0])),
        "published": float(relay1.get("published", 0) - relay0.get("published", 0)),
        "pub_dropped": float(relay1.get("pub_dropped", 0) - relay0.get("pub_dropped", 0)),
        "seconds": elapsed,
        # from the SUB's last event to the sink's last append (0: no sink)
        "tail_s": elapsed - at_sub if config != "off" else 0.0,
        "redis_calls": cmds1[0] - cmds0[0] - 1,
        "redis_commands": cmds1[1] - cmds0[1] - 1,
        "stream_entries": float(lengths1 - lengths0),
        "load1": os.getloadavg()[0],
        "warnings": float(len(warnings)),
    }
    kinds: dict[str, Any] = {"warning_kinds": warning_kinds(warnings)}
    if config != "off":
        fig |= usec_per_event(usec0, usec1, total)
        checks = check_run(config, before, after, lengths1 - lengths0, url, shards, per_shard)
        fig |= await _logged(checks(keyed=True), cluster)
    return fig | kinds


def check_run(
    config: str,
    before: dict[str, Any],
    after: dict[str, Any],
    grown: int,
    url: str,
    shards: int,
    per_shard: int,
) -> Any:
    """Every check of a sink run (``/status``, XLEN, every entry read back), as a coroutine
    function of ``keyed``; SinkCheckError when one fails."""
    total = shards * per_shard

    async def checks(keyed: bool) -> dict[str, float]:
        fig = check_status(config, before, after, total)
        if grown != total:
            raise SinkCheckError(
                f"sink ({config}): the streams grew by {grown:,} entries for {total:,} events sent"
            )
        return fig | await verify_streams(url, config, shards, per_shard, keyed=keyed)

    return checks


async def _logged(checks: Any, cluster: Child | None) -> dict[str, float]:
    """Await ``checks``; a failure gets the end of ``cluster up``'s log as a note."""
    try:
        fig: dict[str, float] = await checks
    except SinkCheckError as exc:
        if cluster is not None:
            exc.add_note(f"cluster up's stderr (end): {cluster.stderr}")
        raise
    return fig


async def stop_with_log(cluster: Child | None) -> list[str]:
    """Stop ``cluster up`` (SIGTERM, its graceful stop) and return its log's warnings and errors.

    The whole of stderr is read here (:meth:`Child.stop` keeps only its end).
    """
    if cluster is None:
        return []
    data = b""
    stderr = cluster.proc.stderr
    reader = asyncio.ensure_future(stderr.read()) if stderr is not None else None
    if cluster.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cluster.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cluster.proc.wait(), 15.0)  # its graceful stop
    await cluster.stop(timeout=5.0)  # SIGKILL for what is left of its process group
    if reader is not None:
        with contextlib.suppress(Exception):
            data = await asyncio.wait_for(reader, 5.0)
        reader.cancel()
    return [
        line
        for line in data.decode(errors="replace").splitlines()
        if " WARNING " in line or " ERROR " in line or " CRITICAL " in line
    ]


def warning_kinds(lines: list[str]) -> list[str]:
    """The distinct warnings of a log, without their time stamps and numbers."""
    kinds: dict[str, None] = {}
    for line in lines:
        text = line.split(" ", 2)[-1] if line[:4].isdigit() else line
        kinds.setdefault(re.sub(r"\d[\d,.]*", "N", text)[:160], None)
    return list(kinds)


async def _add_log(exc: BaseException, cluster: Child | None) -> None:
    """``cluster up``'s warnings and errors (stopped now) as a note of ``exc``."""
    if cluster is not None:
        lines = await stop_with_log(cluster)
        exc.add_note("cluster up's warnings and errors:\n" + "\n".join(lines[-30:]))


class SinkRestartError(ChildError):
    """The range started over during a run (its lease lost: a fence, then owned again)."""


def _failed(res: Results, what: str, exc: BaseException) -> None:
    """A failed run: an error of the benchmark (the command exits 1), logged with its notes."""
    res.errors.append(f"redis/sink {what}: {exc!r}")
    notes = "\n".join(getattr(exc, "__notes__", []))
    log(f"redis sink {what}: FAILED {exc!r}" + (f"\n{notes}" if notes else ""))


def group_row(runs: dict[str, dict[str, float]], order: tuple[str, ...]) -> dict[str, Any]:
    """One group's figures by configuration, and the ratios against the sink off."""
    row: dict[str, Any] = {f"{c}_{k}": v for c, fig in runs.items() for k, v in fig.items()}
    off = runs["off"]
    off_worker = off["us"] - off["supervisor_us"]
    for c in CONFIGS[1:]:
        on = runs[c]
        row[f"{c}_ratio"] = on["us"] / off["us"]
        row[f"{c}_supervisor_ratio"] = on["supervisor_us"] / off["supervisor_us"]
        # the worker never talks to Redis: its ratio is the group's control
        row[f"{c}_worker_ratio"] = (on["us"] - on["supervisor_us"]) / off_worker
        row[f"{c}_added_us"] = on["us"] - off["us"]
        row[f"{c}_supervisor_added_us"] = on["supervisor_us"] - off["supervisor_us"]
    row["order"] = "-".join(order)
    return row


# -- 2. the most the sink appends ---------------------------------------------------------


def crossing(samples: list[tuple[float, ...]], col: int, target: float) -> float:
    """When column ``col`` of the samples first reached ``target`` (linear interpolation)."""
    for prev, cur in itertools.pairwise(samples):
        if cur[col] >= target:
            if cur[col] == prev[col]:
                return cur[0]
            return prev[0] + (cur[0] - prev[0]) * (target - prev[col]) / (cur[col] - prev[col])
    return math.nan


def value_at(samples: list[tuple[float, ...]], col: int, t: float) -> float:
    """Column ``col`` at time ``t`` (linear interpolation between the samples)."""
    for prev, cur in itertools.pairwise(samples):
        if cur[0] >= t:
            if cur[0] == prev[0]:
                return cur[col]
            return prev[col] + (cur[col] - prev[col]) * (t - prev[0]) / (cur[0] - prev[0])
    return samples[-1][col] if samples else math.nan


async def flood_once(
    fh: Firehose,
    sizes: SinkSizes,
    server: RedisServer,
    http: aiohttp.ClientSession,
    config: str,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The firehose's whole stream, unpaced, through ``cluster up --redis`` with ``config``."""
    shards = sizes.shards
    total = sizes.flood_per_shard * shards
    await fh.wait(lambda s: s["ready"] == 0 and s["streaming"] == 0, 30, "idle")
    url = db_url(server, "sink")
    await flush(url)
    state = tempfile.mkdtemp(prefix="bench-sink-flood-")
    sub: Child | None = None
    cluster: Child | None = None
    spy: Child | None = None
    try:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        # a long idle limit: while the relay is held back by the sink nothing comes
        sub = await Child.python(
            "sink", "scripts.bench.sink", "sub", endpoint, str(total), "--idle-s", "60"
        )
        await sub.expect("BOUND ", 30)
        health = f"127.0.0.1:{free_port()}"
        status_url = f"http://{health}/status"
        cluster = await start_cluster(
            fh.rest_url,
            endpoint,
            workers=1,
            health=health,
            state_dir=state,
            extra=cluster_args(url, config),
        )
        await wait_status(http, health, all_ready(shards), 60, f"{shards} shards ready", cluster)
        await asyncio.sleep(sizes.settle_s)
        before = await wait_status(http, health, sink_idle, 30, "the sink idle", cluster)
        if profile is not None:
            spy = await Child.py_spy(cluster.pid, profile)
            await asyncio.sleep(1.0)  # attached
        lengths0 = dispatched(await stream_lengths(url))
        usec0 = await command_usec(url)
        pub0 = int(before["relay"]["published"])
        app0 = handled(before.get("sink") or {})
        await fh.go()
        cpu0, sup0, red0 = tree_cpu(cluster.pid), own_cpu(cluster.pid), own_cpu(server.pid)
        t0 = time.monotonic()
        # (seconds since go, published, appended, sink.pending)
        samples: list[tuple[float, ...]] = [(0.0, 0.0, 0.0, 0.0)]
        deadline = t0 + 60 + total / 2_000
        # the slowest /status answer: how long the supervisor's event loop went unserved
        slowest = 0.0
        late = 0
        #: the sink's last_error whenever a reading saw one (a failed round, retried)
        reasons: dict[str, None] = {}
        while True:
            await asyncio.sleep(SAMPLE_S)
            asked = time.monotonic()
            try:
                body = await get_json(http, status_url)
            except (aiohttp.ClientError, TimeoutError):
                late += 1  # no answer within 5 s
                slowest = max(slowest, time.monotonic() - asked)
                if time.monotonic() > deadline:
                    raise
                continue
            slowest = max(slowest, time.monotonic() - asked)
            sink = body.get("sink") or {}
            if sink.get("last_error"):
                reasons.setdefault(str(sink["last_error"])[:200], None)
            pub = int(body["relay"]["published"]) - pub0
            app = handled(sink) - app0 if sink else math.nan
            if body.get("role") != "owner" or pub < samples[-1][1] or app < samples[-1][2]:
                raise SinkRestartError(
                    f"{config}, flood: the range started over {time.monotonic() - t0:.1f} s"
                    f" into the stream (role {body.get('role')!r}, relay.published"
                    f" {pub + pub0:,}, sink appended + skipped {app + app0:,}: counters of a"
                    " new run); the firehose answers no RESUME, so this run cannot finish"
                )
            samples.append(
                (
                    time.monotonic() - t0,
                    float(pub),
                    float(app),
                    float(sink.get("pending", 0)) if sink else math.nan,
                )
            )
            if pub >= total and (not sink or (app >= total and sink.get("pending") == 0)):
                break
            if cluster.proc.returncode is not None:
                raise ChildError(f"cluster exited: {await cluster.stderr_tail()}")
            if time.monotonic() > deadline:
                raise SinkCheckError(
                    f"sink ({config}), flood: after {deadline - t0:.0f} s the relay published"
                    f" {pub:,} and the sink appended {app:,} of {total:,} events"
                    f" (pending {sink.get('pending')}, errors {sink.get('errors')},"
                    f" last error {sink.get('last_error')!r})"
                )
        cpu1, sup1, red1 = tree_cpu(cluster.pid), own_cpu(cluster.pid), own_cpu(server.pid)
        if spy is not None:
            await spy.interrupt()
            spy = None
        after = body
        dropped = int(after["relay"].get("pub_dropped", 0)) - int(before["relay"]["pub_dropped"])
        received = math.nan
        if dropped == 0:  # else the SUB would wait for events that never come
            with contextlib.suppress(ChildError):
                received = float(int((await sub.expect("DONE ", 15)).split()[0]))
        usec1 = await command_usec(url)
        lengths1 = dispatched(await stream_lengths(url))
    except Exception as exc:
        await _add_log(exc, cluster)
        raise
    finally:
        if spy is not None:
            await spy.interrupt()
        warnings = await stop_with_log(cluster)
        if sub is not None:
            await sub.stop(timeout=5.0)
        shutil.rmtree(state, ignore_errors=True)
    t_pub = crossing(samples, 1, total)
    fig: dict[str, Any] = {
        "events": float(total),
        "seconds": samples[-1][0],
        # the relay's rate from the start to its last event, and the sink's over the same window
        "pub_eps": total / t_pub,
        "us": (cpu1 - cpu0) / total * 1e6,
        "supervisor_us": (sup1 - sup0) / total * 1e6,
        "redis_server_us": (red1 - red0) / total * 1e6,
        "received": received,
        "pub_dropped": float(dropped),
        "status_max_s": slowest,
        "status_timeouts": float(late),
        "load1": os.getloadavg()[0],
        "warnings": float(len(warnings)),
        "warning_kinds": warning_kinds(warnings),
    }
    if config != "off":
        fig["error_reasons"] = list(reasons)
        t_app = crossing(samples, 2, total)
        at_end = next(s for s in samples if s[1] >= total)
        # every 0.5 s or so: seconds, published, appended, pending (for the record)
        trace = [samples[0]]
        for smp in samples[1:]:
            if smp[0] - trace[-1][0] >= 0.5 or smp is samples[-1]:
                trace.append(smp)
        fig["trace"] = [[round(v, 2) for v in smp] for smp in trace]
        fig |= usec_per_event(usec0, usec1, total)
        fig |= {
            "app_eps": value_at(samples, 2, t_pub) / t_pub,
            # /status sink.pending at the first reading after the relay's last event
            "pending_end": at_end[3],
            "pending_max": max(s[3] for s in samples),
            # from the start to the last append: the sink's own rate over the whole stream
            "sink_eps": total / t_app,
            "drain_s": t_app - t_pub,
            # the backlog left at the relay's last event over the time to append it: the
            # sink's rate with the supervisor's loop to itself (nan: too little left)
            "drain_eps": (total - value_at(samples, 2, t_pub)) / (t_app - t_pub)
            if t_app - t_pub >= 0.3
            else math.nan,
        }
        checks = check_run(
            config, before, after, lengths1 - lengths0, url, shards, sizes.flood_per_shard
        )
        fig |= await _logged(checks(keyed=False), cluster)
    await flush(url)  # the streams of a flood are large: free them now
    return fig


# -- the part -----------------------------------------------------------------------------


def runtime_changes() -> tuple[list[str], str]:
    """Runtime files that differ from HEAD or are not committed at all, and a digest of them.

    Read-only git; the digest covers the diff and the untracked files' contents, so an
    edit of an uncommitted file (cluster/sink.py) during the run is seen too.
    """
    runtime = ["cluster", "worker", "protocol", "simulator"]

    def git(*args: str) -> str:
        argv = ["git", "--no-optional-locks", *args]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True).stdout

    changed = [f for f in git("diff", "--name-only", "HEAD", "--", *runtime).splitlines() if f]
    untracked = [
        f
        for f in git("ls-files", "--others", "--exclude-standard", "--", *runtime).splitlines()
        if f.endswith(".py")
    ]
    digest = hashlib.sha1(git("diff", "HEAD", "--", *runtime).encode())
    for f in untracked:
        with contextlib.suppress(OSError):
            digest.update(f.encode() + (REPO / f).read_bytes())
    return sorted(changed + untracked), digest.hexdigest()


#: What the supervisor's main thread does, by the function a sample is inside of
#: (inclusive: a sample inside several counts for each).
PROFILE_PARTS = (
    ("Relay.process", "the relay: read the channel, publish (and hand the sink its runs)"),
    ("Publisher.publish", "  of which the PUB tap's queues"),
    ("StreamSink.add", "  of which handing the sink its runs"),
    ("StreamSink._take", "the sink: encode a round (`_take`)"),
    ("_dispatch_msgpack", "  of which msgpack (orjson parse + msgspec pack)"),
    ("_json_writer", "  of which JSON (wrapping the bytes)"),
    ("SinkBatch.add_run", "  of which script arguments, written as RESP (`SinkBatch.add_run`)"),
    ("StreamStore.append", "the sink: the round's request sent, its replies read"),
    ("StreamSink._maintain_loop", "the sink: trims, views, touches"),
    ("RequestHandler", "HTTP (`/status` readings of the benchmark)"),
)


def profile_summary(path: Path) -> list[str]:
    """Shares of the supervisor's main-thread samples in a ``py-spy record -f raw`` file."""
    parts: Counter[str] = Counter()
    loop_only = total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                frames = stack.split(";")
                if not stack or not frames[0].startswith("<module>"):
                    continue  # not the main thread (the default executor's threads)
                n = int(count)
                total += n
                names = {frame.split(" (", 1)[0] for frame in frames}
                for name, _what in PROFILE_PARTS:
                    if name in names or any(x.startswith(name + ".") for x in names):
                        parts[name] += n
                if frames[-1].startswith("Runner.run "):
                    loop_only += n  # in the event loop itself (uvloop: no Python frame)
    except (OSError, ValueError) as exc:
        return [f"(no profile: {exc!r})"]
    if not total:
        return ["(no samples)"]
    lines = [f"{total:,} samples of the main thread"]
    lines += [f"{parts[name] / total:6.1%}  {what}" for name, what in PROFILE_PARTS]
    lines.append(f"{loop_only / total:6.1%}  the event loop itself (uvloop's C code: I/O, timers)")
    return lines


async def bench_sink(
    res: Results,
    server: RedisServer,
    http: aiohttp.ClientSession,
    command: str,
) -> None:
    """The paced groups and the flood groups, ``--repeat`` times, interleaved by repeat."""
    from cluster.sink import EVENTS_PER_CALL, EVENTS_PER_ROUND

    if procs.CODE_DIR is not None and not (procs.CODE_DIR / "cluster" / "sink.py").exists():
        why = "--head: the commit has no cluster/sink.py (the sink is not committed)"
        res.skipped["redis sink"] = why
        log(f"skipping redis sink: {why}")
        return
    sizes = QUICK if res.quick else FULL
    head = code_state()[0]
    changed, digest = runtime_changes()
    snapshot = procs.CODE_DIR is not None
    profile_dir = next(iter(PROFILE.values())).parent if PROFILE else None
    meta: dict[str, Any] = {
        "command": command,
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{report.cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
        "commit": head,
        "snapshot": snapshot,
        # what the children ran beyond the commit (nothing with --head)
        "uncommitted": [] if snapshot else changed,
        "redis_version": redis_server_version(),
        "sizes": dataclasses.asdict(sizes),
        "max_pending": SinkSettings().max_pending,
        "events_per_call": EVENTS_PER_CALL,
        "events_per_round": EVENTS_PER_ROUND,
        "retention_s": RETENTION_S,
        "pub_hwm": PUB_HWM,
        "sample_s": SAMPLE_S,
    }
    res.redis["sink_meta"] = meta
    per_shard = max(1, int(sizes.rate_per_shard * sizes.seconds))
    paced = await Firehose.start(sizes.shards, per_shard, http)
    flood: Firehose | None = None
    try:
        flood = await Firehose.start(sizes.shards, sizes.flood_per_shard, http)
        group = 0
        for rep in range(res.repeat):
            for _ in range(sizes.groups):
                order = rotated(group)
                group += 1
                try:
                    runs = {c: await paced_once(paced, sizes, server, http, c) for c in order}
                except Exception as exc:  # any failure is reported; the other runs still run
                    _failed(res, "paced", exc)
                    continue
                for c, fig in runs.items():
                    if fig["received"] < fig["events"]:
                        res.notes.append(
                            f"redis, sink (paced, {c}, group {group}): the SUB sink got"
                            f" {fig['received']:.0f} of {fig['events']:.0f} events"
                        )
                row = group_row(runs, order)
                res.redis.setdefault("sink", []).append(row)
                log(
                    f"redis sink paced #{group} ({row['order']}): off {row['off_us']:.1f}"
                    f" µs/event (supervisor {row['off_supervisor_us']:.1f}), msgpack"
                    f" {row['msgpack_us']:.1f} ({row['msgpack_supervisor_us']:.1f}), json"
                    f" {row['json_us']:.1f} ({row['json_supervisor_us']:.1f}); redis-server"
                    f" {row['msgpack_redis_server_us']:.1f} / {row['json_redis_server_us']:.1f};"
                    f" worker control {row['msgpack_worker_ratio']:.3f} /"
                    f" {row['json_worker_ratio']:.3f}; every event appended once"
                )
            order = rotated(rep)
            try:
                runs = {c: await flood_once(flood, sizes, server, http, c) for c in order}
            except Exception as exc:
                _failed(res, "flood", exc)
                continue
            row = {f"{c}_{k}": v for c, fig in runs.items() for k, v in fig.items()}
            row["order"] = "-".join(order)
            res.redis.setdefault("sink_rate", []).append(row)
            log(
                f"redis sink flood #{rep + 1} ({row['order']}): published off"
                f" {row['off_pub_eps']:,.0f}/s; msgpack {row['msgpack_pub_eps']:,.0f}/s,"
                f" appended {row['msgpack_app_eps']:,.0f}/s, pending at the end"
                f" {row['msgpack_pending_end']:,.0f} (max {row['msgpack_pending_max']:,.0f});"
                f" json {row['json_pub_eps']:,.0f}/s, appended {row['json_app_eps']:,.0f}/s,"
                f" pending {row['json_pending_end']:,.0f} (max {row['json_pending_max']:,.0f})"
            )
        if profile_dir is not None:
            meta["profile"] = {}
            for c in CONFIGS[1:]:
                out = profile_dir / f"sink-flood-{c}.txt"
                try:
                    await flood_once(flood, sizes, server, http, c, profile=out)
                except SinkRestartError as exc:
                    # not a measured run: what happened to it is a finding, not an error
                    meta.setdefault("profile_restarts", {})[c] = [
                        str(exc),
                        *"\n".join(getattr(exc, "__notes__", [])).splitlines(),
                    ]
                    log(f"redis sink profile ({c}): {exc}")
                except Exception as exc:
                    _failed(res, f"profile ({c})", exc)
                    continue
                meta["profile"][c] = profile_summary(out)
                log(f"redis sink: py-spy of the supervisor ({c}) in {out}")
    finally:
        await paced.child.stop()
        if flood is not None:
            await flood.child.stop()
    meta["load"] = [r[f"{c}_load1"] for r in res.redis.get("sink", []) for c in CONFIGS]
    meta["load"] += [r[f"{c}_load1"] for r in res.redis.get("sink_rate", []) for c in CONFIGS]
    if not snapshot and runtime_changes()[1] != digest:
        res.notes.append(
            "redis, sink: the working tree's runtime code changed while this part ran (other"
            " edits): its runs did not all measure the same code"
        )


# -- the report ---------------------------------------------------------------------------


def _fig(rows: list[dict[str, Any]], key: str) -> Figure:
    """The samples of ``key`` over ``rows`` (a missing or NaN sample is left out)."""
    values = (r.get(key) for r in rows)
    return Figure(tuple(float(v) for v in values if v is not None and not math.isnan(float(v))))


def _range(fig: Figure, digits: int) -> str:
    return f"{fig.low:.{digits}f}-{fig.high:.{digits}f}" if fig.samples else "n/a"


def _mean_ci(samples: tuple[float, ...]) -> str:
    """'mean m ± h, 95 %' of a few ratios (t quantiles), or 'mean m'."""
    if not samples:
        return "n/a"
    mean = statistics.fmean(samples)
    if len(samples) < 2:
        return f"mean {mean:.3f}"
    t95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
    half = t95.get(len(samples) - 1, 1.96) * statistics.stdev(samples) / math.sqrt(len(samples))
    return f"mean {mean:.3f} ± {half:.3f}, 95 %"


def sink_section(data: dict[str, Any]) -> list[str]:
    """``### Sink``: the figures of :func:`bench_sink`, with the command that made them."""
    groups = data.get("sink", [])
    floods = data.get("sink_rate", [])
    meta = data.get("sink_meta") or {}
    if not groups and not floods:
        return []
    sz = meta.get("sizes", {})
    shards, rate = int(sz.get("shards", 0)), int(sz.get("rate_per_shard", 0))
    bound = int(meta.get("max_pending", 100_000))
    uncommitted = meta.get("uncommitted") or []
    lines = [
        "### Sink (`--sink redis`): CPU per event, and the most it appends",
        "",
        f"Measured by `{meta.get('command', '?')}` at {meta.get('measured_at', '?')} on"
        f" {meta.get('machine', '?')}, code at commit {meta.get('commit', '?')}"
        + (" (`--head`: a snapshot of the commit)" if meta.get("snapshot") else "")
        + (
            f" with uncommitted changes to {', '.join(uncommitted)} (the working tree)"
            if uncommitted
            else ""
        )
        + f", against a redis-server {meta.get('redis_version', '')} of its own on TCP loopback"
        " (no persistence), emptied before every `cluster up` (scripts/bench/sink_bench.py)."
        " Three configurations of the same `cluster up --redis` command (1 worker): the sink"
        " off, `--sink redis` (msgpack, the default) and `--sink redis --sink-encoding json`;"
        f" the sink runs also get `--sink-retention {meta.get('retention_s', RETENTION_S)}`"
        " so that nothing is trimmed before it is read back. Every run with the sink is"
        " checked before it counts: `/status` sink.appended + sink.skipped grew by exactly the"
        " events sent with nothing pending (skipped: a round whose reply was lost runs again"
        " and skips what its first run appended), unencodable and dropped_fenced 0, the streams"
        " hold exactly that many entries more, and every entry is read back (XRANGE) and"
        " decoded: each shard's seqs exactly once, in the stream named after its event, in the"
        " run's encoding, and in the paced runs every event's key `d._k` exactly once. A run"
        " that fails this is an error of the benchmark, not a figure.",
        "",
    ]
    if groups:
        lines += _paced_lines(groups, meta, shards, rate)
    if floods:
        lines += _flood_lines(floods, meta, shards, bound)
    for c, what in (meta.get("profile_restarts") or {}).items():
        lines += [
            f"The profiled flood run ({c}) did not finish: with py-spy slowing the supervisor,"
            " its range started over during the stream (a new run of the range: new sink"
            " counters, the shards RESUMing, which the firehose never answers). What the"
            " benchmark saw, and the warnings and errors of `cluster up`'s log:",
            "",
            "```",
            *what,
            "```",
            "",
        ]
    for c, summary in (meta.get("profile") or {}).items():
        lines += [
            f"Where the supervisor's main thread spends its time in a flood run with the sink"
            f" ({c}): py-spy (`record -r 200`, idle not sampled) attached to the supervisor in one"
            " extra run that is not among the runs above (py-spy slows what it samples); share"
            " of the samples inside each function:",
            "",
            "```",
            *summary,
            "```",
            "",
        ]
    return lines


def _paced_lines(
    groups: list[dict[str, Any]], meta: dict[str, Any], shards: int, rate: int
) -> list[str]:
    sz = meta.get("sizes", {})
    ratio = {c: _fig(groups, f"{c}_ratio") for c in CONFIGS[1:]}
    lines = [
        f"CPU per event: the firehose paced at {shards * rate:,} events/s ({shards} x"
        f" {rate:,}/s) for {sz.get('seconds', 0):g} s per run, the three configurations run"
        " in groups, the order rotating from group to group (off-msgpack-json,"
        " msgpack-json-off, json-off-msgpack) so that a change of machine load hits all"
        " three alike and none always runs first; ratios are taken within a group. CPU of"
        " the cluster's process tree (supervisor + worker, psutil) and of the supervisor"
        " alone (the relay and the sink: the encoding, the pipeline of script calls, the"
        " Redis client), from the stream's start until the SUB client has every event and"
        " the sink has appended all of them (its tail is inside the window). The worker alone"
        " (tree minus supervisor) never talks to Redis: its ratio is each group's control."
        " redis-server's own CPU (not in the tree) beside them. Without the sink the"
        " supervisor writes its checkpoints to Redis (every 0.5 s); with it the sink's"
        " appends move them." + _load(groups),
        "",
        "| group | order | tree µs/event off | msgpack | json | msgpack/off | json/off"
        " | supervisor µs/event off | msgpack | json | worker msgpack/off, json/off (control)"
        " | redis-server µs/event off / msgpack / json | sink tail ms msgpack / json |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(groups, 1):
        lines.append(
            f"| {i} | {r.get('order', '')} | {r['off_us']:.1f} | {r['msgpack_us']:.1f}"
            f" | {r['json_us']:.1f} | {r['msgpack_ratio']:.3f} | {r['json_ratio']:.3f}"
            f" | {r['off_supervisor_us']:.1f} | {r['msgpack_supervisor_us']:.1f}"
            f" | {r['json_supervisor_us']:.1f}"
            f" | {r['msgpack_worker_ratio']:.3f}, {r['json_worker_ratio']:.3f}"
            f" | {r['off_redis_server_us']:.2f} / {r['msgpack_redis_server_us']:.2f}"
            f" / {r['json_redis_server_us']:.2f}"
            f" | {r['msgpack_tail_s'] * 1000:.0f} / {r['json_tail_s'] * 1000:.0f} |"
        )
    lines += [
        f"| median | | {_fig(groups, 'off_us').fmt(1)} | {_fig(groups, 'msgpack_us').fmt(1)}"
        f" | {_fig(groups, 'json_us').fmt(1)} | {ratio['msgpack'].fmt(3)}"
        f" | {ratio['json'].fmt(3)} | {_fig(groups, 'off_supervisor_us').fmt(1)}"
        f" | {_fig(groups, 'msgpack_supervisor_us').fmt(1)}"
        f" | {_fig(groups, 'json_supervisor_us').fmt(1)}"
        f" | {_fig(groups, 'msgpack_worker_ratio').median:.3f},"
        f" {_fig(groups, 'json_worker_ratio').median:.3f}"
        f" | {_fig(groups, 'off_redis_server_us').median:.2f}"
        f" / {_fig(groups, 'msgpack_redis_server_us').median:.2f}"
        f" / {_fig(groups, 'json_redis_server_us').median:.2f}"
        f" | {_fig(groups, 'msgpack_tail_s').median * 1000:.0f}"
        f" / {_fig(groups, 'json_tail_s').median * 1000:.0f} |",
        "",
    ]
    for c in CONFIGS[1:]:
        rc = ratio[c]
        if math.isnan(rc.median):
            continue
        added = _fig(groups, f"{c}_added_us")
        sup_added = _fig(groups, f"{c}_supervisor_added_us")
        ctl = _fig(groups, f"{c}_worker_ratio")
        red = _fig(groups, f"{c}_redis_server_us").median
        red_off = _fig(groups, "off_redis_server_us").median
        lines.append(
            f"- {c}: at {shards * rate:,} events/s the sink changes the tree's CPU per event"
            f" by {(rc.median - 1) * 100:+.1f} % (median of {len(rc.samples)} groups' ratios;"
            f" groups {rc.low:.3f} to {rc.high:.3f}; {_mean_ci(rc.samples)}), i.e."
            f" {added.median:+.1f} µs per event (groups {_range(added, 1)}); the supervisor's"
            f" by {sup_added.median:+.1f} µs (groups {_range(sup_added, 1)}); the worker"
            f" alone, the control, by {(ctl.median - 1) * 100:+.1f} % (groups"
            f" {_range(ctl, 3)}). redis-server, outside the tree: {red:.2f} µs per event"
            f" with the sink ({red_off:.2f} without); the supervisor and redis-server together:"
            f" {sup_added.median + red - red_off:+.1f} µs per event."
        )
    controls = (
        _fig(groups, "msgpack_worker_ratio").samples + _fig(groups, "json_worker_ratio").samples
    )
    if controls and abs(statistics.median(controls) - 1) > 0.05:
        lines.append(
            f"- The control moved ({statistics.median(controls):.3f} median over both"
            " encodings): the worker did not get more work, so the change is the machine's"
            " with the sink on. With the sink the supervisor and redis-server need more of"
            " the 2 cores; the worker then gets the CPU less often and probably finds more"
            " events per wake-up (fewer, larger messages to the supervisor), which costs it"
            " less per event. The tree's ratio therefore understates the sink's cost; the"
            " supervisor's added µs and redis-server's are the sink's own."
        )
    red_lines = []
    for c in CONFIGS[1:]:
        xadd = _fig(groups, f"{c}_xadd_us").median
        if math.isnan(xadd):
            continue
        red_lines.append(
            f"{c} {_fig(groups, f'{c}_evalsha_us').median:.2f} µs per event inside the"
            f" script calls: XADD {xadd:.2f}, the checkpoint's GET + SET"
            f" {_fig(groups, f'{c}_get_us').median + _fig(groups, f'{c}_set_us').median:.2f}"
            f" ({_fig(groups, f'{c}_set_calls').median:.2f} SET per event: one per shard"
            f" a script call appends to), Lua itself and its arguments"
            f" {_fig(groups, f'{c}_script_own_us').median:.2f}"
        )
    if red_lines:
        lines.append(
            "- Where redis-server's time goes (INFO commandstats' usec, medians: time per"
            " command as redis-server measures it, wall-clock, so on these 2 busy cores it can"
            " exceed its CPU time): "
            + "; ".join(red_lines)
            + ". The rest of its CPU per event is reading the requests and the event loop."
        )
    rounds = {c: _fig(groups, f"{c}_rounds").median for c in CONFIGS[1:]}
    events = _fig(groups, "msgpack_events").median
    entries = sum(sum(_fig(groups, f"{c}_entries").samples) for c in CONFIGS[1:])
    if rounds["msgpack"] > 0 and rounds["json"] > 0:
        skipped = sum(sum(_fig(groups, f"{c}_skipped").samples) for c in CONFIGS[1:])
        errors = sum(sum(_fig(groups, f"{c}_errors").samples) for c in CONFIGS[1:])
        lines.append(
            f"- Appends: {rounds['msgpack']:,.0f} (msgpack) and {rounds['json']:,.0f} (json)"
            f" rounds per run of {events:,.0f} events (median): ~{events / rounds['msgpack']:.0f}"
            f" and ~{events / rounds['json']:.0f} events per round (one pipeline; at most"
            f" {int(meta.get('events_per_call', 1000)):,} events per script call): the sender"
            " takes whatever waits as soon as the previous round is answered, so at this rate a"
            " round holds the events of a few milliseconds, and what a round and a run cost"
            " (the pipeline, a script call, each run's checkpoint) is paid every few dozen"
            " events. Checked: every"
            f" paced sink run has every event exactly once ({entries:,.0f} entries read back"
            f" over the runs, 0 lost, 0 duplicated; {skipped:,.0f} skipped,"
            f" {errors:,.0f} failed rounds)."
        )
    lines += _warning_lines(groups, "paced")
    lines.append("")
    return lines


def _flood_lines(
    floods: list[dict[str, Any]], meta: dict[str, Any], shards: int, bound: int
) -> list[str]:
    sz = meta.get("sizes", {})
    per_shard = int(sz.get("flood_per_shard", 0))
    lines = [
        f"The most it appends: the firehose unpaced, its pre-generated stream of"
        f" {per_shard * shards:,} events ({shards} x {per_shard:,}, zlib-stream) served as fast"
        " as the cluster reads, the three configurations in a rotating order, one group per"
        " repeat, a SUB client on the PUB tap as in every run; `/status` read every"
        f" {meta.get('sample_s', SAMPLE_S):g} s. Published/s: the relay's events from the start"
        " to its last event (relay.published). Appended/s: what the sink appended over the"
        " same window (sink.appended + sink.skipped, interpolated at the relay's last event)."
        " Backlog: `/status` sink.pending (waiting + the round in flight) at the first reading"
        " after the relay's last event, and the largest reading. Durable/s: every event over"
        " the time from the start to the sink's last append, the rate at which the stream"
        " reached Redis; drain: from the relay's last event to the sink's, and the backlog"
        " left then over that time (the sink with the supervisor's event loop to itself, the"
        " relay done). Above"
        f" {bound:,} waiting events the relay stops reading (back pressure, on again below"
        f" {bound // 2:,}), so with the sink on the relay's rate is bounded by the sink's plus"
        " that backlog. Slowest `/status`: the longest a reading waited for its answer (the"
        " supervisor's event loop busy with something else). The 2 cores are shared by the"
        " firehose, the worker, the supervisor, the SUB client and redis-server: these are"
        " rates of this whole machine, not of the sink alone." + _load(floods),
        "",
        "| sink | published/s | appended/s (same window) | backlog at the relay's last event"
        " | largest backlog | durable/s (start to last append) | drain s | drain events/s"
        " | failed rounds (retried), by run | slowest `/status` s | tree µs/event"
        " | supervisor µs/event | redis-server µs/event |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in CONFIGS:
        on = c != "off"

        def cell(key: str, digits: int = 0, on: bool = on, c: str = c) -> str:
            return _fig(floods, f"{c}_{key}").fmt(digits) if on else "n/a"

        lines.append(
            f"| {c} | {_fig(floods, f'{c}_pub_eps').fmt(0)} | {cell('app_eps')}"
            f" | {cell('pending_end')} | {cell('pending_max')} | {cell('sink_eps')}"
            f" | {cell('drain_s', 2)} | {cell('drain_eps')} | {_runs(floods, c, 'errors')}"
            f" | {_fig(floods, f'{c}_status_max_s').fmt(2)}"
            f" | {_fig(floods, f'{c}_us').fmt(1)} | {_fig(floods, f'{c}_supervisor_us').fmt(1)}"
            f" | {_fig(floods, f'{c}_redis_server_us').fmt(2)} |"
        )
    lines.append("")
    off = _fig(floods, "off_pub_eps")
    for c in CONFIGS[1:]:
        pub, app = _fig(floods, f"{c}_pub_eps"), _fig(floods, f"{c}_app_eps")
        most = _fig(floods, f"{c}_pending_max")
        durable = _fig(floods, f"{c}_sink_eps")
        if math.isnan(app.median):
            continue
        reached = sum(1 for v in most.samples if v >= bound)
        keeps = app.median >= 0.95 * pub.median and not reached
        text = (
            f"- {c}: the relay published {pub.median:,.0f} events/s with the sink on"
            f" ({pub.median / off.median:.0%} of the {off.median:,.0f}/s without it; runs"
            f" {_range(pub, 0)}), the sink appended {app.median:,.0f}/s over the same window"
            f" (runs {_range(app, 0)}); the whole stream was in Redis at {durable.median:,.0f}"
            f" events/s (runs {_range(durable, 0)}, {durable.median / off.median:.0%} of the"
            " PUB tap's rate without the sink): "
        )
        if keeps:
            text += f"it keeps up (appended ≈ published, the backlog well below {bound:,})."
        else:
            text += (
                "it does NOT keep up with the relay flat out: the backlog grew to"
                f" {most.high:,.0f}"
                + (
                    f" (the bound of {bound:,} reached in {reached} of {len(most.samples)}"
                    " runs: the relay was held back, and the backlog still overshot the bound:"
                    " the relay checks it only before each batch it reads, up to 2,000"
                    " messages of many events each)"
                    if reached
                    else " (below the bound)"
                )
                + f" and {_fig(floods, f'{c}_drain_s').median:.2f} s (median) after the relay's"
                " last event the sink was still appending the rest; with the relay done it"
                f" appended {_fig(floods, f'{c}_drain_eps').median:,.0f}/s (median): the relay"
                " and the sink share the supervisor's one event loop, and the sink encodes a"
                " round only after the previous round's reply (one pipeline in flight), so its"
                " encoding never overlaps redis-server's work on a round, and while the relay"
                " is held back nothing in the supervisor does."
            )
        lines.append(text)
    errors = {c: sum(_fig(floods, f"{c}_errors").samples) for c in CONFIGS[1:]}
    skipped = {c: sum(_fig(floods, f"{c}_skipped").samples) for c in CONFIGS[1:]}
    slow = {c: _fig(floods, f"{c}_status_max_s").high for c in CONFIGS}
    late = sum(sum(_fig(floods, f"{c}_status_timeouts").samples) for c in CONFIGS)
    seen: dict[str, None] = {}
    for r in floods:
        for c in CONFIGS[1:]:
            for why in r.get(f"{c}_error_reasons") or []:
                seen.setdefault(f"`{why}`", None)
    reasons = "; ".join(seen)
    if not any(math.isnan(v) for v in slow.values()):
        lines.append(
            "- The supervisor's event loop went unserved for up to "
            + ", ".join(f"{slow[c]:.2f} s ({c})" for c in CONFIGS)
            + " (the slowest `/status` answer of any run"
            + (f"; {late:.0f} readings got no answer within 5 s" if late else "")
            + "). Everything on that loop waits as long: lease renewals, the Redis monitor,"
            " and the replies to the sink's own pipeline, read with the Redis client's 1 s"
            " socket timeout."
            + (
                f" Failed rounds in these runs: {errors['msgpack']:.0f} (msgpack) and"
                f" {errors['json']:.0f} (json); each was run again and its second run skipped"
                f" the events its first run had appended ({skipped['msgpack']:,.0f} and"
                f" {skipped['json']:,.0f} events counted as skipped, none in the streams twice:"
                " checked), so a failed round costs the Redis work of a round twice and"
                " sink.appended then counts fewer events than the streams hold."
                if errors["msgpack"] or errors["json"]
                else ""
            )
            + (f" The sink's last_error as `/status` showed it: {reasons}." if reasons else "")
        )
    lines += _warning_lines(floods, "flood")
    lines.append("")
    return lines


def _runs(rows: list[dict[str, Any]], config: str, key: str) -> str:
    """Each run's ``key`` of ``config``, comma separated ('n/a' for the sink off)."""
    if config == "off":
        return "n/a"
    values = [r.get(f"{config}_{key}") for r in rows]
    return ", ".join(
        "?" if v is None or math.isnan(float(v)) else f"{float(v):.0f}" for v in values
    )


#: What a warning of ``cluster up``'s log was found to be, by a piece of its text.
KNOWN_WARNINGS = {
    "no identify budget": "where looked at, logged at start-up before any event: the Redis"
    " monitor's first reading came before the range's first budget sync (the database was"
    " just emptied); not the sink's",
    "gateway_send: reading failed": "the Redis client's 1 s socket timeout, of which"
    " gateway_send's XREADGROUP itself blocks 0.5 s: the supervisor's event loop or"
    " redis-server busy for the rest",
    "Timeout writing": "a round (up to 20,000 events, some 20 MB of script arguments) written"
    " under the Redis client's 1 s socket timeout while the supervisor's event loop or"
    " redis-server was busy",
}


def _known(kind: str) -> str:
    return next((f": {why}" for key, why in KNOWN_WARNINGS.items() if key in kind), "")


def _warning_lines(rows: list[dict[str, Any]], what: str) -> list[str]:
    """A bullet naming the warnings in ``cluster up``'s logs over ``rows``, if any."""
    count = sum(float(r.get(f"{c}_warnings") or 0) for r in rows for c in CONFIGS)
    if not count:
        return []
    kinds: dict[str, list[str]] = {}
    for r in rows:
        for c in CONFIGS:
            for kind in r.get(f"{c}_warning_kinds") or []:
                configs = kinds.setdefault(kind, [])
                if c not in configs:
                    configs.append(c)
    listed = "; ".join(f"`{k}` ({', '.join(v)}{_known(k)})" for k, v in list(kinds.items())[:6])
    return [
        f"- `cluster up`'s log in the {what} runs: {count:.0f} warnings or errors, of these"
        f" kinds (numbers as N): {listed}."
    ]


def _load(rows: list[dict[str, Any]]) -> str:
    """' (1-minute load average a-b at the ends of the runs)' over every configuration's runs."""
    loads = [float(r[f"{c}_load1"]) for r in rows for c in CONFIGS if r.get(f"{c}_load1")]
    if not loads:
        return ""
    return f" (1-minute load average {min(loads):.2f}-{max(loads):.2f} at the ends of the runs)"


def with_sink(text: str, data: dict[str, Any]) -> str:
    """The report ``text`` with the Sink subsection at the end of its Redis section."""
    section = sink_section(data)
    if not section:
        return text
    lines = text.split("\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("## Redis"))
    except StopIteration:
        return text
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[:end] + section + lines[end:])
