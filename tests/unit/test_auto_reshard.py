"""``--auto-reshard``'s loop (cluster/auto_reshard.py) with fakes for Discord and the range owner."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cluster.auto_reshard import AutoReshard, reshard_target
from cluster.discord_api import ApiUnreachableError
from cluster.reshard import ReshardRefusedError


class FakeCluster:
    """Discord's recommendation and a cluster that reshards (at once) when asked."""

    def __init__(self, running: int, recommended: int) -> None:
        self.running = running
        self.recommended = recommended
        self.fetches = 0
        self.started: list[int] = []
        self.refusal: str | None = None
        self.fetch_error: str | None = None
        self.can_start = True

    async def fetch(self) -> int:
        self.fetches += 1
        if self.fetch_error is not None:
            raise ApiUnreachableError(self.fetch_error)
        return self.recommended

    async def start(self, shards: int) -> None:
        if self.refusal is not None:
            raise ReshardRefusedError(self.refusal)
        self.started.append(shards)
        self.running = shards

    def loop(self, interval_s: float = 3600.0) -> AutoReshard:
        return AutoReshard(
            self.fetch,
            lambda: self.running,
            self.start,
            interval_s,
            can_start=lambda: self.can_start,
        )


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("recommended", "running", "target"),
    [(8, 4, 8), (4, 4, None), (2, 4, None), (2048, 1024, 2048), (1, 1, None)],
)
def test_only_ever_up_to_the_recommendation(
    recommended: int, running: int, target: int | None
) -> None:
    assert reshard_target(recommended, running) == target


async def test_more_shards_recommended_starts_one_reshard_to_that_count() -> None:
    cluster = FakeCluster(running=4, recommended=8)
    loop = cluster.loop()
    assert await loop.check() == 8
    assert cluster.started == [8] and loop.started == 1
    # now the cluster runs what Discord recommends: nothing more to do
    assert await loop.check() is None
    assert cluster.started == [8]


@pytest.mark.parametrize("recommended", [4, 3])
async def test_the_same_or_fewer_shards_recommended_changes_nothing(recommended: int) -> None:
    cluster = FakeCluster(running=4, recommended=recommended)
    assert await cluster.loop().check() is None
    assert cluster.started == [] and cluster.fetches == 1


async def test_nothing_is_fetched_while_a_reshard_runs_or_the_set_is_not_whole() -> None:
    cluster = FakeCluster(running=4, recommended=8)
    cluster.can_start = False
    loop = cluster.loop()
    assert await loop.check() is None
    assert (cluster.fetches, cluster.started) == (0, [])
    cluster.can_start = True
    assert await loop.check() == 8


async def test_a_refusal_is_one_line_said_once_per_reason_and_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cluster.supervisor")
    cluster = FakeCluster(running=4, recommended=8)
    cluster.refusal = "resharding with --redis is not supported yet"
    loop = cluster.loop()
    for _ in range(5):  # five hourly checks: refused each time, said once
        assert await loop.check() is None
    assert cluster.fetches == 5 and cluster.started == []
    (line,) = warnings(caplog)
    assert line == (
        "auto-reshard: Discord recommends 8 shards, the cluster runs 4, and the reshard is "
        "refused: resharding with --redis is not supported yet (said once; checked again "
        "every 3600 s)"
    )
    assert "\n" not in line
    cluster.refusal = "identify budget: 5 session starts left"  # another reason: said too
    await loop.check()
    await loop.check()
    assert len(warnings(caplog)) == 2
    cluster.refusal = None  # the next interval succeeds
    assert await loop.check() == 8
    assert cluster.started == [8]


async def test_after_a_reshard_an_old_reason_is_said_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = FakeCluster(running=4, recommended=8)
    cluster.refusal = "the identify budget"
    loop = cluster.loop()
    await loop.check()
    cluster.refusal = None
    await loop.check()
    cluster.recommended, cluster.refusal = 16, "the identify budget"
    await loop.check()
    assert len(warnings(caplog)) == 2


async def test_a_failed_fetch_is_said_once_and_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = FakeCluster(running=4, recommended=8)
    cluster.fetch_error = "cannot reach https://discord.com/api/v10/gateway/bot"
    loop = cluster.loop()
    assert await loop.check() is None
    assert await loop.check() is None
    (line,) = warnings(caplog)
    assert line.startswith("auto-reshard: GET /gateway/bot failed: cannot reach")
    cluster.fetch_error = None
    assert await loop.check() == 8


async def test_the_loop_checks_every_interval_and_reshards_when_the_recommendation_rises() -> None:
    cluster = FakeCluster(running=4, recommended=4)
    task = asyncio.create_task(cluster.loop(0.01).run())
    try:
        async with asyncio.timeout(5):
            while cluster.fetches < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        assert cluster.started == []
        cluster.recommended = 8
        async with asyncio.timeout(5):
            while not cluster.started:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        fetched = cluster.fetches
        async with asyncio.timeout(5):
            while cluster.fetches < fetched + 3:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        assert cluster.started == [8], "one reshard, then the cluster runs the count"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_loop_outlives_an_unexpected_error(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def broken() -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    task = asyncio.create_task(AutoReshard(broken, lambda: 4, FakeCluster(4, 8).start, 0.01).run())
    try:
        async with asyncio.timeout(5):
            while calls < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert any("the check failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan"), float("inf")])
def test_the_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="auto-reshard interval"):
        cluster = FakeCluster(4, 8)
        AutoReshard(cluster.fetch, lambda: 4, cluster.start, interval)
