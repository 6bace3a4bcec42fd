"""The worker's batched event output (worker.output.ChannelOutput) on real sockets, read by
a libzmq PULL.

Batching is the hot-path change the benchmarks drove: every event queued in
one burst of reads (until a lap of the loop adds nothing, at most COALESCE_S),
of every shard, leaves as one EVENT_RUNS message (two ZeroMQ frames); within
it a shard's consecutive events
are a run, cut by a gap in the sequence, a new session or the cap; a report
goes out after the events queued before it.
"""

from __future__ import annotations

import asyncio

import pytest
import zmq

from protocol import ipc
from protocol.ipc import MAX_RUN_EVENTS
from tests.unit.conftest import Pair, TightPair
from worker import output
from worker.output import ChannelOutput


async def received_within(
    pull: zmq.Socket[bytes], n: int, within_s: float = 5.0
) -> list[ipc.Message]:
    """``n`` messages, read while the loop keeps running (the output writes from it)."""
    got: list[ipc.Message] = []
    async with asyncio.timeout(within_s):
        while len(got) < n:
            if pull.poll(0):
                got.append(ipc.decode(pull.recv_multipart()))
            else:
                await asyncio.sleep(0.001)
    return got


def payload(seq: int) -> bytes:
    return b'{"t":"MESSAGE_CREATE","s":%d,"op":0,"d":{}}' % seq


def runs(message: ipc.Message) -> list[ipc.EventBatch]:
    assert isinstance(message, ipc.EventRuns), message
    return message.batches


async def test_one_iteration_of_one_shard_is_one_message(
    pair: Pair,
) -> None:
    push, pull = pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    for seq in range(5, 15):
        assert out.event(3, 77, seq, b"MESSAGE_CREATE", payload(seq))
    assert not pull.poll(50), "nothing leaves before the iteration ends"
    [message] = await received_within(pull, 1)
    [batch] = runs(message)
    assert (batch.shard_id, batch.epoch, batch.first_seq, len(batch.events)) == (3, 77, 5, 10)
    assert batch.events == [(b"MESSAGE_CREATE", payload(5 + i)) for i in range(10)]


async def test_cuts_at_gaps_new_sessions_shards_and_the_cap(
    pair: Pair,
) -> None:
    push, pull = pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    events = [(0, 1, s) for s in (1, 2, 3)] + [(0, 1, 5), (0, 2, 1), (1, 9, 1)]
    events += [(2, 4, s) for s in range(1, MAX_RUN_EVENTS + 2)]
    for shard, epoch, seq in events:
        assert out.event(shard, epoch, seq, b"T", payload(seq))
    [message] = await received_within(pull, 1)
    assert not pull.poll(50), "one iteration is one message"
    got = runs(message)
    spans = [(m.shard_id, m.epoch, m.first_seq, len(m.events)) for m in got]
    assert sorted(spans) == sorted(
        [
            (0, 1, 1, 3),
            (0, 1, 5, 1),
            (0, 2, 1, 1),
            (1, 9, 1, 1),
            (2, 4, 1, MAX_RUN_EVENTS),
            (2, 4, MAX_RUN_EVENTS + 1, 1),
        ]
    )
    # per shard, the order is the order of production
    shard0 = [m.first_seq for m in got if m.shard_id == 0]
    assert shard0 == [1, 5, 1]


async def test_every_shard_of_one_iteration_shares_one_message_of_two_frames(
    pair: Pair,
) -> None:
    push, pull = pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    for shard in range(16):
        for seq in (1, 2):
            assert out.event(shard, 100 + shard, seq, b"MESSAGE_CREATE", payload(seq))
    async with asyncio.timeout(5):
        while not pull.poll(0):  # noqa: ASYNC110 (a blocking socket: the loop must run)
            await asyncio.sleep(0.001)
    frames = pull.recv_multipart()
    assert len(frames) == 2
    got = runs(ipc.decode(frames))
    assert [(m.shard_id, m.epoch, m.first_seq, len(m.events)) for m in got] == [
        (shard, 100 + shard, 1, 2) for shard in range(16)
    ]
    assert out.messages == 1


async def test_a_report_follows_the_events_queued_before_it(
    pair: Pair,
) -> None:
    push, pull = pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    out.event(0, 1, 1, b"READY", payload(1))
    await out.report(
        ipc.ShardReport(shard_id=0, phase="ready", seq=1, session_id="s", resume_url="u")
    )
    out.event(0, 1, 2, b"T", payload(2))
    first, second, third = await received_within(pull, 3)
    assert [m.first_seq for m in runs(first)] == [1]
    assert isinstance(second, ipc.ShardReport)
    assert [m.first_seq for m in runs(third)] == [2]


async def test_a_full_channel_refuses_until_drained(tight_pair: TightPair) -> None:
    push, pull = tight_pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    # different sessions so every event is a run of its own; fill until refused
    seq = 1
    while out.event(0, seq, 1, b"T", payload(seq) + b"x" * 2000):
        seq += 1
        await asyncio.sleep(0)
        assert seq < 5000, "the channel never refused"
    assert out.send_blocked >= 1
    drained = asyncio.create_task(out.drain())
    got: list[ipc.Message] = []
    async with asyncio.timeout(5):
        # the loop keeps running: what the kernel has not taken yet leaves when writable
        while not drained.done() or sum(len(runs(m)) for m in got) < seq - 1:
            if pull.poll(0):
                got.append(ipc.decode(pull.recv_multipart()))
            await asyncio.sleep(0.001)
    while pull.poll(50):
        got.append(ipc.decode(pull.recv_multipart()))
    # every event accepted before the refusal arrives, none twice, none lost
    assert sorted(b.epoch for m in got for b in runs(m)) == list(range(1, seq))
    assert out.event(0, seq, 1, b"T", payload(seq)), "accepts again after the drain"


async def test_a_burst_read_over_several_laps_of_the_loop_leaves_as_one_message(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reads of one burst (a gateway writing to several shards' sockets) come a few
    # laps apart: the batch waits until a lap adds nothing, then leaves whole.
    monkeypatch.setattr(output, "COALESCE_S", 10.0)
    push, pull = pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    for shard in range(5):
        assert out.event(shard, 1, 1, b"T", payload(1))
        await asyncio.sleep(0)  # one lap of the loop
    [message] = await received_within(pull, 1)
    assert [b.shard_id for b in runs(message)] == [0, 1, 2, 3, 4]
    assert out.messages == 1


async def test_a_batch_leaves_within_the_window_while_events_keep_coming(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every lap adds an event for a while: the batch does not wait for the end of that.
    monkeypatch.setattr(output, "COALESCE_S", 0.01)
    push, pull = pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    seq = 0
    got: list[ipc.Message] = []
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.5
    while loop.time() < until:
        seq += 1
        assert out.event(0, 1, seq, b"T", payload(seq))
        if pull.poll(0):
            got.append(ipc.decode(pull.recv_multipart()))
        await asyncio.sleep(0)
    assert len(got) >= 2, "nothing left while events kept coming"
    got += await received_within(pull, 1) if not pull.poll(0) else []
    while pull.poll(100):
        got.append(ipc.decode(pull.recv_multipart()))
    seqs = [b.first_seq + i for m in got for b in runs(m) for i in range(len(b.events))]
    assert seqs == list(range(1, seq + 1))
