"""The sink's Redis side against a real redis-server: appends, checkpoints, trims, views.

The append script is what makes the sink exactly once: it checks the lease,
appends only seqs above the shard's checkpoint and moves the checkpoint in the
same step. A :class:`StreamSink` with a real relay book runs end to end here
too (its back pressure, its refusal after a lost lease).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import msgpack
import orjson
import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.config import SinkSettings
from cluster.relay import SessionBook
from cluster.sink import StreamSink
from cluster.state.redis_state import Lease, LeaseLostError, RedisState
from cluster.state.redis_streams import StreamStore
from protocol import ipc
from protocol.brokerformat import Encoding
from protocol.session import Session
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

BOT = "4711"
URL = "wss://gateway.example/resume"
TTL_MS = 60_000


def dispatch(t: str, seq: int, d: object) -> bytes:
    return orjson.dumps({"op": 0, "t": t, "s": seq, "d": d})


class Stand:
    def __init__(self, state: RedisState, store: StreamStore, client: redis.asyncio.Redis) -> None:
        self.state = state
        self.store = store
        self.client = client

    async def lease(self, shard_range: tuple[int, int] = (0, 3)) -> Lease:
        lease = await self.state.acquire_lease(shard_range, 10_000)
        assert lease is not None
        return lease

    async def entries(self, stream: str) -> list[dict[str, object]]:
        return [msgpack.unpackb(fields[b"data"]) for _, fields in await self.client.xrange(stream)]

    async def checkpoint(self, shard_id: int) -> dict[str, object]:
        raw = await self.client.get(f"tc:{{{BOT}}}:sess:{shard_id}")
        assert raw is not None
        doc: dict[str, object] = orjson.loads(raw)
        return doc


@pytest.fixture
async def stand(redis_server: RedisServer) -> AsyncIterator[Stand]:
    state = RedisState(redis_server.url, BOT, holder="host-a")
    store = StreamStore(state)
    await state.connect()
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        yield Stand(state, store, client)
    finally:
        await client.aclose()
        await state.close()


def run(
    shard_id: int, first: int, count: int, t: str = "MESSAGE_CREATE"
) -> list[tuple[str, bytes]]:
    """(stream, data) of ``count`` events of ``shard_id`` from seq ``first``."""
    return [
        (t, msgpack.packb({"shardId": shard_id, "payload": {"t": t, "s": first + i}}))
        for i in range(count)
    ]


async def test_a_replayed_run_is_not_appended_twice_and_the_checkpoint_is_the_last_appended(
    stand: Stand,
) -> None:
    lease = await stand.lease()
    batch = stand.store.batch()
    batch.add_run(0, "sess-a", URL, 1, run(0, 1, 5))
    first = await stand.store.append(lease, [batch], TTL_MS)
    assert (first.appended, first.skipped) == (5, 0)
    # A RESUME from an older checkpoint replays 3-7: only 6 and 7 are new.
    again = stand.store.batch()
    again.add_run(0, "sess-a", URL, 3, run(0, 3, 5))
    second = await stand.store.append(lease, [again], TTL_MS)
    assert (second.appended, second.skipped) == (2, 3)
    seqs = [e["payload"]["s"] for e in await stand.entries("MESSAGE_CREATE")]  # type: ignore[index]
    assert seqs == [1, 2, 3, 4, 5, 6, 7]
    doc = await stand.checkpoint(0)
    assert Session.from_json(doc) == Session("sess-a", 7, URL)
    assert doc["fence"] == lease.token
    # what a restart loads is exactly that checkpoint
    assert await stand.state.load_sessions([0]) == {0: Session("sess-a", 7, URL)}


async def test_a_new_session_starts_at_zero_and_the_previous_ones_stragglers_still_dedupe(
    stand: Stand,
) -> None:
    lease = await stand.lease()
    store = stand.store
    b = store.batch()
    b.add_run(1, "old", URL, 1, run(1, 1, 4))
    b.add_run(1, "new", URL + "2", 1, run(1, 1, 2))
    # the old session's late events: 3-4 were appended, 5 is new
    b.add_run(1, "old", URL, 3, run(1, 3, 3))
    result = await store.append(lease, [b], TTL_MS)
    assert (result.appended, result.skipped) == (7, 2)
    doc = await stand.checkpoint(1)
    assert (doc["session_id"], doc["seq"], doc["resume_url"]) == ("new", 2, URL + "2")
    assert (doc["prev_session_id"], doc["prev_seq"]) == ("old", 5)


async def test_nothing_is_written_under_a_lease_that_is_not_ours(
    stand: Stand, redis_server: RedisServer
) -> None:
    lease = await stand.lease()
    stale = Lease(lease.shard_range, lease.holder, lease.token - 1 if lease.token > 1 else 99)
    b = stand.store.batch()
    b.add_run(0, "s", URL, 1, run(0, 1, 3))
    with pytest.raises(LeaseLostError):
        await stand.store.append(stale, [b], TTL_MS)
    assert await stand.client.exists("MESSAGE_CREATE") == 0
    assert await stand.client.exists(f"tc:{{{BOT}}}:sess:0") == 0
    with pytest.raises(LeaseLostError):
        await stand.store.touch(stale, [0], TTL_MS)


async def test_several_batches_in_one_pipeline_keep_their_order_across_streams(
    stand: Stand,
) -> None:
    lease = await stand.lease()
    batches = []
    for k in range(3):
        b = stand.store.batch()
        events = [
            ("GUILD_CREATE" if (10 * k + i) % 3 == 0 else "MESSAGE_CREATE", b"\x80")
            for i in range(10)
        ]
        b.add_run(2, "s", URL, 10 * k + 1, events)
        batches.append(b)
    result = await stand.store.append(lease, batches, TTL_MS)
    assert result.appended == 30
    lengths = [await stand.client.xlen(s) for s in ("GUILD_CREATE", "MESSAGE_CREATE")]
    assert lengths == [10, 20]
    assert (await stand.checkpoint(2))["seq"] == 30


async def test_the_script_is_loaded_again_after_redis_forgets_it(stand: Stand) -> None:
    lease = await stand.lease()
    await stand.client.script_flush()
    b = stand.store.batch()
    b.add_run(0, "s", URL, 1, run(0, 1, 2))
    assert (await stand.store.append(lease, [b], TTL_MS)).appended == 2


async def test_trim_bounds_length_and_age_and_views_show_lag_and_pending(stand: Stand) -> None:
    lease = await stand.lease()
    client = stand.client
    await client.xgroup_create("MESSAGE_CREATE", "bot", id="0", mkstream=True)
    b = stand.store.batch()
    b.add_run(0, "s", URL, 1, run(0, 1, 1000))
    await stand.store.append(lease, [b], TTL_MS)
    # a consumer reads 10 and acks none: pending 10, lag 990
    await client.xreadgroup("bot", "c1", {"MESSAGE_CREATE": ">"}, count=10)
    views = await stand.store.streams(["MESSAGE_CREATE", "NO_SUCH_STREAM"])
    assert [v.stream for v in views] == ["MESSAGE_CREATE"]
    (group,) = views[0].groups
    assert (group.group, group.pending, group.lag, group.consumers) == ("bot", 10, 990, 1)
    removed = await stand.store.trim(["MESSAGE_CREATE"], retention_ms=3_600_000, maxlen=300)
    assert removed > 0
    # MAXLEN ~ removes whole nodes only: about 300 are left, never fewer
    assert 300 <= await client.xlen("MESSAGE_CREATE") < 500
    await asyncio.sleep(0.05)
    await stand.store.trim(["MESSAGE_CREATE"], retention_ms=1, maxlen=0)
    # MINID ~ keeps the node that holds the newest entries
    assert await client.xlen("MESSAGE_CREATE") < 300


async def wait_until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 (the sink's counters are polled)
            await asyncio.sleep(0.01)


async def test_the_sink_encodes_appends_and_applies_back_pressure(stand: Stand) -> None:
    lease = await stand.lease()
    book = SessionBook()
    book.on_session(0, "sess-x", URL)
    epoch = ipc.session_epoch("sess-x")
    fenced: list[str] = []
    settings = SinkSettings(encoding=Encoding.JSON, max_pending=50)
    sink = StreamSink(stand.store, lease, book, (0, 1, 2, 3), settings, 600.0, fenced.append)
    resumed: list[int] = []
    sink.on_drained(lambda: resumed.append(1))
    sink.start()
    try:
        events = [
            (memoryview(b"MESSAGE_CREATE"), memoryview(dispatch("MESSAGE_CREATE", i, {"n": i})))
            for i in range(1, 61)
        ]
        sink.add(0, epoch, 1, events)
        assert sink.backlogged  # 60 waiting > 50: the relay would stop reading now
        sink.flush()
        await wait_until(lambda: sink.stats.appended == 60)
        assert not sink.backlogged and resumed
        raw = [f[b"data"] for _, f in await stand.client.xrange("MESSAGE_CREATE")]
        assert orjson.loads(raw[0]) == {
            "shardId": 0,
            "payload": {"op": 0, "t": "MESSAGE_CREATE", "s": 1, "d": {"n": 1}},
        }
        assert (await stand.checkpoint(0))["seq"] == 60
        # the lease changes hands: the next append is refused and the owner is told
        await stand.client.set(f"tc:{{{BOT}}}:lease:0-3", "someone-else|99")
        sink.add(0, epoch, 61, [(memoryview(b"MESSAGE_CREATE"), dispatch("MESSAGE_CREATE", 61, 0))])
        sink.flush()
        await wait_until(lambda: bool(fenced))
        assert "lost the lease" in fenced[0]
        assert await stand.client.xlen("MESSAGE_CREATE") == 60
        assert sink.status_json()["dropped_fenced"] == 1
    finally:
        await sink.stop()


# -- the script against a model of its rule ------------------------------------------------

#: (shard, session, resume url, first seq, streams of the run's events)
ModelRun = tuple[int, str, str, int, list[str]]


def model_append(
    docs: dict[int, dict[str, object]], runs: list[ModelRun]
) -> list[tuple[str, bytes]]:
    """The rule SINK_APPEND keeps, one event at a time: what it appends, and the
    checkpoints it leaves (``docs``, without ``fence``)."""
    out = []
    for shard_id, sid, url, first, streams in runs:
        doc = docs.setdefault(shard_id, {})
        prev = False
        if doc.get("session_id") == sid:
            done = int(doc["seq"])  # type: ignore[call-overload]
        elif doc.get("prev_session_id") == sid:
            prev = True
            done = int(doc["prev_seq"])  # type: ignore[call-overload]
        else:
            if "session_id" in doc:
                doc["prev_session_id"] = doc["session_id"]
                doc["prev_seq"] = doc["seq"]
            doc["session_id"], doc["seq"] = sid, 0
            doc.pop("resume_url", None)
            done = 0
        last = done
        for i, stream in enumerate(streams):
            seq = first + i
            if seq > done:
                out.append((stream, model_data(shard_id, sid, seq)))
                last = seq
        if last > done:
            doc["prev_seq" if prev else "seq"] = last
        if not prev and url and doc.get("resume_url") != url:
            doc["resume_url"] = url
    return out


def model_data(shard_id: int, sid: str, seq: int) -> bytes:
    return b"%d/%s/%d" % (shard_id, sid.encode(), seq)


model_runs = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["", "wss://one/", "wss://two/"]),
        st.integers(1, 12),
        st.lists(
            st.sampled_from(["MESSAGE_CREATE", "TYPING_START", "GUILD_CREATE"]),
            min_size=1,
            max_size=6,
        ),
    ),
    min_size=1,
    max_size=10,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rounds=st.lists(st.tuples(model_runs, st.integers(1, 4)), min_size=1, max_size=4))
async def test_the_script_appends_and_checkpoints_as_the_rule_says(
    stand: Stand, rounds: list[tuple[list[ModelRun], int]]
) -> None:
    await stand.client.flushdb()
    lease = await stand.lease()
    docs: dict[int, dict[str, object]] = {}
    expected: list[tuple[str, bytes]] = []
    for runs, calls in rounds:
        # the round's runs spread over `calls` script calls of one pipeline
        batches = [stand.store.batch() for _ in range(calls)]
        for n, (shard_id, sid, url, first, streams) in enumerate(runs):
            events = [(s, model_data(shard_id, sid, first + i)) for i, s in enumerate(streams)]
            batch = batches[min(n * calls // len(runs), calls - 1)]
            assert batch.add_run(shard_id, sid, url, first, events) == len(events)
        want = model_append(docs, runs)
        result = await stand.store.append(lease, [b for b in batches if b.runs], TTL_MS)
        assert (result.appended, result.skipped) == (
            len(want),
            sum(len(r[4]) for r in runs) - len(want),
        )
        expected += want
    for stream in ("MESSAGE_CREATE", "TYPING_START", "GUILD_CREATE"):
        got = [f[b"data"] for _, f in await stand.client.xrange(stream)]
        assert got == [d for s, d in expected if s == stream]
    for shard_id, doc in docs.items():
        stored = await stand.checkpoint(shard_id)
        assert stored.pop("fence") == lease.token
        assert stored == doc
