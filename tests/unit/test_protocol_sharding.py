"""The shard formula (PROTOCOL.md 5) and identify buckets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.sharding import SNOWFLAKE_MAX, bucket_for_shard, parse_snowflake, shard_for_guild

GUILD = 197038439483310086


def test_formula_by_hand() -> None:
    # 197038439483310086 = 46977624770 * 2**22 + 6, so guild >> 22 = 46977624770;
    # 46977624770 = 4 * 11744406192 + 2 = 16 * 2936101548 + 2.
    assert GUILD == 46977624770 * 4194304 + 6
    assert shard_for_guild(GUILD, 4) == 2
    assert shard_for_guild(str(GUILD), 16) == 2
    assert shard_for_guild(GUILD, 1) == 0
    # 290926798999357249 = 69362354039 * 2**22 + 4163393; 69362354039 % 4 = 3, % 16 = 7.
    assert 69362354039 * 4194304 + 4163393 == 290926798999357249
    assert shard_for_guild("290926798999357249", 4) == 3
    assert shard_for_guild("290926798999357249", 16) == 7
    assert shard_for_guild(4194303, 7) == 0  # below 2**22: always shard 0
    assert shard_for_guild(5 * 4194304, 3) == 2


def test_buckets() -> None:
    assert [bucket_for_shard(s, 16) for s in (0, 15, 16, 17, 33)] == [0, 15, 0, 1, 1]
    assert {bucket_for_shard(s, 1) for s in range(50)} == {0}


@given(guild_id=st.integers(0, SNOWFLAKE_MAX), num_shards=st.integers(1, 100_000))
def test_in_range_and_formula(guild_id: int, num_shards: int) -> None:
    shard = shard_for_guild(guild_id, num_shards)
    assert 0 <= shard < num_shards
    assert shard == (guild_id >> 22) % num_shards == shard_for_guild(str(guild_id), num_shards)


@given(shard_id=st.integers(0, 10**6), max_concurrency=st.integers(1, 1024))
def test_bucket_in_range(shard_id: int, max_concurrency: int) -> None:
    assert bucket_for_shard(shard_id, max_concurrency) == shard_id % max_concurrency


@pytest.mark.parametrize(
    ("guild_id", "fragment"),
    [
        ("", "decimal snowflake string"),
        ("12a", "decimal snowflake string"),
        ("-5", "decimal snowflake string"),
        (" 12", "decimal snowflake string"),
        ("\u00b2", "decimal snowflake string"),
        ("1" * 30, "decimal snowflake string"),
        (str(SNOWFLAKE_MAX + 1), "outside the unsigned 64-bit"),
        (-1, "outside the unsigned 64-bit"),
        (True, "not a bool"),
        (1.5, "not float"),
        (None, "not NoneType"),
    ],
)
def test_bad_guild_ids(guild_id: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        shard_for_guild(guild_id, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_shards", [0, -3])
def test_bad_shard_count(num_shards: int) -> None:
    with pytest.raises(ValueError, match="num_shards must be at least 1"):
        shard_for_guild(GUILD, num_shards)


def test_bad_types_and_buckets() -> None:
    with pytest.raises(ValueError, match="num_shards must be an int"):
        shard_for_guild(GUILD, "4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_concurrency must be at least 1"):
        bucket_for_shard(3, 0)
    with pytest.raises(ValueError, match="shard_id must not be negative"):
        bucket_for_shard(-1, 16)
    assert parse_snowflake("0") == 0
    assert parse_snowflake(str(SNOWFLAKE_MAX)) == SNOWFLAKE_MAX
