"""The worker's batched event output (worker.output.ChannelOutput) on real sockets, read by
a libzmq PULL.

Batching is the hot-path change the benchmarks drove: every event queued in
one loop iteration, of every shard, leaves as one EVENT_RUNS message (two
ZeroMQ frames) when the iteration ends; within it a shard's consecutive events
are a run, cut by a gap in the sequence, a new session or the cap; a report
goes out after the events queued before it.
"""

from __future__ import annotations

import asyncio

import zmq

from protocol import ipc
from protocol.ipc import MAX_RUN_EVENTS
from tests.unit.conftest import Pair, TightPair
from worker.output import ChannelOutput


def receive_all(pull: zmq.Socket[bytes], n: int) -> list[ipc.Message]:
    out = []
    for _ in range(n):
        assert pull.poll(5000), "no message within 5 s"
        out.append(ipc.decode(pull.recv_multipart()))
    return out


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
    await asyncio.sleep(0)
    [message] = receive_all(pull, 1)
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
    await asyncio.sleep(0)
    [message] = receive_all(pull, 1)
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
    await asyncio.sleep(0)
    assert pull.poll(5000)
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
    await asyncio.sleep(0)
    first, second, third = receive_all(pull, 3)
    assert [m.first_seq for m in runs(first)] == [1]
    assert isinstance(second, ipc.ShardReport)
    assert [m.first_seq for m in runs(third)] == [2]


async def test_a_full_channel_refuses_until_drained(tight_pair: TightPair) -> None:
    push, pull = tight_pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    # different sessions so every event is its own message; fill until refused
    seq = 1
    while out.event(0, seq, 1, b"T", payload(seq) + b"x" * 2000):
        seq += 1
        await asyncio.sleep(0)
        assert seq < 5000, "the channel never refused"
    assert out.send_blocked >= 1
    drained = asyncio.create_task(out.drain())
    got: list[ipc.Message] = []
    async with asyncio.timeout(5):
        while not drained.done():
            if pull.poll(0):
                got.append(ipc.decode(pull.recv_multipart()))
            await asyncio.sleep(0.001)
        while pull.poll(50):
            got.append(ipc.decode(pull.recv_multipart()))
    # every event accepted before the refusal arrives, none twice, none lost
    assert sorted(b.epoch for m in got for b in runs(m)) == list(range(1, seq))
    assert len(got) == seq - 1
    assert out.event(0, seq, 1, b"T", payload(seq)), "accepts again after the drain"
