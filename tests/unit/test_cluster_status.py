"""The /status view: shard reports and lost workers go in through one method each."""

from __future__ import annotations

from typing import Any

from cluster.status import ClusterStatus
from protocol import ipc
from protocol.session import ShardPhase


def report(shard_id: int, phase: str = "ready", **fields: Any) -> ipc.ShardReport:
    values: dict[str, Any] = {
        "shard_id": shard_id,
        "phase": phase,
        "seq": 120,
        "session_id": "abc",
        "resume_url": "wss://r/",
        "latency_ms": 41.234,
        "identifies": 1,
        "resumes": 2,
        "reconnects": 3,
        "events": 119,
        "fatal_code": None,
        "events_by_type": {"MESSAGE_CREATE": 100, "READY": 1},
        "dropped": {"seq_invalid": 12},
    }
    values.update(fields)
    return ipc.ShardReport(**values)


def test_apply_report_copies_every_shown_field() -> None:
    status = ClusterStatus(2, [(0, (0, 1))], clock=lambda: 100.0)
    status.apply_report(report(1))
    shard = status.shards[1]
    assert shard.state is ShardPhase.READY
    assert (shard.latency_ms, shard.seq, shard.identifies, shard.resumes) == (41.234, 120, 1, 2)
    assert (shard.reconnects, shard.events, shard.fatal_code) == (3, 119, None)
    assert shard.events_by_type == {"MESSAGE_CREATE": 100, "READY": 1}
    assert shard.dropped == {"seq_invalid": 12}
    assert status.shards_ready == 1
    assert status.shards[0].state is ShardPhase.DISCONNECTED  # untouched

    status.apply_report(report(1, "fatal", fatal_code=4004, latency_ms=None))
    assert status.shards[1].state is ShardPhase.FATAL and status.shards[1].fatal_code == 4004
    assert status.shards_ready == 0


def test_an_unknown_phase_reads_disconnected_and_a_foreign_shard_is_ignored() -> None:
    status = ClusterStatus(2, [(0, (0, 1))])
    status.apply_report(report(0, "sleeping"))
    assert status.shards[0].state is ShardPhase.DISCONNECTED
    status.apply_report(report(7))
    assert set(status.shards) == {0, 1}


def test_shards_of_a_lost_worker_are_disconnected_and_keep_their_counters() -> None:
    status = ClusterStatus(4, [(0, (0, 1)), (1, (2, 3))])
    for shard_id in range(4):
        status.apply_report(report(shard_id))
    status.shards_lost((0, 1))
    for shard_id in (0, 1):
        shard = status.shards[shard_id]
        assert shard.state is ShardPhase.DISCONNECTED and shard.latency_ms is None
        assert shard.seq == 120 and shard.events == 119
    assert status.shards_ready == 2


def test_status_json_shows_phases_by_their_wire_value() -> None:
    status = ClusterStatus(2, [(0, (0, 1))], clock=lambda: 100.0)
    status.apply_report(report(1, "resuming"))
    body = status.to_status_json()
    assert body["shards"] == [
        {
            "shard_id": 0,
            "state": "disconnected",
            "worker_id": 0,
            "latency_ms": None,
            "seq": 0,
            "identifies": 0,
            "resumes": 0,
            "reconnects": 0,
            "events": 0,
            "dropped": {},
        },
        {
            "shard_id": 1,
            "state": "resuming",
            "worker_id": 0,
            "latency_ms": 41.23,
            "seq": 120,
            "identifies": 1,
            "resumes": 2,
            "reconnects": 3,
            "events": 119,
            "dropped": {"seq_invalid": 12},
        },
    ]
    assert body["workers"] == [
        {
            "worker_id": 0,
            "pid": None,
            "shard_ids": [0, 1],
            "alive": True,
            "restarts": 0,
            "state": "spawning",
        }
    ]
    assert (body["shards_total"], body["shards_ready"], body["uptime_s"]) == (2, 0, 0.0)
