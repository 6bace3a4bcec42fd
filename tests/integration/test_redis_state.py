"""RedisState against a real redis-server (tests/redis_server.py): no fakes, no mocks.

Leases, fencing, identify grants, the budget, the cold-start guard and checkpoints, plus
the failures that matter in production: the script cache flushed, Redis killed, hung
(SIGSTOP) and restarted with and without its AOF.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import redis.asyncio

from cluster.state.redis_state import (
    BudgetView,
    GrantOutcome,
    Layout,
    LayoutMismatchError,
    Lease,
    LeaseLostError,
    RedisState,
    RedisStateError,
    RedisUnavailableError,
    redact_url,
)
from protocol.session import Session
from tests.conftest import RedisFactory
from tests.redis_server import RedisServer

BOT = "4242"
RANGE = (0, 7)
TIMEOUT_S = 0.3
HOUR_MS = 3_600_000

MakeState = Callable[..., Awaitable[RedisState]]


@pytest.fixture
async def make_state(redis_server: RedisServer) -> AsyncIterator[MakeState]:
    """``await make_state(holder, url=..., bot_id=...)`` -> a connected RedisState."""
    made: list[RedisState] = []

    async def make(
        holder: str = "host-a:1:aaaa",
        *,
        url: str | None = None,
        bot_id: str = BOT,
        connect: bool = True,
    ) -> RedisState:
        state = RedisState(url or redis_server.url, bot_id, holder=holder, timeout_s=TIMEOUT_S)
        made.append(state)
        if connect:
            await state.connect()
        return state

    try:
        yield make
    finally:
        for state in made:
            await state.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the same server, to look at and break things behind RedisState."""
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> float:  # noqa: ASYNC109 (a bounded poll is the point)
    """Poll ``check`` until it holds (bounded); the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (Redis state has no event to wait on: TTLs run out in Redis)
            await asyncio.sleep(0.02)
    return time.monotonic() - started


def session(n: int, seq: int = 1) -> Session:
    return Session(f"session-{n}", seq, f"wss://resume-{n}.example")


# -- connection and layout ---------------------------------------------------------


async def test_connect_pings_and_names_keys(make_state: MakeState) -> None:
    state = await make_state()
    assert state.key("layout") == "tc:{4242}:layout"
    rtt = await state.ping()
    assert 0 < rtt < TIMEOUT_S
    stats = state.stats
    assert stats.round_trips >= 2  # connect: PING, INFO, SCRIPT LOADs; then our PING
    assert stats.errors == 0 and stats.last_error is None
    assert stats.last_rtt_ms is not None and stats.max_rtt_ms >= stats.last_rtt_ms
    assert stats.last_ok_at is not None and stats.last_ok_at <= time.monotonic()


async def test_unix_socket_url(make_state: MakeState, redis_server: RedisServer) -> None:
    state = await make_state(url=redis_server.unix_url)
    assert await state.acquire_lease(RANGE, 5000) is not None


async def test_layout_first_claim_wins(make_state: MakeState) -> None:
    a = await make_state("host-a:1:aaaa")
    b = await make_state("host-b:2:bbbb")
    assert await a.claim_layout(Layout(16, 4)) == Layout(16, 4)
    assert await b.claim_layout(Layout(16, 4)) == Layout(16, 4)
    with pytest.raises(LayoutMismatchError) as caught:
        await b.claim_layout(Layout(8, 4))
    err = caught.value
    assert err.existing == Layout(16, 4) and err.wanted == Layout(8, 4)
    message = str(err)
    assert "\n" not in message
    assert message.startswith(
        "Redis says this bot runs 16 shards (max_concurrency 4), "
        "this host computed 8 (max_concurrency 4): "
    )
    # another bot's namespace is its own
    other = await make_state(bot_id="9999")
    assert await other.claim_layout(Layout(8, 4)) == Layout(8, 4)


# -- leases --------------------------------------------------------------------------


async def test_lease_race_has_one_winner_and_tokens_increase(make_state: MakeState) -> None:
    a = await make_state("host-a:1:aaaa")
    b = await make_state("host-b:2:bbbb")
    tokens: list[int] = []
    for _ in range(5):
        won = [
            x for x in await asyncio.gather(*(s.acquire_lease(RANGE, 5000) for s in (a, b))) if x
        ]
        assert len(won) == 1
        lease = won[0]
        tokens.append(lease.token)
        owner = a if lease.holder == a.holder else b
        # the holder asking again keeps its token (and refreshes the TTL)
        assert await owner.acquire_lease(RANGE, 5000) == lease
        info = await owner.lease_info(RANGE)
        assert info is not None and (info.holder, info.token) == (lease.holder, lease.token)
        assert 4000 < info.ttl_ms <= 5000
        assert await owner.release_lease(lease)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


async def test_renew_by_holder_and_by_a_stale_holder(make_state: MakeState) -> None:
    a = await make_state("host-a:1:aaaa")
    b = await make_state("host-b:2:bbbb")
    lease_a = await a.acquire_lease(RANGE, 1000)
    assert lease_a is not None
    await a.renew_lease(lease_a, 60_000)
    info = await a.lease_info(RANGE)
    assert info is not None and info.ttl_ms > 50_000
    assert await b.acquire_lease(RANGE, 5000) is None

    assert await a.release_lease(lease_a)
    lease_b = await b.acquire_lease(RANGE, 5000)
    assert lease_b is not None and lease_b.token > lease_a.token
    with pytest.raises(LeaseLostError) as caught:
        await a.renew_lease(lease_a, 5000)
    err = caught.value
    assert (err.shard_range, err.token, err.holder) == (RANGE, lease_a.token, b.holder)
    info = await b.lease_info(RANGE)
    assert info is not None and (info.holder, info.token) == (b.holder, lease_b.token)


async def test_lease_expires_by_ttl(make_state: MakeState) -> None:
    a = await make_state("host-a:1:aaaa")
    b = await make_state("host-b:2:bbbb")
    lease_a = await a.acquire_lease(RANGE, 250)
    assert lease_a is not None

    async def expired() -> bool:
        return await b.lease_info(RANGE) is None

    waited = await until(expired)
    assert waited < 1.0
    # expired and nobody took it: the holder's renew writes it again, same token
    await a.renew_lease(lease_a, 250)
    info = await b.lease_info(RANGE)
    assert info is not None and (info.holder, info.token) == (a.holder, lease_a.token)
    assert 0 < info.ttl_ms <= 250

    await until(expired)
    lease_b = await b.acquire_lease(RANGE, 5000)
    assert lease_b is not None and lease_b.token > lease_a.token
    with pytest.raises(LeaseLostError) as caught:
        await a.renew_lease(lease_a, 250)
    assert caught.value.holder == b.holder
    # the lease check inside the identify and checkpoint scripts
    grant = await a.try_identify(
        lease_a, 0, max_concurrency=1, hold_ms=1000, reserve=0, cold_start_ms=0
    )
    assert grant.outcome is GrantOutcome.LEASE_LOST
    with pytest.raises(LeaseLostError) as caught:
        await a.checkpoint(lease_a, {0: session(0)}, 60_000)
    assert caught.value.holder == b.holder
    assert await b.load_sessions([0]) == {}


async def test_renew_reasserts_after_flushall(
    make_state: MakeState, raw: redis.asyncio.Redis
) -> None:
    a = await make_state("host-a:1:aaaa")
    b = await make_state("host-b:2:bbbb")
    for _ in range(3):  # move the fence counter past 1
        lease = await a.acquire_lease(RANGE, 5000)
        assert lease is not None and await a.release_lease(lease)
    lease_a = await a.acquire_lease(RANGE, 5000)
    assert lease_a is not None and lease_a.token == 4

    await raw.flushall()
    await a.renew_lease(lease_a, 5000)
    assert await raw.get(a.key("lease:0-7")) == f"{a.holder}|4"
    assert int(await raw.get(a.key("fence:0-7")) or 0) >= 4
    assert await b.acquire_lease(RANGE, 5000) is None
    assert await a.release_lease(lease_a)
    lease_b = await b.acquire_lease(RANGE, 5000)
    assert lease_b is not None and lease_b.token == 5


async def test_release_is_compare_and_delete(make_state: MakeState) -> None:
    a = await make_state("host-a:1:aaaa")
    b = await make_state("host-b:2:bbbb")
    lease_a = await a.acquire_lease(RANGE, 5000)
    assert lease_a is not None
    assert not await b.release_lease(Lease(RANGE, b.holder, lease_a.token))
    assert not await a.release_lease(Lease(RANGE, a.holder, lease_a.token + 1))
    assert await b.lease_info(RANGE) is not None
    assert await a.release_lease(lease_a)
    assert not await a.release_lease(lease_a)
    assert await a.lease_info(RANGE) is None


async def test_leases_lists_this_bots_leases(make_state: MakeState) -> None:
    a = await make_state("host-a:1:aaaa")
    b = await make_state("host-b:2:bbbb")
    other_bot = await make_state("host-c:3:cccc", bot_id="777")
    assert await a.leases() == {}
    lease_a = await a.acquire_lease((0, 3), 5000)
    lease_b = await b.acquire_lease((4, 7), 5000)
    assert lease_a and lease_b
    assert await other_bot.acquire_lease((0, 3), 5000) is not None
    found = await a.leases()
    assert set(found) == {"0-3", "4-7"}
    assert (found["0-3"].holder, found["0-3"].token) == (a.holder, lease_a.token)
    assert (found["4-7"].holder, found["4-7"].token) == (b.holder, lease_b.token)
    assert all(0 < info.ttl_ms <= 5000 for info in found.values())
    assert lease_a.key == "0-3"


# -- identify grants, budget, cold start ------------------------------------------


async def test_identify_buckets_spacing_and_release(make_state: MakeState) -> None:
    a = await make_state()
    lease = await a.acquire_lease(RANGE, 10_000)
    assert lease is not None
    await a.sync_budget(100, 1000, HOUR_MS)

    async def ask(shard_id: int, hold_ms: int = 2000) -> tuple[GrantOutcome, float, int]:
        r = await a.try_identify(
            lease, shard_id, max_concurrency=4, hold_ms=hold_ms, reserve=0, cold_start_ms=0
        )
        return r.outcome, r.retry_after_s, r.remaining

    assert await ask(0) == (GrantOutcome.GRANTED, 0.0, 99)
    outcome, retry, remaining = await ask(4)  # bucket 0 again
    assert outcome is GrantOutcome.BUCKET_BUSY and 1.5 < retry <= 2.0 and remaining == -1
    assert await ask(1) == (GrantOutcome.GRANTED, 0.0, 98)

    # the IDENTIFY for shard 0 was written: bucket 0 is held for the spacing only
    assert await a.identify_sent(lease, 0, max_concurrency=4, spacing_ms=300)
    outcome, retry, _ = await ask(4)
    assert outcome is GrantOutcome.BUCKET_BUSY and 0 < retry <= 0.3

    async def shard_4_granted() -> bool:
        return (await ask(4))[0] is GrantOutcome.GRANTED

    assert await until(shard_4_granted, 1.5) < 1.0
    assert (await a.budget() or BudgetView(0, 0, 0)).remaining == 97

    # shard 1's grant was never used: release frees bucket 1 and refunds the session
    assert not await a.identify_release(lease, 5, max_concurrency=4)  # not 5's grant
    assert await a.identify_release(lease, 1, max_concurrency=4)
    assert not await a.identify_release(lease, 1, max_concurrency=4)
    assert not await a.identify_sent(lease, 1, max_concurrency=4, spacing_ms=300)
    assert (await a.budget() or BudgetView(0, 0, 0)).remaining == 98
    assert await ask(5) == (GrantOutcome.GRANTED, 0.0, 97)


async def test_identify_without_budget_reports_unknown(make_state: MakeState) -> None:
    a = await make_state()
    lease = await a.acquire_lease(RANGE, 10_000)
    assert lease is not None
    assert await a.budget() is None
    r = await a.try_identify(lease, 3, max_concurrency=1, hold_ms=500, reserve=5, cold_start_ms=0)
    assert (r.outcome, r.remaining) == (GrantOutcome.GRANTED, -1)


async def test_budget_sync_decrement_reserve_and_windows(
    make_state: MakeState, raw: redis.asyncio.Redis
) -> None:
    a = await make_state()
    lease = await a.acquire_lease(RANGE, 10_000)
    assert lease is not None
    view = await a.sync_budget(10, 1000, HOUR_MS)
    assert (view.remaining, view.total, view.reset_after_s) == (10, 1000, 3600.0)
    stored = await a.budget()
    assert stored is not None and (stored.remaining, stored.total) == (10, 1000)
    assert 3599 < stored.reset_after_s <= 3600

    async def ask(shard_id: int) -> tuple[GrantOutcome, float, int]:
        r = await a.try_identify(
            lease, shard_id, max_concurrency=16, hold_ms=5000, reserve=8, cold_start_ms=0
        )
        return r.outcome, r.retry_after_s, r.remaining

    assert await ask(0) == (GrantOutcome.GRANTED, 0.0, 9)
    assert await ask(1) == (GrantOutcome.GRANTED, 0.0, 8)
    outcome, retry, remaining = await ask(2)
    assert outcome is GrantOutcome.BUDGET_LOW and 3590 < retry <= 3600 and remaining == 8

    # within the window Discord's (possibly older) number never raises it ...
    assert (await a.sync_budget(50, 1000, HOUR_MS - 10_000)).remaining == 8
    # ... but may lower it
    assert (await a.sync_budget(5, 1000, HOUR_MS - 20_000)).remaining == 5
    # a reset more than a minute after the stored one is a new window: Discord's numbers
    view = await a.sync_budget(1000, 1000, 24 * HOUR_MS)
    assert (view.remaining, view.total) == (1000, 1000)

    # a refund never goes above total
    assert await ask(3) == (GrantOutcome.GRANTED, 0.0, 999)
    await raw.hset(a.key("budget"), "remaining", 1000)
    assert await a.identify_release(lease, 3, max_concurrency=16)
    assert (await a.budget() or BudgetView(0, 0, 0)).remaining == 1000


async def test_budget_rolls_over_at_reset(make_state: MakeState) -> None:
    a = await make_state()
    lease = await a.acquire_lease(RANGE, 10_000)
    assert lease is not None
    await a.sync_budget(0, 5, 300)
    r = await a.try_identify(lease, 0, max_concurrency=1, hold_ms=100, reserve=0, cold_start_ms=0)
    assert r.outcome is GrantOutcome.BUDGET_LOW and 0 < r.retry_after_s <= 0.3

    async def rolled() -> bool:
        view = await a.budget()
        return view is not None and view.remaining == 5

    await until(rolled, 2.0)
    r = await a.try_identify(lease, 0, max_concurrency=1, hold_ms=100, reserve=0, cold_start_ms=0)
    assert (r.outcome, r.remaining) == (GrantOutcome.GRANTED, 4)
    view = await a.budget()
    assert view is not None and 86_000 < view.reset_after_s <= 86_400


async def test_cold_start_guard_after_flushall(
    make_state: MakeState, raw: redis.asyncio.Redis
) -> None:
    a = await make_state()
    lease = await a.acquire_lease(RANGE, 10_000)
    assert lease is not None
    await raw.flushall()  # Redis lost everything: whatever the buckets held is unknown
    await a.renew_lease(lease, 10_000)

    async def ask() -> tuple[GrantOutcome, float]:
        r = await a.try_identify(
            lease, 0, max_concurrency=1, hold_ms=1000, reserve=0, cold_start_ms=300
        )
        return r.outcome, r.retry_after_s

    started = time.monotonic()
    assert await ask() == (GrantOutcome.COLD_START, 0.3)
    outcome, retry = await ask()
    assert outcome is GrantOutcome.COLD_START and 0 < retry <= 0.3

    async def granted() -> bool:
        return (await ask())[0] is GrantOutcome.GRANTED

    await until(granted, 2.0)
    assert time.monotonic() - started >= 0.29
    assert await raw.get(a.key("boot")) is not None


# -- checkpoints -----------------------------------------------------------------


async def test_checkpoint_and_load_round_trip(
    make_state: MakeState, raw: redis.asyncio.Redis
) -> None:
    a = await make_state()
    lease = await a.acquire_lease(RANGE, 10_000)
    assert lease is not None
    await a.checkpoint(lease, {0: session(0, 10), 1: session(1, 20), 2: None}, 60_000)
    assert await a.load_sessions([0, 1, 2, 3]) == {0: session(0, 10), 1: session(1, 20)}
    assert 59_000 < await raw.pttl(a.key("sess:0")) <= 60_000
    stored = orjson.loads(await raw.get(a.key("sess:1")) or "null")
    assert stored == {**session(1, 20).to_json(), "fence": lease.token}

    await a.checkpoint(lease, {0: session(0, 11), 1: None}, 60_000)
    await raw.set(a.key("sess:3"), "not json")
    await raw.set(a.key("sess:4"), '{"session_id": "", "seq": -1}')
    assert await a.load_sessions([0, 1, 3, 4]) == {0: session(0, 11)}
    assert await a.load_sessions([]) == {}

    # a non-holder writes nothing
    b = await make_state("host-b:2:bbbb")
    with pytest.raises(LeaseLostError) as caught:
        await b.checkpoint(Lease(RANGE, b.holder, lease.token), {0: session(9)}, 60_000)
    assert caught.value.holder == a.holder
    assert await a.load_sessions([0]) == {0: session(0, 11)}


async def test_checkpoint_never_overwrites_a_higher_fence(
    make_state: MakeState, raw: redis.asyncio.Redis
) -> None:
    a = await make_state()
    lease = await a.acquire_lease(RANGE, 10_000)
    assert lease is not None
    newer = {**session(0, 99).to_json(), "fence": lease.token + 1}
    older = {**session(1, 5).to_json(), "fence": lease.token - 1}
    await raw.set(a.key("sess:0"), orjson.dumps(newer))
    await raw.set(a.key("sess:1"), orjson.dumps(older))
    await raw.set(a.key("sess:2"), orjson.dumps(newer))

    await a.checkpoint(lease, {0: session(0, 100), 1: session(1, 6), 2: None}, 60_000)
    assert await a.load_sessions([0, 1, 2]) == {
        0: session(0, 99),  # written under a higher token: left alone
        1: session(1, 6),  # lower token: ours wins
        2: session(0, 99),  # not deleted by a lower token either
    }


# -- failures ----------------------------------------------------------------------


async def test_script_flush_is_survived(make_state: MakeState, raw: redis.asyncio.Redis) -> None:
    a = await make_state()
    lease = await a.acquire_lease(RANGE, 10_000)
    assert lease is not None
    await raw.script_flush()
    await a.renew_lease(lease, 10_000)
    await raw.script_flush()
    r = await a.try_identify(lease, 0, max_concurrency=1, hold_ms=500, reserve=0, cold_start_ms=0)
    assert r.outcome is GrantOutcome.GRANTED
    await raw.script_flush()
    await a.checkpoint(lease, {0: session(0)}, 60_000)
    await raw.script_flush()
    assert await a.claim_layout(Layout(8, 1)) == Layout(8, 1)
    assert await a.load_sessions([0]) == {0: session(0)}
    assert a.stats.errors == 0


async def test_killed_redis_is_unavailable_quickly_then_recovers(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    a = await make_state()
    lease = await a.acquire_lease(RANGE, 10_000)
    assert lease is not None
    redis_server.kill()
    for call in (a.ping, lambda: a.renew_lease(lease, 10_000), lambda: a.load_sessions([0])):
        started = time.monotonic()
        with pytest.raises(RedisUnavailableError):
            await call()
        assert time.monotonic() - started < TIMEOUT_S + 0.5
    assert a.stats.errors == 3
    assert a.stats.last_error is not None and "Connection" in a.stats.last_error

    redis_server.restart(keep_data=False)
    assert await a.ping() < TIMEOUT_S
    await a.renew_lease(lease, 10_000)  # re-asserted on the empty server
    info = await a.lease_info(RANGE)
    assert info is not None and (info.holder, info.token) == (a.holder, lease.token)


async def test_hung_redis_times_out(make_state: MakeState, redis_server: RedisServer) -> None:
    a = await make_state()
    await a.ping()
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RedisUnavailableError, match="Timeout"):
            await a.ping()
        assert TIMEOUT_S * 0.9 <= time.monotonic() - started < TIMEOUT_S + 0.5
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    assert await a.ping() < TIMEOUT_S


async def test_restart_with_aof_keeps_state_and_empty_restart_loses_it(
    make_state: MakeState, redis_factory: RedisFactory
) -> None:
    server = redis_factory(appendonly=True)
    a = await make_state(url=server.url)
    lease = await a.acquire_lease(RANGE, 30_000)
    assert lease is not None
    r = await a.try_identify(lease, 0, max_concurrency=1, hold_ms=100, reserve=0, cold_start_ms=50)
    assert r.outcome is GrantOutcome.COLD_START  # writes the boot guard
    await a.checkpoint(lease, {0: session(0, 7), 5: session(5, 8)}, 60_000)

    server.restart(keep_data=True)
    info = await a.lease_info(RANGE)
    assert info is not None and (info.holder, info.token) == (a.holder, lease.token)
    assert await a.load_sessions([0, 5]) == {0: session(0, 7), 5: session(5, 8)}
    r = await a.try_identify(lease, 0, max_concurrency=1, hold_ms=100, reserve=0, cold_start_ms=50)
    assert r.outcome is GrantOutcome.GRANTED  # the boot guard survived: no second cold start

    server.restart(keep_data=False)
    assert await a.lease_info(RANGE) is None
    assert await a.load_sessions([0, 5]) == {}
    r = await a.try_identify(lease, 0, max_concurrency=1, hold_ms=100, reserve=0, cold_start_ms=50)
    assert r.outcome is GrantOutcome.LEASE_LOST  # until the renew re-asserts it
    await a.renew_lease(lease, 30_000)
    r = await a.try_identify(lease, 0, max_concurrency=1, hold_ms=100, reserve=0, cold_start_ms=50)
    assert r.outcome is GrantOutcome.COLD_START


async def test_errors_never_show_the_password(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    secret = "s3cr%3Ft-pw"
    url = f"redis://user:{secret}@127.0.0.1:{redis_server.port}/0"
    assert redact_url(url) == f"redis://user:***@127.0.0.1:{redis_server.port}/0"
    assert "s3cr" not in redact_url(f"unix:///tmp/r.sock?db=0&password={secret}")
    a = await make_state(url=url, connect=False)
    with pytest.raises(RedisStateError) as caught:  # no such user on this server
        await a.connect()
    redis_server.kill()
    with pytest.raises(RedisUnavailableError) as caught_down:
        await a.ping()
    for text in (str(caught.value), str(caught_down.value), a.stats.last_error or ""):
        assert "s3cr" not in text
