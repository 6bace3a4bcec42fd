"""A supervisor killed by SIGKILL costs no identify (DESIGN.md rule 8), without Redis.

Sessions are checkpointed to ``--state-dir`` at most ``--checkpoint-interval``
after the relay publishes; the next ``cluster up`` RESUMEs every shard from
the checkpoint, so every event generated before and during the outage
reaches a subscriber, and the only duplicates are events published after the
last checkpoint (each visible as a repeated ``(shard_id, seq)``, counted here).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulator.record import ResumeOutcome
from tests.conftest import SimFactory
from tests.e2e.cluster_process import Subscriber, clusters, subscribers
from tests.e2e.test_up import all_ready, args_for, short_dir

__all__ = ["clusters", "short_dir", "subscribers"]

pytestmark = pytest.mark.timeout(90)

SHARDS = 8
RATE = 20.0  # events per shard per second


async def test_a_supervisor_sigkill_costs_no_identify_and_loses_no_event(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    subscribers: Callable[..., Subscriber],
    short_dir: Path,
) -> None:
    sim = await sim_factory(
        shards=SHARDS, max_concurrency=4, identify_window_s=0.1, event_rate=RATE
    )
    args = args_for(sim, short_dir, "--checkpoint-interval", "0.5")
    first = await clusters(*args)
    listening = await first.listening()
    sub = subscribers(listening["pub"])  # before the shards connect: it sees their first events
    await all_ready(first, within_s=30)
    await sub.wait_for(lambda s: len(s.event_ids) >= SHARDS * RATE, 20)

    first.signal(signal.SIGKILL)  # the supervisor only: its workers must notice by themselves
    killed_at = time.monotonic()
    await first.wait(10)

    def all_closed(record: Any) -> bool:
        return all(c.closed_at is not None for c in record.connections.values())

    await sim.record.wait_for(all_closed, timeout=10)
    let_go_s = time.monotonic() - killed_at
    print(f"workers let go of every connection {let_go_s:.2f} s after the supervisor died")
    identifies_before = len(sim.record.accepted_identifies())
    assert identifies_before == SHARDS
    await asyncio.sleep(1.0)  # events keep coming while nobody is connected

    second = await clusters(*args)
    await all_ready(second, within_s=30)
    resumed = sim.record.resumes_for(outcome=ResumeOutcome.ACCEPTED)
    assert sorted({r.shard_id for r in resumed}) == list(range(SHARDS))
    assert len(sim.record.accepted_identifies()) == identifies_before, "an identify was spent"

    # every generated event up to now reaches the subscriber, before and across the outage
    # (from the first one it saw on each shard: a SUB joins a moment after the PUB binds)
    first_seen = {shard: min(seq for s, seq in sub.seen if s == shard) for shard, _ in sub.seen}
    generated = {d.event_id for d in sim.record.sent_events() if d.seq >= first_seen[d.shard_id]}
    try:
        await sub.wait_for(lambda s: generated <= set(s.event_ids), 20)
    except TimeoutError:
        missing = generated - set(sub.event_ids)
        lost = sorted(
            (d.shard_id, d.seq) for d in sim.record.sent_events() if d.event_id in missing
        )
        raise AssertionError(f"{len(missing)} events never arrived: {lost[:20]}") from None
    # every header names the session the gateway sent its event in, the resumed ones too
    # (the workers write the headers: a worker names its saved session before it resumes)
    sent_in = {(d.shard_id, d.seq): d.session_id for d in sim.record.sent_events()}
    named = {key: sub.sessions[key] for key in sent_in.keys() & sub.sessions.keys()}
    assert len(named) >= len(generated)
    misnamed = [(key, session, sent_in[key]) for key, session in named.items()
                if session != sent_in[key]]  # fmt: skip
    assert not misnamed, misnamed[:5]
    duplicates = sub.duplicates()
    print(f"{len(duplicates)} duplicates (events published after the last checkpoint)")
    # at most what one checkpoint interval (0.5 s) plus the kill's own moment can publish
    assert len(duplicates) <= SHARDS * RATE * 1.0, duplicates
    second.signal(signal.SIGTERM)
    assert await second.wait(15) == 0
