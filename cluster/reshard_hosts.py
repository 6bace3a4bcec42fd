"""A reshard across hosts that share Redis: each owner's part, from the record to the switch.

One host writes the reshard's record (``cluster reshard`` at its control socket;
:meth:`cluster.state.redis_reshard.ReshardStore.begin`); every owner of a range
of the old layout follows it (:func:`follow_reshards` polls the record). Host
range ``i`` of ``H`` in the old layout brings up range ``i`` of ``H`` in the new
one, beside the old, under a second lease (:meth:`LeaseKeeper.acquire_next`).
The hand-over rule is the one-host rule of :mod:`cluster.reshard`, made to hold
across hosts (a guild's old shard and its new shard may run on different hosts):

1. **starting**: the old sets publish and push the fingerprints of what they
   publish to Redis (a batch every :data:`PUSH_S`). No host starts its new set
   before every host's old set records: hosts read the record at different
   times, and an event an old set published before it recorded could be held
   by a new set already running elsewhere. Then the new sets identify and hold
   their events. A host whose new set is settled (every shard READY, every
   listed guild's GUILD_CREATE seen) says so; the last one moves the phase to
   *switching* and the layout key to the new count in one script.
2. **switching**: every host stops publishing its old set (drains its channel,
   then discards), pushes its last fingerprints, makes the new lease the one
   it holds and says it drained; the last one moves the phase to *switched*.
   Nothing is published by anyone in between: the new sets hold.
3. **switched**: every host loads every host's fingerprints and switches as
   one host does: the marker, the held events not already published, and the
   new set's live events checked for :data:`cluster.reshard.SWITCH_WINDOW_S`.

With ``--sink redis`` the old set's sink appends everything it was given before
its host says it drained, and the new set's sink starts at the switch under the
new lease (its fencing token is above every old one); the marker is appended
to the stream ``TITANIUM_RESHARD`` by every host.

A range owner that starts while a reshard of its layout is *starting* (a host
restarted, or a spare that took a range over) records from its first event, as
its old set replays what it missed (:meth:`ReshardHost.record_early`).

A host that dies while switching never says it drained: after
:data:`DRAIN_TIMEOUT_S` the others switch anyway (its fingerprints of the last
:data:`PUSH_S` may be missing: those events can be published twice). A reshard
not settled by its deadline, or whose new lease another host holds, is
abandoned for every host; once the phase is *switching* it cannot be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from cluster.planner import PlanError, host_ranges
from cluster.reshard import Fingerprints, ReshardRefusedError
from cluster.state.lease import LeaseKeeper, ShardRange
from cluster.state.redis_reshard import ReshardRecord, ReshardStore, SharedPhase
from cluster.state.redis_state import RedisStateError

log = logging.getLogger("cluster.reshard")

#: How often an owner reads the reshard record.
POLL_S: Final = 0.25
#: How often the old set's fingerprints go to Redis.
PUSH_S: Final = 0.2
#: How long the hosts wait for every old set to drain before switching anyway.
DRAIN_TIMEOUT_S: Final = 10.0


class ReshardHost(Protocol):
    """What the range owner does for its part (:class:`cluster.range_owner.RangeOwner`)."""

    @property
    def total_shards(self) -> int: ...

    def begin_generation(self, new_total: int, new_range: ShardRange) -> Fingerprints:
        """The old set records what it publishes (shared fingerprints); the new set of
        ``new_range`` is made, not started. Raises :class:`ReshardRefusedError`."""

    def start_generation(self) -> None:
        """The new set's workers start; its events are held."""

    def stop_recording(self) -> None:
        """No reshard to take part in: the old set stops recording (if it did from its start)."""

    def generation_state(self) -> tuple[bool, str | None]:
        """(settled, why it was given up locally or None)."""

    def abandon_generation(self, why: str) -> None: ...

    async def stop_old_set(self) -> None:
        """Drain the old set's channel, stop publishing it, let the sink append what it
        published (the old lease is not used after)."""

    def take_over(self) -> None:
        """The switch: the marker, the held events, the new set publishing."""


def own_index(shard_range: ShardRange, total: int, hosts: int) -> int | None:
    """Which of the layout's ``hosts`` ranges ``shard_range`` is (None: not one of them)."""
    try:
        ranges = host_ranges(total, hosts)
    except PlanError:
        return None
    with contextlib.suppress(ValueError):
        return ranges.index(shard_range)
    return None


async def follow_reshards(
    host: ReshardHost,
    store: ReshardStore,
    leases: LeaseKeeper,
    index: int,
    hosts: int,
    deadline_s: Callable[[int, ShardRange], float],
) -> None:
    """While the range is owned: take part in every reshard the record announces.

    ``deadline_s(new_total, new_range)``: how long the new set may take to settle.
    """
    seen: set[str] = set()
    while True:
        await asyncio.sleep(POLL_S)
        try:
            record = await store.read()
        except RedisStateError:
            continue
        if record is None or record.id in seen:
            host.stop_recording()
            continue
        seen.add(record.id)
        if record.phase is not SharedPhase.STARTING or record.old_shards != host.total_shards:
            host.stop_recording()
            continue
        await take_part(host, store, leases, record, index, hosts, deadline_s)
        host.stop_recording()
        if host.total_shards == record.new_shards:
            return  # switched: the owner follows on as range `index` of the new layout


async def take_part(
    host: ReshardHost,
    store: ReshardStore,
    leases: LeaseKeeper,
    record: ReshardRecord,
    index: int,
    hosts: int,
    deadline_s: Callable[[int, ShardRange], float],
) -> None:
    """This host's part of one reshard (the phases of the module docstring)."""
    new_range = host_ranges(record.new_shards, hosts)[index]
    started = time.monotonic()
    deadline = started + deadline_s(record.new_shards, new_range)
    log.info(
        "reshard %s: %d -> %d shards over %d hosts; this host brings up shards %d-%d",
        record.id,
        record.old_shards,
        record.new_shards,
        hosts,
        *new_range,
    )
    try:
        if await store.join(record.id, index) is not SharedPhase.STARTING:
            return
    except RedisStateError as exc:
        log.error("reshard %s: cannot join (%s)", record.id, exc)
        return
    # The new range's lease: free, unless a host that died in this reshard still has it.
    while True:
        try:
            if await leases.acquire_next(new_range, record.new_shards) is not None:
                break
        except RedisStateError as exc:
            log.warning("reshard %s: cannot take the new range's lease yet: %s", record.id, exc)
        if (
            time.monotonic() > deadline
            or await _phase_now(store, record) is not SharedPhase.STARTING
        ):
            log.error("reshard %s: the new range's lease never came free", record.id)
            return
        await asyncio.sleep(POLL_S)
    try:
        fingerprints = host.begin_generation(record.new_shards, new_range)
    except ReshardRefusedError as exc:
        log.error("reshard %s: refused on this host: %s", record.id, exc)
        with contextlib.suppress(RedisStateError):
            await store.abandon(record.id, str(exc))
        host.abandon_generation(str(exc))
        await leases.drop_next()
        return
    pushing = asyncio.Event()
    pushing.set()
    pusher = asyncio.create_task(
        _push_loop(store, fingerprints, pushing), name="reshard-fingerprints"
    )
    try:
        phase = await _until_switching(host, store, leases, record, index, deadline)
        if phase is not SharedPhase.SWITCHING:
            await leases.drop_next()
            return
        await host.stop_old_set()
        old = leases.promote_next()
    finally:
        pushing.clear()  # the loop ends after the batch it may be pushing now
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(pusher), 2.0)
        pusher.cancel()
    await _push_rest(store, fingerprints)
    await _until_switched(store, record, index)
    try:
        batches = await store.fingerprints()
    except RedisStateError as exc:
        log.error(
            "reshard %s: cannot read the fingerprints (%s): switching without", record.id, exc
        )
        batches = []
    loaded = fingerprints.load_batches(batches)
    host.take_over()
    log.info(
        "reshard %s: switched after %.1f s (%d fingerprints of the old sets)",
        record.id,
        time.monotonic() - started,
        loaded,
    )
    if old is not None:
        await leases.release_one(old)


async def _phase_now(store: ReshardStore, record: ReshardRecord) -> SharedPhase | None:
    try:
        now = await store.read()
    except RedisStateError:
        return record.phase
    return None if now is None or now.id != record.id else now.phase


async def _until_switching(
    host: ReshardHost,
    store: ReshardStore,
    leases: LeaseKeeper,
    record: ReshardRecord,
    index: int,
    deadline: float,
) -> SharedPhase | None:
    """Phase 1: wait for every host's old set to record, start the new set, wait for every
    host's new set; SWITCHING, or how it ended otherwise."""
    said_ready = False
    started = False
    while True:
        await asyncio.sleep(POLL_S if started else POLL_S / 5)
        settled, given_up = host.generation_state()
        why = given_up or leases.next_lost
        if why is None and time.monotonic() > deadline:
            why = "the new shard sets were not ready by the deadline"
        try:
            if why is not None:
                phase = await store.abandon(record.id, why)
                if phase is SharedPhase.ABANDONED or phase is None:
                    host.abandon_generation(why)
                    return phase
            elif not started:
                phase, everyone = await store.recording(record.id, index)
                if everyone and phase is SharedPhase.STARTING:
                    host.start_generation()
                    started = True
            elif settled and not said_ready:
                phase = await store.ready(record.id, index)
                said_ready = True
            else:
                phase = await _phase_now(store, record)
        except RedisStateError as exc:
            log.warning("reshard %s: Redis: %s", record.id, exc)
            continue
        if phase is SharedPhase.SWITCHING or phase is SharedPhase.SWITCHED:
            return SharedPhase.SWITCHING
        if phase is not SharedPhase.STARTING:
            current = await _record_now(store)
            host.abandon_generation(
                (current.error if current is not None else None) or "abandoned by another host"
            )
            return phase


async def _record_now(store: ReshardStore) -> ReshardRecord | None:
    try:
        return await store.read()
    except RedisStateError:
        return None


async def _until_switched(store: ReshardStore, record: ReshardRecord, index: int) -> None:
    """Phase 2: say this host drained; wait for the others (at most :data:`DRAIN_TIMEOUT_S`)."""
    until = time.monotonic() + DRAIN_TIMEOUT_S
    said = False
    while True:
        try:
            if not said:
                phase = await store.drained(record.id, index)
                said = True
            else:
                phase = await _phase_now(store, record)
            if phase is not SharedPhase.SWITCHING:
                return
            if time.monotonic() > until:
                log.warning(
                    "reshard %s: not every host drained its old set within %.0f s: switching",
                    record.id,
                    DRAIN_TIMEOUT_S,
                )
                await store.drained(record.id, None, force=True)
                return
        except RedisStateError as exc:
            if time.monotonic() > until:
                log.error("reshard %s: Redis: %s: switching", record.id, exc)
                return
        await asyncio.sleep(POLL_S / 5)


async def _push_loop(store: ReshardStore, fingerprints: Fingerprints, on: asyncio.Event) -> None:
    while on.is_set():
        await asyncio.sleep(PUSH_S)
        await _push_rest(store, fingerprints)


async def _push_rest(store: ReshardStore, fingerprints: Fingerprints) -> None:
    batch = fingerprints.take_batch()
    if batch is None:
        return
    for attempt in range(5):
        try:
            await store.push_fingerprints(batch)
            return
        except RedisStateError as exc:
            if attempt == 4:
                log.error("reshard: fingerprints lost (duplicates possible at the switch): %s", exc)
            await asyncio.sleep(0.05 * (attempt + 1))
