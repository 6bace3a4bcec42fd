"""The simulator's routing across shard sets of different sizes, pure (simulator.routing).

Properties: the shard formula on guild indices agrees with protocol.sharding;
the router sends each guild to exactly the live sessions that cover it, under
every live shard count; each covered guild has exactly one source (the
covering slot with the fewest shards); 4011's minimum shard count is the
smallest count that keeps every shard at or under the per-shard limit.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.sharding import shard_for_guild
from simulator import SimulatorConfig
from simulator.events import BotIdentity, EventFactory, GuildShape, guild_index_range
from simulator.routing import (
    ShardRouter,
    check_shard_count,
    covers,
    guild_shard,
    min_shard_count,
    parse_shard,
    sharding_required,
)
from simulator.sessions import Session, SessionState, SessionStore, Sink

GUILDS_AND_MESSAGES = 513
PRESENCES = 1 << 8


def _factory(total: int) -> EventFactory:
    return EventFactory(SimulatorConfig(guilds=total), BotIdentity("t", 0))


def _session(shard: tuple[int, int], total: int, intents: int = GUILDS_AND_MESSAGES) -> Session:
    session = Session(
        shard[0], shard[1], intents, guild_index_range(shard[0], shard[1], total), [], 10
    )
    session.attach(Sink())
    return session


# A live shard set: a count and the shard ids of it that have a live session.
shard_sets = st.lists(
    st.integers(min_value=1, max_value=24).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1))
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda s: s[0],
)


@given(st.integers(min_value=0, max_value=5000), st.integers(min_value=1, max_value=200))
def test_guild_shard_is_the_shard_formula(index: int, num_shards: int) -> None:
    guild_id = GuildShape(index, SimulatorConfig()).id
    assert guild_shard(index, num_shards) == shard_for_guild(guild_id, num_shards)
    assert covers((guild_shard(index, num_shards), num_shards), index)
    assert index in guild_index_range(guild_shard(index, num_shards), num_shards, index + 1)


@settings(max_examples=150)
@given(shard_sets, st.integers(min_value=0, max_value=120))
def test_each_guild_reaches_exactly_the_sessions_that_cover_it(
    sets: list[tuple[int, set[int]]], total: int
) -> None:
    factory = _factory(total)
    sessions = [_session((s, n), total) for n, ids in sets for s in sorted(ids)]
    router = ShardRouter(total, factory.allowed_types)
    router.rebuild(sessions, now=0.0)
    assert router.counts == tuple(sorted(n for n, _ in sets))
    for index in range(total):
        expected = [s for s in sessions if covers((s.shard_id, s.num_shards), index)]
        got = router.covering(index)
        assert sorted(map(id, got)) == sorted(map(id, expected))
        sources = [slot for slot in router.slots.values() if index in slot.sources]
        if expected:
            # one source: the covering shard set with the fewest shards
            fewest = min(s.num_shards for s in expected)
            assert [slot.key for slot in sources] == [(guild_shard(index, fewest), fewest)]
            assert router.source(index) is sources[0]
        else:
            assert sources == [] and router.source(index) is None
    for slot in router.slots.values():
        assert slot.share == len(slot.sources) / len(slot.guilds)
        assert all(covers(slot.key, g) for g in slot.guilds)


@given(st.integers(min_value=0, max_value=5000), st.integers(min_value=1, max_value=3000))
def test_min_shard_count_is_the_smallest_count_that_fits(guilds: int, per_shard: int) -> None:
    least = min_shard_count(guilds, per_shard)
    assert least >= 1
    for n in (least, least + 1, 2 * least):
        assert not any(
            sharding_required(n, len(guild_index_range(s, n, guilds)), guilds, per_shard)
            for s in range(min(n, 64))
        )
    if least > 1:
        n = least - 1
        # some shard of a smaller count is over the limit, and every shard of it is refused
        assert any(len(guild_index_range(s, n, guilds)) > per_shard for s in range(n))
        assert sharding_required(n, 0, guilds, per_shard)


def test_4011_examples_with_small_limits() -> None:
    # 64 guilds, at most 10 per shard: at least 7 shards
    assert min_shard_count(64, 10) == 7
    assert sharding_required(4, 16, 64, 10)
    assert sharding_required(6, 10, 64, 10)  # this shard fits, the count does not
    assert not sharding_required(7, 10, 64, 10)
    assert min_shard_count(0, 2500) == 1
    assert min_shard_count(2500, 2500) == 1 and min_shard_count(2501, 2500) == 2


@pytest.mark.parametrize(
    ("value", "max_concurrency", "expected"),
    [
        ([0, 1], 1, (0, 1)),
        ((3, 4), 1, (3, 4)),
        ([31, 32], 16, (31, 32)),
        ([0, 24], 16, None),  # a large bot's total must be a multiple of max_concurrency
        ([4, 4], 1, None),
        ([-1, 4], 1, None),
        ([0, 0], 1, None),
        ([True, 2], 1, None),
        ([0, "2"], 1, None),
        ([0], 1, None),
        ("0,1", 1, None),
    ],
)
def test_parse_shard(value: object, max_concurrency: int, expected: object) -> None:
    assert parse_shard(value, max_concurrency) == expected


@pytest.mark.parametrize(
    ("value", "max_concurrency", "needle"),
    [(0, 1, "between"), (True, 1, "integer"), ("32", 1, "integer"), (24, 16, "multiple")],
)
def test_check_shard_count_refuses(value: object, max_concurrency: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        check_shard_count(value, max_concurrency)
    assert check_shard_count(32, 16) == 32


def test_router_follows_the_session_store_and_keeps_a_slot_s_state() -> None:
    total = 16
    factory = _factory(total)
    store = SessionStore()
    router = ShardRouter(total, factory.allowed_types)
    old = _session((0, 2), total)
    store.add(old)
    [slot] = router.sync(store, 0.0).slots.values()
    assert slot.sources == slot.guilds and slot.event_table
    slot.event_n = 5
    new = _session((2, 4), total, GUILDS_AND_MESSAGES | PRESENCES)
    store.add(new)
    router.sync(store, 0.0)
    assert router.slots[(0, 2)] is slot and slot.event_n == 5  # kept across rebuilds
    # the new set's shard 2 of 4 lies inside the old shard 0 of 2: the old one is the source
    assert list(router.slots[(2, 4)].sources) == [] and router.slots[(2, 4)].share == 0.0
    # and generates for both sessions' intents
    assert "PRESENCE_UPDATE" in slot.event_table
    old.invalidate()
    store.sweep(1.0)
    router.sync(store, 1.0)
    assert list(router.slots) == [(2, 4)]
    assert router.slots[(2, 4)].sources == router.slots[(2, 4)].guilds


def test_a_detached_session_stays_routed_until_it_expires() -> None:
    total = 8
    session = _session((0, 1), total)
    session.detach(None, now=0.0, resume_timeout_s=10.0)
    assert session.state is SessionState.DETACHED
    router = ShardRouter(total, _factory(total).allowed_types)
    router.rebuild([session], now=5.0)
    assert router.covering(3) == [session]
    router.rebuild([session], now=10.0)
    assert router.covering(3) == []


def test_a_shard_without_guilds_has_a_phantom_guild_of_its_own() -> None:
    router = ShardRouter(0, _factory(0).allowed_types)
    sessions = [_session((0, 2), 0), _session((1, 4), 0)]
    router.rebuild(sessions, now=0.0)
    for slot in router.slots.values():
        [phantom] = slot.guilds
        assert phantom >= 0 and covers(slot.key, phantom) and list(slot.sources) == [phantom]
