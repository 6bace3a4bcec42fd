"""The supervisor's live picture of the cluster: every shard and every worker.

The supervisor writes into it: worker reports through :meth:`ClusterStatus.apply_report`,
worker slot changes through :meth:`ClusterStatus.apply_worker` (the worker pool's
``on_change`` hook). The HTTP endpoint reads it for /health, /status, /metrics
and the status page. Nothing here does I/O, and nothing here may ever hold the token.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cluster.workers import WorkerSlot, WorkerState
from protocol import ipc
from protocol.session import ShardPhase


@dataclass(slots=True)
class ShardStatus:
    shard_id: int
    worker_id: int
    state: ShardPhase = ShardPhase.DISCONNECTED
    latency_ms: float | None = None
    seq: int = 0
    identifies: int = 0
    resumes: int = 0
    reconnects: int = 0
    events: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    #: Dispatches the worker dropped instead of relaying, per reason
    #: (:class:`protocol.ipc.DispatchDrop`), since its process started.
    dropped: dict[str, int] = field(default_factory=dict)
    fatal_code: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "shard_id": self.shard_id,
            "state": self.state.value,
            "worker_id": self.worker_id,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
            "seq": self.seq,
            "identifies": self.identifies,
            "resumes": self.resumes,
            "reconnects": self.reconnects,
            "events": self.events,
            "dropped": dict(self.dropped),
        }


@dataclass(slots=True)
class WorkerStatus:
    worker_id: int
    shard_ids: tuple[int, ...]
    pid: int | None = None
    #: A slot not spawned yet (PLANNED) is shown as spawning: it is about to be.
    state: WorkerState = WorkerState.SPAWNING
    restarts: int = 0

    @property
    def alive(self) -> bool:
        return self.state in (WorkerState.SPAWNING, WorkerState.RUNNING, WorkerState.STOPPING)

    def to_json(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "pid": self.pid,
            "shard_ids": list(self.shard_ids),
            "alive": self.alive,
            "restarts": self.restarts,
            "state": self.state.value,
        }


@dataclass(slots=True)
class RelayCounters:
    """What the relay forwarded and dropped (every drop is counted, DESIGN.md rule 5)."""

    published: int = 0
    duplicates_dropped: int = 0
    #: Events a subscriber missed because its queue was full (``--pub-hwm``), one
    #: per event and subscriber (cluster/publisher.py): with one slow subscriber,
    #: exactly the seq gaps it sees.
    pub_dropped: int = 0
    #: Events still queued for a subscriber when it disconnected.
    pub_disconnected_dropped: int = 0
    malformed_dropped: int = 0
    #: Subscriptions (topic prefixes) over all subscribers.
    subscriptions: int = 0
    #: Connected subscribers with at least one subscription.
    subscribers: int = 0
    #: Events waiting in the supervisor for subscribers that fall behind (a gauge).
    pub_queued: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "duplicates_dropped": self.duplicates_dropped,
            "pub_dropped": self.pub_dropped,
            "pub_disconnected_dropped": self.pub_disconnected_dropped,
            "malformed_dropped": self.malformed_dropped,
            "subscriptions": self.subscriptions,
            "subscribers": self.subscribers,
            "pub_queued": self.pub_queued,
        }


IdentifySnapshot = Callable[[], dict[str, Any]]
#: A section of /status from another part of the supervisor (lease, Redis, checkpoints).
Section = Callable[[], dict[str, Any] | list[Any] | None]


class Role(enum.Enum):
    """What this supervisor is to the bot (DESIGN.md section 6)."""

    #: It runs a range of shards (with ``--redis``: while it holds that range's lease).
    OWNER = "owner"
    #: It holds no range and waits to take over one whose lease expires.
    SPARE = "spare"


class ClusterStatus:
    """Shards and workers by id, plus the identify budget and the relay's counters."""

    def __init__(
        self,
        total_shards: int,
        workers: Iterable[tuple[int, tuple[int, ...]]],
        identify_snapshot: IdentifySnapshot | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.total_shards = total_shards
        self.workers: dict[int, WorkerStatus] = {}
        self.shards: dict[int, ShardStatus] = {}
        for worker_id, shard_ids in workers:
            self.workers[worker_id] = WorkerStatus(worker_id, tuple(shard_ids))
            for shard_id in shard_ids:
                self.shards[shard_id] = ShardStatus(shard_id, worker_id)
        #: READY shards as :meth:`apply_report` and :meth:`shards_lost` saw them change: the
        #: same as :attr:`shards_ready` in O(1) (per report), unless a shard's state is
        #: set directly
        self.ready_reported = 0
        self.relay = RelayCounters()
        self.identify_snapshot = identify_snapshot
        self.fatal_reason: str | None = None
        self.started_at = clock()
        self._clock = clock
        self.role = Role.OWNER
        #: Extra /status sections by name, read at request time.
        self.sections: dict[str, Section] = {}
        #: With --redis: is Redis answering (None: no Redis)? Spares are ready only then.
        self.redis_ok: Callable[[], bool] | None = None
        #: With --redis: does this owner hold its lease?
        self.lease_held: Callable[[], bool] | None = None

    def assign(
        self,
        total_shards: int,
        workers: Iterable[tuple[int, tuple[int, ...]]],
        identify_snapshot: IdentifySnapshot | None = None,
        role: Role = Role.OWNER,
    ) -> None:
        """This supervisor now owns these shards (a range taken), or waits for a range (a spare).

        An owner with no shards yet (starting) is not ready; a spare is ready when Redis answers.
        """
        self.total_shards = total_shards
        self.workers = {}
        self.shards = {}
        self.ready_reported = 0
        for worker_id, shard_ids in workers:
            self.workers[worker_id] = WorkerStatus(worker_id, tuple(shard_ids))
            for shard_id in shard_ids:
                self.shards[shard_id] = ShardStatus(shard_id, worker_id)
        self.identify_snapshot = identify_snapshot
        self.role = role

    @property
    def shards_ready(self) -> int:
        """READY shards, counted (O(shards): for requests; see :attr:`ready_reported`)."""
        return sum(1 for s in self.shards.values() if s.state is ShardPhase.READY)

    def apply_report(self, report: ipc.ShardReport) -> bool:
        """A shard's report from its worker (a report for a shard not ours is ignored).

        True when the shard became READY or stopped being READY: only then has
        :attr:`shards_ready` (a count over every shard) changed. Most reports are
        the periodic ones (every shard, every second), so a caller counting on each
        would spend O(shards) per report: two thirds of the supervisor's CPU at
        2,048 shards.
        """
        shard = self.shards.get(report.shard_id)
        if shard is None:
            return False
        state = ShardPhase.parse(report.phase)
        changed = (state is ShardPhase.READY) is not (shard.state is ShardPhase.READY)
        if changed:
            self.ready_reported += 1 if state is ShardPhase.READY else -1
        shard.state = state
        shard.latency_ms = report.latency_ms
        shard.seq = report.seq
        shard.identifies = report.identifies
        shard.resumes = report.resumes
        shard.reconnects = report.reconnects
        shard.events = report.events
        shard.events_by_type = report.events_by_type
        shard.dropped = report.dropped
        shard.fatal_code = report.fatal_code
        return changed

    def shards_lost(self, shard_ids: Iterable[int]) -> None:
        """Their worker is gone: the shards are disconnected until a new one reports."""
        for shard_id in shard_ids:
            shard = self.shards[shard_id]
            if shard.state is ShardPhase.READY:
                self.ready_reported -= 1
            shard.state = ShardPhase.DISCONNECTED
            shard.latency_ms = None

    def apply_worker(self, slot: WorkerSlot) -> None:
        """A worker slot changed (its state, process or restarts); the last pid stays shown."""
        view = self.workers[slot.worker_id]
        if slot.sentinel is not None:
            view.pid = slot.pid
        view.state = slot.state
        view.restarts = slot.tracker.restarts

    def identify_budget(self) -> dict[str, Any] | None:
        return self.identify_snapshot() if self.identify_snapshot is not None else None

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): readiness for the supervisor's role.

        An owner is ready when every shard it runs is connected (and, with Redis,
        it holds its lease); a spare when Redis answers, so it can take over.
        """
        ready = self.shards_ready
        total = len(self.shards)
        redis_ok = None if self.redis_ok is None else self.redis_ok()
        problems: list[str] = []
        if redis_ok is False:
            problems.append("Redis is unreachable: running shards go on, nothing new identifies")
        if self.role is Role.SPARE:
            healthy = redis_ok is not False and self.fatal_reason is None
        else:
            healthy = total > 0 and ready == total and self.fatal_reason is None
            if self.lease_held is not None and not self.lease_held():
                healthy = False
                problems.append("this supervisor does not hold its range's lease")
        body: dict[str, Any] = {
            "status": "ok" if healthy else "degraded",
            "role": self.role.value,
            "shards_ready": ready,
            "shards_total": total,
        }
        if self.fatal_reason is not None:
            problems.append(self.fatal_reason)
        given_up = sorted(
            w.worker_id for w in self.workers.values() if w.state is WorkerState.GIVEN_UP
        )
        if given_up:
            problems.append(f"workers given up after repeated crashes: {given_up}")
        budget = self.identify_budget()
        if budget is not None and budget.get("exhausted"):
            problems.append(
                f"identify budget exhausted: no session starts left until reset in "
                f"{budget.get('reset_after_s', '?')} s"
            )
        if problems:
            body["problems"] = problems
        return healthy, body

    def to_status_json(self) -> dict[str, Any]:
        return {
            "shards_total": self.total_shards,
            "shards_ready": self.shards_ready,
            "uptime_s": round(self._clock() - self.started_at, 3),
            "shards": [self.shards[i].to_json() for i in sorted(self.shards)],
            "workers": [self.workers[i].to_json() for i in sorted(self.workers)],
            "identify": self.identify_budget(),
            "relay": self.relay.to_json(),
            "fatal": self.fatal_reason,
            "role": self.role.value,
            **{name: section() for name, section in self.sections.items()},
        }
