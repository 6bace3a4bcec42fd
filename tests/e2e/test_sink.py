"""``cluster up --sink redis``: durable delivery to Redis Streams, read by real consumers.

Real processes throughout: the simulator, ``cluster up`` (owner and standby),
a real ``redis-server``, the Python consumer library (one member of a group in
a subprocess that the test SIGKILLs mid-handler) and an unchanged
``@discordjs/brokers`` 1.0.0 ``PubSubRedisBroker`` under Node.js.

What the sink promises, checked against the simulator's record of every
dispatch it produced into a session: each ``(shard, session, seq)`` is in the
streams exactly once, across a worker SIGKILL, a supervisor SIGKILL and the
standby's takeover by RESUME; consumers see every entry at least once and
every group sees all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio

from simulator import Simulator
from simulator.record import ResumeOutcome
from tests.conftest import SimFactory
from tests.e2e.cluster_process import ClusterProcess, clusters, http_get, wait_http
from tests.e2e.test_up import all_ready, args_for, short_dir
from tests.redis_server import RedisServer
from titanium_client import Event, StreamSubscription
from titanium_client.codec import encode_command

__all__ = ["clusters", "short_dir"]

pytestmark = pytest.mark.timeout(150)

LEASE = ["--lease-ttl", "3", "--lease-renew", "0.5", "--fence-after", "2", "--takeover-wait", "0.3"]
NODE_EXAMPLE = Path(__file__).resolve().parents[2] / "scripts" / "examples" / "node"
#: (shard, t, seq, the simulator's event id): one dispatch, as both sides can name it
Key = tuple[int, str, int, int | None]


def sink_args(sim: Simulator, where: Path, redis_url: str, *extra: str) -> list[str]:
    where.mkdir(exist_ok=True)
    return args_for(
        sim, where, "--redis", redis_url, "--sink", "redis", "--shard-ids", "0-3", *LEASE, *extra
    )


def record_keys(sim: Simulator, t: str | None = None, *, deliverable: bool = False) -> Counter[Key]:
    """The simulator's dispatches (of type ``t``); with ``deliverable`` only those Discord
    delivers (simulator.record.Record.deliverable: not one produced into a detached
    session that ended before any RESUME replayed it)."""
    dispatches = sim.record.deliverable() if deliverable else sim.record.dispatches
    return Counter(
        (d.shard_id, d.t, d.seq, d.event_id) for d in dispatches if t is None or d.t == t
    )


def entry_key(data: bytes) -> Key:
    obj = msgpack.unpackb(data, raw=False)
    payload = obj["payload"]
    d = payload.get("d")
    event_id = d.get("_sim_event_id") if isinstance(d, dict) else None
    return (obj["shardId"], payload["t"], payload["s"], event_id)


async def stream_keys(client: redis.asyncio.Redis, streams: set[str]) -> Counter[Key]:
    found: Counter[Key] = Counter()
    for stream in sorted(streams):
        for _, fields in await client.xrange(stream):
            found[entry_key(fields[b"data"])] += 1
    return found


async def wait_appended(
    sim: Simulator, client: redis.asyncio.Redis, within_s: float = 30.0
) -> Counter[Key]:
    """Wait until the streams hold every dispatch Discord delivers; return what they hold."""
    expected = record_keys(sim, deliverable=True)
    streams = {t for (_, t, _, _) in expected}
    found: Counter[Key] = Counter()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            while True:
                found = await stream_keys(client, streams)
                if not expected - found:
                    break
                await asyncio.sleep(0.2)
    missing = expected - found
    if missing:
        print_history(sim, missing)
    assert not missing, (
        f"{sum(missing.values())} dispatches never reached the streams: {sorted(missing)[:8]}"
    )
    return found


def print_history(sim: Simulator, missing: Counter[Key]) -> None:
    """What the simulator did around the events that never arrived (a failure's evidence)."""
    shards = {k[0] for k in missing}
    first = min(k[2] for k in missing) - 5
    for d in sim.record.dispatches:
        if d.shard_id in shards and d.seq >= first:
            print("dispatch", d)
    for r in sim.record.resumes:
        if r.shard_id in shards:
            print("resume", r)
    for f in sim.record.faults:
        if f.shard_id in shards:
            print("fault", f)


async def worker_pids(url: str) -> list[int]:
    _, body = await http_get(f"{url}/status")
    return [w["pid"] for w in body["workers"] if w.get("pid")]


VICTIM = """
import asyncio, os, sys
from titanium_client import StreamSubscription

async def main() -> None:
    url, stream, stop_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    handled = 0
    async with StreamSubscription(
        url, events=[stream], group="bots", consumer="victim", batch=8, block=0.05, ack_wait=1.0
    ) as sub:
        async for event in sub:
            print(f"{event.shard_id} {event.seq} {event.d.get('_sim_event_id')}", flush=True)
            handled += 1
            if handled == stop_after:
                print("stuck", flush=True)
                await asyncio.sleep(3600)  # mid-handler: the test SIGKILLs this process

asyncio.run(main())
"""


class Member:
    """An in-process consumer: every event it handles, by key."""

    def __init__(self, url: str, group: str, consumer: str) -> None:
        self.sub = StreamSubscription(
            url,
            events=["MESSAGE_CREATE"],
            group=group,
            consumer=consumer,
            block=0.05,
            ack_wait=1.0,
            claim_interval=0.2,
        )
        self.handled: Counter[tuple[int, int | None]] = Counter()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self.sub:
            async for event in self.sub:
                self.handled[self._key(event)] += 1

    @staticmethod
    def _key(event: Event) -> tuple[int, int | None]:
        return (event.shard_id, event.d.get("_sim_event_id"))

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


@pytest.fixture
async def members() -> AsyncIterator[Callable[[str, str, str], Member]]:
    made: list[Member] = []

    def make(url: str, group: str, consumer: str) -> Member:
        made.append(Member(url, group, consumer))
        return made[-1]

    try:
        yield make
    finally:
        for member in made:
            await member.close()


async def test_every_dispatch_is_appended_once_across_worker_and_supervisor_kills_and_a_takeover(
    sim_factory: SimFactory,
    redis_server: RedisServer,
    clusters: Callable[..., Any],
    members: Callable[[str, str, str], Member],
    short_dir: Path,
) -> None:
    sim = await sim_factory(
        shards=4,
        max_concurrency=4,
        identify_window_s=0.1,
        event_rate=25.0,
        heartbeat_interval_ms=1000,
        chaos_seed=int(os.environ.get("CHAOS_SEED", "1234")),
    )
    client = redis.asyncio.Redis.from_url(redis_server.url)
    victim: asyncio.subprocess.Process | None = None
    try:
        owner = await clusters(*sink_args(sim, short_dir / "a", redis_server.url))
        owner_url = await all_ready(owner, within_s=30)
        standby = await clusters(*sink_args(sim, short_dir / "b", redis_server.url))
        standby_http = (await standby.listening())["http"]
        await wait_http(f"{standby_http}/health", lambda s, b: b.get("role") == "spare", 20)

        # group "bots": one member here, one in a process killed mid-handler;
        # group "audit": one member that must see everything on its own
        # the simulator's chaos from here on: reconnects, closes, drops, zombies and
        # op 9 (a quarter of them d=false: a new session, whose seqs start again at 1)
        sim.set_chaos_rate(0.6)
        survivor = members(redis_server.url, "bots", "survivor")
        audit = members(redis_server.url, "audit", "auditor")
        victim = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            VICTIM,
            redis_server.url,
            "MESSAGE_CREATE",
            "15",
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert victim.stdout is not None
        victim_lines: list[str] = []
        async with asyncio.timeout(30):
            while "stuck" not in victim_lines:
                victim_lines.append((await victim.stdout.readline()).decode().strip())
        victim.send_signal(signal.SIGKILL)  # mid-handler, its read-ahead unacked
        await victim.wait()

        # a new session for shard 2 (its seqs start at 1 again): the sink's checkpoint
        # moves to it, and late events of the old one still dedupe
        assert sim.inject(2, "invalid_session", resumable=False)
        await asyncio.sleep(1.0)
        (worker,) = await worker_pids(owner_url)
        os.kill(worker, signal.SIGKILL)  # the supervisor replaces it; its shards RESUME
        await asyncio.sleep(1.5)
        await all_ready(owner, within_s=20)

        owner.signal(signal.SIGKILL)  # the supervisor: its worker lets go by itself
        await owner.wait(10)
        killed_resumes = len(sim.record.accepted_resumes())
        await all_ready(standby, within_s=30)
        identifies = len(sim.record.accepted_identifies())
        new_sessions = sum(
            1
            for f in sim.record.faults
            if f.kind == "invalid_session" and not f.params.get("resumable", True)
        )
        await asyncio.sleep(1.0)

        sim.set_chaos_rate(0.0)
        sim.set_event_rate(0.0)
        await asyncio.sleep(0.5)
        found = await wait_appended(sim, client)
        # each dispatch as many times as the simulator produced it (READY is seq 1 of
        # every session of a shard): never more, never an entry it never sent
        over = found - record_keys(sim)
        assert not over, f"appended more often than sent: {sorted(over)[:8]}"
        faults = Counter(f.kind for f in sim.record.faults if f.chaos)
        print(f"chaos: {dict(faults)}; {new_sessions} op 9 d=false; identifies {identifies}")
        assert faults, "no chaos happened"
        # an IDENTIFY only where op 9 d=false asked for one: none for the worker's
        # replacement, the supervisor's death or the takeover
        assert new_sessions >= 1 and identifies <= 4 + new_sessions
        assert len(sim.record.accepted_resumes()) > killed_resumes
        assert {r.shard_id for r in sim.record.resumes_for(outcome=ResumeOutcome.ACCEPTED)} == {
            0,
            1,
            2,
            3,
        }

        # every MESSAGE_CREATE handled by group "bots" (the survivor claims what the
        # victim held), and by group "audit" alone; then nothing is left pending
        messages = {(s, e) for (s, t, _, e) in record_keys(sim, "MESSAGE_CREATE", deliverable=True)}
        by_victim = {(int(s), int(e)) for s, _, e in (x.split() for x in victim_lines[:-1])}

        def settled() -> bool:
            return messages <= set(survivor.handled) | by_victim and messages <= set(audit.handled)

        async with asyncio.timeout(20):
            while not settled():  # noqa: ASYNC110 (the members' records are polled)
                await asyncio.sleep(0.1)
        for group in ("bots", "audit"):
            async with asyncio.timeout(10):
                while (await client.xpending("MESSAGE_CREATE", group))["pending"]:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        assert survivor.sub.stats.claimed >= 1, "the survivor claimed nothing of the victim's"
        assert survivor.sub.stats.stale_acks == 0
        # handled twice: only what the victim handled but whose batched XACK had not
        # gone out when it died (at most its read-ahead), never anything else
        assert all(n == 1 for n in survivor.handled.values())
        again = set(survivor.handled) & by_victim
        assert len(again) <= 8, f"handled again although the victim acked them: {sorted(again)}"
        assert set(audit.handled) == messages and max(audit.handled.values()) == 1

        _, status = await http_get(f"{standby_http}/status")
        sink = status["sink"]
        assert sink["errors"] == 0 and sink["pending"] == 0
        standby.signal(signal.SIGTERM)
        assert await standby.wait(15) == 0
    finally:
        if victim is not None and victim.returncode is None:
            victim.kill()
            await victim.wait()
        await client.aclose()


async def test_an_unchanged_discordjs_broker_receives_every_message_create_once(
    sim_factory: SimFactory,
    redis_server: RedisServer,
    clusters: Callable[..., Any],
    short_dir: Path,
) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_EXAMPLE / "node_modules" / "@discordjs" / "brokers").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("node and scripts/examples/node's packages must be installed by .ci/run")
        pytest.skip("needs node and `npm install` in scripts/examples/node")
    sim = await sim_factory(shards=4, max_concurrency=4, identify_window_s=0.1, event_rate=25.0)
    broker = await asyncio.create_subprocess_exec(
        node,
        str(NODE_EXAMPLE / "brokers.mjs"),
        "--redis",
        redis_server.url,
        "--group",
        "discordjs",
        "--event",
        "MESSAGE_CREATE",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        run: ClusterProcess = await clusters(*sink_args(sim, short_dir, redis_server.url))
        await all_ready(run, within_s=30)
        await asyncio.sleep(2.0)
        sim.set_event_rate(0.0)
        await asyncio.sleep(0.3)
        await wait_appended(sim, client)
        expected = {
            (d.shard_id, d.seq, d.event_id)
            for d in sim.record.dispatches
            if d.t == "MESSAGE_CREATE"
        }
        assert len(expected) >= 100
        got: Counter[tuple[int, int, int]] = Counter()
        assert broker.stdout is not None
        async with asyncio.timeout(30):
            while set(got) < expected:
                line = await broker.stdout.readline()
                assert line, (
                    (await broker.stderr.read()).decode() if broker.stderr else "node ended"
                )
                obj = __import__("json").loads(line)
                payload = obj["payload"]
                assert obj["event"] == "MESSAGE_CREATE" and payload["op"] == 0
                assert payload["t"] == "MESSAGE_CREATE"
                got[(obj["shardId"], payload["s"], payload["d"]["_sim_event_id"])] += 1
        assert set(got) == expected
        assert max(got.values()) == 1
        async with asyncio.timeout(10):
            while (await client.xpending("MESSAGE_CREATE", "discordjs"))["pending"]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        run.signal(signal.SIGTERM)
        assert await run.wait(15) == 0
    finally:
        if broker.returncode is None:
            broker.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(broker.wait(), 5)
            if broker.returncode is None:
                broker.kill()
                await broker.wait()
        await client.aclose()


async def metric(url: str, name: str, **labels: str) -> float | None:
    _, text = await http_get(f"{url}/metrics")
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as exposed: sorted
    head = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(head):
            return float(line.split()[-1])
    return None


async def test_retention_bounds_the_streams_while_a_stopped_group_lag_grows_and_bad_commands_are_refused(
    sim_factory: SimFactory,
    redis_server: RedisServer,
    clusters: Callable[..., Any],
    short_dir: Path,
) -> None:
    sim = await sim_factory(shards=4, max_concurrency=4, identify_window_s=0.1, event_rate=150.0)
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        # a group whose consumer never reads: its lag must show, memory must not grow
        await client.xgroup_create("MESSAGE_CREATE", "stopped", id="0", mkstream=True)
        run = await clusters(*sink_args(sim, short_dir, redis_server.url, "--sink-retention", "4"))
        url = await all_ready(run, within_s=30)
        lags: list[float] = []
        lengths: list[int] = []
        memory: list[int] = []
        for _ in range(11):
            await asyncio.sleep(1.0)
            lag = await metric(
                url, "titanium_sink_group_lag", stream="MESSAGE_CREATE", group="stopped"
            )
            if lag is not None:
                lags.append(lag)
            lengths.append(await client.xlen("MESSAGE_CREATE"))
            memory.append(int((await client.info("memory"))["used_memory"]))
        _, status = await http_get(f"{url}/status")
        appended = status["sink"]["appended"]
        print(f"appended {appended}, lengths {lengths}, lag {lags}, memory {memory}")
        rate = max(lengths[:3]) / 3  # MESSAGE_CREATEs per second, from the first seconds
        assert appended > 5000  # far more than the bound: trimming did the bounding
        # while the retention has not cut in, the stopped group's lag grows with the stream
        seen = list(dict.fromkeys(lags))  # the views change every 2 s
        assert len(seen) >= 2 and seen[1] > seen[0] > 0, lags
        # then the stream holds about 4 s of events (MINID ~ trims whole nodes of 100
        # entries, once a second), and Redis memory stops growing
        assert max(lengths[6:]) < rate * 6 + 200, (rate, lengths)
        assert max(memory[6:]) - min(memory[6:]) < 4_000_000, memory
        assert await metric(url, "titanium_sink_stream_length", stream="MESSAGE_CREATE") is not None

        # gateway_send: four bad entries and one good one, each acknowledged
        presence = {"since": None, "activities": [], "status": "idle", "afk": False}
        bad = [
            b"this is not msgpack",
            encode_command(1, 99, {}),
            encode_command(42, 3, presence),
            b"\x81" + b"\x00" * 70_000,
        ]
        for data in [*bad, encode_command(1, 3, presence)]:
            await client.xadd("gateway_send", {"data": data})

        def presence_seen(record: Any) -> bool:
            return any(c.op == 3 and c.d == presence for c in record.commands)

        await sim.record.wait_for(presence_seen, timeout=10)
        body = await wait_http(
            f"{url}/status", lambda s, b: sum(b["commands"]["outcomes"].values()) == 5, 10
        )
        assert body["commands"]["outcomes"] == {
            "bad_data": 1,
            "bad_command": 1,
            "unknown_shard": 1,
            "too_large": 1,
            "sent": 1,
        }
        assert (await client.xpending("gateway_send", "titanium:0-3"))["pending"] == 0
        refusals = [line for line in run.lines if "gateway_send entry" in line.get("msg", "")]
        assert len(refusals) == 4, refusals
        assert await metric(url, "titanium_sink_commands_total", outcome="bad_data") == 1.0
        status_code, health = await http_get(f"{url}/health")
        assert status_code == 200, health
        run.signal(signal.SIGTERM)
        assert await run.wait(15) == 0
    finally:
        await client.aclose()
