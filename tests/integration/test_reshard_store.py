"""The reshard record's scripts against a real redis-server: the phases and who moves them.

The recording barrier: no host may start its new set before every host's old set
records its fingerprints (hosts read the record at different times; an event an old
set published before it recorded could be held by a new set already running).
"""

from __future__ import annotations

import pytest

from cluster.state.redis_reshard import ReshardBusyError, ReshardStore, SharedPhase
from cluster.state.redis_state import RedisState
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)


async def store_on(server: RedisServer, shards: int) -> tuple[RedisState, ReshardStore]:
    state = RedisState(server.url, "4242", holder="test", timeout_s=1.0)
    await state.connect()
    await state.client.hset(state.key("layout"), "shards", shards)
    return state, ReshardStore(state)


async def test_no_host_is_told_to_start_its_new_set_before_every_host_records(
    redis_server: RedisServer,
) -> None:
    state, store = await store_on(redis_server, 8)
    try:
        await store.begin("r1", 8, 16, 3)
        assert await store.recording("r1", 0) == (SharedPhase.STARTING, False)
        assert await store.recording("r1", 2) == (SharedPhase.STARTING, False)
        assert await store.recording("r1", 0) == (SharedPhase.STARTING, False)  # idempotent
        assert await store.recording("r1", 1) == (SharedPhase.STARTING, True)
        assert await store.recording("r1", 2) == (SharedPhase.STARTING, True)
        assert await store.recording("other", 0) == (None, False)  # not this reshard's id
    finally:
        await state.close()


async def test_a_new_reshard_starts_with_no_host_recording(redis_server: RedisServer) -> None:
    state, store = await store_on(redis_server, 4)
    try:
        await store.begin("r1", 4, 8, 2)
        await store.recording("r1", 0)
        await store.recording("r1", 1)
        with pytest.raises(ReshardBusyError):
            await store.begin("r2", 4, 8, 2)
        assert await store.abandon("r1", "test") is SharedPhase.ABANDONED
        # an abandoned reshard's hosts do not count for the next one
        assert await store.recording("r1", 0) == (SharedPhase.ABANDONED, True)
        await store.begin("r2", 4, 8, 2)
        assert await store.recording("r2", 1) == (SharedPhase.STARTING, False)
    finally:
        await state.close()


async def test_the_phases_move_when_the_last_host_is_ready_and_the_last_drained(
    redis_server: RedisServer,
) -> None:
    state, store = await store_on(redis_server, 4)
    try:
        await store.begin("r1", 4, 8, 2)
        for index in (0, 1):
            await store.recording("r1", index)
        assert await store.ready("r1", 0) is SharedPhase.STARTING
        assert await store.join("r1", 0) is SharedPhase.STARTING  # rejoined: not ready
        assert await store.ready("r1", 1) is SharedPhase.STARTING
        assert await store.ready("r1", 0) is SharedPhase.SWITCHING
        assert await state.client.hget(state.key("layout"), "shards") == b"8"
        assert await store.recording("r1", 0) == (SharedPhase.SWITCHING, True)
        assert await store.drained("r1", 1) is SharedPhase.SWITCHING
        assert await store.drained("r1", 0) is SharedPhase.SWITCHED
        record = await store.read()
        assert record is not None and (record.old_shards, record.new_shards) == (4, 8)
    finally:
        await state.close()
