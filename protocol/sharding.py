"""The shard formula and identify buckets (shared/PROTOCOL.md section 5).

``shard_id = (guild_id >> 22) % num_shards`` routes a guild to its shard;
``shard_id % max_concurrency`` is the identify rate-limit bucket of a shard.
Snowflakes arrive as decimal strings (JSON) or ints; both are accepted and
validated here, once, for every caller.
"""

from __future__ import annotations

from typing import Final

#: Snowflakes are unsigned 64-bit integers.
SNOWFLAKE_MAX: Final = (1 << 64) - 1
_SNOWFLAKE_MAX_DIGITS: Final = len(str(SNOWFLAKE_MAX))


def parse_snowflake(value: object, what: str = "snowflake") -> int:
    """Return ``value`` (a decimal string or int) as a snowflake int, or raise ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a snowflake (decimal string or int), not a bool")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        # isdigit() alone accepts non-ASCII digits such as "²"; JSON snowflakes are ASCII.
        if not (value.isascii() and value.isdigit()) or len(value) > _SNOWFLAKE_MAX_DIGITS:
            raise ValueError(f"{what} must be a decimal snowflake string, got {value[:32]!r}")
        number = int(value)
    else:
        raise ValueError(
            f"{what} must be a snowflake (decimal string or int), not {type(value).__name__}"
        )
    if not 0 <= number <= SNOWFLAKE_MAX:
        raise ValueError(f"{what} {number} is outside the unsigned 64-bit snowflake range")
    return number


def _positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")
    return value


def shard_for_guild(guild_id: int | str, num_shards: int) -> int:
    """The shard that receives ``guild_id``'s events: ``(guild_id >> 22) % num_shards``."""
    return (parse_snowflake(guild_id, "guild_id") >> 22) % _positive(num_shards, "num_shards")


def bucket_for_shard(shard_id: int, max_concurrency: int) -> int:
    """The identify rate-limit bucket of ``shard_id``: ``shard_id % max_concurrency``."""
    if isinstance(shard_id, bool) or not isinstance(shard_id, int):
        raise ValueError(f"shard_id must be an int, not {type(shard_id).__name__}")
    if shard_id < 0:
        raise ValueError(f"shard_id must not be negative, got {shard_id}")
    return shard_id % _positive(max_concurrency, "max_concurrency")
