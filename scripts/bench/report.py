"""docs/BENCHMARKS.md from a run's results: the machine, the versions, each figure, the ratios."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson

from scripts.bench.stats import Figure

if TYPE_CHECKING:
    from scripts.bench.run import Results


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    out = {"Python": sys.version.split()[0]}
    for dist in ("aiohttp", "pyzmq", "orjson", "uvloop", "discord.py", "hikari", "psutil"):
        out[dist] = _version(dist)
    try:
        import zmq

        out["libzmq"] = zmq.zmq_version()
    except ImportError:  # pragma: no cover
        pass
    node = shutil.which("node")
    if node:
        out["Node.js"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True
        ).stdout.strip()
        from scripts.bench.run import NODE_DIR

        pkg = NODE_DIR / "node_modules" / "@discordjs" / "ws" / "package.json"
        if pkg.exists():
            out["@discordjs/ws"] = orjson.loads(pkg.read_bytes())["version"]
    return out


def _pct(part: float, whole: float) -> str:
    if whole <= 0 or math.isnan(part) or math.isnan(whole):
        return "n/a"
    return f"{part / whole:.0%}"


def _counts(values: list[float]) -> str:
    """'2' or '1-2': the distinct counts seen over the repeats."""
    distinct = sorted({int(v) for v in values})
    return (
        "-".join(str(v) for v in (distinct[0], distinct[-1]))
        if len(distinct) > 1
        else str(distinct[0])
    )


def _ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


#: What each hot-path change of the worker bought, measured with this command
#: (``--only throughput --receivers floor worker --repeat 3``) when it was made.
HISTORY = """## Hot path: what each change bought

Measured with `python -m scripts.bench --only throughput --receivers floor worker --repeat 3`
on 2026-11-26 (2 cores shared with other jobs, load average 1-4: provisional), µs of CPU
per event, median of 3 (range):

| change | worker | floor, same run |
|---|---|---|
| before: four ZeroMQ sends per event (one message per event) | 28.4 (25.6-30.0) | 21.6 (20.5-24.7) |
| one EVENTS message per shard per loop iteration (count > 1, flushed with `call_soon`) | 16.1 (15.8-18.4) | 22.3 (21.8-22.4) |
| + zlib-ng inflate (worker/inflate.py) | 15.8 (13.5-16.5) | 19.7 (17.9-21.4) |

py-spy on the worker before batching (share of samples): inflate 29 %, the four
ZeroMQ sends 32 % (the last frame of each message alone 23 %: libzmq's cost is per
message, not per frame), `peek` 11 %, aiohttp's websocket reader and
`receive` ~10 %. The floor spends 28 % in its one send per event and 33 % in
inflate. zlib-ng inflates this stream in 3.0 µs per event against zlib's 4.7
and isal's 4.6 (same process, `time.process_time`); isal was not adopted.
`copy=False` frames were not adopted: pyzmq's own threshold (64 KB) is far
above these 0.5-1.3 KB payloads, where a zero-copy frame costs more than the copy.

**EVENT_RUNS** (protocol/ipc.py): a worker sends every event of one loop
iteration, of all its shards, as one message of two frames (runs of
consecutive events per shard, a 6-byte head per event); the relay publishes
memoryview slices of it and builds the PUB header from `(shard_id, seq)`.
Before, an EVENTS message per shard carried three frames per event, each
read by the relay. Same machine, alternating runs of the two commits
(`--only throughput --receivers floor worker cluster --repeat 1`, twice each,
quiet machine): cluster 23.5 and 26.7 µs per event before (1.28x and 1.35x the
floor of the same run), 22.2 and 22.2 after (1.19x and 1.11x). At a paced
10,000 events/s (16 shards, 10 s; `cpu_times` of each process) the
supervisor went from 34.4 to 24.8 µs per event and the worker from 52.5 to
39.8: at moderate rates most events travel alone, and the cost per message
(ZeroMQ's signalling between threads, a read per frame) is what is left.
py-spy on the worker at full speed after it: inflate 37 % of samples,
aiohttp's reader and `receive` ~15 %, `peek` ~14 %, joining a message's body
~6 %, the two ZeroMQ sends ~4 %.

**Identify spacing from the send** (cluster/identify_scheduler.py,
`sent`): with 1,024 shards at a 0.05 s interval on 2 cores, the simulator
refused 93 IDENTIFYs with op 9 as too early for their bucket (each refused
shard reconnects and waits for a later slot): the grant was spaced, but a
busy worker wrote some IDENTIFYs tens of ms after their grant. The worker
now reports `sent` right after the write and the coordinator opens the
bucket `interval + margin` after that report: 1 refusal in the same run,
`cluster up` all READY in 6.9 s instead of 10.4 s. The lone worker's
in-process permits had the same fault plus uvloop's cached loop time (it
lagged tens of ms after 1,000 connections opened in one loop iteration, so
timers fired early): they now read `time.monotonic()` and look again after
each sleep.

**Two rounds of connections ahead** (worker/shard.py, identify slots): a
worker opened every shard's connection at once, so its first IDENTIFY waited
for ~500 handshakes and the simulator was flooded while it measured the
first windows. Now a shard that will IDENTIFY takes one of
`2 x max_concurrency` slots of its worker before connecting and gives it back
at READY (a shard that RESUMEs needs none). `cluster up`, 1,024 shards at
0.05 s (two single runs each, quiet machine): time before the first READY
2.2 -> 1.4 s, all READY 6.9 -> 6.4-6.6 s, no refusals.
"""


def _rest_of_overshoot(name: str, rest_s: float, rounds: int, refused: list[float]) -> str:
    """What the schedule's overshoot beyond the margin is made of (startup notes)."""
    out = f" The rest of the schedule's overshoot is {rest_s:.2f} s"
    if rounds > 0:
        out += f" ({rest_s / rounds * 1000:.0f} ms per round)"
    if name == "cluster":
        out += (
            ": each bucket's spacing counts from the worker's `sent` report, so every round"
            " also waits for the grant to reach the worker, the IDENTIFY to be written and"
            " the report to come back, on a machine that is busy opening connections."
        )
    else:
        out += ": CPU contention between receiver, simulator and sink, and retries."
    median_refused = Figure(tuple(refused)).median if refused else 0.0
    if median_refused > 0:
        out += (
            f" The simulator refused {median_refused:.0f} IDENTIFYs (median) with op 9 as too"
            " early for their bucket: it measures the spacing when it reads an IDENTIFY, and a"
            " busy simulator reads some late; each refused shard reconnects and takes a later"
            " slot of its bucket."
        )
    return out


def markdown(res: Results, elapsed_s: float, generated_at: str | None = None) -> str:
    s = res.sizes
    when = generated_at or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m scripts.bench"
        + (" --quick" if res.quick else "")
        + f" --repeat {res.repeat}` on {when}"
        f" in {elapsed_s:.0f} s. Every figure is the median of the repeats with its spread"
        " ((max - min) / median). Load sources and consumers run in processes of their own;"
        " CPU is that of the receiving process tree only (psutil, children included).",
        "",
        "## Machine",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; {platform.platform()}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "- load average (1, 5, 15 min): "
        + "; ".join(f"{when}: {a:.2f} {b:.2f} {c:.2f}" for when, (a, b, c) in res.load),
        "",
    ]
    if res.quick:
        lines += ["**Smoke mode (`--quick`): tiny sizes, the numbers mean nothing.**", ""]
    if res.throughput:
        total = s.shards * s.events_per_shard
        lines += [
            "## CPU per event and throughput",
            "",
            f"{s.shards} shards, {total:,} dispatches (70 % MESSAGE_CREATE ~1.3 KB, 30 % PRESENCE_UPDATE"
            " ~0.5 KB), zlib-stream, pre-generated and served as fast as the receiver reads"
            " (simulator/firehose.py). CPU seconds of the receiving process tree during the"
            " stream, per event; events/s counted where the events arrive (the sink's PULL/SUB for"
            " floor, worker and cluster; the library's own event callback otherwise).",
            "",
            "| receiver | µs CPU/event | events/s | CPU vs floor |",
            "|---|---|---|---|",
        ]
        floor = Figure(tuple(res.throughput.get("floor", {}).get("cpu_us", []))).median
        for name, fig in res.throughput.items():
            cpu = Figure(tuple(fig["cpu_us"]))
            eps = Figure(tuple(fig["eps"]))
            lines.append(f"| {name} | {cpu.fmt(1)} | {eps.fmt(0)} | {_ratio(cpu.median, floor)} |")
        ours = Figure(tuple(res.throughput.get("worker", {}).get("cpu_us", []))).median
        for other in ("discord.py", "hikari", "discordjs-ws"):
            if other in res.throughput:
                o = Figure(tuple(res.throughput[other]["cpu_us"])).median
                lines.append("")
                lines.append(f"- {other} uses {_ratio(o, ours)} the CPU per event of our worker.")
        lines.append("")
    if res.latency:
        lines += [
            "## Latency",
            "",
            "From the load source's socket write to the consumer's receive, per event, paced at"
            f" the given rate over {s.shards} shards for {s.latency_seconds:g} s, evenly spaced"
            " and dealt to the shards in turn (1 ms ticks). Every event carries a key (`d._k`);"
            " the firehose notes CLOCK_MONOTONIC right before each write, the consumer on"
            " arrival, and the two are joined afterwards, so neither side pays for the"
            " measurement on the way. The frames are compressed before the stream starts."
            " Microseconds; the floor is the same minimal loop as above.",
            "",
            "| receiver | events/s | p50 | p99 | p99.9 | max | µs CPU/event |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, by_rate in res.latency.items():
            for rate, runs in by_rate.items():
                f = {
                    k: Figure(tuple(r[k] for r in runs if r.get(k) is not None))
                    for k in ("p50", "p99", "p999", "max", "cpu_us")
                }
                lines.append(
                    f"| {name} | {rate:,} | {f['p50'].fmt(0)} | {f['p99'].fmt(0)} | {f['p999'].fmt(0)}"
                    f" | {f['max'].fmt(0)} | {f['cpu_us'].fmt(1)} |"
                )
        lines.append("")
        floor = res.latency.get("floor", {})
        for name in ("worker", "cluster"):
            for rate, runs in res.latency.get(name, {}).items():
                if rate not in floor:
                    continue
                ours = Figure(tuple(r["p99"] for r in runs if r.get("p99") is not None)).median
                base = Figure(tuple(r["p99"] for r in floor[rate] if r.get("p99") is not None))
                lines.append(
                    f"- {name} at {rate:,}/s: p99 {_ratio(ours, base.median)} the floor's"
                    " (same source, same consumer, same machine)."
                )
        lines.append("")
    if res.startup:
        bound = (math.ceil(s.startup_shards / s.startup_mc) - 1) * s.startup_interval
        lines += [
            "## Startup",
            "",
            f"{s.startup_shards} shards, max_concurrency {s.startup_mc}, identify interval"
            f" {s.startup_interval} s against the full simulator (its identify rules enforced)."
            f" Bound: (ceil(N/mc) - 1) * interval = {bound:.2f} s. 'total' counts from the"
            " receiver's process start (imports included) to the last READY; 'first..last READY'"
            " is the identify schedule itself; 'over the bound' = total - bound."
            " **cluster** is the product as users run it: `cluster up` (supervisor + the worker"
            f" processes it picks by default for {s.startup_shards} shards), every IDENTIFY granted"
            " by the supervisor's identify coordinator over ZeroMQ, READY counted at a ZeroMQ SUB"
            " client of its PUB socket; its total includes the supervisor's start, GET /gateway/bot"
            " and spawning the workers. **worker** is our worker process alone: identify permits"
            " from an in-process scheduler, READY counted from its PUSH socket. discord.py is"
            " scaled by overriding `before_identify_hook` to sleep the interval instead of 5 s;"
            " it reports its own READY, so its first..last READY is its total. 'op 9' counts the"
            " IDENTIFYs the simulator refused because their bucket had identified less than one"
            " interval before (its record; each such shard reconnects and identifies again).",
            "",
            "| receiver | total s | first..last READY s | over the bound (s) | op 9 (identify too early) |",
            "|---|---|---|---|---|",
        ]
        notes: list[str] = []
        rounds = math.ceil(s.startup_shards / s.startup_mc) - 1
        for name, runs in res.startup.items():
            tot = Figure(tuple(r["total_s"] for r in runs))
            span = Figure(tuple(r["span_s"] for r in runs))
            over = tot.median - bound
            refused = [r["rate_limited"] for r in runs if r.get("rate_limited") is not None]
            op9 = Figure(tuple(refused)).fmt(0) if refused else "n/a"
            lines.append(f"| {name} | {tot.fmt(2)} | {span.fmt(2)} | {over:.2f} | {op9} |")
            workers = [r["workers"] for r in runs if r.get("workers")]
            if workers:
                notes.append(
                    f"{name}: `cluster up` ran {_counts(workers)} worker"
                    f" process{'' if _counts(workers) == '1' else 'es'} (its default for"
                    f" {s.startup_shards} shards on {os.cpu_count()} cores: min(cores, ceil(N/16)))."
                )
            margins = [r["margin_s"] for r in runs if r.get("margin_s")]
            if margins and over > 0 and rounds > 0:
                margin = max(margins)
                added = rounds * margin
                before_first = tot.median - span.median
                who = (
                    "the identify scheduler's safety margin (cluster/identify_scheduler.py:"
                    " 1 % of the interval, at least 20 ms)"
                    if name == "cluster"
                    else "the margin added to its in-process permits"
                )
                notes.append(
                    f"{name}: of the {over:.2f} s over the bound, {before_first:.2f} s pass before"
                    f" the first READY (process start, imports, spawning, the first connections) and"
                    f" {span.median - bound:.2f} s are the schedule's own overshoot. {who[0].upper()}"
                    f"{who[1:]} spaces each bucket's identifies {margin * 1000:.0f} ms more than"
                    f" the interval: {rounds} rounds x {margin * 1000:.0f} ms = {added:.2f} s, i.e."
                    f" {_pct(added, over)} of the overshoot"
                    f" ({_pct(added, span.median - bound)} of the schedule's)."
                    + _rest_of_overshoot(name, span.median - bound - added, rounds, refused)
                )
        lines.append("")
        if notes:
            lines += [f"- {n}" for n in notes] + [""]
    if res.memory:
        lines += [
            "## Memory",
            "",
            f"RSS of the receiving process tree with {s.memory_shards} idle connected shards"
            f" (zlib-stream, full simulator), per shard: marginal = (RSS at {s.memory_shards}"
            f" - RSS at {s.memory_baseline_shards}) / {s.memory_shards - s.memory_baseline_shards};"
            " total = RSS / shards. **cluster** is `cluster up` with its default worker count:"
            " the RSS of the supervisor, its worker processes and multiprocessing's resource"
            " tracker together; **worker** is our worker process alone.",
            "",
            "| receiver | KB per shard (marginal) | KB per shard (total) | RSS MB |",
            "|---|---|---|---|",
        ]
        notes = []
        big, small = s.memory_shards, s.memory_baseline_shards
        for name, runs in res.memory.items():
            f = {
                k: Figure(tuple(r[k] for r in runs))
                for k in ("kb_per_shard_marginal", "kb_per_shard_total", "rss_mb")
            }
            lines.append(
                f"| {name} | {f['kb_per_shard_marginal'].fmt(1)} | {f['kb_per_shard_total'].fmt(1)}"
                f" | {f['rss_mb'].fmt(0)} |"
            )
            sizes = [n for n in (small, big) if any(r.get(f"processes_{n}") for r in runs)]
            if name != "cluster" or not sizes:
                continue
            parts = []
            for n in sizes:
                procs = _counts([r[f"processes_{n}"] for r in runs if r.get(f"processes_{n}")])
                workers = _counts([r[f"workers_{n}"] for r in runs if r.get(f"workers_{n}")])
                parts.append(
                    f"{workers} worker{'' if workers == '1' else 's'} ({procs} processes) at {n} shards"
                )
            note = f"{name}: " + ", ".join(parts) + "."
            same = [
                r["kb_per_shard_marginal_same_workers"]
                for r in runs
                if r.get("kb_per_shard_marginal_same_workers") is not None
            ]
            if same:
                note += (
                    " The marginal figure therefore includes the baseline of the extra worker"
                    f" process(es); with the worker count of {big} shards at both sizes it is"
                    f" {Figure(tuple(same)).fmt(1)} KB per shard."
                )
            notes.append(note)
        lines.append("")
        if notes:
            lines += [f"- {n}" for n in notes] + [""]
    if res.recovery:
        lines += [
            "## Recovery",
            "",
            f"`cluster up` with one worker holding all {s.recovery_shards} shards against the full"
            f" simulator ({s.recovery_rate:g} dispatches/s per shard). The worker is SIGKILLed;"
            " seconds from the kill to the last RESUMED event at the SUB client. Lost = gaps in"
            " each shard's sequence at the SUB client (between the first and the last seq it saw);"
            " duplicates = a (shard, seq) seen twice.",
            "",
            "| seconds to all RESUMED | RESUMED seen | events lost | duplicates |",
            "|---|---|---|---|",
        ]
        f = {
            k: Figure(tuple(r[k] for r in res.recovery))
            for k in ("seconds", "resumed", "lost", "duplicates")
        }
        lines.append(
            f"| {f['seconds'].fmt(2)} | {f['resumed'].fmt(0)} | {f['lost'].fmt(0)} | {f['duplicates'].fmt(0)} |"
        )
        lines.append("")
    if not res.quick:
        lines += [HISTORY]
    if res.skipped or res.errors or res.notes:
        lines += ["## Not measured, and notes", ""]
        lines += [f"- {k}: {v}" for k, v in res.skipped.items()]
        lines += [f"- error: {e}" for e in res.errors]
        lines += [f"- {n}" for n in res.notes]
        lines.append("")
    return "\n".join(lines)


def to_json(res: Results, elapsed_s: float = 0.0) -> str:
    data: dict[str, Any] = {
        "sizes": asdict(res.sizes),
        "throughput": res.throughput,
        "latency": {k: {str(r): v for r, v in d.items()} for k, d in res.latency.items()},
        "startup": res.startup,
        "memory": res.memory,
        "recovery": res.recovery,
        "skipped": res.skipped,
        "errors": res.errors,
        "load": res.load,
        "notes": res.notes,
        "repeat": res.repeat,
        "generated_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "elapsed_s": round(elapsed_s, 1),
    }
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
