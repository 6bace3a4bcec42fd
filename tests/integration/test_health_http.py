"""The HTTP endpoint on a real socket: /health, /status, /metrics and the page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from cluster.http import HealthServer
from cluster.status import ClusterStatus, Role
from cluster.workers import WorkerState
from protocol.session import ShardPhase


@pytest.fixture
async def served() -> AsyncIterator[tuple[ClusterStatus, str]]:
    budget = {"remaining": 997, "total": 1000, "exhausted": False, "reset_after_s": 100.0}
    status = ClusterStatus(4, [(0, (0, 1)), (1, (2, 3))], identify_snapshot=lambda: dict(budget))
    server = HealthServer(status, "127.0.0.1", 0)
    await server.start()
    try:
        yield status, server.url
    finally:
        await server.stop()


async def get(url: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
        body = (
            await resp.json(content_type=None) if resp.content_type == "application/json" else None
        )
        return resp.status, text, body


async def test_health_is_503_until_every_shard_is_ready(served: tuple[ClusterStatus, str]) -> None:
    status, url = served
    code, _, body = await get(url + "/health")
    assert code == 503
    assert body == {"status": "degraded", "role": "owner", "shards_ready": 0, "shards_total": 4}

    for shard in status.shards.values():
        shard.state = ShardPhase.READY
    code, _, body = await get(url + "/health")
    assert code == 200
    assert body == {"status": "ok", "role": "owner", "shards_ready": 4, "shards_total": 4}

    status.shards[2].state = ShardPhase.RESUMING
    code, _, body = await get(url + "/health")
    assert code == 503 and body["shards_ready"] == 3


async def test_health_names_a_given_up_worker_and_an_exhausted_budget() -> None:
    status = ClusterStatus(
        1,
        [(0, (0,))],
        identify_snapshot=lambda: {"remaining": 0, "exhausted": True, "reset_after_s": 42},
    )
    status.workers[0].state = WorkerState.GIVEN_UP
    server = HealthServer(status, "127.0.0.1", 0)
    await server.start()
    try:
        code, _, body = await get(server.url + "/health")
    finally:
        await server.stop()
    assert code == 503
    assert any("given up" in p for p in body["problems"])
    assert any("identify budget exhausted" in p and "42" in p for p in body["problems"])


async def test_status_has_the_contract_fields(served: tuple[ClusterStatus, str]) -> None:
    status, url = served
    status.workers[0].pid = 1234
    status.workers[0].state = WorkerState.RUNNING
    shard = status.shards[1]
    shard.state, shard.latency_ms, shard.seq, shard.events = ShardPhase.READY, 41.234, 99, 98
    code, _, body = await get(url + "/status")
    assert code == 200
    assert [s["shard_id"] for s in body["shards"]] == [0, 1, 2, 3]
    one = body["shards"][1]
    for key in (
        "shard_id",
        "state",
        "worker_id",
        "latency_ms",
        "seq",
        "identifies",
        "resumes",
        "events",
    ):
        assert key in one
    assert one["state"] == "ready" and one["latency_ms"] == 41.23 and one["seq"] == 99
    assert one["worker_id"] == 0
    worker = body["workers"][0]
    assert worker == {
        "worker_id": 0,
        "pid": 1234,
        "shard_ids": [0, 1],
        "alive": True,
        "restarts": 0,
        "state": "running",
    }
    assert body["identify"]["remaining"] == 997


async def test_metrics_are_prometheus_text(served: tuple[ClusterStatus, str]) -> None:
    status, url = served
    shard = status.shards[0]
    shard.state, shard.latency_ms = ShardPhase.READY, 20.0
    shard.events_by_type = {"MESSAGE_CREATE": 7, "READY": 1}
    status.relay.pub_dropped = 5
    code, text, _ = await get(url + "/metrics")
    assert code == 200
    assert 'titanium_events_total{shard="0",type="MESSAGE_CREATE"} 7.0' in text
    assert 'titanium_shard_latency_seconds{shard="0"} 0.02' in text
    assert 'titanium_relay_dropped_total{reason="pub_hwm"} 5.0' in text
    assert "titanium_session_starts_remaining 997.0" in text
    assert "titanium_shards_ready 1.0" in text


async def test_status_page_is_html_that_polls_status(served: tuple[ClusterStatus, str]) -> None:
    _, url = served
    code, text, _ = await get(url + "/")
    assert code == 200
    assert '<div id="grid"' in text and 'fetch("status")' in text


async def test_a_spare_is_ready_while_redis_answers_and_livez_only_needs_the_loop() -> None:
    status = ClusterStatus(0, [])
    status.assign(8, [], role=Role.SPARE)
    redis_up = True
    status.redis_ok = lambda: redis_up
    status.sections["lease"] = lambda: {"held": False, "spare": True}
    server = HealthServer(status, "127.0.0.1", 0)
    await server.start()
    try:
        code, _, body = await get(server.url + "/health")
        assert code == 200 and body["role"] == "spare"
        redis_up = False
        code, _, body = await get(server.url + "/health")
        assert code == 503 and "Redis is unreachable" in body["problems"][0]
        code, _, body = await get(server.url + "/livez")
        assert code == 200 and body["status"] == "alive"  # Redis or Discord never matter here
        code, _, body = await get(server.url + "/status")
        assert body["role"] == "spare" and body["lease"] == {"held": False, "spare": True}
    finally:
        await server.stop()


async def test_an_owner_without_its_lease_is_not_ready() -> None:
    status = ClusterStatus(1, [(0, (0,))])
    status.shards[0].state = ShardPhase.READY
    held = True
    status.lease_held = lambda: held
    status.redis_ok = lambda: True
    assert status.health()[0]
    held = False
    ready, body = status.health()
    assert not ready and "lease" in body["problems"][0]


async def test_metrics_show_the_lease_redis_checkpoint_and_grant_figures() -> None:
    status = ClusterStatus(1, [(0, (0,))])
    status.sections["lease"] = lambda: {"held": True, "token": 7, "fence_in_s": 5.5, "fenced": 1}
    status.sections["redis"] = lambda: {
        "up": True,
        "rtt_ms": 0.4,
        "errors": 2,
        "budget": {"remaining": 990, "total": 1000},
    }
    status.sections["checkpoint"] = lambda: {"age_s": 0.25, "errors": 0}
    status.sections["identify_redis"] = lambda: {"granted": 16, "latency_ms": {"mean": 0.5}}
    server = HealthServer(status, "127.0.0.1", 0)
    await server.start()
    try:
        code, text, _ = await get(server.url + "/metrics")
    finally:
        await server.stop()
    assert code == 200
    for line in (
        'titanium_role{role="owner"} 1.0',
        "titanium_lease_held 1.0",
        "titanium_lease_token 7.0",
        "titanium_lease_fence_seconds 5.5",
        "titanium_lease_fenced_total 1.0",
        "titanium_redis_up 1.0",
        "titanium_redis_rtt_seconds 0.0004",
        "titanium_redis_errors_total 2.0",
        "titanium_identify_budget_remaining_redis 990.0",
        "titanium_checkpoint_age_seconds 0.25",
        "titanium_identify_grant_latency_seconds 0.0005",
        "titanium_identify_redis_granted_total 16.0",
    ):
        assert line in text, line
