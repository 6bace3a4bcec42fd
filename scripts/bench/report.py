"""docs/BENCHMARKS.md from a run's results: the machine, the versions, each figure, the ratios."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Final

import orjson

from cluster.config import DEFAULT_PUB_HWM
from scripts.bench.stats import Figure

#: The paced rate of the throughput benchmark's second figure: 1,000 events/s per shard.
PACED_RATE_PER_SHARD = 1_000

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

**One EVENT_RUNS codec** (protocol/ipc.py): the worker's output is the
encoder (`ZmqOutput` subclasses `EventRunsEncoder`, so a shard's `event` is
the encoder's `add`, no second call per event) and the relay's loop is the
reader (`EventRunsReader`, wired once to the book, the header templates and
the publisher, so a run costs no call beyond `admit` as before); the
reference encoder and decoder and the unused EVENTS kind are gone. Interleaved
runs of the committed tree (`--head`) and the change, `--only throughput
--receivers floor worker cluster --repeat 3`, three runs each (9 samples),
2026-12-06 10:20-10:33 UTC, load average 0.3-1.6 (shared machine): worker
12.2 µs per event before (9.7-16.1), 11.4 after (9.5-15.5), 79,872 and 87,874
events/s; cluster 17.8 (13.9-20.1) and 16.6 (15.3-16.9), 60,331 and 66,470
events/s; against the floor of the same run 0.74x and 1.02x on both sides: no
change beyond the noise. In one process, old loop against new on the same
bodies (16 shards, ~1 KB payloads, 1 to 64 events per run): the relay's
`_runs` within 1 % at every run length; the worker's `event` + `flush` within
2 % from 4 events per run, +2-3 % (~30 ns per event) at one. A first reader
that asked the relay through a callback per run cost ~240 ns per run (+7 % at
one event per run) and was not kept.
**Early identify grants** (cluster/identify_scheduler.py `lead_s`,
protocol/coordination.py `not_before` / `written_at`): a bucket's next grant
goes out up to half an interval before the bucket opens and says when it
opens (`not_before`, on the host's monotonic clock); the worker writes the
IDENTIFY at that time, and its `sent` report says when it wrote, so the
bucket is spaced from the write. The grant's trip to the worker and the
report's trip back were on every round's critical path (14 ms per round in
the Startup figures above). Not with Redis (its bucket, asked early, says
busy). `--only startup --receivers cluster --repeat 1`, six interleaved runs
(the change, then `--head`), 2026-12-06 10:42 UTC, load average 1.0-1.2
(shared machine): all READY 8.06, 7.21, 6.93 s after against 8.42, 8.47,
8.36 s before; first..last READY 5.93, 5.84, 5.60 s against 6.98, 6.77,
6.92 s (median -1.08 s, -16 %); the simulator refused 1, 3 and 0 IDENTIFYs as
too early for their bucket after, 0 before: without the report's delay the
20 ms margin is all that absorbs a busy simulator reading an IDENTIFY late.
The bound (3.15 s) is still far: the 20 ms margin is 1.26 s of the schedule
and the rest is the two cores opening 1,024 connections.

**No wait of its own before a new session** (worker/spec.py
`new_session_delay_s` 1-5 s -> 0): a shard whose IDENTIFY the simulator
refused as too early (op 9 d=false) slept 1-5 s before asking its bucket
again, so at startup it was the last READY; every IDENTIFY waits for its
bucket's turn in the coordinator anyway (twilight re-identifies through its
queue the same way). 1,024 shards, `connect_all("cluster", 1024, 16, 0.05)`,
three interleaved pairs on two `git archive` copies, load average 4-5 (other
benchmarks running): first..last READY 9.29, 8.79, 9.46 s before against
7.16, 5.58, 6.55 s after, with 35, 44, 34 and 22, 24, 31 refusals.

**Workers forked from a forkserver** (cluster/forkserver.py): started as
`cluster up` begins, importing `worker.main` once, so each worker is a fork
with its imports done (a spawned worker imports aiohttp, ZeroMQ and uvloop
itself, ~0.6 s, at startup and after every crash). `--only recovery startup
--receivers cluster --repeat 1` on two `git archive` copies, 2026-12-06 12:51
UTC: a worker SIGKILL to all 64 shards RESUMED 0.50 s before, 0.10 and 0.15 s
after. Reverted the same day: with it the multi-host reshard test published 2
events twice in 2 of 4 runs. The race it exposed: hosts read the reshard's
record up to a poll (0.25 s) apart, so a host whose new set started early
could hold an event that another host's old set published before it recorded
fingerprints. Now no new set starts before every old set records (a Redis
set, `reshard:recording`): 12 of 12 runs of the multi-host reshard tests
without a duplicate with the forkserver. It came back (a246af4) and was
reverted a second time (28492da): with it a worker sometimes never left its
event loop after its supervisor's SIGKILL (2 of 8 tries with 64 shards, 0 with
spawn; the worker had closed every websocket, cause not found), and a CI run
timed out on two supervisors' SIGTERM shutdowns with Redis. Those timeouts
were the supervisor's, not the workers': stack and task dumps of a hung
supervisor showed its stop waiting for the checkpoint loop, which had dropped
its cancellation (Python 3.11's `asyncio.wait_for` returns a result that
arrives with the cancel: the worker's last READY report, handled in the turn
of the stop, and a forked worker's exit is seen ~2.4 ms after its last
message against ~53 ms for a spawned one, so the two met far more often). With
that fixed (cluster/cancelling.py), the two tests passed 17 of 17 runs, and
no worker outlived its SIGKILLed supervisor in 64 tries; a worker that would
is ended by SIGALRM 10 s after it saw its supervisor gone. Third landing,
now in cluster/warm_start.py: the run of 2026-12-06 19:23-19:39 UTC (the
tables above) has it: a worker SIGKILL to all 64 shards RESUMED 0.38 -> 0.12 s.

**Workers started first** (cluster/warm_start.py): `cluster up` starts the
forkserver before it imports the supervisor (first landed with spawned
workers waiting on a pipe for their spec, removed once the forkserver, which
every platform the cluster runs on has, was back), and the supervisor no
longer imports redis-py without `--redis` nor the worker package (the target
it names is in worker/entry.py): importing `cluster.cli` and
`cluster.supervisor` 0.78 -> 0.52 s on the idle machine. Startup of 1,024
shards, before (17:15 UTC) and after (19:33 UTC), medians of 3: all READY
4.98 -> 4.38 s, of which before the first READY 1.59 -> 0.96 s; the schedule
itself 3.39 -> 3.43 s. Then the forkserver was started before typer parses the
options (typer builds a pydantic adapter per option: 0.1-0.2 s), and the
Startup section was measured again (20:00 UTC): 4.28 s, first..last READY
3.34 s, as fast as our worker process alone (4.34 s).

**The relay's empty check** (cluster/relay.py): after a wake-up's first
message, `ZMQ_EVENTS` says whether another waits; a `recv` that raises
`zmq.Again` cost ~6 µs against ~2.5, just before the flush. With a long
frame's head from one precompiled struct and each event's frames built once
for all subscribers (cluster/publisher.py): the supervisor's CPU per event
paced at 16,000/s 13.1 -> 11.1 µs (10 interleaved repeats, ratio 0.865, 9 of 10
below 1), at 1,000/s 80 -> 72 µs. A perf profile of the supervisor paced:
64 % Python, ~12 % libzmq's I/O thread, 10 % kernel in the main thread;
0.08 main-thread and 0.12 I/O-thread wake-ups per event, ~8 system calls per
wake-up. Each wake-up costs 50-100 µs with cold caches for ~1.3 events at
1,000/s: the hop's floor is per wake-up, not per event (see the notes on
the targets not met).

**Identify buckets opened by the server's answer** (cluster/identify_scheduler.py
`answer_opens`): the server counts an IDENTIFY between its arrival and its
READY, so an IDENTIFY written one interval after the previous one's READY was
read arrives at least an interval later, whatever the network and the
server's loop did; the worker stamps the READY's read and tells the
coordinator itself. A fixed margin below 20 ms had the simulator refuse many
(0 ms: 301 of 1,024; 10 ms: 47) and 20 ms still 0-40 per startup.
`--only startup --receivers cluster --repeat 1`, 12 interleaved pairs under
load 2-6: total 7.47 -> 7.13 s, first..last READY 4.92 -> 4.63 s, refusals
0-34 -> 0; the worker's own READY stamp, 8 more pairs: 4.80 -> 4.56 s and
3.70 -> 3.52 s.

**The worker's channel bounded in bytes** (worker/group.py `FLUSH_BYTES`):
flat out, one loop iteration read every shard's socket buffer, ~45,000
events, into one 46 MB message held three times (the queued runs, the joined
body, ZeroMQ's copy), and the supervisor published it in one burst past the
PUB high-water mark. Cut runs now leave at 1 MiB, mid-iteration (the encoder
appends a run to a list once per run, nothing per event), the worker queues
64 messages and the supervisor 256. `--only throughput --receivers worker
cluster --repeat 1` against `--head`, 3 interleaved pairs: peak PSS worker
alone 180 -> 52 MB, cluster 256 -> 131 MB, PUB drops at the default hwm
15,000-30,000 per run -> 0, CPU per event within the noise.

**picows measured** (before it was adopted, below). The issue names picows
(a Cython websocket client with a callback per frame) against aiohttp's
reader. A floor receiver written on picows, doing the same work per event as
the aiohttp floor (inflate, `peek`, one ZeroMQ send), in one run with it,
`--only throughput --repeat 3`, 2026-12-06 15:30 UTC, load 4-5 (shared
machine): flat out 19.3 µs per event against 20.8 (-7 %), paced at 16,000/s
23.0 against 25.9 (-11 %). A py-spy profile of our worker flat out put ~10 %
of its samples in aiohttp's Python code (`data_received`, `receive`) beside
39 % in native code under the event loop (uvloop, aiohttp's C frame reader,
recv), 23 % in inflate and 11 % in the ZeroMQ send.

**The PUB socket written from the event loop** (cluster/publisher.py): `--pub`
was a ZMQ_STREAM socket carrying our ZMTP, and libzmq writes a STREAM
socket's connections from its I/O thread, so every flush woke that thread
(an eventfd write, an epoll wake-up, two epoll_ctl). It is now a listening
socket of the supervisor: each chunk is one `send` into the kernel and the
unsent rest waits for writability. strace on a supervisor (Relay and
Publisher, one SUB, one message of one event per ms), per 3,000 events:
85,929 system calls before (28.6 per event; the I/O thread woke 2.8 times per
event), 41,698 after (13.9). Latency and throughput in the same days' runs
moved less than the noise of a machine loaded by other benchmarks (isolated
A/B of the hop at 10k/s: p50 411 -> 420 µs, p99 4.2 -> 4.0 ms, supervisor
18.7 -> 17.3 µs per event).

**A shard's websocket as a `Connection`** (worker/connection.py, a review
refactor): no change to the read loop's cost. In one process, the old
`Shard._read` and the new `Connection._read` alternated, 30 rounds of 50,000
dispatches: minimum 1,891 against 1,820 ns per event, median 3,305 against
3,102.

**The workers' channel without libzmq's threads** (cluster/channel.py,
worker/output.py): the supervisor listens on the channel's endpoint and
reads each worker's connection on its own loop, speaking ZMTP as a PULL
(frames are slices of one read), and each worker writes its messages with
one `sendmsg` from its loop, speaking ZMTP as a PUSH. Before, libzmq's I/O
thread read and wrote both ends, so every message woke a thread on each
side and was copied into and out of libzmq. `--only throughput latency
--receivers cluster --repeat 1`, 8 interleaved rounds of three trees
(before; the supervisor's end alone; both ends), 2026-12-06 21:08-21:26 UTC,
quiet machine, medians: CPU per event paced at 16,000/s 31.9 -> 27.2 ->
25.6 µs (both/before 0.84 by round, 7 of 8 below 1), flat out 9.7 -> 9.5 ->
9.4 (the hop costs per message, and flat out messages are large); p99 at
1,000/s 909 -> 828 -> 860 µs; p50 at 50,000/s 1,308 -> 1,234 -> 1,025 µs.

**The shards' websocket on picows** (worker/websocket.py): picows parses the
frames of a read in place and calls the shard back once per message, where
aiohttp's reader made a message object and woke the shard's reader task
through a future for each. A dispatch is now relayed inside that call
(decompress, `peek`, `output.event`, no await); what needs one (Hello,
READY, op 1/7/9, an event the output refuses, the end) goes to a backlog one
task works through in order while reading pauses. The worker no longer
imports aiohttp (its import: 212 -> 137 ms). `--only throughput latency
--receivers worker cluster --repeat 1`, 4 interleaved rounds against
d9ceedf, 2026-12-06 23:01-23:12 UTC, quiet machine, medians: CPU per event
paced at 16,000/s, worker 20.8 -> 18.1 µs (0.85 by round, 4 of 4 below 1),
cluster 29.1 -> 25.8 (0.85, 4 of 4); flat out, worker 8.1 -> 7.5 (0.91),
cluster 10.7 -> 10.9 (0.98: noise); p99 at 1,000/s, worker 624 -> 561 µs,
cluster 848 -> 804; at 10,000/s and p50 at 50,000/s within the noise. That
A/B ran picows on aiofastnet's transports (its default when aiofastnet is
installed, and picows requires it); after review the socket runs on uvloop's
(`use_aiofastnet=False`), whose pause and TLS shutdown the rest of the worker
already relies on. 3 interleaved rounds of the two (same command, 23:19-23:28
UTC) put neither ahead: uvloop/aiofastnet by round 1.18, 1.09, 0.70 (worker
flat out), 1.13, 0.84, 0.86 (cluster flat out), 1.21, 0.95, 0.96 (cluster
paced).

Memory: flat out the worker's peak PSS doubled with picows (53 -> 107 MB,
per-process peaks sampled every 0.1 s during `--only throughput --receivers
cluster --repeat 1`). Linux grew each connection's receive buffer towards
tcp_rmem's maximum (32 MiB here) behind the firehose, picows's read buffer
doubled after it (it grows whenever a read fills it and never shrinks), and
when the output refused an event the rest of a read waited in the backlog
decompressed. The backlog now keeps what it holds compressed, and the socket
sets SO_RCVBUF. `--only throughput --receivers worker cluster --repeat 1`, 2
interleaved rounds of three receive buffers (00:40-00:44 UTC, slow host):
256 KiB, worker flat out 10.6 and 12.0 µs per event, peak PSS 47-49 MB,
cluster 16.1 and 13.3 µs, 139-140 MB; 1 MiB, worker 9.2 and 7.9, 60 MB,
cluster 18.3 and 15.2, 164-168 MB; the kernel's own (autotuned, no bound),
worker 7.7 and 9.0, 60 MB, cluster 12.5 and 15.3, 154-157 MB; paced alike
(32-35 µs). 1 MiB is kept: a bound on what a connection can buffer, without
the smaller reads' cost.

**The workers write each event as its PUB message** (protocol/ipc.py's
EVENT_RUNS, version 2): a run carries, after a table of event heads, each
event's topic, header and payload frames behind their ZMTP heads, the header
formatted by the worker from the session its shard named. The relay dedupes
a run by its head and hands a subscriber of everything (NULL mechanism, room
for the run) the rest as one slice of the worker's message
(`Publisher.publish_frames`): nothing per event in the supervisor, which flat
out was the cluster's bottleneck. In-process (16 runs of 256 ~1 KB events,
read + publish + flush to one subscriber, `time.thread_time`), 1.60-1.65 ->
0.55-0.67 µs per event; with the sink's and taps' (topic, payload) lists,
0.99-1.05; the worker's encoder costs ~0.1-0.6 µs more per event (the
header's `%`, the frame heads). `--only throughput latency --receivers worker
cluster --repeat 1`, 4 interleaved rounds against 7461fb0, 2026-12-07
01:48-02:01 UTC, slow host, medians of the ratios by round: cluster flat out
0.74 (4 of 4 below 1; 17.0, 13.6, 19.1, 15.5 -> 9.5, 12.1, 11.9, 13.4 µs),
paced 0.96 (3 of 4); the worker alone 1.02 flat out, 1.06 paced (the
encoder); latency within the noise (cluster p99 at 10,000/s 1.01, p50 at
50,000/s 0.88).

**A burst of reads is one message** (worker/output.py): the worker's batch
leaves once a lap of its loop adds nothing to it, or 100 µs after its first
event (`COALESCE_S`), where it left at the end of every lap. The firehose,
like a gateway, writes the shards' sockets one after the other; the worker
read a tick's burst over several laps and sent a message, waking the
supervisor, per lap. An event alone now waits one more lap (one
non-blocking poll). 3 interleaved rounds against 992f5cc (`--only throughput
latency --receivers cluster --repeat 1`, 02:16-02:21 UTC), ratios by round:
CPU per event paced 0.94 (3 of 3 below 1), flat out 0.94 (3 of 3); p99 at
1,000/s 0.85 (3 of 3), at 10,000/s 0.95 (2 of 3); p50 at 50,000/s 0.91 (2 of
3), p99 at 50,000/s 0.35 (3 of 3).

**A body's runs side by side** (protocol/ipc.py, EVENT_RUNS version 3): the
body holds every run head, then every run's event heads, then every run's
frames, so the frames of consecutive runs are one slice; the reader dedupes
run by run and hands the runs it admitted whole, one after the other, to the
publisher as one slice (a body without duplicates: one call, where it was
one per run). At 1,000 events/s per shard each shard has one event per 1 ms
tick, so a message was 16 runs of one event and the relay called the
publisher 16 times. In-process (`EventRunsReader.read` with the book's
admit and the publisher's take for a subscriber of everything, best of 5,
3 interleaved pairs): 19.5-20.4 -> 9.9-13.9 µs per message of 16 one-event
runs. 6 interleaved rounds against 16bc449 (`--only throughput latency
--receivers cluster --repeat 1`, 2026-12-07 04:52-05:03 UTC): CPU per event
paced 0.97 by round (6 of 6 below 1; 31.5 -> 30.4 µs, medians), flat out
1.03 (2 of 6); latency within this host's noise (ratios by round p50
1.03-1.18, p99 1.10-1.29, each with 2 or 3 of 6 rounds below 1; the same
rounds' p99 ran from 0.6x to 3x between neighbours).

**Bytecode compiled before the run** (scripts/bench/run.py
`compile_bytecode`): this machine sets `PYTHONDONTWRITEBYTECODE=1`, so every
process the benchmark started compiled each of our modules it imported from
source, at every start, where an installed package has its bytecode (pip
compiles at install, the Dockerfile runs `compileall`, a plain editable
install writes it on the first start): the startup figure carried ~0.2 s of
compiling that users do not pay (the supervisor's imports alone: 0.57 ->
0.42 s of CPU). The benchmark now compiles the children's modules first. 3
interleaved runs of `--only startup --receivers cluster --repeat 1` against
082cc1c, 2026-12-07 04:27-04:30 UTC: all READY 4.03, 4.01, 4.18 s against
4.20, 4.17, 4.25 s; first..last READY unchanged (3.42-3.45 s); before the
first READY 0.58-0.73 s against 0.75-0.82.

**The forkserver's imports frozen out of the collector** (worker/forkserver.py,
`gc.freeze()` after its imports): a worker forks from the forkserver and
shares its pages until it writes to them, and each of its garbage
collections wrote to the head of every imported object it traversed. 3
interleaved runs of `--only memory --receivers cluster --repeat 1` (the third
with `worker` too, as a control: it does not fork from the forkserver)
against 22e89a3, 2026-12-07 05:48-05:51 UTC: the cluster's PSS at 1,000 idle
shards 160, 161, 161 -> 154, 155, 155 MB, per extra shard 77.4-78.2 ->
71.0-72.3 KB; the worker alone 75 MB and 54.0 KB on both sides. After the
run below: the tables do not include it.

The tables above are the run of 2026-12-07 05:21-05:34 UTC (`--head
--repeat 3` of a8a3b54: bytecode compiled first, EVENT_RUNS version 3, the
IDENTIFY's slot waited to within a lap), the last of three full
regenerations this day (on an AMD EPYC host; the table they replace ran on an
Intel Xeon), one on each commit as it landed; each is given here
because on this shared 2-core host the near targets flip from run to run
(@discordjs/ws paced at 27.0, 27.0 and 24.8 µs in the three; the floor's
p99 at 10,000/s at ±411 % spread within one). Targets (cluster against
@discordjs/ws flat out and paced; p99 at 1,000 and 10,000/s and p50 at
50,000/s against the floor's; all READY of 1,024 shards against 4.20 s):
02:38 UTC, df65e18 (the table these replace): 0.79x, 1.07x, 1.51x, 1.32x,
2.88x, 4.23 s: 1 of 6 met; 04:37, 16bc449: 0.99x, 1.05x, 1.74x, 0.96x,
0.92x, 4.15 s: 4 of 6; 05:03, 44cdfab: 0.79x, 1.17x, 1.29x, 1.22x, 1.38x,
4.24 s: 1 of 6; 05:21, a8a3b54: 0.82x, 1.11x, 1.30x, 0.90x, 1.71x, 4.04 s:
3 of 6. Met in every run: CPU per event flat out. Met in two of three since
the bytecode: startup (3.99-4.26 s by run). Never met: paced CPU (1.05x-1.17x;
the interleaved A/Bs above each moved it down) and the p99 at 1,000/s
(1.29x-1.74x). The interleaved A/Bs measure each change on one host; a full
run's ratios also carry the host's state, which moves the Python receivers
more than @discordjs/ws.
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


def _fig(rows: list[dict[str, Any]], key: str) -> Figure:
    """The samples of ``key`` over ``rows`` (a missing or NaN sample is left out)."""
    values = (r.get(key) for r in rows)
    return Figure(tuple(float(v) for v in values if v is not None and not math.isnan(float(v))))


#: Two-sided 95 % quantiles of Student's t by degrees of freedom (few benchmark pairs).
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def _load(rows: list[dict[str, Any]]) -> str:
    """' (1-minute load average a-b at the ends of the runs)', or '' when not recorded."""
    loads = [float(r["load1"]) for r in rows if r.get("load1") is not None]
    if not loads:
        return ""
    return f" (1-minute load average {min(loads):.2f}-{max(loads):.2f} at the ends of the runs)"


def redis_section(data: dict[str, Any]) -> list[str]:
    """``## Redis``: the figures of scripts/bench/redis_bench.py, with the command that made them."""
    sz = data.get("sizes", {})
    lease = data.get("lease", {})
    lines = [
        "## Redis (`cluster up --redis`)",
        "",
        f"Measured by `{data.get('command', 'python -m scripts.bench --only redis')}`"
        f" at {data.get('measured_at', '?')} on {data.get('machine', '?')}"
        + (
            f", code at commit {data['commit']}"
            + (" (`--head`: a snapshot of the commit)" if data.get("snapshot") else "")
            + (
                f" with uncommitted changes to {', '.join(data['uncommitted'])}"
                if data.get("uncommitted")
                else ""
            )
            if data.get("commit")
            else ""
        )
        + ", against a"
        f" redis-server {data.get('redis_version', '')} of its own on TCP loopback (no"
        " persistence; one database per part), emptied before every `cluster up`"
        " (scripts/bench/redis_bench.py).",
        "",
    ]
    cpu = data.get("cpu", [])
    if cpu:
        shards, rate = int(sz.get("shards", 0)), int(sz.get("rate_per_shard", 0))
        ratio = _fig(cpu, "ratio")
        sup = _fig(cpu, "supervisor_ratio")
        lines += [
            "### CPU per event with and without `--redis`",
            "",
            f"The same `cluster up` command (1 worker, {shards} shards) with and without"
            f" `--redis`, the firehose paced at {shards * rate:,} events/s ({shards} x"
            f" {rate:,}/s) for {sz.get('seconds', 0):g} s per run; runs interleaved in pairs"
            " so a change of machine load hits both alike, each pair's ratio taken within the"
            " pair"
            + (
                ", the side that runs first alternating from pair to pair (off-on, on-off,"
                " ...) so a difference between a pair's first and second run cancels out"
                if any(r.get("first") == "on" for r in cpu)
                else ""
            )
            + ". CPU of the cluster's process tree (supervisor + worker,"
            " psutil) and of the supervisor process alone (relay, checkpointer, Redis client)"
            " from the stream's start to its last event at a SUB sink; the worker alone (tree"
            " minus supervisor) never talks to Redis: its on/off ratio is the control, what"
            " the machine did to the pair; redis-server's own"
            " CPU (not in the tree) beside it, at psutil's resolution of 10 ms per run. With"
            " `--redis` the supervisor also renews its"
            f" lease every {lease.get('renew', 2):g} s and its Redis monitor pings every 2 s;"
            " checkpoints are written at most every 0.5 s (one script call per batch) in both"
            " cases to the state dir and, with `--redis`, to Redis.",
            "",
            "| pair | first | off µs/event | on µs/event | on/off | supervisor off"
            " | supervisor on | supervisor on/off | worker on/off (control)"
            " | redis-server µs/event | checkpoint writes (on) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(cpu, 1):
            worker = r.get("worker_ratio")
            lines.append(
                f"| {i} | {r.get('first', 'off')} | {r['off_us']:.1f} | {r['on_us']:.1f}"
                f" | {r['ratio']:.3f} | {r['off_supervisor_us']:.1f}"
                f" | {r['on_supervisor_us']:.1f} | {r['supervisor_ratio']:.3f}"
                f" | {'n/a' if worker is None else f'{worker:.3f}'}"
                f" | {r['on_redis_server_us']:.2f}"
                f" | {r['on_checkpoints']:.0f} in {r['on_seconds']:.1f} s |"
            )
        lines += [
            f"| median | | {_fig(cpu, 'off_us').fmt(1)} | {_fig(cpu, 'on_us').fmt(1)}"
            f" | {ratio.fmt(3)} | {_fig(cpu, 'off_supervisor_us').fmt(1)}"
            f" | {_fig(cpu, 'on_supervisor_us').fmt(1)} | {sup.fmt(3)}"
            f" | {_fig(cpu, 'worker_ratio').fmt(3)}"
            f" | {_fig(cpu, 'on_redis_server_us').fmt(2)} | |",
            "",
        ]
        if not math.isnan(ratio.median):
            cost = (ratio.median - 1) * 100
            ratios = ratio.samples
            mean = statistics.fmean(ratios)
            # 95 % interval of the mean ratio (normal approximation; t for few pairs)
            half = (
                T95.get(len(ratios) - 1, 1.96) * statistics.stdev(ratios) / math.sqrt(len(ratios))
                if len(ratios) > 1
                else math.nan
            )
            if ratio.high < 1.05:
                verdict = "every pair within the target of < 5 %"
            elif mean + half < 1.05:
                verdict = "within the target of < 5 % (the mean's 95 % interval is below 1.05)"
            elif mean - half > 1.05:
                verdict = "NOT within the target of < 5 % (the mean's 95 % interval is above 1.05)"
            else:
                verdict = (
                    "not resolved by the timing: the mean's 95 % interval contains 1.05"
                    " (see the count below)"
                )
            lines += [
                f"- At {shards * rate:,} events/s with `--redis` the whole tree's CPU per event"
                f" changes by {cost:+.1f} % (median of {len(ratios)} pairs' ratios; pairs"
                f" {ratio.low:.3f} to {ratio.high:.3f}; mean {mean:.3f}"
                + (f" ± {half:.3f}, 95 %" if not math.isnan(half) else "")
                + f"), the supervisor's by {(sup.median - 1) * 100:+.1f} %: {verdict}.",
            ]
            control = _fig(cpu, "worker_ratio")
            if not math.isnan(control.median):
                lines.append(
                    f"- Control: the worker alone, which never talks to Redis, changed by"
                    f" {(control.median - 1) * 100:+.1f} % (median; pairs {control.low:.3f} to"
                    f" {control.high:.3f}) in the same pairs: a change of this size is the"
                    " machine's, not Redis's. The supervisor's ratio against the worker's,"
                    f" pair by pair: median {_fig([{'x': r['supervisor_ratio'] / r['worker_ratio']} for r in cpu if r.get('worker_ratio')], 'x').median:.3f}."
                )
            calls = _fig(cpu, "on_redis_calls")
            per_call = _fig(data.get("micro", []), "client_cpu_us").median
            events = _fig(cpu, "on_events").median
            if not math.isnan(calls.median) and not math.isnan(per_call) and events > 0:
                est = calls.median * per_call / events
                off = _fig(cpu, "off_us").median
                lines.append(
                    "- What `--redis` adds, counted rather than timed: the cluster sent"
                    f" {calls.fmt(0)} requests to Redis during each {sz.get('seconds', 0):g} s"
                    f" stream of {events:,.0f} events (checkpoint scripts, lease renewals, the"
                    " Redis monitor's reads; redis-server ran"
                    f" {_fig(cpu, 'on_redis_commands').fmt(0)} commands for them, those inside"
                    f" the scripts included), none per event. At the {per_call:.0f} µs of"
                    " client CPU a grant script call costs (micro-benchmark below) that is"
                    f" ~{est:.3f} µs per event on the supervisor, {est / off:.2%} of the tree's"
                    " CPU per event without Redis: far below what the interleaved runs can"
                    " resolve on this machine. redis-server's own CPU:"
                    f" {_fig(cpu, 'on_redis_server_us').median:.2f} µs per event."
                )
            lines.append("")
    ident = data.get("identify", [])
    micro = data.get("micro", [])
    if ident or micro:
        lines += ["### Identify grants through Redis", ""]
    if ident:
        lines += [
            f"`cluster up --redis` starting {int(sz.get('identify_shards', 0))} shards at"
            f" max_concurrency {int(sz.get('identify_mc', 0))}, identify interval"
            f" {sz.get('identify_interval', 0):g} s, against the full simulator (its identify"
            " rules enforced). `identify_redis` of `GET /status` once every shard is READY:"
            " the arbiter's own timing of each grant request (one Lua script call per"
            " IDENTIFY, never per event), awaited on the supervisor's busy event loop."
            " Asked counts every call, refused the ones that found the bucket still"
            " held (ask again later) or the cold-start guard; op 9 = IDENTIFYs the simulator"
            " refused as too early for their bucket." + _load(ident),
            "",
            "| asked | granted | refused | mean ms | max ms | all READY s | op 9 |",
            "|---|---|---|---|---|---|---|",
            f"| {_fig(ident, 'asked').fmt(0)} | {_fig(ident, 'granted').fmt(0)}"
            f" | {_fig(ident, 'refused').fmt(0)} | {_fig(ident, 'mean_ms').fmt(2)}"
            f" | {_fig(ident, 'max_ms').fmt(2)} | {_fig(ident, 'total_s').fmt(2)}"
            f" | {_fig(ident, 'rate_limited').fmt(0)} |",
            "",
        ]
    if micro:
        n = int(_fig(micro, "n").median)
        lines += [
            f"Micro-benchmark: {n:,} `RedisState.try_identify` calls per run from one"
            " asyncio client (uvloop, redis-py with hiredis) over TCP loopback, each granted"
            " (the whole script: lease, cold-start guard, bucket, budget), its bucket freed by"
            " `identify_sent` before the next; a PING of the same client as the floor."
            " Client CPU = this process's CPU time (`time.process_time`) per `try_identify`."
            " Microseconds, median of the runs." + _load(micro),
            "",
            "| try_identify p50 | p99 | max | mean | client CPU per call | identify_sent p50"
            " | PING p50 | PING p99 |",
            "|---|---|---|---|---|---|---|---|",
            f"| {_fig(micro, 'p50_us').fmt(0)} | {_fig(micro, 'p99_us').fmt(0)}"
            f" | {_fig(micro, 'max_us').fmt(0)} | {_fig(micro, 'mean_us').fmt(0)}"
            f" | {_fig(micro, 'client_cpu_us').fmt(0)}"
            f" | {_fig(micro, 'sent_p50_us').fmt(0)} | {_fig(micro, 'ping_p50_us').fmt(0)}"
            f" | {_fig(micro, 'ping_p99_us').fmt(0)} |",
            "",
        ]
    take = data.get("takeover", [])
    if take:
        ttl, wait = lease.get("ttl", 10.0), lease.get("wait", 1.0)
        target = ttl + wait + 2.0
        secs = _fig(take, "seconds")
        timing = (
            "`cluster up`'s default lease timing"
            if not sz.get("lease_args")
            else "scaled-down lease timing (" + " ".join(sz["lease_args"]) + ")"
        )
        lines += [
            "### Host death: every shard RESUMED on a spare",
            "",
            f"Two owners (`--shard-ids auto --hosts 2 --host-index 0` and `1`) and a spare (no"
            f" index) on loopback, {int(sz.get('takeover_shards', 0))} shards, max_concurrency"
            f" {int(sz.get('takeover_mc', 0))}, {sz.get('takeover_rate', 0):g} dispatches/s per"
            f" shard, full simulator; {timing}: lease TTL {ttl:g} s, renewal every"
            f" {lease.get('renew', 2):g} s, fence after {lease.get('fence', 6):g} s, takeover"
            f" wait {wait:g} s, a spare looks for an expired lease every"
            f" {lease.get('spare_poll', 1):g} s. Owner 1's whole process group is SIGKILLed"
            " right after it renewed its lease (the lease's PTTL read from Redis until it"
            " jumps back up), i.e. the worst case of the wait for the lease to expire;"
            " seconds from the kill to the last shard of its range with an accepted RESUME"
            " in the simulator's record (CLOCK_MONOTONIC on both sides). Between them, seconds"
            " after the kill: the lease's TTL left at the kill, the spare holding the lease"
            " (Redis, polled), the spare reporting itself an owner (`/health`, after the"
            " takeover wait), the first accepted RESUME. IDENTIFY = every IDENTIFY the"
            " simulator saw after the kill." + _load(take),
            "",
            "| seconds to all RESUMED | lease left at the kill | lease taken | spare owner"
            " | first RESUME | RESUMED | IDENTIFY | target s |",
            "|---|---|---|---|---|---|---|---|",
            f"| {secs.fmt(2)} | {_fig(take, 'lease_left_s').fmt(2)}"
            f" | {_fig(take, 'lease_taken_s').fmt(2)}"
            f" | {_fig(take, 'spare_owner_s').fmt(2)} | {_fig(take, 'first_resume_s').fmt(2)}"
            f" | {_fig(take, 'resumed').fmt(0)} of {_fig(take, 'shards').fmt(0)}"
            f" | {_fig(take, 'identifies').fmt(0)} | {target:g} |",
            "",
        ]
        if not math.isnan(secs.median):
            verdict = "within" if secs.high <= target else "NOT within"
            left = _fig(take, "lease_left_s").median
            taken = _fig(take, "lease_taken_s").median
            owner = _fig(take, "spare_owner_s").median
            poll = lease.get("spare_poll", 1.0)
            tail = _fig(
                [{"s": r["seconds"] - r["spare_owner_s"]} for r in take if r.get("spare_owner_s")],
                "s",
            )
            lines += [
                f"- Slowest run {secs.high:.2f} s: {verdict} the target of lease TTL + takeover"
                f" wait + 2 s = {target:g} s. After the lease expired (median): the spare's next"
                f" look for a free range {taken - left:.2f} s (it looks every"
                f" {poll / 2:g}-{poll:g} s), the takeover wait and a renewal"
                f" {owner - taken:.2f} s, spawning its worker, connecting and every RESUME"
                f" accepted {tail.median:.2f} s (at most {tail.high:.2f} s). Worst case with"
                f" these figures: TTL + {poll:g} s + takeover wait + {tail.high:.2f} s ="
                f" {ttl + poll + wait + tail.high:.2f} s. IDENTIFYs during the takeover:"
                f" {_counts([r['identifies'] for r in take])}.",
                "",
            ]
    return lines


def reshard_section(data: dict[str, Any]) -> list[str]:
    """``## Reshard``: the figures of scripts/bench/reshard_bench.py, with the command that made them."""
    sz = data.get("sizes", {})
    old, new = int(sz.get("old_shards", 0)), int(sz.get("new_shards", 0))
    mc, interval = int(sz.get("max_concurrency", 1)), float(sz.get("interval", 0.0))
    rate = float(sz.get("rate_per_shard", 0.0))
    bound = float(data.get("bound_s", math.nan))
    margin = float(data.get("margin_s", math.nan))
    windows = math.ceil(new / mc) if mc else 0
    runs: list[dict[str, Any]] = data.get("runs", [])
    lines = [
        f"## Reshard ({old:,} -> {new:,} shards)",
        "",
        f"Measured by `{data.get('command', 'python -m scripts.bench --only reshard')}`"
        f" on {data.get('measured_at', '?')} ({data.get('machine', '?')}). `cluster up` runs"
        f" {old:,} shards (max_concurrency {mc}, identify interval {interval:g} s, the"
        f" startup benchmark's scaled-interval mode) against the full simulator (its identify"
        f" rules enforced, {int(sz.get('guilds', 0)):,} guilds, {rate:g} dispatches/s per shard:"
        f" about {rate * old:,.0f} events/s flowing throughout) and is asked for {new:,}"
        " shards over its control socket (the request `cluster reshard` sends). Time to"
        " switch: from the request to the `TITANIUM_RESHARD` marker at a SUB client of its PUB"
        f" socket. Bound: the new set's identify schedule, ceil({new}/{mc}) = {windows} windows"
        f" x {interval:g} s = {bound:.2f} s; the identify scheduler spaces every window"
        f" {margin * 1000:.0f} ms more (its safety margin), {windows * (interval + margin):.2f} s"
        " in all. Lost / duplicated: every event the simulator generated from before the"
        f" request until {float(sz.get('settle_s', 0.0)):g} s after the switch, by its"
        " `_sim_event_id`, against the SUB client; deduplicated: new-set events dropped at"
        " the switch because the old set had published them (the switch's log line). Peak"
        " RSS: the cluster's process tree (supervisor, both sets' workers) sampled every"
        " 0.25 s from the request on.",
        "",
        "| time to switch s | bound s | switch / bound | lost | duplicated | markers"
        " | deduplicated at the switch | events checked | peak RSS MB | RSS before MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not runs:
        return [*lines, "", "No run finished (see the notes).", ""]
    f = {key: _fig(runs, key) for key in runs[0]}

    def count(key: str) -> str:
        """A count over the runs: '0', or the lowest-highest seen."""
        values = [float(r[key]) for r in runs if r.get(key) is not None]
        values = [v for v in values if not math.isnan(v)]
        return _counts(values) if values else "n/a"

    span, rounds = f["identify_span_s"].median, max(windows - 1, 1)
    lines += [
        f"| {f['switch_s'].fmt(2)} | {bound:.2f} | {f['ratio'].fmt(2)} | {count('lost')}"
        f" | {count('duplicated')} | {count('markers')}"
        f" | {f['deduplicated_at_switch'].fmt(0)} | {f['events'].fmt(0)}"
        f" | {f['peak_rss_mb'].fmt(0)} | {f['rss_before_mb'].fmt(0)} |",
        "",
        f"- Where the time went (simulator's record, medians): {f['spawn_s'].median:.2f} s from"
        " the request to the new set's first IDENTIFY (its worker processes spawned and"
        f" connected), {f['identify_span_s'].median:.2f} s from the first to the last of its"
        f" {f['new_identifies'].median:.0f} IDENTIFYs (the schedule: {windows - 1} more"
        f" window{'' if windows == 2 else 's'} after the first, with the margin"
        f" {(windows - 1) * (interval + margin):.2f} s),"
        f" {f['tail_s'].median:.2f} s from the last IDENTIFY to the marker (READY, every"
        " GUILD_CREATE, the switch). The cluster's own figure (`/status` reshard"
        f" `elapsed_s`): {f['cluster_elapsed_s'].fmt(2)} s.",
        f"- The schedule is what is over the bound: {span / rounds * 1000:.0f} ms per window"
        f" instead of {(interval + margin) * 1000:.0f} ms, while the old set's {old:,}"
        " connections and the event flow share the 2 cores with the new set's"
        f" {new:,} handshakes; the simulator refused {count('rate_limited')} of the new set's"
        " IDENTIFYs with op 9 as too early for their bucket (it measures the spacing when it"
        " reads them, and a busy simulator reads some late; each such shard reconnects and"
        " takes a later slot of its bucket).",
        f"- The old set published until the switch; {f['held_published'].fmt(0)} held events"
        " of the new set were published at the switch (the dedupe dropped those the old set"
        f" had published; {f['deduplicated_total'].fmt(0)} with the switch window after it),"
        f" shards after the switch: {count('shards_after')}." + _load(runs),
        "",
    ]
    return lines


#: Why a target of the performance issue is not met on this 2-core machine, as measured
#: (profiles and A/B runs: "Hot path: what each change bought" below has the commands).
NOT_MET_WHY: Final = {
    "paced": (
        "what is left is per wake-up, not per event: the relay does nothing per event (the"
        " workers write the PUB frames) and, since EVENT_RUNS version 3, one publish per"
        " message however many runs it holds; a burst of reads is one message. Measured"
        " in the supervisor (thread CPU around the relay's callback, `cluster up` under the"
        " latency benchmark): at 1,000/s, one event per message, 60-70 µs per message (its"
        " read 17-21 µs, relaying and sending 40-55 µs, the send alone 18-23), for exactly"
        " one recvfrom, one sendto and one epoll_pwait per message (strace -c); perf puts 41"
        " % of the supervisor's samples in the kernel (switching tasks, waking the"
        " consumer) and 50 % in the interpreter, where in-process, on warm caches, reading"
        " and publishing such a message takes 2.5 µs: the cost of a second process's"
        " wake-up on cold caches, which a one-process client does not pay; py-spy at"
        " 16,000/s (`--profile`) puts ~34 % of the supervisor's samples and ~38 % of the"
        " worker's in uvloop's own C code (epoll, the reads, dispatching the callbacks)"
    ),
    "p99": (
        "the worker alone is ~1.0-1.25x the floor's p99 (one more lap of its loop before a"
        " batch leaves); the supervisor hop adds a pass through the kernel's sockets and a"
        " wake-up of the supervisor's loop, on 2 cores shared with the load source, the"
        " worker and the consumer: 60-70 µs of the supervisor's CPU per message at this"
        " rate, nearly all of it the wake-up itself (see the paced row: one recvfrom, one"
        " sendto, one epoll_pwait per message, 2.5 µs of it in-process on warm caches);"
        " the p99 of neighbouring runs moves by 0.6-3x on this host"
    ),
    "p50": (
        "at 50,000/s the 2 cores are nearly saturated by the load source, the consumer and"
        " the cluster's two processes, and the hop queues: the supervisor's CPU per event"
        " is a few µs here (the latency table's CPU column, cluster against worker), so what"
        " it adds is waiting for a core, not work; see the worker alone beside it"
    ),
    "startup": (
        "before the first READY ~0.5-0.7 s pass, most of it the supervisor's start on 2"
        " cores beside the simulator and the sink (timeline of one run: `cluster.cli`"
        " imported at 0.14 s, typer's option parsing 0.10 s, as it imports pydantic and"
        " builds an adapter per option, the supervisor's modules 0.20 s, about half of it"
        " aiohttp's, then the workers' first connections 0.07 s); the schedule is 4-5 ms"
        " a round over the bound: measured at the worker, each IDENTIFY is written a"
        " median 0.85 ms after its slot (the loop's timers have millisecond resolution)"
        " and its READY read a median 1.5 ms (p90 5 ms) after the write, the simulator's"
        " answer on the shared cores; a bucket opens one interval after that READY"
    ),
}


def targets_section(res: Results) -> list[str]:
    """The issue's targets against this run's figures (only those this run has)."""
    rows: list[tuple[str, str, bool, str]] = []
    throughput = res.throughput
    if "cluster" in throughput and "discordjs-ws" in throughput:
        for key, what, why in (("cpu_us", "flat out", ""), ("paced_cpu_us", "paced", "paced")):
            c = Figure(tuple(throughput["cluster"].get(key, []))).median
            w = Figure(tuple(throughput["discordjs-ws"].get(key, []))).median
            if math.isfinite(c) and math.isfinite(w):
                rows.append(
                    (
                        f"CPU per event {what}: cluster at or below @discordjs/ws",
                        f"{c:.1f} against {w:.1f} µs ({_ratio(c, w)})",
                        c <= w,
                        why,
                    )
                )
    latency = res.latency
    if "cluster" in latency and "floor" in latency:
        for rate in (1_000, 10_000):
            ours, base = latency["cluster"].get(rate), latency["floor"].get(rate)
            if ours and base:
                c = _fig(ours, "p99").median
                f = _fig(base, "p99").median
                rows.append(
                    (
                        f"p99 at {rate:,}/s at most 1.2x the floor's",
                        f"{c:,.0f} against {f:,.0f} µs ({_ratio(c, f)})",
                        c <= 1.2 * f,
                        "p99",
                    )
                )
        ours, base = latency["cluster"].get(50_000), latency["floor"].get(50_000)
        if ours and base:
            c, f = _fig(ours, "p50").median, _fig(base, "p50").median
            rows.append(
                (
                    "p50 at 50,000/s no worse than the floor's",
                    f"{c:,.0f} against {f:,.0f} µs ({_ratio(c, f)})",
                    c <= f,
                    "p50",
                )
            )
    if "cluster" in res.startup:
        s = res.sizes
        bound = (math.ceil(s.startup_shards / s.startup_mc) - 1) * s.startup_interval
        limit = bound + s.startup_interval + 1.0
        total = _fig(res.startup["cluster"], "total_s").median
        rows.append(
            (
                f"{s.startup_shards:,} shards all READY within the bound + one interval + 1 s",
                f"{total:.2f} against {limit:.2f} s",
                total <= limit,
                "startup",
            )
        )
    if not rows:
        return []
    lines = [
        "## The performance targets",
        "",
        "The targets of the performance issue against this run's medians (the sections"
        " below have the spreads); where one is not met, what the profiles measured.",
        "",
        "| target | this run | met |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {got} | {'yes' if met else 'no'} |" for what, got, met, _ in rows]
    lines.append("")
    unmet: dict[str, list[str]] = {}
    for what, _, met, why in rows:
        if not met and why in NOT_MET_WHY:
            unmet.setdefault(why, []).append(what)
    lines += [f"- {'; '.join(whats)}: {NOT_MET_WHY[why]}." for why, whats in unmet.items()]
    lines.append("")
    return lines


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
    lines += targets_section(res)
    if res.throughput:
        total = s.shards * s.events_per_shard
        paced = (
            PACED_RATE_PER_SHARD * s.shards
            if any("paced_cpu_us" in fig for fig in res.throughput.values())
            else 0
        )
        lines += [
            "## CPU per event and throughput",
            "",
            f"{s.shards} shards, {total:,} dispatches (70 % MESSAGE_CREATE ~1.3 KB, 30 % PRESENCE_UPDATE"
            " ~0.5 KB), zlib-stream, pre-generated and served as fast as the receiver reads"
            " (simulator/firehose.py). CPU seconds of the receiving process tree during the"
            " stream, per event; events/s counted where the events arrive (the sink's PULL/SUB for"
            " floor, worker and cluster; the library's own event callback otherwise).",
            "",
            "| receiver | µs CPU/event | events/s | CPU vs floor |"
            + (" µs CPU/event paced | events/s paced | peak PSS MB |" if paced else ""),
            "|---|---|---|---|" + ("---|---|---|" if paced else ""),
        ]
        floor = Figure(tuple(res.throughput.get("floor", {}).get("cpu_us", []))).median
        for name, fig in res.throughput.items():
            cpu = Figure(tuple(fig["cpu_us"]))
            eps = Figure(tuple(fig["eps"]))
            row = f"| {name} | {cpu.fmt(1)} | {eps.fmt(0)} | {_ratio(cpu.median, floor)} |"
            if paced:
                row += "".join(
                    f" {Figure(tuple(fig.get(key, []))).fmt(digits)} |"
                    for key, digits in (("paced_cpu_us", 1), ("paced_eps", 0), ("pss_mb", 0))
                )
            lines.append(row)
        lines.append("")
        if paced:
            lines.append(
                f"- Paced: the same stream at {paced:,} events/s ({paced // s.shards:,} per"
                f" shard) for {s.latency_seconds:g} s; CPU per event of the same tree. Peak PSS:"
                " the receiving tree's (see Memory), sampled every 0.1 s during the flat-out stream."
            )
        lines.append(
            f"- cluster: `cluster up` with `--pub-hwm {res.pub_hwm:,}` (each subscriber's queue,"
            " in events"
            + (
                ", the default users get"
                if res.pub_hwm == DEFAULT_PUB_HWM
                else f"; the default is {DEFAULT_PUB_HWM:,}"
            )
            + "); events a subscriber misses beyond it are dropped and counted (see notes)."
        )
        ours = Figure(tuple(res.throughput.get("worker", {}).get("cpu_us", []))).median
        for other in ("discord.py", "hikari", "discordjs-ws"):
            if other in res.throughput:
                o = Figure(tuple(res.throughput[other]["cpu_us"])).median
                lines.append(f"- {other} uses {_ratio(o, ours)} the CPU per event of our worker.")
        if "discordjs-ws" in res.throughput and "cluster" in res.throughput:
            ws, cl = res.throughput["discordjs-ws"], res.throughput["cluster"]
            for key, what in (("cpu_us", "flat out"), ("paced_cpu_us", f"at {paced:,}/s")):
                c = Figure(tuple(cl.get(key, []))).median
                w = Figure(tuple(ws.get(key, []))).median
                if math.isfinite(c) and math.isfinite(w):
                    lines.append(
                        f"- {what}: the cluster (workers + supervisor) uses {_ratio(c, w)} the CPU"
                        " per event of @discordjs/ws"
                        + (" (at or below it)." if c <= w else " (above it).")
                    )
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
            " receiver's process start (imports included; our modules' bytecode compiled"
            " beforehand, as installing the package does) to the last READY; 'first..last READY'"
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
            if any(r.get("answer_opens") for r in runs) and over > 0 and rounds > 0:
                before_first = tot.median - span.median
                rest = span.median - bound
                notes.append(
                    f"{name}: of the {over:.2f} s over the bound, {before_first:.2f} s pass before"
                    f" the first READY (process start, imports, forking the workers, the first"
                    f" connections) and {rest:.2f} s are the schedule's own overshoot,"
                    f" {rest / rounds * 1000:.0f} ms per round. Each bucket opens one interval"
                    " after the READY of its last IDENTIFY reached the supervisor"
                    " (cluster/identify_scheduler.py `answer_opens`): the server counted that"
                    " IDENTIFY before it answered, so the next one arrives at least an interval"
                    " later whatever the network and the server's loop did, with no fixed margin."
                    " Per round the overshoot is that answer's trip (the simulator's handling,"
                    " the worker's read, the report to the supervisor) and the write's lateness."
                    + (
                        f" The simulator refused {Figure(tuple(refused)).median:.0f} IDENTIFYs"
                        " (median) as too early for their bucket."
                        if refused and Figure(tuple(refused)).median > 0
                        else ""
                    )
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
            f"PSS of the receiving process tree with {s.memory_shards} idle connected shards"
            f" (zlib-stream, full simulator), per shard: marginal = (PSS at {s.memory_shards}"
            f" - PSS at {s.memory_baseline_shards}) / {s.memory_shards - s.memory_baseline_shards};"
            " total = PSS / shards. PSS (proportional set size) is RSS with each page that"
            " several processes share counted once, split among them; the sum of the"
            " processes' RSS (last column) counts a shared page once per process, which"
            " overstates a tree whose processes share pages. **cluster** is `cluster up`"
            " with its default worker count: the supervisor, its worker processes, the"
            " forkserver they fork from and multiprocessing's resource tracker together;"
            " **worker** is our worker process"
            " alone.",
            "",
            "| receiver | KB per shard (marginal) | KB per shard (total) | PSS MB | RSS MB (sum) |",
            "|---|---|---|---|---|",
        ]
        notes = []
        big, small = s.memory_shards, s.memory_baseline_shards
        for name, runs in res.memory.items():
            f = {
                k: Figure(tuple(r.get(k, math.nan) for r in runs))
                for k in (
                    "kb_per_shard_marginal",
                    "kb_per_shard_total",
                    "pss_mb",
                    f"rss_sum_mb_{big}",
                )
            }
            lines.append(
                f"| {name} | {f['kb_per_shard_marginal'].fmt(1)} | {f['kb_per_shard_total'].fmt(1)}"
                f" | {f['pss_mb'].fmt(0)} | {f[f'rss_sum_mb_{big}'].fmt(0)} |"
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
    if res.redis:
        lines += redis_section(res.redis)
    if res.reshard:
        lines += reshard_section(res.reshard)
    if res.gateway:
        from scripts.bench.gateway_cost import gateway_section

        lines += gateway_section(res.gateway)
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
        "pub_hwm": res.pub_hwm,
        "latency": {k: {str(r): v for r, v in d.items()} for k, d in res.latency.items()},
        "startup": res.startup,
        "memory": res.memory,
        "recovery": res.recovery,
        "redis": res.redis,
        "reshard": res.reshard,
        "gateway": res.gateway,
        "skipped": res.skipped,
        "errors": res.errors,
        "load": res.load,
        "notes": res.notes,
        "repeat": res.repeat,
        "generated_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "elapsed_s": round(elapsed_s, 1),
    }
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
