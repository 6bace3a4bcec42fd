"""The relay on real sockets: a ZeroMQ PUSH -> the channel (cluster/channel.py) -> dedupe -> PUB (cluster/publisher.py) -> SUB."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import zmq
import zmq.asyncio
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from cluster.channel import EventChannel
from cluster.http import ClusterCollector
from cluster.publisher import Publisher
from cluster.relay import Relay, SessionBook
from cluster.status import ClusterStatus, RelayCounters
from protocol import ipc
from protocol.pubframe import decode_event, encode_header
from protocol.session import Session
from tests.integration.test_publisher import SlowReader, missed_by_gaps
from tests.unit.test_ipc import encode_runs

pytestmark = pytest.mark.timeout(30)


@dataclass
class Rig:
    push: zmq.Socket[bytes]
    sub: zmq.asyncio.Socket
    relay: Relay
    book: SessionBook
    counters: RelayCounters
    publisher: Publisher
    reports: list[ipc.ShardReport | ipc.WorkerStatus] = field(default_factory=list)

    async def received(self, n: int, within_s: float = 5.0) -> list[tuple[str, int, int]]:
        out: list[tuple[str, int, int]] = []
        async with asyncio.timeout(within_s):
            while len(out) < n:
                event = decode_event(await self.sub.recv_multipart())
                out.append((event.topic, event.shard_id, event.seq))
        return out


def event(shard: int, epoch: int, seq: int, topic: bytes = b"MESSAGE_CREATE") -> list[bytes]:
    """An EVENT_RUNS message of one event."""
    payload = b'{"op":0,"s":%d,"t":"%s","d":{}}' % (seq, topic)
    return encode_runs([(shard, epoch, seq, [(topic, payload)])])


@contextlib.asynccontextmanager
async def relay_rig(batch: int, hwm: int = 100_000) -> AsyncIterator[Rig]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    async_context = zmq.asyncio.Context()
    channel = EventChannel("tcp://127.0.0.1:0")
    publisher = Publisher(context, "tcp://127.0.0.1:0", hwm=hwm)
    push: zmq.Socket[bytes] = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(channel.endpoint)
    sub = async_context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(publisher.endpoint)
    book = SessionBook()
    counters = RelayCounters()
    reports: list[ipc.ShardReport | ipc.WorkerStatus] = []
    relay = Relay(channel, publisher, book, counters, reports.append, batch=batch)
    relay.start()
    rig = Rig(push, sub, relay, book, counters, publisher, reports)
    try:
        # the subscription must reach the publisher before anything is published
        async with asyncio.timeout(5):
            while publisher.subscriptions < 1:  # noqa: ASYNC110 (counted by the relay's reader)
                await asyncio.sleep(0.01)
        yield rig
    finally:
        relay.stop()
        push.close(0)
        channel.close()
        sub.close(0)
        publisher.close()
        context.term()
        async_context.term()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with relay_rig(batch=2000) as r:
        yield r


async def test_events_are_published_once_in_order(rig: Rig) -> None:
    for seq in (1, 2, 3, 2, 3, 4):  # 2 and 3 replayed (a RESUME after a crash)
        rig.push.send_multipart(event(0, 11, seq))
    rig.push.send_multipart(event(1, 5, 1, b"READY"))
    got = await rig.received(5)
    assert got == [
        ("MESSAGE_CREATE", 0, 1),
        ("MESSAGE_CREATE", 0, 2),
        ("MESSAGE_CREATE", 0, 3),
        ("MESSAGE_CREATE", 0, 4),
        ("READY", 1, 1),
    ]
    assert rig.counters.published == 5
    assert rig.counters.duplicates_dropped == 2


async def test_a_run_is_relayed_skipping_what_was_published(rig: Rig) -> None:
    rig.push.send_multipart(event(0, 3, 1))
    rig.push.send_multipart(event(0, 3, 2))
    rig.push.send_multipart(runs((0, 3, 1, 4)))
    got = await rig.received(4)
    assert [seq for _, _, seq in got] == [1, 2, 3, 4]
    assert rig.counters.published == 4
    assert rig.counters.duplicates_dropped == 2


def run_payload(seq: int) -> bytes:
    return b'{"op":0,"s":%d,"t":"T","d":{}}' % seq


def runs(*spans: tuple[int, int, int, int]) -> list[bytes]:
    """An EVENT_RUNS message of (shard, epoch, first seq, count) runs."""
    return encode_runs(
        [
            (shard, epoch, first, [(b"T", run_payload(first + i)) for i in range(n)])
            for shard, epoch, first, n in spans
        ]
    )


async def test_event_runs_of_several_shards_are_published_with_their_headers_and_deduped(
    rig: Rig,
) -> None:
    rig.push.send_multipart(runs((0, 3, 1, 3), (1, 8, 1, 2), (0, 3, 4, 1)))
    rig.push.send_multipart(runs((1, 8, 2, 3), (0, 3, 1, 2)))  # a replay: 1/2 and 0/1-2 seen
    got: list[tuple[str, int, int]] = []
    async with asyncio.timeout(5):
        while len(got) < 8:
            frames = await rig.sub.recv_multipart()
            event = decode_event(frames)
            assert event.payload == run_payload(event.seq)
            assert frames[1] == encode_header(event.shard_id, event.seq)
            got.append((event.topic, event.shard_id, event.seq))
    assert [(s, q) for _, s, q in got] == [
        (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (0, 4), (1, 3), (1, 4)
    ]  # fmt: skip
    assert rig.counters.published == 8
    assert rig.counters.duplicates_dropped == 3


async def test_a_damaged_event_runs_body_is_counted_and_what_came_before_the_fault_is_published(
    rig: Rig,
) -> None:
    head, body = runs((0, 1, 1, 2), (1, 1, 1, 2))
    rig.push.send_multipart([head, body[:-5]])  # the last run runs past the body: not published
    rig.push.send_multipart([head, body + b"extra"])  # bytes after the runs (all published)
    rig.push.send_multipart([head])  # no body
    rig.push.send_multipart(runs((0, 1, 3, 1)))
    got: list[tuple[int, int]] = []
    async with asyncio.timeout(5):
        while (0, 3) not in got:
            got += [(shard, seq) for _, shard, seq in await rig.received(1)]
    assert got == [(0, 1), (0, 2), (1, 1), (1, 2), (0, 3)]
    assert rig.counters.malformed_dropped == 3


async def test_reports_go_to_the_supervisor_and_malformed_messages_are_counted(rig: Rig) -> None:
    report = ipc.ShardReport(2, "ready", 9, "sess", "wss://resume")
    rig.push.send_multipart(ipc.encode_shard_report(report))
    rig.push.send_multipart([b"short"])
    rig.push.send_multipart([ipc.pack_header(ipc.MessageKind.SHARD_STATE, 0, 0, 0), b"{not json"])
    rig.push.send_multipart(event(0, 1, 1))
    await rig.received(1)
    assert rig.reports == [report]
    assert rig.counters.malformed_dropped == 2
    assert rig.counters.published == 1


async def test_a_message_the_relay_fails_on_costs_only_itself(rig: Rig) -> None:
    # One read takes many messages out of the kernel: a handler that raises on one of
    # them must not lose the ones read with it (nothing would ever replay them).
    def failing(report: ipc.ShardReport | ipc.WorkerStatus) -> None:
        raise RuntimeError("a handler bug")

    rig.relay._on_report = failing
    rig.relay.stop()  # queue all three first: they arrive in one read
    rig.push.send_multipart(event(0, 1, 1))
    rig.push.send_multipart(ipc.encode_shard_report(ipc.ShardReport(0, "ready", 1, "s", "wss://r")))
    rig.push.send_multipart(event(0, 1, 2))
    await asyncio.sleep(0.1)
    rig.relay.start()
    assert [seq for _, _, seq in await rig.received(2)] == [1, 2]
    assert rig.counters.malformed_dropped == 1


async def test_a_message_of_the_withdrawn_events_kind_is_counted_and_the_channel_stays_aligned(
    rig: Rig,
) -> None:
    # kind 1 was EVENTS: binary frame + three PUB frames per event; now refused whole
    old = struct.pack("<BBHIIQ", ipc.IPC_VERSION, 1, 2, 0, 1, 1)
    payload = b'{"op":0,"s":1,"t":"T","d":{}}'
    rig.push.send_multipart([old, *[b"T", encode_header(0, 1), payload] * 2])
    rig.push.send_multipart(event(0, 1, 3))
    assert await rig.received(1) == [("MESSAGE_CREATE", 0, 3)]
    assert rig.counters.malformed_dropped == 1
    assert rig.counters.published == 1
    assert rig.book.published(0, 1) == 3


async def test_a_busy_relay_yields_to_the_event_loop_between_batches() -> None:
    async with relay_rig(batch=100) as rig:
        seen_by_ticker: list[int] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                seen_by_ticker.append(rig.counters.published)
                await asyncio.sleep(0)

        # queue everything before the relay's loop gets to run
        rig.relay.stop()
        for seq in range(1, 5001):
            rig.push.send_multipart(event(0, 1, seq))
        await asyncio.sleep(0.2)  # let ZeroMQ move them into the PULL's queue
        task = asyncio.create_task(ticker())
        rig.relay.start()
        try:
            got = await rig.received(5000, within_s=20)
        finally:
            done.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert [seq for _, _, seq in got] == list(range(1, 5001))
        # at most 100 messages per wake-up: the ticker ran between the batches
        partial = {n for n in seen_by_ticker if 0 < n < 5000}
        assert len(partial) >= 10, sorted(partial)
        assert all(n % 100 == 0 for n in partial)


def started(shard_id: int, session_id: str) -> list[bytes]:
    """The session-started report a worker sends ahead of the session's READY."""
    report = ipc.ShardReport(shard_id, "ready", 0, session_id, "wss://r", session_started=True)
    return ipc.encode_shard_report(report)


async def headers(rig: Rig, n: int) -> list[tuple[int, int, str | None]]:
    out: list[tuple[int, int, str | None]] = []
    async with asyncio.timeout(5):
        while len(out) < n:
            frames = await rig.sub.recv_multipart()
            event = decode_event(frames)
            assert frames[1] == encode_header(event.shard_id, event.seq, event.session_id)
            out.append((event.shard_id, event.seq, event.session_id))
    return out


def named_runs(encoder: ipc.EventRunsEncoder, *runs_of: tuple[int, int, int, int]) -> list[bytes]:
    """An EVENT_RUNS message from a worker's encoder (with the sessions it named)."""
    for shard, epoch, first, n in runs_of:
        for seq in range(first, first + n):
            encoder.add(shard, epoch, seq, b"MESSAGE_CREATE", run_payload(seq))
        encoder.close_runs()
    head = encoder.next_head()
    assert head is not None
    return [head, encoder.next_body()]


async def test_headers_carry_the_session_id_the_worker_named(rig: Rig) -> None:
    # The worker writes the headers: the session its shard named last, by epoch.
    new, old = ipc.session_epoch("s-new"), ipc.session_epoch("s-old")
    encoder = ipc.EventRunsEncoder()
    encoder.name_session(0, "s-old")
    rig.push.send_multipart(named_runs(encoder, (0, old, 1, 2)))
    encoder.name_session(0, "s-new")
    rig.push.send_multipart(named_runs(encoder, (0, new, 1, 2)))
    rig.push.send_multipart(named_runs(encoder, (1, 77, 1, 1), (2, 0, 1, 1)))  # never named
    encoder.name_session(2, None)
    rig.push.send_multipart(named_runs(encoder, (0, new, 3, 1), (2, 0, 2, 1)))
    assert await headers(rig, 8) == [
        (0, 1, "s-old"),
        (0, 2, "s-old"),
        (0, 1, "s-new"),
        (0, 2, "s-new"),
        (1, 1, None),
        (2, 1, None),
        (0, 3, "s-new"),
        (2, 2, None),
    ]


async def test_a_saved_sessions_replay_is_deduped_and_its_headers_name_it(rig: Rig) -> None:
    rig.book.seed(4, Session("saved-1", 10, "wss://r"))
    epoch = ipc.session_epoch("saved-1")
    encoder = ipc.EventRunsEncoder()
    encoder.name_session(4, "saved-1")  # what a worker's shard does with its saved session
    rig.push.send_multipart(named_runs(encoder, (4, epoch, 9, 3)))  # 9 and 10 were published
    assert await headers(rig, 1) == [(4, 11, "saved-1")]
    assert rig.counters.duplicates_dropped == 2


def test_the_book_remembers_a_few_session_names_per_shard() -> None:
    book = SessionBook()
    names = [f"s{i}" for i in range(10)]
    for name in names:
        book.on_session(0, name, "wss://r")
    kept = [n for n in names if book.session_id(0, ipc.session_epoch(n)) == n]
    assert kept == names[-5:]
    book.on_session(0, None, None)  # the session ended: its events may still be in flight
    assert book.session_id(0, ipc.session_epoch("s9")) == "s9"
    assert book.session_id(1, ipc.session_epoch("s9")) is None


def metric(status: ClusterStatus, name: str) -> float:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(status))
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in the metrics")


async def test_the_pub_hwm_metric_equals_the_events_a_slow_subscriber_missed() -> None:
    # DESIGN.md rule 3: drops at a slow subscriber's high-water mark are counted
    # per event. A real SUB that reads slowly, its misses counted from the seq
    # gaps it sees, against /metrics; the rig's own SUB reads as fast as it can
    # and misses nothing; the relay never waits for either.
    total, per_message = 20_000, 100
    payload = b'{"op":0,"t":"MESSAGE_CREATE","d":{"content":"' + b"x" * 1000 + b'"}}'
    async with relay_rig(batch=2000, hwm=300) as rig:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        slow_sock = context.socket(zmq.SUB)
        slow_sock.setsockopt(zmq.LINGER, 0)
        slow_sock.setsockopt(zmq.RCVHWM, 10)
        slow_sock.setsockopt(zmq.RCVBUF, 4096)
        slow_sock.setsockopt(zmq.SUBSCRIBE, b"MESSAGE_")
        slow_sock.connect(rig.publisher.endpoint)
        async with asyncio.timeout(5):
            while rig.publisher.subscribers < 2:  # noqa: ASYNC110 (read by the relay's reader)
                await asyncio.sleep(0.01)
        epoch = ipc.session_epoch("sess")
        rig.push.send_multipart(started(0, "sess"))
        slow = SlowReader(slow_sock, pause_s=0.0005)
        slow.start()
        fast: list[int] = []
        try:
            for first in range(1, total + 1, per_message):
                message = [(b"MESSAGE_CREATE", payload)] * per_message
                rig.push.send_multipart(encode_runs([(0, epoch, first, message)]))
                async with asyncio.timeout(5):
                    while len(fast) < first + per_message - 1:
                        fast.append(decode_event(await rig.sub.recv_multipart()).seq)
            async with asyncio.timeout(30):
                while rig.publisher.queued or time.monotonic() - slow.last_at < 0.5:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            slow.stopping.set()
            slow.join(5)
            slow_sock.close(0)
            context.term()
        status = ClusterStatus(1, [(0, (0,))])
        status.relay = rig.counters
        counted = metric(status, 'titanium_relay_dropped_total{reason="pub_hwm"}')
        missed = missed_by_gaps(slow.seqs, 1, total)
        assert fast == list(range(1, total + 1))
        assert rig.counters.published == total
        assert missed > 0
        assert counted == missed
