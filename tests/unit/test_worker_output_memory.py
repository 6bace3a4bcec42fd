"""The worker's output channel is bounded in bytes (worker.output.ChannelOutput), on real sockets.

One event-loop iteration of a worker read flat out can take tens of thousands
of events (every shard's socket buffer); they used to leave as one message of
tens of megabytes at the iteration's end, held three times over (the runs, the
joined body, ZeroMQ's copy, when the channel was libzmq's). Now the runs cut in an iteration leave as soon as
they hold ``FLUSH_BYTES``, mid-iteration, in order per shard, and a full
channel still refuses (the shards wait) and loses nothing. A waiting ``drain``
is woken by the socket becoming writable.
"""

from __future__ import annotations

import asyncio

import pytest

from protocol import ipc
from protocol.ipc import MAX_RUN_EVENTS
from tests.unit.conftest import Pair, TightPair
from worker import output
from worker.output import ChannelOutput

#: a small threshold so a few runs of small events cross it
FLUSH = 16 * 1024


async def fill(out: ChannelOutput, data: bytes) -> int:
    """Queue an event per loop lap (each a new session: a run of its own) until the channel
    stays full (a drain waits); the epoch of the first event refused."""
    epoch = 1
    while True:
        while out.event(0, epoch, 1, b"T", data):
            epoch += 1
            await asyncio.sleep(0)
            assert epoch < 5000, "the channel never refused"
        try:
            await asyncio.wait_for(out.drain(), 0.05)
        except TimeoutError:
            return epoch


def payload(shard: int, seq: int) -> bytes:
    return b'{"t":"MESSAGE_CREATE","s":%d,"op":0,"d":{"shard":%d,"pad":"%s"}}' % (
        seq,
        shard,
        b"x" * 40,
    )


def events_of(frames: list[bytes]) -> list[tuple[int, int, bytes]]:
    message = ipc.decode(frames)
    assert isinstance(message, ipc.EventRuns), message
    out = []
    for batch in message.batches:
        for i, (_topic, data) in enumerate(batch.events):
            out.append((batch.shard_id, batch.first_seq + i, bytes(data)))
    return out


def check_exactly_once_in_order(got: list[tuple[int, int, bytes]], shards: int, n: int) -> None:
    for shard in range(shards):
        seqs = [seq for s, seq, _ in got if s == shard]
        assert seqs == list(range(1, n + 1)), f"shard {shard}: not each seq once, in order"
    assert all(data == payload(s, seq) for s, seq, data in got)


async def test_cut_runs_leave_mid_iteration_and_messages_stay_small(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "FLUSH_BYTES", FLUSH)
    push, pull = pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    shards, n = 4, 3 * MAX_RUN_EVENTS + 7
    total_bytes = 0
    for seq in range(1, n + 1):  # one iteration: no await between the events
        for shard in range(shards):
            data = payload(shard, seq)
            total_bytes += len(data)
            assert out.event(shard, 9, seq, b"MESSAGE_CREATE", data)
    assert total_bytes > 8 * FLUSH
    # Sent before the iteration ends: the loop has not run the end-of-iteration flush.
    assert pull.poll(5000), "nothing left before the iteration ended"
    mid_iteration = out.messages
    assert mid_iteration >= 2
    await asyncio.sleep(0)
    got: list[tuple[int, int, bytes]] = []
    sizes = []
    while pull.poll(200):
        frames = pull.recv_multipart()
        sizes.append(len(frames[1]))
        got.extend(events_of(frames))
    assert len(sizes) == out.messages > mid_iteration
    check_exactly_once_in_order(got, shards, n)
    # A message holds what was cut when FLUSH was crossed (at most a run more) or, at the
    # end of the iteration, the open runs: nothing near the whole iteration.
    one_run = MAX_RUN_EVENTS * (len(payload(0, n)) + 32)
    assert max(sizes) <= FLUSH + shards * one_run
    assert max(sizes) < total_bytes / 3


async def test_a_full_channel_refuses_mid_iteration_and_loses_nothing(
    tight_pair: TightPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "FLUSH_BYTES", FLUSH)
    push, pull = tight_pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    shards, n = 3, 4 * MAX_RUN_EVENTS
    got: list[tuple[int, int, bytes]] = []
    all_in = asyncio.Event()

    async def read() -> None:
        while True:
            while pull.poll(0):
                got.extend(events_of(pull.recv_multipart()))
            if len(got) >= shards * n:
                all_in.set()
            await asyncio.sleep(0.001)

    async def produce(shard: int) -> None:
        # what a shard's read loop does (worker/connection.py)
        for seq in range(1, n + 1):
            data = payload(shard, seq)
            if not out.event(shard, 5, seq, b"MESSAGE_CREATE", data):
                await out.drain()
                while not out.event(shard, 5, seq, b"MESSAGE_CREATE", data):
                    await out.drain()

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(20):
            await asyncio.gather(*(produce(shard) for shard in range(shards)))
            await out.drain()
            await all_in.wait()
    finally:
        reader.cancel()
    assert out.send_blocked >= 1, "the channel never refused: the test proves nothing"
    check_exactly_once_in_order(got, shards, n)


async def test_drain_is_woken_by_the_socket(tight_pair: TightPair) -> None:
    # No timer looks again: only the socket's writability wakes a waiting drain.
    push, pull = tight_pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    big = payload(0, 1) + b"x" * 2000
    epoch = await fill(out, big)
    drains = [asyncio.create_task(out.drain()) for _ in range(3)]  # several shards wait
    await asyncio.sleep(0.05)
    assert not any(d.done() for d in drains)
    # one waiting shard stops (its task is cancelled): the others keep waiting
    drains.pop().cancel()
    await asyncio.sleep(0.01)
    assert not any(d.done() for d in drains)
    received = 0
    async with asyncio.timeout(10):
        while not all(d.done() for d in drains):
            if pull.poll(0):
                received += len(events_of(pull.recv_multipart()))
            await asyncio.sleep(0.001)
        while pull.poll(50):
            received += len(events_of(pull.recv_multipart()))
    assert received == epoch - 1
    assert out.event(0, epoch, 1, b"T", payload(0, 1)), "accepts again after the drain"
    out.close()


async def test_runs_kept_by_a_refusal_leave_once_writable_with_nobody_draining(
    tight_pair: TightPair,
) -> None:
    # The refused flush was the end-of-iteration one: no shard waits in drain and no
    # event comes after it, yet the runs it kept must not wait for the next report.
    push, pull = tight_pair
    out = ChannelOutput(push, asyncio.get_running_loop())
    epoch = 1
    while out.event(0, epoch, 1, b"T", payload(0, 1) + b"x" * 2000):  # a run each
        epoch += 1
        await asyncio.sleep(0)
        assert epoch < 5000, "the channel never refused"
    assert out.refusing  # runs kept; from here on nobody calls drain, event or send
    received = 0
    async with asyncio.timeout(10):
        while received < epoch - 1:
            if pull.poll(0):
                received += len(events_of(pull.recv_multipart()))
            await asyncio.sleep(0.001)
    assert received == epoch - 1
    assert not out.refusing
