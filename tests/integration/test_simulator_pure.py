"""The simulator's pure parts: config validation, limiters, sessions, payload generators."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.sharding import shard_for_guild
from simulator import SimulatorConfig, bot_id_from_token, discord_shaped_token
from simulator.config import EVENT_INTENTS
from simulator.events import BotIdentity, EventFactory, guild_index_range
from simulator.sessions import IdentifyLimiter, SendLimiter, Session, SessionStartBudget


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"shards": 0}, "shards"),
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"shards": 6, "max_concurrency": 4}, "multiple of max_concurrency"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"guilds": -1}, "guilds"),
        ({"event_rate": -1.0}, "event_rate"),
        ({"event_rate": float("nan")}, "event_rate"),
        ({"heartbeat_interval_ms": 0}, "heartbeat_interval_ms"),
        ({"identify_window_s": 0}, "identify_window_s"),
        ({"session_start_remaining": 1001}, "session_start_remaining"),
        ({"replay_buffer": 0}, "replay_buffer"),
        ({"resume_timeout_s": 0}, "resume_timeout_s"),
        ({"chaos_rate": -0.1}, "chaos_rate"),
        ({"chaos_kinds": ("explode",)}, "chaos_kinds"),
        ({"privileged_intents": 1}, "privileged_intents"),
        ({"token": ""}, "token"),
        ({"token": "has space"}, "token"),
        ({"shards": True}, "shards"),
        ({"event_mix": (("NOPE", 1.0),)}, "event_mix"),
        ({"event_mix": (("MESSAGE_CREATE", 0.0),)}, "event_mix"),
        ({"channels_per_guild": 2}, "channels_per_guild"),
        ({"host": ""}, "host"),
    ],
)
def test_bad_config_is_a_clear_value_error(overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        SimulatorConfig(**overrides)


def test_config_defaults_and_secret_token() -> None:
    config = SimulatorConfig(token="very-secret", shards=4)
    assert config.guild_count == 16
    assert config.session_start_initial == 1000
    assert config.heartbeat_interval_ms == 41250
    assert config.identify_window_s == 5.0
    assert config.max_guilds_per_shard == 2500
    assert "very-secret" not in repr(config)
    assert SimulatorConfig(shards=16, max_concurrency=16).max_concurrency == 16
    assert config.with_changes(event_rate=5.0).event_rate == 5.0


def test_identify_limiter_allows_one_per_bucket_per_window() -> None:
    limiter = IdentifyLimiter(max_concurrency=4, window_s=5.0)
    for shard in range(4):
        assert limiter.allowed(shard, 0.0)
        limiter.spend(shard, 0.0)
    assert not limiter.allowed(4, 4.99)  # bucket 0
    assert limiter.allowed(4, 5.0)


def test_send_limiter_is_a_sliding_window() -> None:
    limiter = SendLimiter(limit=3, window_s=10.0)
    assert all(limiter.hit(t) for t in (0.0, 1.0, 2.0))
    assert not limiter.hit(3.0)
    assert limiter.hit(11.5)  # 0.0 and 1.0 left the window; 2.0, 3.0, 11.5 remain


def test_session_start_budget_resets() -> None:
    budget = SessionStartBudget(total=10, remaining=1, reset_after_ms=1000, now=0.0)
    assert budget.available(0.5) == 1
    budget.spend(0.5)
    assert budget.available(0.9) == 0
    assert budget.reset_after_ms(0.9) == 100
    assert budget.available(1.0) == 10
    assert budget.reset_after_ms(1.0) == 86_400_000


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=300))
def test_guild_ranges_follow_the_shard_formula(num_shards: int, total: int) -> None:
    factory = EventFactory(SimulatorConfig(guilds=total), BotIdentity("t", 0))
    seen: list[int] = []
    for shard_id in range(num_shards):
        for index in guild_index_range(shard_id, num_shards, total):
            assert shard_for_guild(factory.guild(index).id, num_shards) == shard_id
            seen.append(index)
    assert sorted(seen) == list(range(total))


@given(st.integers(min_value=1, max_value=(1 << 64) - 1))
def test_discord_shaped_tokens_carry_the_bot_id(bot_id: int) -> None:
    assert bot_id_from_token(discord_shaped_token(bot_id)) == bot_id


@given(st.text(max_size=80))
def test_any_token_parses_or_gives_none(token: str) -> None:
    result = bot_id_from_token(token)
    assert result is None or 0 < result < 1 << 64


@settings(max_examples=50)
@given(
    st.sampled_from(sorted(EVENT_INTENTS)),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=99),
)
def test_generated_events_are_valid_json_with_unique_ids(t: str, guild: int, n: int) -> None:
    factory = EventFactory(SimulatorConfig(guilds=10_001), BotIdentity("t", 0))
    d1, id1 = factory.event(t, guild, n)
    d2, id2 = factory.event(t, guild, n)
    p1, p2 = orjson.loads(d1), orjson.loads(d2)
    assert p1["_sim_event_id"] == id1 != id2 == p2["_sim_event_id"]
    assert p1["guild_id"] == str(factory.guild(guild).id)
    if "id" in p1:
        assert p1["id"] != p2["id"]


def test_session_replay_buffer_is_bounded_and_exact() -> None:
    session = Session(0, 1, 513, range(0), [], replay_buffer=3)
    for _ in range(5):
        session.dispatch(b"X", b"{}")
    assert session.seq == 5
    assert session.replay_after(5) == []
    replay = session.replay_after(2)
    assert replay is not None and [orjson.loads(f)["s"] for f in replay] == [3, 4, 5]
    assert session.replay_after(1) is None  # seq 2 is gone
    frame = session.buffer[-1][1]
    assert frame == b'{"t":"X","s":5,"op":0,"d":{}}'
