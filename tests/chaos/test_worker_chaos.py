"""Capstone: one spawned worker process, 64 shards, the simulator in chaos mode.

Bounded run (about 15 s). Afterwards, against the simulator's own record:
every dispatch it produced reached the supervisor's PULL socket exactly once
by (shard_id, session, seq), and no IDENTIFY was wasted: each shard
IDENTIFYed once, plus once more for each session the server itself ended
(chaos op 9 ``d=false``, which by Discord's rules needs a new session); every
other fault was survived by RESUME.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections import Counter
from typing import Any

import pytest

from protocol.compression import Compression
from protocol.exitcodes import ExitCode
from simulator.faults import CHAOS_SAFE
from tests.chaos.supervisor_harness import (
    SupervisorHarness,
    all_ready,
    expected_keys,
    got_status,
    harness,
    spec_for,
)
from worker.backoff import BackoffPolicy
from worker.main import run_worker

__all__ = ["harness"]

SHARDS = 64
CHAOS_S = float(os.environ.get("CHAOS_SECONDS", "12"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def test_64_shards_survive_chaos_with_no_loss_no_duplicate_no_wasted_identify(
    sim_factory: Any, harness: SupervisorHarness
) -> None:
    kinds = tuple(k.value for k in CHAOS_SAFE)
    sim = await sim_factory(
        shards=SHARDS,
        max_concurrency=16,
        identify_window_s=0.2,
        heartbeat_interval_ms=1000,
        event_rate=4.0,
        chaos_seed=int(os.environ.get("CHAOS_SEED", "1234")),
        chaos_kinds=kinds,
        guilds=SHARDS,
        members_per_guild=2,
        channels_per_guild=3,
    )
    spec = spec_for(
        sim,
        harness,
        tuple(range(SHARDS)),
        compression=Compression.ZLIB_STREAM,
        backoff=BackoffPolicy(base_s=0.1, cap_s=1.0, stable_after_s=3.0),
        report_interval_s=0.5,
        log_level="WARNING",
    )
    process = multiprocessing.get_context("spawn").Process(
        target=run_worker, args=(spec,), daemon=True
    )
    process.start()
    try:
        await harness.wait_for(all_ready(list(range(SHARDS))), 30)
        # chaos: about 0.06 faults per second per connection, ~45 faults in all
        sim.set_chaos_rate(0.06)
        deadline = time.monotonic() + CHAOS_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            assert process.is_alive(), f"worker died: exit {process.exitcode}"
        sim.set_chaos_rate(0.0)
        sim.set_event_rate(0.0)
        faults = Counter(f.kind for f in sim.record.faults if f.chaos)
        assert sum(faults.values()) >= 10, faults

        # let every shard recover and catch up, then compare with the simulator's record
        def caught_up(got: Any) -> bool:
            return all_ready(list(range(SHARDS)))(got) and expected_keys(sim) <= set(got.events)

        try:
            await harness.wait_for(caught_up, 30)
        except TimeoutError:
            missing = expected_keys(sim) - set(harness.got.events)
            not_ready = [s for s, r in harness.got.latest.items() if r.phase != "ready"]
            raise AssertionError(
                f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}; not ready: {not_ready}"
            ) from None
        got = harness.got
        assert set(got.events) == expected_keys(sim), "events the simulator never sent"
        assert not got.duplicates, f"{len(got.duplicates)} duplicates, e.g. {got.duplicates[:5]}"
        assert not got.problems, got.problems[:5]
        assert len(got.events) > SHARDS * 4 * CHAOS_S * 0.5

        identifies = Counter(r.shard_id for r in sim.record.identifies)
        ended = Counter(
            f.shard_id
            for f in sim.record.faults
            if f.kind == "invalid_session" and not f.params.get("resumable")
        )
        wasted = {s for s in range(SHARDS) if identifies[s] != 1 + ended[s]}
        assert not wasted, [
            (
                s,
                [(f.kind, f.params, round(f.at, 2)) for f in sim.record.faults if f.shard_id == s],
                [
                    (r.outcome.value, r.code, r.url_kind.value, round(r.at, 2))
                    for r in sim.record.resumes_for(s)
                ],
                [(r.outcome.value, r.code, round(r.at, 2)) for r in sim.record.identifies_for(s)],
                [(v.kind.value, v.detail) for v in sim.record.violations if v.shard_id == s],
            )
            for s in sorted(wasted)
        ]
        assert all(r.outcome.value == "accepted" for r in sim.record.identifies)
        assert sim.record.accepted_resumes(), "chaos caused no resume at all"
        assert not sim.record.violations, sim.record.violations[:5]
        closes = Counter(
            c.close_code for c in sim.record.connections.values() if c.closed_by == "client"
        )
        assert not (set(closes) & {1000, 1001}), closes
        print(
            f"chaos: {dict(faults)}; resumes {len(sim.record.accepted_resumes())}; "
            f"events {len(got.events)}; client closes {dict(closes)}; sessions ended {dict(ended)}"
        )

        await harness.stop_worker(spec.worker_id)
        await harness.wait_for(lambda g: "drained" in got_status(g, spec.worker_id), 15)
        process.join(15)
        assert process.exitcode == ExitCode.OK
    finally:
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
        sim.set_chaos_rate(0.0)
        sim.set_event_rate(0.0)
