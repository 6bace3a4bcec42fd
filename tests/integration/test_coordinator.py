"""The identify coordinator on real ZeroMQ sockets, with clients in this process and in others.

Grant times are taken on the coordinator's side (its ``on_grant`` hook and its
clock); only lower bounds on spacing are asserted, never how fast things go.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from cluster.coordinator import Coordinator, Requester
from cluster.identify_scheduler import Grant
from protocol.coordination import (
    Acquire,
    Answered,
    ErrorReply,
    Release,
    Sent,
    StatusReply,
    StatusRequest,
    decode_message,
)
from protocol.coordination import Grant as GrantMessage
from worker.identify_client import (
    IdentifyClient,
    IdentifyClientClosedError,
    IdentifyClientError,
    IdentifyRequestCancelledError,
)

TIMEOUT = 20.0
SPAWN = multiprocessing.get_context("spawn")


# -- helpers ---------------------------------------------------------------------------------


class GrantLog:
    """Every grant the coordinator delivered, with its coordinator-side time."""

    def __init__(self) -> None:
        self.grants: list[Grant[Requester]] = []
        self._changed = asyncio.Event()

    def __call__(self, grant: Grant[Requester]) -> None:
        self.grants.append(grant)
        self._changed.set()

    async def wait_count(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.grants) < count:
                self._changed.clear()
                await self._changed.wait()

    def shard_ids(self) -> list[int]:
        return [g.shard_id for g in self.grants]

    def assert_spacing(self, mc: int, interval: float) -> None:
        by_bucket: dict[int, list[float]] = {}
        for grant in self.grants:
            by_bucket.setdefault(grant.shard_id % mc, []).append(grant.granted_at)
        for times in by_bucket.values():
            for earlier, later in itertools.pairwise(times):
                assert later - earlier >= interval, (
                    f"two grants {later - earlier:.4f} s apart in one bucket"
                )


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait, bounded, for a condition the coordinator's loop changes.

    Queues and counters have no change event of their own, so they are checked every 5 ms.
    """
    async with asyncio.timeout(TIMEOUT):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@asynccontextmanager
async def running(endpoint: str, **kwargs: Any) -> AsyncIterator[tuple[Coordinator, GrantLog]]:
    log = GrantLog()
    params: dict[str, Any] = {
        "max_concurrency": 1,
        "interval_s": 0.1,
        "session_total": 1000,
        "session_remaining": 1000,
        "reset_after_s": 3600.0,
        "safety_margin_s": 0.0,
    }
    params.update(kwargs)
    coordinator = Coordinator(endpoint, on_grant=log, **params)
    await coordinator.start()
    try:
        yield coordinator, log
    finally:
        await coordinator.stop()


def _client_process(
    endpoint: str, shard_ids: list[int], conn: Connection, wait_for_go: bool, hold: bool
) -> None:
    """A worker stand-in in its own process: acquire every shard at once, report each grant.

    Reports go over a pipe of its own: a process killed with SIGKILL may die
    holding the shared lock of a multiprocessing.Queue and wedge its other users.
    """

    async def main() -> None:
        if wait_for_go:
            assert await asyncio.to_thread(conn.recv) == "go"
        async with IdentifyClient(endpoint, resend_interval_s=0.5) as client:

            async def one(shard_id: int) -> None:
                await client.acquire(shard_id)
                conn.send((os.getpid(), shard_id))

            await asyncio.gather(*(one(s) for s in shard_ids))
            if hold:
                await asyncio.sleep(TIMEOUT)

    asyncio.run(main())


@dataclass
class ClientProcess:
    proc: BaseProcess
    conn: Connection

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    async def reports(self, count: int) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < count:
            if not await asyncio.to_thread(self.conn.poll, max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"only {len(got)} of {count} grants reported by {self.pid}")
            got.append(self.conn.recv())
        return got


@contextmanager
def processes() -> Iterator[list[ClientProcess]]:
    started: list[ClientProcess] = []
    try:
        yield started
    finally:
        for client in started:
            if client.proc.is_alive():
                client.proc.kill()
            client.proc.join(5)
            client.conn.close()


def start_client(
    procs: list[ClientProcess],
    endpoint: str,
    shard_ids: list[int],
    *,
    wait_for_go: bool = False,
    hold: bool = False,
) -> ClientProcess:
    parent, child = SPAWN.Pipe()
    proc = SPAWN.Process(
        target=_client_process, args=(endpoint, shard_ids, child, wait_for_go, hold), daemon=True
    )
    proc.start()
    child.close()
    client = ClientProcess(proc, parent)
    procs.append(client)
    return client


async def join(client: ClientProcess) -> int | None:
    await asyncio.to_thread(client.proc.join, TIMEOUT)
    assert not client.proc.is_alive(), "client process did not finish"
    return client.proc.exitcode


def endpoint_for(kind: str, tmp_path: Path) -> str:
    return "tcp://127.0.0.1:0" if kind == "tcp" else f"ipc://{tmp_path}/coordinator.sock"


# -- two client processes sharing one budget ---------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
async def test_two_processes_share_the_buckets_and_every_bucket_is_spaced(
    kind: str, tmp_path: Path
) -> None:
    mc, interval = 2, 0.1
    async with running(endpoint_for(kind, tmp_path), max_concurrency=mc, interval_s=interval) as (
        coord,
        log,
    ):
        if kind == "tcp":
            assert coord.endpoint.startswith("tcp://127.0.0.1:") and not coord.endpoint.endswith(
                ":0"
            )
        with processes() as procs:
            a = start_client(procs, coord.endpoint, [0, 1, 2, 3, 4, 5])
            b = start_client(procs, coord.endpoint, [6, 7, 8, 9, 10, 11])
            reports = await a.reports(6) + await b.reports(6)
            assert await join(a) == 0 and await join(b) == 0
        assert sorted(shard for _, shard in reports) == list(range(12))
        await log.wait_count(12)
        assert sorted(log.shard_ids()) == list(range(12)), "each shard granted exactly once"
        log.assert_spacing(mc, interval)
        assert coord.snapshot().remaining == 1000 - 12
        assert coord.stats.grants_undelivered == 0


async def test_budget_exhaustion_stops_granting_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cluster.coordinator")
    async with (
        running("tcp://127.0.0.1:0", session_remaining=3, interval_s=0.02) as (coord, log),
        IdentifyClient(coord.endpoint) as client,
    ):
        tasks = [asyncio.create_task(client.acquire(shard)) for shard in range(5)]
        try:
            await log.wait_count(3)
            await wait_until(lambda: sum(t.done() for t in tasks) == 3)
            snap = coord.snapshot()
            assert snap.exhausted and snap.remaining == 0 and sum(snap.queued) == 2
            body = coord.status_json()
            assert body["exhausted"] is True and body["reset_after_s"] > 3500
            async with asyncio.timeout(TIMEOUT):
                reply = await client.status()
            assert reply.exhausted and reply.remaining == 0 and reply.queued == 2
            exhausted_lines = [r for r in caplog.records if "EXHAUSTED" in r.getMessage()]
            assert len(exhausted_lines) == 1 and "resets in" in exhausted_lines[0].getMessage()
            assert len(log.grants) == 3

            # Fresh numbers from /gateway/bot (a new window) wake the loop: the rest go.
            coord.update_limit(1000, 86400.0)
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(*tasks)
            assert sorted(log.shard_ids()) == [0, 1, 2, 3, 4]
        finally:
            for task in tasks:
                task.cancel()


# -- a worker killed with SIGKILL costs nothing extra -----------------------------------------------


async def test_a_killed_worker_queued_request_is_taken_over_by_its_replacement() -> None:
    interval = 1.0
    async with running("tcp://127.0.0.1:0", interval_s=interval) as (coord, log):
        with processes() as procs:
            doomed = start_client(procs, coord.endpoint, [0, 1], hold=True)
            # The replacement is started early and held back, so its request lands while 1 is queued.
            replacement = start_client(procs, coord.endpoint, [1], wait_for_go=True)
            reports = await doomed.reports(1)
            assert log.shard_ids() == [0]
            await wait_until(lambda: coord.scheduler.is_queued(1))
            os.kill(doomed.pid, signal.SIGKILL)
            await join(doomed)
            replacement.conn.send("go")
            reports += await replacement.reports(1)
            assert await join(replacement) == 0
        assert {(pid, shard) for pid, shard in reports} == {(doomed.pid, 0), (replacement.pid, 1)}
        assert log.shard_ids() == [0, 1]
        log.assert_spacing(1, interval)
        # Two session starts for two IDENTIFYs: the dead worker's queued request cost nothing.
        assert coord.snapshot().remaining == 1000 - 2


async def test_a_grant_for_a_killed_worker_is_refunded() -> None:
    interval = 0.5
    async with running("tcp://127.0.0.1:0", interval_s=interval) as (coord, log):
        with processes() as procs:
            doomed = start_client(procs, coord.endpoint, [0, 1], hold=True)
            await doomed.reports(1)
            os.kill(doomed.pid, signal.SIGKILL)
            await join(doomed)
            # When shard 1's turn comes the peer is gone: ROUTER_MANDATORY refuses the grant.
            await wait_until(lambda: coord.stats.grants_undelivered == 1)
        assert log.shard_ids() == [0]
        snap = coord.snapshot()
        assert snap.remaining == 1000 - 1 and snap.refunded == 1 and sum(snap.queued) == 0
        # The freed bucket still serves the next shard.
        async with IdentifyClient(coord.endpoint) as client, asyncio.timeout(TIMEOUT):
            await client.acquire(2)
        assert coord.snapshot().remaining == 1000 - 2


async def test_with_a_sent_hold_the_next_grant_of_a_bucket_waits_for_the_sent_report() -> None:
    interval = 0.1
    async with running("tcp://127.0.0.1:0", interval_s=interval, sent_hold_s=5.0) as (coord, log):
        async with IdentifyClient(coord.endpoint) as client, asyncio.timeout(TIMEOUT):
            await client.acquire(0)
            second = asyncio.create_task(client.acquire(1))
            await asyncio.sleep(3 * interval)
            assert not second.done(), "the bucket waits for shard 0's report, not the clock"
            client.sent(0)
            not_before = await second
            client.sent(1)
            await wait_until(lambda: coord.stats.sent_reports == 2)
        # the second grant may go out early (half an interval), but says when to write
        earlier, later = log.grants[0].granted_at, log.grants[1]
        assert later.not_before - earlier >= 3 * interval + interval
        assert not_before == later.not_before or later.not_before <= later.granted_at


async def test_with_answer_opens_the_bucket_opens_an_interval_after_the_answer() -> None:
    interval = 0.1
    async with running(
        "tcp://127.0.0.1:0",
        interval_s=interval,
        safety_margin_s=None,
        sent_hold_s=5.0,
        answer_opens=True,
        answer_wait_s=60.0,  # no fallback within the test: only the answer opens the bucket
    ) as (coord, log):
        async with IdentifyClient(coord.endpoint) as client, asyncio.timeout(TIMEOUT):
            await client.acquire(0)
            client.sent(0)
            await wait_until(lambda: coord.stats.sent_reports == 1)
            second = asyncio.create_task(client.acquire(1))
            await asyncio.sleep(3 * interval)
            assert not second.done(), "sent but not answered: the bucket waits"
            assert not coord.answered(0, pid=os.getpid() + 1), "another process's answer"
            assert not coord.answered(1), "shard 1 holds no grant"
            answered_at = time.monotonic()
            assert coord.answered(0, pid=os.getpid())
            assert not coord.answered(0), "one answer per grant"
            await second
        assert coord.stats.answer_reports == 1
        assert log.grants[1].not_before >= answered_at + interval


class FakeClock:
    """The coordinator's clock, moved by the test (the workers' stamps are passed explicitly)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


ANSWER_OPENS: dict[str, Any] = {
    "safety_margin_s": None,
    "sent_hold_s": 5.0,
    "answer_opens": True,
    "answer_wait_s": 60.0,  # no fallback within the test: only the answer opens the bucket
}


@dataclass
class WaitingOnAnAnswer:
    """Shard 0 granted and reported sent on the fake clock; shard 1's acquire waits for its
    answer (``second``)."""

    coord: Coordinator
    log: GrantLog
    client: IdentifyClient
    clock: FakeClock
    second: asyncio.Task[float | None]


@asynccontextmanager
async def waiting_on_an_answer(interval: float) -> AsyncIterator[WaitingOnAnAnswer]:
    clock = FakeClock()
    params = {"interval_s": interval, "clock": clock, **ANSWER_OPENS}
    async with (
        running("tcp://127.0.0.1:0", **params) as (coord, log),
        IdentifyClient(coord.endpoint) as client,
        asyncio.timeout(TIMEOUT),
    ):
        await client.acquire(0)  # granted at 0.0
        client.sent(0)  # its real written_at is later than the fake now: taken as 0.0
        await wait_until(lambda: coord.stats.sent_reports == 1)
        second = asyncio.create_task(client.acquire(1))
        yield WaitingOnAnAnswer(coord, log, client, clock, second)


async def test_the_bucket_opens_an_interval_after_the_workers_stamped_answer() -> None:
    interval = 0.1
    async with waiting_on_an_answer(interval) as w:
        # The worker read the READY at 0.02; its message reaches the coordinator at 0.05.
        w.clock.now = 0.05
        w.client.answered(0, 0.02)
        w.client.answered(0, 0.03)  # one answer per IDENTIFY: nothing is sent
        await wait_until(lambda: w.coord.stats.stamped_answers == 1)
        # The READY's report through the supervisor comes later still: already taken.
        assert not w.coord.answered(0, pid=os.getpid())
        w.clock.now = 0.02 + interval - 0.01
        await asyncio.sleep(3 * interval)
        assert not w.second.done(), "not yet an interval after the read"
        w.clock.now = 0.02 + interval
        await w.second
    assert w.coord.stats.answer_reports == 1 and w.coord.stats.bad_messages == 0
    granted = w.log.grants[1].granted_at
    assert granted == 0.02 + interval, "an interval after the worker read the READY"
    assert granted < 0.05 + interval, "not an interval after its message arrived"


async def test_a_stamped_answer_after_the_readys_report_still_opens_the_bucket_sooner() -> None:
    interval = 0.1
    async with waiting_on_an_answer(interval) as w:
        w.clock.now = 0.04
        assert w.coord.answered(0, pid=os.getpid())  # the READY's report came first
        w.clock.now = 0.05
        w.client.answered(0, 0.02)  # the worker read it at 0.02
        await wait_until(lambda: w.coord.stats.stamped_answers == 1)
        w.clock.now = 0.02 + interval
        await w.second
    assert w.coord.stats.answer_reports == 2
    assert w.log.grants[1].granted_at == 0.02 + interval


async def test_an_answer_stamped_later_than_its_arrival_counts_from_the_arrival() -> None:
    interval = 0.1
    async with waiting_on_an_answer(interval) as w:
        w.clock.now = 0.05
        w.client.answered(0, 1000.0)  # a clock that cannot be: no later than now
        await wait_until(lambda: w.coord.stats.stamped_answers == 1)
        w.clock.now = 0.05 + interval - 0.01
        await asyncio.sleep(3 * interval)
        assert not w.second.done()
        w.clock.now = 0.05 + interval
        await w.second
    assert w.log.grants[1].granted_at == 0.05 + interval


async def test_an_answer_is_taken_only_from_whom_the_grant_went_to_and_after_the_write() -> None:
    interval = 0.1
    clock = FakeClock(10.0)
    async with (
        running("tcp://127.0.0.1:0", interval_s=interval, clock=clock, **ANSWER_OPENS) as (
            coord,
            log,
        ),
        raw_dealer(coord.endpoint) as sock,
        raw_dealer(coord.endpoint) as other,
    ):
        await sock.send(Acquire(0, 7).encode())
        assert await recv(sock) == GrantMessage(0, 7)
        await sock.send(Sent(0, 7, 10.0).encode())
        await wait_until(lambda: coord.stats.sent_reports == 1)
        await sock.send(Acquire(1, 8).encode())
        clock.now = 10.05
        await other.send(Answered(0, 7, 10.01).encode())  # another peer
        await sock.send(Answered(0, 6, 10.01).encode())  # another grant's nonce
        await sock.send(Answered(1, 8, 10.01).encode())  # a shard without a grant yet
        await sock.send(Answered(0, 7, 9.99).encode())  # before the write: not this IDENTIFY's
        await sock.send(StatusRequest().encode())
        assert isinstance(await recv(sock), StatusReply)  # everything before it was handled
        # Only the holder's answer was taken (the last one), and it precedes the write.
        assert coord.stats.bad_messages == 0 and coord.stats.stamped_answers == 1
        clock.now = 20.0  # past every answer + interval, long before the fallback (write + 60 s)
        # malformed answers are refused and counted, and change nothing
        for frame in (
            b'{"v":1,"type":"answered","shard_id":0,"nonce":7,"answered_at":-1}',
            b'{"v":1,"type":"answered","shard_id":0,"nonce":7,"answered_at":"soon"}',
            b'{"v":1,"type":"answered","shard_id":0}',
        ):
            await sock.send(frame)
            reply = await recv(sock)
            assert isinstance(reply, ErrorReply) and reply.reason
        assert coord.stats.bad_messages == 3 and coord.stats.stamped_answers == 1
        assert len(log.grants) == 1, "no answer after the write: the bucket waits for the fallback"


async def test_with_an_arbiter_answers_open_nothing() -> None:
    arbiter = RefusingOnce(0.0)
    async with (
        running("tcp://127.0.0.1:0", arbiter=arbiter, **ANSWER_OPENS) as (coord, _),
        IdentifyClient(coord.endpoint, resend_interval_s=0.1) as client,
        asyncio.timeout(TIMEOUT),
    ):
        assert not coord.scheduler.answer_opens
        await client.acquire(0)
        client.sent(0)
        client.answered(0, time.monotonic())
        await wait_until(lambda: arbiter.sent_ids == [0])
        reply = await client.status()  # the answer, sent before it, was handled
        assert reply.total == 1000
        assert coord.stats.answer_reports == 0 and coord.stats.bad_messages == 0


# -- one client, many shards; the wire rules -----------------------------------------------------


async def test_many_concurrent_acquires_on_one_client_over_inproc() -> None:
    ctx = zmq.asyncio.Context()
    try:
        mc, interval = 4, 0.05
        async with running(
            "inproc://coordinator", context=ctx, max_concurrency=mc, interval_s=interval
        ) as (
            coord,
            log,
        ):
            assert coord.endpoint == "inproc://coordinator"
            async with IdentifyClient(coord.endpoint, ctx) as client, asyncio.timeout(TIMEOUT):
                await asyncio.gather(*(client.acquire(shard) for shard in range(16)))
            assert sorted(log.shard_ids()) == list(range(16))
            log.assert_spacing(mc, interval)
            # Shards 0-3 (one per bucket) were granted together in the first window.
            first = min(g.granted_at for g in log.grants)
            assert {g.shard_id for g in log.grants if g.granted_at == first} == {0, 1, 2, 3}
    finally:
        ctx.term()


async def test_cancel_withdraws_a_queued_request() -> None:
    async with running("tcp://127.0.0.1:0", interval_s=30.0) as (coord, log):
        async with IdentifyClient(coord.endpoint) as client:
            async with asyncio.timeout(TIMEOUT):
                await client.acquire(0)
            waiting = asyncio.create_task(client.acquire(1))
            await wait_until(lambda: coord.scheduler.is_queued(1))
            with pytest.raises(IdentifyClientError):
                await client.acquire(1)  # one waiting acquire per shard per client
            assert await client.cancel(1) is True
            with pytest.raises(IdentifyRequestCancelledError):
                await waiting
            await wait_until(lambda: not coord.scheduler.is_queued(1))

            # Cancelling the waiting task withdraws the request too.
            task = asyncio.create_task(client.acquire(2))
            await wait_until(lambda: coord.scheduler.is_queued(2))
            task.cancel()
            await wait_until(lambda: not coord.scheduler.is_queued(2))
        assert log.shard_ids() == [0]


async def test_a_client_survives_a_coordinator_restart(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/restart.sock"
    async with IdentifyClient(endpoint, resend_interval_s=0.1) as client:
        async with running(endpoint, interval_s=60.0) as (coord, _):
            async with asyncio.timeout(TIMEOUT):
                await client.acquire(0)
            waiting = asyncio.create_task(client.acquire(1))
            await wait_until(lambda: coord.scheduler.is_queued(1))
        # The first coordinator is gone with shard 1's request; a new one on the same endpoint
        # learns of it from the client's resend.
        async with running(endpoint, interval_s=60.0) as (_, log2):
            async with asyncio.timeout(TIMEOUT):
                await waiting
            assert log2.shard_ids() == [1]


async def test_an_acquire_made_before_the_coordinator_binds_is_granted_without_a_resend(
    tmp_path: Path,
) -> None:
    # The supervisor binds the coordinator only after its workers said hello, so their
    # clients connect first: the acquire waits in the DEALER's queue and goes out when the
    # socket's own reconnect finds the coordinator (no resend in this test's time).
    endpoint = f"ipc://{tmp_path}/late-bind.sock"
    async with IdentifyClient(endpoint, resend_interval_s=3600.0) as client:
        waiting = asyncio.create_task(client.acquire(0))
        await asyncio.sleep(0.05)  # the client's connect has failed at least once
        assert not waiting.done()
        async with running(endpoint, interval_s=60.0) as (_, log):
            async with asyncio.timeout(TIMEOUT):
                assert await waiting is None
            assert log.shard_ids() == [0]


@asynccontextmanager
async def raw_dealer(endpoint: str) -> AsyncIterator[zmq.asyncio.Socket]:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


async def recv(sock: zmq.asyncio.Socket) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return decode_message(await sock.recv())


async def test_a_repeated_acquire_gets_the_same_grant_and_release_refunds_it() -> None:
    async with running("tcp://127.0.0.1:0") as (coord, log), raw_dealer(coord.endpoint) as sock:
        await sock.send(Acquire(5, 77).encode())
        assert await recv(sock) == GrantMessage(5, 77)
        await sock.send(Acquire(5, 77).encode())
        assert await recv(sock) == GrantMessage(5, 77)
        assert coord.snapshot().remaining == 999 and coord.stats.duplicate_acquires == 1
        await sock.send(Release(5, 77).encode())
        await wait_until(lambda: coord.snapshot().remaining == 1000)
        assert coord.stats.grants_released == 1
        await sock.send(StatusRequest().encode())
        reply = await recv(sock)
        assert (
            isinstance(reply, StatusReply)
            and reply.remaining == 1000
            and reply.max_concurrency == 1
        )
        assert len(log.grants) == 1


async def test_malformed_frames_get_an_error_and_cost_nothing() -> None:
    async with running("tcp://127.0.0.1:0") as (coord, _), raw_dealer(coord.endpoint) as sock:
        for frame in (
            b"garbage",
            b'{"v":2,"type":"acquire","shard_id":0,"nonce":1}',
            GrantMessage(0, 1).encode(),
        ):
            await sock.send(frame)
            reply = await recv(sock)
            assert isinstance(reply, ErrorReply) and reply.reason
        await sock.send_multipart([b"two", b"frames"])
        await sock.send(Acquire(0, 1).encode())
        assert await recv(sock) == GrantMessage(0, 1)
        assert coord.stats.bad_messages == 4
        assert coord.snapshot().remaining == 999


async def test_closing_the_client_fails_its_waiting_acquires() -> None:
    async with running("tcp://127.0.0.1:0", interval_s=30.0) as (coord, _):
        assert coord.running
        client = IdentifyClient(coord.endpoint)
        try:
            async with asyncio.timeout(TIMEOUT):
                await client.acquire(0)
            waiting = asyncio.create_task(client.acquire(1))
            await wait_until(lambda: coord.scheduler.is_queued(1))
        finally:
            await client.close()
        with pytest.raises(IdentifyClientClosedError):
            await waiting
        with pytest.raises(IdentifyClientClosedError):
            await client.acquire(2)
    assert not coord.running


class RefusingOnce:
    """An arbiter (the shape of the Redis one) that makes each shard's first ask wait."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.asked: list[int] = []
        self.sent_ids: list[int] = []
        self.released: list[int] = []

    async def grant(self, shard_id: int) -> float | None:
        self.asked.append(shard_id)
        return self.wait_s if self.asked.count(shard_id) == 1 else None

    async def sent(self, shard_id: int) -> None:
        self.sent_ids.append(shard_id)

    async def release(self, shard_id: int) -> None:
        self.released.append(shard_id)


async def test_an_arbiter_is_asked_once_per_grant_and_told_of_sent_and_released() -> None:
    arbiter = RefusingOnce(0.2)
    async with running("tcp://127.0.0.1:0", max_concurrency=2, arbiter=arbiter) as (coord, log):
        client = IdentifyClient(coord.endpoint, resend_interval_s=0.1)
        async with client:
            started = time.monotonic()
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(client.acquire(0), client.acquire(1))
            assert time.monotonic() - started >= 0.2
            assert sorted(arbiter.asked) == [0, 0, 1, 1]  # only heads ask, once per try
            assert coord.stats.arbiter_deferred == 2
            assert coord.snapshot().remaining == 998  # a refusal refunds the local start
            client.sent(0)
            await wait_until(lambda: arbiter.sent_ids == [0])
            assert sorted(log.shard_ids()) == [0, 1]
