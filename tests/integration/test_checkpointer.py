"""The checkpointer with a real book, a real state dir and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from cluster.relay import SessionBook
from cluster.sessions import SessionStore
from cluster.state.checkpoint import Checkpointer
from cluster.state.redis_state import RedisState
from protocol import ipc
from protocol.session import Session
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

URL = "wss://gateway.example/resume"


def published(book: SessionBook, shard_id: int, session_id: str, last_seq: int) -> None:
    book.on_session(shard_id, session_id, URL)
    book.admit(shard_id, ipc.session_epoch(session_id), 1, last_seq)


async def wait_until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 (the state dir is polled)
            await asyncio.sleep(0.01)


async def test_what_was_published_reaches_the_state_dir_within_the_interval(tmp_path: Path) -> None:
    book = SessionBook()
    store = SessionStore(tmp_path, "token", 4)
    checkpointer = Checkpointer(book, (0, 1, 2, 3), store, interval_s=0.05, refresh_s=60)
    task = asyncio.create_task(checkpointer.run())
    try:
        published(book, 0, "s0", 7)
        await wait_until(lambda: store.load().get(0) == Session("s0", 7, URL))
        writes = checkpointer.stats.writes
        await asyncio.sleep(0.3)
        assert checkpointer.stats.writes == writes  # nothing changed: nothing written
        published(book, 0, "s0", 9)
        await wait_until(lambda: store.load()[0].seq == 9)
        assert checkpointer.checkpointed == {0: 9}
        assert checkpointer.status_json()["errors"] == 0
    finally:
        task.cancel()


async def test_a_new_session_is_written_at_once_not_at_the_next_tick(tmp_path: Path) -> None:
    book = SessionBook()
    store = SessionStore(tmp_path, "token", 2)
    checkpointer = Checkpointer(book, (0, 1), store, interval_s=30.0)
    task = asyncio.create_task(checkpointer.run())
    try:
        await asyncio.sleep(0.05)
        book.on_session(1, "fresh", URL)
        started = time.monotonic()
        checkpointer.soon()
        await wait_until(lambda: store.load().get(1) == Session("fresh", 0, URL))
        assert time.monotonic() - started < 30.0  # not the 30 s tick
    finally:
        task.cancel()


async def test_a_cancel_right_after_soon_ends_the_loop(tmp_path: Path) -> None:
    # A worker's last READY report (soon) handled right after its exit: the stop cancels
    # the loop while the wake-up is on its way. asyncio.wait_for (3.11) lost that cancel.
    checkpointer = Checkpointer(SessionBook(), (0,), SessionStore(tmp_path, "token", 1))
    task = asyncio.create_task(checkpointer.run())
    await asyncio.sleep(0.05)
    checkpointer.soon()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2.0)


async def test_a_failing_target_is_counted_and_retried(tmp_path: Path) -> None:
    book = SessionBook()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state dir should be")
    store = SessionStore(blocker, "token", 1)
    checkpointer = Checkpointer(book, (0,), store, interval_s=0.05)
    published(book, 0, "s", 3)
    assert not await checkpointer.write()
    assert checkpointer.stats.file_errors == 1 and checkpointer.stats.last_error is not None
    blocker.unlink()
    assert await checkpointer.write()
    assert checkpointer.stats.last_error is None and store.load()[0].seq == 3


async def test_checkpoints_go_to_redis_under_the_lease(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    state = RedisState(redis_server.url, "77", holder="me")
    await state.connect()
    try:
        lease = await state.acquire_lease((0, 1), 5000)
        assert lease is not None
        book = SessionBook()

        async def remote(sessions: object) -> None:
            await state.checkpoint(lease, sessions, 60_000)  # type: ignore[arg-type]

        checkpointer = Checkpointer(book, (0, 1), None, remote, interval_s=0.05)
        published(book, 1, "s1", 42)
        assert await checkpointer.write()
        assert await state.load_sessions([0, 1]) == {1: Session("s1", 42, URL)}
        await state.release_lease(lease)
        other = RedisState(redis_server.url, "77", holder="other")
        await other.connect()
        try:
            taken = await other.acquire_lease((0, 1), 5000)
            assert taken is not None
            published(book, 1, "s1", 50)
            assert not await checkpointer.write()  # the lease is someone else's now
            assert checkpointer.stats.remote_errors == 1
            assert (await state.load_sessions([1]))[1].seq == 42
        finally:
            await other.close()
    finally:
        await state.close()


async def test_only_changed_sessions_go_to_redis_between_full_refreshes(tmp_path: Path) -> None:
    book = SessionBook()
    batches: list[dict[int, Session]] = []

    async def remote(sessions: Mapping[int, Session]) -> None:
        batches.append(dict(sessions))

    checkpointer = Checkpointer(book, (0, 1, 2), None, remote, interval_s=0.05, refresh_s=60)
    for shard in (0, 1, 2):
        published(book, shard, f"s{shard}", 5)
    assert await checkpointer.write()
    assert set(batches[-1]) == {0, 1, 2}  # the first write is a full one
    published(book, 1, "s1", 9)
    assert await checkpointer.write()
    assert batches[-1] == {1: Session("s1", 9, URL)}
    count = len(batches)
    assert await checkpointer.write()  # nothing changed: no round trip
    assert len(batches) == count
    checkpointer.refresh_s = 0.0
    assert await checkpointer.write()
    assert set(batches[-1]) == {0, 1, 2}  # a refresh renews every key's TTL
