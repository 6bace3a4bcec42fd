"""How many workers ``cluster up`` starts before the plan (cluster/warm_start.py ``warm_count``)."""

from __future__ import annotations

from cluster.config import RedisSettings, SimulateSettings, SupervisorConfig
from cluster.warm_start import warm_count


def config(**options: object) -> SupervisorConfig:
    return SupervisorConfig(token="t0ken", **options)  # type: ignore[arg-type]


def test_workers_given_is_the_count() -> None:
    assert warm_count(config(workers=3, shards=1024), cpu_count=2) == 3


def test_a_static_range_is_split_by_the_default_rule() -> None:
    assert warm_count(config(shards=1024, shard_range=(0, 15)), cpu_count=8) == 1
    assert warm_count(config(shards=1024, shard_range=(0, 63)), cpu_count=8) == 4
    assert warm_count(config(shards=1024, shard_range=(0, 1023)), cpu_count=2) == 2


def test_a_known_shard_count_is_shared_by_the_hosts() -> None:
    assert warm_count(config(shards=1024), cpu_count=2) == 2
    assert warm_count(config(shards=4), cpu_count=8) == 1
    hosts = RedisSettings(url="redis://127.0.0.1:6379/0", hosts=32)
    assert warm_count(config(shards=1024, redis=hosts), cpu_count=8) == 2  # 32 shards a host


def test_the_simulator_says_the_count() -> None:
    assert warm_count(config(simulate=SimulateSettings(shards=64)), cpu_count=8) == 4


def test_an_unknown_count_starts_one() -> None:
    assert warm_count(config(), cpu_count=8) == 1
