"""Shards against the simulator on real sockets: every opcode and close-code path.

Every assertion about the protocol is made on what the *simulator recorded*
(identifies, resumes, close codes, heartbeats, violations); event delivery is
checked on what a real ZeroMQ PULL socket playing the supervisor received.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from protocol import payloads
from protocol.compression import Compression
from protocol.ipc import WorkerStatusKind
from protocol.session import Session
from simulator import Simulator
from simulator.record import UrlKind
from tests.chaos.supervisor_harness import (
    StartGroup,
    SupervisorHarness,
    all_ready,
    got_status,
    harness,
    start_group,
    wait_delivered,
)

__all__ = ["harness", "start_group"]  # fixtures

pytestmark = pytest.mark.timeout(60)

SimFactory = Any


async def ready_sim(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    start_group: StartGroup,
    shards: int = 1,
    **sim_kw: Any,
) -> tuple[Simulator, Any]:
    group_kw = {k[6:]: sim_kw.pop(k) for k in list(sim_kw) if k.startswith("group_")}
    sim = await sim_factory(shards=shards, identify_window_s=0.05, **sim_kw)
    run = await start_group(sim, tuple(range(shards)), **group_kw)
    await harness.wait_for(all_ready(list(range(shards))), 10)
    return sim, run


def client_closes(sim: Simulator, shard_id: int) -> list[int | None]:
    return [c.close_code for c in sim.record.connections_for(shard_id) if c.closed_by == "client"]


@pytest.mark.parametrize("compression", list(Compression))
async def test_identify_once_and_relay_every_event(
    sim_factory: SimFactory,
    harness: SupervisorHarness,
    start_group: StartGroup,
    compression: Compression,
) -> None:
    sim, _ = await ready_sim(
        sim_factory, harness, start_group, shards=2, group_compression=compression
    )
    for shard in (0, 1):
        sim.emit(shard, 25)
    await wait_delivered(sim, harness)
    for shard in (0, 1):
        assert len(sim.record.accepted_identifies(shard)) == 1
        assert sim.record.identifies_for(shard) == sim.record.accepted_identifies(shard)
        (conn,) = sim.record.connections_for(shard)
        assert conn.compress == compression.value and conn.v == 10 and conn.encoding == "json"
    assert not sim.record.violations
    # the payload frame is the gateway's bytes, untouched
    key = next(k for k in harness.got.order if harness.got.events[k][0] == b"MESSAGE_CREATE")
    _topic, payload = harness.got.events[key]
    assert payload.startswith(b"{") and b'"t":"MESSAGE_CREATE"' in payload.replace(b" ", b"")
    assert harness.got.problems == []  # its "s" is the seq the run head gave it


async def test_op7_reconnect_resumes_on_the_resume_url(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    sim, _ = await ready_sim(sim_factory, harness, start_group, shards=2)
    sim.emit(0, 5)
    sim.inject(0, "reconnect")
    await sim.record.wait_for(lambda r: len(r.accepted_resumes(0)) == 1, 10)
    sim.emit(0, 5)
    await wait_delivered(sim, harness)
    (resume,) = sim.record.resumes_for(0)
    assert resume.url_kind is UrlKind.RESUME
    assert len(sim.record.identifies) == 2  # one per shard, none wasted
    assert client_closes(sim, 0) == [4000]  # never 1000/1001
    assert len(sim.record.connections_for(1)) == 1  # the neighbour never noticed


@pytest.mark.parametrize("resumable", [True, False])
async def test_op9_invalid_session(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup, resumable: bool
) -> None:
    sim, _ = await ready_sim(
        sim_factory, harness, start_group, group_new_session_delay_s=(0.3, 0.4)
    )
    sim.emit(0, 3)
    loop = asyncio.get_running_loop()
    injected_at = loop.time()
    sim.inject(0, "invalid_session", resumable=resumable)
    if resumable:
        await sim.record.wait_for(lambda r: len(r.accepted_resumes(0)) == 1, 10)
        assert len(sim.record.identifies) == 1
    else:
        await sim.record.wait_for(lambda r: len(r.accepted_identifies(0)) == 2, 10)
        assert loop.time() - injected_at >= 0.3  # the 1-5 s wait, shortened for the test
        assert not sim.record.resumes  # no pointless RESUME first
    await harness.wait_for(all_ready([0]), 10)
    sim.emit(0, 3)
    await wait_delivered(sim, harness)
    assert not sim.record.violations


@pytest.mark.parametrize("code", [1000, 1001, 4000, 4001, 4002, 4005, 4008])
async def test_resumable_close_codes_resume(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup, code: int
) -> None:
    sim, _ = await ready_sim(sim_factory, harness, start_group)
    sim.emit(0, 3)
    sim.inject(0, "close", code=code)
    await sim.record.wait_for(lambda r: len(r.accepted_resumes(0)) == 1, 10)
    sim.emit(0, 3)
    await wait_delivered(sim, harness)
    assert len(sim.record.identifies) == 1


@pytest.mark.parametrize("code", [4003, 4007, 4009])
async def test_new_session_close_codes_identify(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup, code: int
) -> None:
    sim, _ = await ready_sim(sim_factory, harness, start_group)
    sim.inject(0, "close", code=code)
    await sim.record.wait_for(lambda r: len(r.accepted_identifies(0)) == 2, 10)
    assert not sim.record.resumes
    await harness.wait_for(all_ready([0]), 10)
    sim.emit(0, 3)
    await wait_delivered(sim, harness)


@pytest.mark.parametrize("code", [4004, 4010, 4011, 4012, 4013, 4014])
async def test_fatal_close_codes_stop_without_retry(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup, code: int
) -> None:
    sim, run = await ready_sim(sim_factory, harness, start_group, shards=2)
    sim.inject(0, "close", code=code)
    result = await asyncio.wait_for(run.task, 10)
    assert result is WorkerStatusKind.FATAL
    assert run.group.fatal_code == code
    assert len(sim.record.connections_for(0)) == 1  # no retry
    assert len(sim.record.identifies) == 2
    await harness.wait_for(lambda got: "fatal" in got_status(got, run.spec.worker_id), 5)
    (status,) = [s for s in harness.got.statuses if s.status == "fatal"]
    assert status.fatal_code == code and status.detail and str(code) in status.detail
    assert harness.got.latest[0].phase == "fatal"
    # the neighbour was drained resumably, not ended
    assert client_closes(sim, 1) == [4000]


async def test_zombie_connection_is_closed_4000_and_resumed_with_the_missed_events(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    sim, _ = await ready_sim(sim_factory, harness, start_group, shards=2, heartbeat_interval_ms=150)
    sim.emit(0, 3)
    sim.inject(0, "zombie")
    sim.emit(0, 7)  # these go only to the replay buffer
    await sim.record.wait_for(lambda r: len(r.accepted_resumes(0)) == 1, 10)
    (resume,) = sim.record.accepted_resumes(0)
    assert resume.replayed >= 7
    await wait_delivered(sim, harness)
    assert client_closes(sim, 0) == [4000]
    assert len(sim.record.identifies) == 2
    assert len(sim.record.connections_for(1)) == 1


async def test_server_heartbeat_request_is_answered_at_once(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    sim, _ = await ready_sim(sim_factory, harness, start_group, heartbeat_interval_ms=60_000)
    before = len(sim.record.heartbeats)
    sim.inject(0, "heartbeat_request")
    await sim.record.wait_for(lambda r: len(r.heartbeats) > before, 3)
    assert len(sim.record.connections_for(0)) == 1


async def test_heartbeats_carry_the_last_seq_and_get_acks(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    sim, _ = await ready_sim(sim_factory, harness, start_group, heartbeat_interval_ms=100)
    sim.emit(0, 4)
    await wait_delivered(sim, harness)
    last_seq = max(k[2] for k in harness.got.events)
    await sim.record.wait_for(lambda r: any(h.seq == last_seq for h in r.heartbeats), 3)
    await harness.wait_for(lambda got: got.latest[0].latency_ms is not None, 3)
    assert len(sim.record.connections_for(0)) == 1


async def test_heartbeats_go_on_while_waiting_for_the_identify_permit(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    # Shard 1 waits about a second for its permit; the simulator closes a silent
    # connection after 1.5 heartbeat intervals (225 ms), so only heartbeats that
    # keep running during the wait keep it open (PROTOCOL.md 11).
    sim = await sim_factory(shards=2, identify_window_s=0.05, heartbeat_interval_ms=150)
    await start_group(sim, (0, 1), identify_interval_s=1.0)
    await harness.wait_for(all_ready([0, 1]), 10)
    (identify,) = sim.record.identifies_for(1)
    (conn,) = sim.record.connections_for(1)
    early = [h for h in sim.record.heartbeats_on(conn.conn_id) if h.at < identify.at]
    assert len(early) >= 4
    assert all(h.seq is None for h in early)  # no session yet: d is null
    assert not sim.record.violations
    assert len(sim.record.identifies) == 2


async def test_a_dead_resume_url_falls_back_to_the_main_url(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    sim = await sim_factory(shards=1, identify_window_s=0.05)
    first = await start_group(sim, (0,))
    await harness.wait_for(all_ready([0]), 10)
    sim.emit(0, 3)
    await wait_delivered(sim, harness)
    await first.stop()
    # the final reports travel on the same ordered channel, ahead of the last status
    await harness.wait_for(lambda got: "drained" in got_status(got, first.spec.worker_id), 5)
    report = harness.got.latest[0]
    assert report.session_id is not None
    # a port that refuses connections: bound, never listening, held for the whole test
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        dead_url = f"ws://127.0.0.1:{dead.getsockname()[1]}/"
        sim.emit(0, 2)
        await start_group(sim, (0,), sessions={0: Session(report.session_id, report.seq, dead_url)})
        await sim.record.wait_for(lambda r: len(r.accepted_resumes(0)) == 1, 10)
    (resume,) = sim.record.resumes_for(0)
    assert resume.url_kind is UrlKind.MAIN
    assert len(sim.record.identifies) == 1  # a RESUME, not a new session
    await wait_delivered(sim, harness)


async def test_a_group_connects_only_two_rounds_of_shards_ahead_of_their_identify(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    """max_concurrency 1: at most 2 connections are open and not yet identified, at any time."""
    shards = 8
    sim, _ = await ready_sim(sim_factory, harness, start_group, shards=shards, max_concurrency=1)
    identified = {r.conn_id: r.at for r in sim.record.identifies if r.outcome.value == "accepted"}
    assert len(identified) == shards
    spans = [(c.opened_at, identified[c.conn_id]) for c in sim.record.connections.values()]
    assert len(spans) == shards, "one connection per shard: nobody was refused"
    for opened, _ in spans:
        waiting = sum(1 for o, i in spans if o <= opened < i)
        assert waiting <= 2, f"{waiting} connections open and waiting to identify"
    # and they still identify in shard order, one window apart
    order = [r.shard_id for r in sorted(sim.record.identifies, key=lambda r: r.at)]
    assert order == list(range(shards))


async def test_identify_carries_the_presence_and_a_later_op3_replaces_it_for_new_sessions(
    sim_factory: SimFactory, harness: SupervisorHarness, start_group: StartGroup
) -> None:
    configured = payloads.presence("dnd", [payloads.parse_activity("watching:the shards")])
    sim, run = await ready_sim(
        sim_factory,
        harness,
        start_group,
        group_presence=configured,
        group_large_threshold=100,
        group_new_session_delay_s=(0.05, 0.1),
    )
    (first,) = sim.record.accepted_identifies(0)
    assert first.presence == configured and first.large_threshold == 100
    changed = payloads.presence("idle", [payloads.parse_activity("custom:resharding soon")])
    await harness.send_command(
        run.spec.worker_id,
        0,
        payloads.encode_client_payload({"op": 3, "d": changed}),
    )
    await sim.record.wait_for(lambda r: any(c.op == 3 for c in r.commands), 10)
    sim.inject(0, "invalid_session", resumable=False)  # a new session: a new IDENTIFY
    await sim.record.wait_for(lambda r: len(r.accepted_identifies(0)) == 2, 10)
    assert sim.record.accepted_identifies(0)[1].presence == changed
