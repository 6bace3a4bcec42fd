"""Small pure parts of the shard runner: URLs, secrets in reprs, local permits."""

from __future__ import annotations

import asyncio
import time

from protocol.compression import Compression
from worker.connection import _until
from worker.group import shard_config
from worker.permits import LocalPermits
from worker.shard import ShardConfig, gateway_url
from worker.spec import WorkerSpec


def test_every_url_gets_the_same_version_encoding_and_compression() -> None:
    main = gateway_url("wss://gateway.discord.gg/", 10, Compression.ZLIB_STREAM)
    resume = gateway_url("wss://gateway-us-east1-b.discord.gg", 10, Compression.ZLIB_STREAM)
    for url in (main, resume):
        assert dict(url.query) == {"v": "10", "encoding": "json", "compress": "zlib-stream"}
    assert main.host == "gateway.discord.gg" and resume.host == "gateway-us-east1-b.discord.gg"
    assert "compress" not in gateway_url("ws://127.0.0.1:1/", 9, Compression.NONE).query
    assert gateway_url("ws://h/", 10, Compression.ZSTD_STREAM).query["compress"] == "zstd-stream"


def test_the_token_never_appears_in_a_repr() -> None:
    token = "MTA1.secret.value"
    config = ShardConfig(shard_id=0, total_shards=1, token=token, intents=1, gateway_url="ws://h/")
    spec = WorkerSpec(
        worker_id=0,
        shard_ids=(0,),
        total_shards=1,
        token=token,
        intents=1,
        gateway_url="ws://h/",
        event_endpoint="tcp://127.0.0.1:1",
    )
    assert token not in repr(config) and token not in repr(spec)
    assert token not in repr(shard_config(spec, 0))


async def test_local_permits_space_each_bucket() -> None:
    now = [0.0]
    permits = LocalPermits(max_concurrency=2, interval_s=0.3, clock=lambda: now[0])
    await permits.acquire(0)
    await permits.acquire(1)  # another bucket: at once
    waiter = asyncio.create_task(permits.acquire(2))  # bucket 0 again: must wait
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    now[0] = 0.3
    await asyncio.wait_for(waiter, 1.0)
    assert permits.granted == [0, 1, 2]


async def test_local_permits_space_a_bucket_from_the_reported_send() -> None:
    now = [0.0]
    permits = LocalPermits(max_concurrency=1, interval_s=0.3, clock=lambda: now[0])
    await permits.acquire(0)
    now[0] = 0.2  # the IDENTIFY went out late
    permits.sent(0)
    now[0] = 0.3  # an interval after the grant, but not after the send
    waiter = asyncio.create_task(permits.acquire(1))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    now[0] = 0.5
    await asyncio.wait_for(waiter, 1.0)
    assert permits.granted == [0, 1]


async def test_an_identify_waits_for_its_slot_never_less() -> None:
    # the loop's timers fire on whole milliseconds: the last one is waited lap by lap,
    # and the IDENTIFY never goes out before the grant's not_before
    for ahead_s in (0.0, 0.0002, 0.0009, 0.0013, 0.004, 0.0105):
        at = time.monotonic() + ahead_s
        await _until(at)
        assert time.monotonic() >= at
    await _until(time.monotonic() - 5.0)  # a slot already past: returns at once
