"""One owned shard range: its workers, relay, identify coordinator, control socket, checkpoints.

The supervisor (:mod:`cluster.supervisor`) lives as long as the process; a
:class:`RangeOwner` lives as long as this supervisor runs one range of shards
(all of them on a single host; with ``--redis``, while it holds that range's
lease). :meth:`RangeOwner.run` builds everything the range needs into one
record (:class:`_Running`: nothing optional, nothing asserted later), spawns
the workers, drains one queue until a stop, a fatal close code or a fence,
and tears everything down in reverse.

Startup: the saved sessions (state dir, and Redis with ``--redis``) seed the
relay's book -> sockets in the private runtime directory (ipc://): the
workers' channel (:mod:`cluster.channel`, read by :mod:`cluster.relay`), the command ROUTER, the embedded
identify coordinator (asking the Redis arbiter per grant with ``--redis``) ->
the control socket -> the worker processes (:mod:`cluster.workers`), each
given its shards' sessions. The coordinator binds once every worker has said
it started (or after a short grace), so every bucket has its whole queue from
the first window on.

The loop (STYLE.md 5): signal handlers, worker exits, restart timers and the
lease keeper only enqueue. A worker that exits unasked is replaced
(:class:`cluster.restart_policy.RestartTracker`); its replacement RESUMEs
each shard from the last seq the relay *published*, so every
``(shard_id, seq)`` reaches the PUB socket once. Exit code 78 from a worker is
a fatal close code: the cluster stops with :class:`FatalCloseError`.

The :class:`cluster.state.checkpoint.Checkpointer` writes the book at most
``--checkpoint-interval`` after it changes, so a SIGKILL of the supervisor
costs no identify. With ``--sink redis`` a :class:`cluster.sink.StreamSink`
appends every published event to Redis Streams and its appends write the
Redis checkpoints (the last seq *appended*; the checkpointer then keeps only
the state dir), so a restart or a takeover RESUMEs from what the streams
hold; a :class:`cluster.command_stream.CommandReader` sends the range's
commands from ``gateway_send``.

Endings: a graceful stop drains (STOP every worker, wait, SIGKILL what remains,
a last checkpoint, the lease released); a **fence** (the lease lost or not
renewed in time) SIGKILLs every worker at once, from the lease keeper's
callback, so their TCP connections are aborted without a close frame (the
sessions stay resumable for whoever takes over), writes nothing to Redis and
returns :attr:`Outcome.FENCED`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

import zmq
import zmq.asyncio

from cluster import reshard_hosts
from cluster.cancelling import cancel_and_wait
from cluster.channel import EventChannel
from cluster.command_stream import CommandReader
from cluster.config import LogFormat, SupervisorConfig
from cluster.control import ControlServer
from cluster.coordinator import Coordinator
from cluster.discord_api import DiscordApiError, GatewayBot, fetch_gateway_bot
from cluster.identify_scheduler import default_safety_margin, default_sent_hold
from cluster.planner import ClusterPlan, PlanError, identify_duration, plan_cluster
from cluster.progress import Progress
from cluster.publisher import Publisher
from cluster.relay import Relay, RelayMode, SessionBook
from cluster.reshard import (
    MARKER_HEADER,
    MARKER_TOPIC,
    SWITCH_WINDOW_S,
    Fingerprints,
    HeldRuns,
    Layout,
    ReshardPhase,
    ReshardRefusedError,
    marker_payload,
    save_layout,
)
from cluster.restart_policy import RestartAction
from cluster.sessions import SessionStore
from cluster.sink import StreamSink
from cluster.state.arbiter import RedisArbiter
from cluster.state.checkpoint import Checkpointer, RemoteWriter
from cluster.state.lease import LeaseKeeper, ShardRange
from cluster.state.redis_reshard import ReshardBusyError, ReshardStore, SharedPhase
from cluster.state.redis_state import Lease, RedisState, RedisStateError
from cluster.state.redis_streams import StreamStore
from cluster.status import ClusterStatus
from cluster.workers import ShardNotRunningError, WorkerPool, WorkerSlot, WorkerState, unwatched
from protocol import ipc
from protocol.brokerformat import dispatch_encoder
from protocol.errors import WireFormatError
from protocol.exitcodes import ExitCode
from protocol.gateway import explain_fatal
from protocol.session import Session, ShardPhase
from worker.spec import WorkerSpec

if TYPE_CHECKING:
    from cluster.endpoint.server import GatewayEndpoint

log = logging.getLogger("cluster.supervisor")

#: How long the embedded coordinator waits for every worker to start before it binds anyway.
STARTUP_GATE_S: Final = 10.0
#: A worker that has not reported at all yet gets this long (spawn + imports) before it is "silent".
SPAWN_GRACE_S: Final = 30.0
#: Waiting for a fatal worker's last word (the WORKER_STATUS naming the close code).
_FATAL_DETAIL_WAIT_S: Final = 1.0
#: How often a worker checks that the supervisor still lives (it lets go within about this).
PARENT_CHECK_S: Final = 0.25
#: A graceful stop waits this long for the sink to append what waits.
SINK_CLOSE_S: Final = 5.0
#: A reshard is abandoned when the new set is not ready within twice its identify
#: schedule plus this.
RESHARD_GRACE_S: Final = 60.0
#: How often a running reshard looks whether the new set is ready to switch.
RESHARD_POLL_S: Final = 0.1


class SupervisorError(Exception):
    """The cluster cannot run or had to stop; the message is the one line for the operator."""


class FatalCloseError(SupervisorError):
    """A shard hit a fatal close code (4004, 4010-4014); the message names cause and fix."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


class Outcome(enum.Enum):
    #: A graceful stop (a signal, ``request_stop``): the process ends.
    STOPPED = "stopped"
    #: The lease was lost: the shards were cut off; the supervisor becomes a spare.
    FENCED = "fenced"


@dataclass(frozen=True, slots=True)
class Shared:
    """What lives as long as the supervisor process, handed to each range it owns."""

    config: SupervisorConfig
    api_url: str
    gateway: GatewayBot
    publisher: Publisher
    status: ClusterStatus
    sync_context: zmq.Context[zmq.Socket[bytes]]
    async_context: zmq.asyncio.Context
    runtime_dir: str
    redis: RedisState | None
    leases: LeaseKeeper | None
    #: The sink's and gateway_send's calls (with --redis; used with --sink redis)
    streams: StreamStore | None = None
    #: The gateway endpoint (--gateway): a relay tap, given the range's shards and commands
    endpoint: GatewayEndpoint | None = None
    #: A reshard across hosts (with --redis): its record in Redis
    reshards: ReshardStore | None = None


class _Shutdown(enum.Enum):
    SIGNAL = "signal"


@dataclass(frozen=True, slots=True)
class _WorkerExited:
    slot: WorkerSlot
    code: int | None


@dataclass(frozen=True, slots=True)
class _Respawn:
    slot: WorkerSlot


@dataclass(frozen=True, slots=True)
class _Fenced:
    why: str


_Item = _Shutdown | _WorkerExited | _Respawn | _Fenced


@dataclass(slots=True)
class _Generation:
    """A reshard's new shard set, from its start until the switch (or its end)."""

    old_total: int
    plan: ClusterPlan
    book: SessionBook
    channel: EventChannel
    relay: Relay
    pool: WorkerPool
    spec: WorkerSpec
    held: HeldRuns
    fingerprints: Fingerprints
    started_at: float
    deadline: float
    ready: set[int] = field(default_factory=set)
    #: each new shard's last report (the status takes them over at the switch)
    reports: dict[int, ipc.ShardReport] = field(default_factory=dict)
    phase: ReshardPhase = ReshardPhase.STARTING
    error: str | None = None
    switched_at: float | None = None

    def status_json(self, now: float) -> dict[str, Any]:
        elapsed = (self.switched_at or now) - self.started_at
        # time left by the identify schedule: the fullest bucket's new shards not READY
        # yet, one interval each (None once the reshard has ended)
        eta: float | None = None
        if self.phase is ReshardPhase.STARTING:
            waiting = [0] * self.plan.max_concurrency
            for shard_id in self.plan.shard_ids:
                if shard_id not in self.ready:
                    waiting[shard_id % len(waiting)] += 1
            eta = round(max(waiting) * self.spec.identify_interval_s, 3)
        return {
            "phase": self.phase.value,
            "old_shards": self.old_total,
            "new_shards": self.plan.total_shards,
            "new_ready": len(self.ready),
            "guild_creates_complete": self.held.settled(self.plan.shard_ids),
            "held_events": self.held.events,
            "fingerprints": len(self.fingerprints),
            "deduplicated": self.fingerprints.matched,
            "elapsed_s": round(elapsed, 3),
            "eta_s": eta,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class _Running:
    """Everything one owned range runs with; built once by :meth:`RangeOwner._start`."""

    plan: ClusterPlan
    lease: Lease | None
    book: SessionBook
    store: SessionStore
    channel: EventChannel
    router: zmq.asyncio.Socket
    relay: Relay
    pool: WorkerPool
    coordinator: Coordinator
    arbiter: RedisArbiter | None
    control: ControlServer
    checkpointer: Checkpointer
    progress: Progress
    spec: WorkerSpec
    #: --sink redis: the stream appends and the gateway_send reader
    sink: StreamSink | None
    commands: CommandReader | None


class RangeOwner:
    """Runs one range of shards until a stop, a fatal close code or a fence."""

    def __init__(self, shared: Shared, plan: ClusterPlan, lease: Lease | None) -> None:
        self._shared = shared
        self._config = shared.config
        self._plan = plan
        self._lease = lease
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._stopping = False
        self._fenced = False
        self._exits = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._started_workers: set[int] = set()
        self._all_started = asyncio.Event()
        self._run: _Running | None = None
        #: True once a worker ran: only then is the book's view worth saving.
        self._spawned = False
        #: the new shard set while a reshard runs (and the last one, for /status)
        self._reshard: _Generation | None = None
        #: reshards that switched / were abandoned, and events dropped at switches
        self._reshards: dict[str, int] = {"switched": 0, "abandoned": 0}
        self._reshard_deduplicated = 0
        #: the sockets closed when the range ends
        self._sockets: list[zmq.Socket[Any]] = []
        #: the workers' channels closed when the range ends (a reshard adds its own)
        self._channels: list[EventChannel] = []
        #: the running set's checkpointer and gateway_send reader (a reshard's switch
        #: replaces them)
        self._checkpointing: asyncio.Task[None] | None = None
        self._commanding: asyncio.Task[None] | None = None
        #: a reshard across hosts: what /status says before this host's new set exists
        self._shared_request: dict[str, Any] | None = None
        #: started while a reshard of this layout was starting: the old set's fingerprints
        #: from its first event (the reshard's generation adopts them)
        self._early_fingerprints: Fingerprints | None = None

    @property
    def total_shards(self) -> int:
        """The shard count this range belongs to (a reshard's switch changes it)."""
        return self._plan.total_shards

    @property
    def plan(self) -> ClusterPlan:
        return self._plan

    # -- what the supervisor calls ------------------------------------------------------------

    def request_stop(self) -> None:
        self._queue.put_nowait(_Shutdown.SIGNAL)

    async def send_command(self, shard_id: int, payload: bytes) -> None:
        run = self._run
        if run is None or self._stopping:
            raise ShardNotRunningError(shard_id, "the cluster is not running")
        await run.pool.send(shard_id, payload)

    def kill_all(self) -> None:
        """The second signal's escape hatch: every worker SIGKILLed now."""
        if self._run is not None:
            self._run.pool.kill_all()

    def fence(self, why: str) -> None:
        """The lease is lost: abort every shard's connection at once, then leave the loop.

        Called from the lease keeper. SIGKILL, not STOP: a worker draining would
        close its sockets with 4000 frames while someone else may already RESUME,
        and a stuck worker would not drain at all. The kernel closes the TCP
        connections without a websocket close frame; the sessions stay resumable.
        """
        self._fenced = True
        self._stopping = True
        if self._run is not None:
            self._run.pool.kill_all()
        self._queue.put_nowait(_Fenced(why))

    async def run(self) -> Outcome:
        """Own the range; returns how it ended or raises :class:`FatalCloseError`."""
        sockets = self._sockets
        outcome: Outcome | FatalCloseError = Outcome.STOPPED
        try:
            run = await self._start(sockets)
            self._run = run
            await self._record_early(run)
            for slot in run.pool.slots.values():
                self._spawn(slot)
            self._tasks.append(asyncio.create_task(self._gate_coordinator(), name="gate"))
            self._tasks.append(asyncio.create_task(self._refresh_limit(), name="limit"))
            self._tasks.append(asyncio.create_task(self._liveness_loop(), name="liveness"))
            self._checkpointing = asyncio.create_task(run.checkpointer.run(), name="checkpoint")
            self._tasks.append(self._checkpointing)
            self._follow_shared_reshards()
            outcome = await self._main_loop()
        finally:
            try:
                await self._shutdown(graceful=not isinstance(outcome, FatalCloseError))
            finally:
                for sock in sockets:
                    sock.close(linger=0)
                for channel in self._channels:
                    channel.close()
        if isinstance(outcome, FatalCloseError):
            raise outcome
        return outcome

    # -- startup ------------------------------------------------------------------------------

    async def _start(self, sockets: list[zmq.Socket[Any]]) -> _Running:
        shared, config, plan = self._shared, self._config, self._plan
        store = SessionStore(
            config.state_dir, config.token, plan.total_shards, _range_of(plan, config)
        )
        book = SessionBook()
        saved = await self._saved_sessions(store)
        if shared.endpoint is not None:  # only shards whose guild cache is of their session
            saved = shared.endpoint.adopt(
                config.state_dir, saved, plan.shard_ids, plan.total_shards
            )
        for shard_id, session in saved.items():
            book.seed(shard_id, session)
        if shared.endpoint is not None:  # a cache saved before the resume point: its seq
            shared.endpoint.rewind(book)
        use_ipc = config.private_transport == "ipc" and zmq.has("ipc")
        channel = EventChannel(_private_endpoint(shared.runtime_dir, "events", use_ipc))
        self._channels.append(channel)
        event_endpoint = channel.endpoint
        router = shared.async_context.socket(zmq.ROUTER)
        sockets.append(router)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        command_endpoint = _bind_private(router, shared.runtime_dir, "commands", use_ipc)
        arbiter = self._make_arbiter()
        # ipc: the path is known before the bind, so the bind can wait for the workers
        # (see the module docstring); tcp binds at once on port 0.
        coordinator_endpoint = (
            f"ipc://{shared.runtime_dir}/identify" if use_ipc else "tcp://127.0.0.1:0"
        )
        limit = shared.gateway.session_start_limit
        coordinator = Coordinator(
            coordinator_endpoint,
            max_concurrency=plan.max_concurrency,
            interval_s=config.identify_interval_s,
            safety_margin_s=config.identify_margin_s,
            sent_hold_s=default_sent_hold(config.identify_interval_s),
            answer_opens=True,
            session_total=limit.total,
            session_remaining=limit.remaining,
            reset_after_s=limit.reset_after_s,
            context=shared.async_context,
            arbiter=arbiter,
        )
        if not use_ipc:
            await coordinator.start()
            coordinator_endpoint = coordinator.endpoint
        status = shared.status
        status.assign(
            plan.total_shards,
            [(w.worker_id, w.shard_ids) for w in plan.workers],
            identify_snapshot=coordinator.status_json,
        )
        sink = self._make_sink(book)
        endpoint = shared.endpoint
        relay = Relay(
            channel,
            shared.publisher,
            book,
            status.relay,
            self._on_report,
            sink=sink,
            taps=() if endpoint is None else (endpoint.tap,),
        )
        relay.start()
        if endpoint is not None:
            endpoint.attach_owner(self.send_command, plan.total_shards, plan.shard_ids)
        if sink is not None:
            sink.start()
            status.sections["sink"] = sink.status_json
        pool = WorkerPool(
            [(w.worker_id, w.shard_ids) for w in plan.workers],
            config.restart_policy,
            self._on_exit,
            router,
            on_change=status.apply_worker,
        )
        self._tasks.append(asyncio.create_task(self._router_loop(router), name="router"))
        control = ControlServer(
            config.control,
            plan.total_shards,
            plan.shard_ids,
            send=self.send_command,
            context=shared.async_context,
            admin=self.reshard_request,
            curve=config.curve,
        )
        try:
            await control.start()
        except zmq.ZMQError as exc:
            relay.stop()
            await coordinator.stop()
            raise SupervisorError(
                f"cannot bind --control {config.control}: {exc.strerror}"
            ) from None
        # With the sink, the sink's appends write the Redis checkpoints (the last seq
        # *appended*): the checkpointer keeps only the state dir.
        checkpointer = Checkpointer(
            book,
            plan.shard_ids,
            store,
            None if sink is not None else self._remote_checkpoints(),
            interval_s=config.checkpoint_interval_s,
        )
        status.sections["checkpoint"] = checkpointer.status_json
        # from the start (zeros), so /metrics has the reshard series before the first one
        status.sections["reshard"] = self._reshard_status
        publisher = shared.publisher
        status.sections["refused"] = lambda: {
            # CURVE handshakes refused (a client key not let in, a bad handshake)
            "pub": publisher.refused,
            "control": control.curve_refused,
        }
        if arbiter is not None:
            status.sections["identify_redis"] = arbiter.status_json
        spec = WorkerSpec(
            worker_id=-1,
            shard_ids=(),
            total_shards=plan.total_shards,
            token=config.token,
            intents=config.intents,
            presence=config.presence,
            large_threshold=config.large_threshold,
            gateway_url=shared.gateway.url,
            event_endpoint=event_endpoint,
            command_endpoint=command_endpoint,
            coordinator_endpoint=coordinator_endpoint,
            compression=config.compression,
            report_interval_s=config.report_interval_s,
            parent_check_interval_s=PARENT_CHECK_S,
            max_concurrency=plan.max_concurrency,
            identify_interval_s=config.identify_interval_s,
            log_level=config.log_level,
            log_json=config.log_format is LogFormat.JSON,
        )
        resuming = len(book.resume_points(plan.shard_ids))
        log.info(
            "starting %d shards of %d in %d workers (max_concurrency %d, %d to resume)",
            len(plan.shard_ids),
            plan.total_shards,
            len(plan.workers),
            plan.max_concurrency,
            resuming,
            extra={
                "fields": {
                    "event": "owner",
                    "shards": [plan.shard_ids[0], plan.shard_ids[-1]],
                    "total_shards": plan.total_shards,
                    "resuming": resuming,
                    "lease_token": None if self._lease is None else self._lease.token,
                    "control": control.endpoint,
                }
            },
        )
        progress = Progress(
            len(plan.shard_ids), identify_duration(plan, config.identify_interval_s)
        )
        progress.watch(lambda: status.shards.values(), coordinator.snapshot)
        commands = self._make_command_reader(plan) if sink is not None else None
        if commands is not None:
            status.sections["commands"] = commands.status_json
            self._commanding = asyncio.create_task(commands.run(), name="gateway-send")
            self._tasks.append(self._commanding)
        return _Running(
            plan=plan,
            lease=self._lease,
            book=book,
            store=store,
            channel=channel,
            router=router,
            relay=relay,
            pool=pool,
            coordinator=coordinator,
            arbiter=arbiter,
            control=control,
            checkpointer=checkpointer,
            progress=progress,
            spec=spec,
            sink=sink,
            commands=commands,
        )

    async def _saved_sessions(self, store: SessionStore) -> dict[int, Session]:
        """The state dir's sessions, and Redis's where it knows more (a higher seq, or only it)."""
        plan = self._plan
        saved = {s: p for s, p in store.load().items() if s in plan.shard_ids}
        redis = self._shared.redis
        if redis is None:
            return saved
        try:
            remote = await redis.load_sessions(plan.shard_ids)
        except RedisStateError as exc:
            log.warning("cannot read checkpoints from Redis (using the state dir's): %s", exc)
            return saved
        if self._config.sink is not None:
            # The sink's checkpoint is the last seq *appended*; the state dir's (the last
            # published) may be ahead of it and would skip events the streams never got.
            saved.update(remote)
            return saved
        for shard_id, session in remote.items():
            mine = saved.get(shard_id)
            if mine is None or mine.session_id != session.session_id or mine.seq < session.seq:
                saved[shard_id] = session
        return saved

    def _make_sink(self, book: SessionBook) -> StreamSink | None:
        shared, settings = self._shared, self._config.sink
        redis_settings = self._config.redis
        if settings is None or shared.streams is None or self._lease is None:
            return None
        assert redis_settings is not None  # SupervisorConfig: --sink needs --redis
        return StreamSink(
            shared.streams,
            self._lease,
            book,
            self._plan.shard_ids,
            settings,
            redis_settings.checkpoint_ttl_s,
            on_lease_lost=self.fence,
        )

    def _make_command_reader(self, plan: ClusterPlan) -> CommandReader | None:
        shared, lease = self._shared, self._lease
        if shared.streams is None or shared.redis is None or lease is None:
            return None
        return CommandReader(
            shared.streams,
            lease.shard_range,
            shared.redis.holder,
            plan.total_shards,
            plan.shard_ids,
            self.send_command,
        )

    def _make_arbiter(self) -> RedisArbiter | None:
        shared, config = self._shared, self._config
        if shared.redis is None or shared.leases is None:
            return None
        leases = shared.leases
        margin = (
            default_safety_margin(config.identify_interval_s)
            if config.identify_margin_s is None
            else config.identify_margin_s
        )
        assert config.redis is not None
        return RedisArbiter(
            shared.redis,
            lambda: leases.lease,
            max_concurrency=self._plan.max_concurrency,
            spacing_s=config.identify_interval_s + margin,
            sent_hold_s=default_sent_hold(config.identify_interval_s),
            reserve=config.redis.identify_reserve,
        )

    def _remote_checkpoints(self) -> RemoteWriter | None:
        redis, lease, settings = self._shared.redis, self._lease, self._config.redis
        if redis is None or lease is None or settings is None:
            return None
        ttl_ms = round(settings.checkpoint_ttl_s * 1000)

        async def write(sessions: Mapping[int, Session]) -> None:
            if self._fenced:
                return  # the range is someone else's now: never write under a lost lease
            await redis.checkpoint(lease, sessions, ttl_ms)

        return write

    # -- workers ------------------------------------------------------------------------------

    def _spawn(self, slot: WorkerSlot) -> None:
        run = self._run
        assert run is not None
        slot.fatal_code = None
        slot.fatal_detail = None
        _spawn_into(run.pool, run.spec, run.book, slot)
        self._spawned = True

    def _on_exit(self, slot: WorkerSlot, code: int | None) -> None:
        # Called from the sentinel's reader callback: only record and enqueue.
        slot.transition(WorkerState.EXITED)
        self._exits.set()
        gen = self._reshard
        if (
            gen is not None
            and gen.phase is ReshardPhase.STARTING
            and gen.pool.slots.get(slot.worker_id) is slot
        ):
            self._reshard_worker_exited(gen, slot, code)
            return
        if self._run is None or self._run.pool.slots.get(slot.worker_id) is not slot:
            return  # a retired set's worker (after a reshard's switch): nothing to replace
        self._shared.status.shards_lost(slot.shard_ids)
        if not self._stopping:
            self._queue.put_nowait(_WorkerExited(slot, code))

    def _on_report(self, message: ipc.ShardReport | ipc.WorkerStatus) -> None:
        run = self._run
        if run is None:
            return
        pool, status = run.pool, self._shared.status
        if isinstance(message, ipc.ShardReport):
            slot = pool.slot_of(message.shard_id)
            if slot is None:
                return
            _heard_from(slot)
            run.book.on_session(message.shard_id, message.session_id, message.resume_url)
            if message.session_started:
                run.checkpointer.soon()
                if ShardPhase.parse(message.phase) is ShardPhase.READY:
                    run.coordinator.answered(message.shard_id, slot.pid)
            if message.fatal_code is not None and slot.fatal_code is None:
                slot.fatal_code = message.fatal_code
            if status.apply_report(message):
                run.progress.update(status.ready_reported)
            return
        slot = pool.slots.get(message.worker_id)
        if slot is None or slot.pid != message.pid:
            return
        slot.last_seen = time.monotonic()
        if message.status == ipc.WorkerStatusKind.STARTED.value:
            _heard_from(slot)
            self._started_workers.add(slot.worker_id)
            if len(self._started_workers) == len(pool.slots):
                self._all_started.set()
        elif message.status == ipc.WorkerStatusKind.FATAL.value:
            if message.fatal_code is not None:
                slot.fatal_code = message.fatal_code
            slot.fatal_detail = message.detail

    async def _router_loop(self, router: zmq.asyncio.Socket) -> None:
        while True:
            frames = await router.recv_multipart()
            try:
                message = ipc.decode(frames[1:])
            except WireFormatError:
                continue
            if isinstance(message, ipc.Hello):
                # the range's workers, or a reshard's new set (distinct worker ids)
                if self._run is not None:
                    self._run.pool.on_hello(message)
                if self._reshard is not None:
                    self._reshard.pool.on_hello(message)

    async def _gate_coordinator(self) -> None:
        run = self._run
        assert run is not None
        if not run.coordinator.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_started.wait(), STARTUP_GATE_S)
            try:
                await run.coordinator.start()
            except zmq.ZMQError as exc:
                log.critical("the identify coordinator cannot bind: %s", exc.strerror)
                return
        run.progress.schedule_started()

    async def _refresh_limit(self) -> None:
        """Fetch ``GET /gateway/bot`` now and then; the coordinator (and Redis) take the fresh budget."""
        run = self._run
        assert run is not None
        shared = self._shared
        await self._sync_budget(shared.gateway)
        while True:
            await asyncio.sleep(self._config.limit_refresh_s)
            try:
                gateway = await fetch_gateway_bot(shared.api_url, self._config.token)
            except DiscordApiError as exc:
                log.warning("refreshing the session start limit failed: %s", exc)
                continue
            limit = gateway.session_start_limit
            run.coordinator.update_limit(limit.remaining, limit.reset_after_s, limit.total)
            await self._sync_budget(gateway)

    async def _sync_budget(self, gateway: GatewayBot) -> None:
        redis = self._shared.redis
        if redis is None:
            return
        limit = gateway.session_start_limit
        try:
            await redis.sync_budget(limit.remaining, limit.total, round(limit.reset_after_s * 1000))
        except RedisStateError as exc:
            log.warning("cannot sync the identify budget to Redis: %s", exc)

    async def _liveness_loop(self) -> None:
        run = self._run
        assert run is not None
        interval = self._config.report_interval_s
        timeout = self._config.liveness_timeout_s
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if run.relay.lagging(now, 2 * interval):
                continue
            for slot in run.pool.silent(now, timeout):
                limit = SPAWN_GRACE_S if slot.state is WorkerState.SPAWNING else timeout
                if now - slot.last_seen <= limit:
                    continue
                log.warning(
                    "worker %d (pid %s) sent nothing for %.1f s: killing it",
                    slot.worker_id,
                    slot.pid,
                    now - slot.last_seen,
                )
                run.pool.kill(slot)

    # -- resharding ---------------------------------------------------------------------------

    async def reshard_request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The control socket's ``{"reshard": ...}``: start one, or say how it goes."""
        value = request.get("reshard")
        if value == "status":
            gen, asked = self._reshard, self._shared_request
            if gen is None or (asked is not None and gen.plan.total_shards != asked["new_shards"]):
                return {"ok": True, "reshard": asked}
            return {"ok": True, "reshard": gen.status_json(time.monotonic())}
        shards = value.get("shards") if isinstance(value, dict) else None
        try:
            if shards == "auto":
                gateway = await fetch_gateway_bot(self._shared.api_url, self._config.token)
                shards = gateway.shards
            if isinstance(shards, bool) or not isinstance(shards, int):
                raise ReshardRefusedError(
                    'a reshard request is {"reshard": {"shards": N}} (or "auto"), '
                    'or {"reshard": "status"}'
                )
            if self._shared.reshards is not None:
                return {"ok": True, "reshard": await self.start_shared_reshard(shards)}
            gen = self.start_reshard(shards)
        except (ReshardRefusedError, DiscordApiError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "reshard": gen.status_json(time.monotonic())}

    def _check_reshard(self, new_total: int) -> _Running:
        run = self._run
        if run is None or self._stopping:
            raise ReshardRefusedError("the cluster is not running")
        if self._reshard is not None and self._reshard.phase is ReshardPhase.STARTING:
            raise ReshardRefusedError(
                f"a reshard to {self._reshard.plan.total_shards} shards is already running"
            )
        if new_total == run.plan.total_shards:
            raise ReshardRefusedError(f"the cluster already runs {new_total} shards")
        self._check_endpoint()
        return run

    def _check_endpoint(self) -> None:
        if self._shared.endpoint is not None:
            raise ReshardRefusedError(
                "resharding is not supported with --gateway (its clients identify against the "
                "shard count): restart the cluster with --shards N instead"
            )

    def start_reshard(self, new_total: int) -> _Generation:
        """Bring up ``new_total`` shards beside the running ones; the switch comes by itself.

        One host without Redis (with Redis: :meth:`start_shared_reshard`).
        """
        run = self._check_reshard(new_total)
        if self._shared.reshards is not None:
            raise ReshardRefusedError(
                "with --redis a reshard goes through Redis: use the control request "
                "(`cluster reshard`)"
            )
        old = run.plan
        if old.shard_ids != tuple(range(old.total_shards)):
            raise ReshardRefusedError("only a supervisor that runs every shard can reshard")
        budget = run.coordinator.snapshot()
        # The reserve is the old set's size: a reshard abandoned later must still be
        # able to identify the old set again.
        if budget.remaining < new_total + old.total_shards:
            raise ReshardRefusedError(
                _budget_refusal(budget.remaining, new_total, old.total_shards)
            )
        gen = self._begin(new_total, None, shared=False)
        self._tasks.append(asyncio.create_task(self._watch_reshard(gen), name="reshard"))
        return gen

    async def start_shared_reshard(self, new_total: int) -> dict[str, Any]:
        """With Redis: write the reshard's record; every owner (this one too) takes part."""
        run = self._check_reshard(new_total)
        shared = self._shared
        store, redis = shared.reshards, shared.redis
        assert store is not None and redis is not None
        hosts, index = self._host_slot(run)
        if index is None:
            raise ReshardRefusedError(
                "with --redis, resharding needs every host started with --shard-ids auto "
                "--hosts H (this one runs a range of its own)"
            )
        if new_total < hosts:
            raise ReshardRefusedError(f"{new_total} shards cannot cover {hosts} hosts")
        old = run.plan.total_shards
        try:
            budget = await redis.budget()
            if budget is not None and budget.remaining < new_total + old:
                raise ReshardRefusedError(_budget_refusal(budget.remaining, new_total, old))
            await store.begin(secrets.token_hex(4), old, new_total, hosts)
        except ReshardBusyError as exc:
            raise ReshardRefusedError(str(exc)) from None
        except RedisStateError as exc:
            raise ReshardRefusedError(f"Redis: {exc}") from None
        log.info("reshard %d -> %d shards over %d hosts: recorded in Redis", old, new_total, hosts)
        self._shared_request = {
            "phase": "starting",
            "old_shards": old,
            "new_shards": new_total,
            "new_ready": 0,
            "hosts": hosts,
        }
        return self._shared_request

    def _host_slot(self, run: _Running) -> tuple[int, int | None]:
        """(H, which of the layout's H ranges this owner runs) for a reshard across hosts."""
        settings = self._config.redis
        plan = run.plan
        own = (plan.shard_ids[0], plan.shard_ids[-1])
        hosts = settings.hosts if settings is not None and settings.hosts is not None else 1
        return hosts, reshard_hosts.own_index(own, plan.total_shards, hosts)

    def _follow_shared_reshards(self) -> None:
        """With Redis: take part in every reshard recorded there (cluster/reshard_hosts.py)."""
        shared, run = self._shared, self._run
        if shared.reshards is None or shared.leases is None or run is None:
            return
        hosts, index = self._host_slot(run)
        if index is None:
            return
        interval = self._config.identify_interval_s
        max_concurrency = run.plan.max_concurrency

        def deadline_s(new_total: int, new_range: ShardRange) -> float:
            size = new_range[1] - new_range[0] + 1
            windows = -(-size // max_concurrency) if size else 0
            # the identify schedule of the whole new set (the buckets are shared)
            windows = max(windows, -(-new_total // max_concurrency) // hosts)
            return 2 * windows * interval + RESHARD_GRACE_S

        self._tasks.append(
            asyncio.create_task(
                reshard_hosts.follow_reshards(
                    self, shared.reshards, shared.leases, index, hosts, deadline_s
                ),
                name="reshard-hosts",
            )
        )

    # -- a reshard across hosts: this owner's part (cluster.reshard_hosts.ReshardHost) ---------

    async def _record_early(self, run: _Running) -> None:
        """A reshard of this layout is starting (this host restarted, or took a range over):
        the old set records from its first event, the replay of what it missed included."""
        store = self._shared.reshards
        if store is None or self._host_slot(run)[1] is None:
            return
        try:
            record = await store.read()
        except RedisStateError:
            return
        if (
            record is not None
            and record.phase is SharedPhase.STARTING
            and record.old_shards == run.plan.total_shards
        ):
            self._early_fingerprints = Fingerprints(shared=True)
            run.relay.publish_with(recorder=self._early_fingerprints.record)
            log.info("a reshard to %d shards is starting: recording from now", record.new_shards)

    def stop_recording(self) -> None:
        if self._early_fingerprints is not None and self._run is not None:
            self._early_fingerprints = None
            self._run.relay.publish_with()

    def begin_generation(self, new_total: int, new_range: ShardRange) -> Fingerprints:
        gen = self._begin(new_total, new_range, shared=True, start=False)
        return gen.fingerprints

    def start_generation(self) -> None:
        gen = self._reshard
        if gen is not None and gen.phase is ReshardPhase.STARTING:
            self._start_generation(gen)

    def generation_state(self) -> tuple[bool, str | None]:
        gen = self._reshard
        if gen is None:
            return False, "the new set is gone"
        if gen.phase is ReshardPhase.ABANDONED:
            return False, gen.error or "abandoned"
        if self._stopping:
            return False, "the host is stopping"
        shard_ids = gen.plan.shard_ids
        return len(gen.ready) == len(shard_ids) and gen.held.settled(shard_ids), None

    def abandon_generation(self, why: str) -> None:
        gen = self._reshard
        if gen is not None:
            self._abandon(gen, why)
        self._shared_request = None

    async def stop_old_set(self) -> None:
        run = self._run
        if run is None:
            return
        self._stop_old(run)
        if run.commands is not None and self._commanding is not None:
            self._commanding.cancel()  # the new range's reader starts at the switch
        if run.sink is not None and not await run.sink.close(SINK_CLOSE_S):
            log.error(
                "reshard: the old set's sink could not append %d events",
                run.sink.pending_events + run.sink.in_flight,
            )

    def take_over(self) -> None:
        run, gen = self._run, self._reshard
        if run is None or gen is None or gen.phase is not ReshardPhase.STARTING:
            return
        shared = self._shared
        if shared.leases is not None and shared.leases.lease is not None:
            self._lease = shared.leases.lease
        self._take_over(run, gen)
        self._shared_request = None
        self._tasks.append(asyncio.create_task(self._retire(run), name="reshard-retire"))
        self._follow_shared_reshards()  # the next reshard, as range i of the new layout

    # -- the new set --------------------------------------------------------------------------

    def _begin(
        self, new_total: int, new_range: ShardRange | None, *, shared: bool, start: bool = True
    ) -> _Generation:
        run = self._run
        assert run is not None
        self._check_endpoint()
        config, owner_shared = self._config, self._shared
        old = run.plan
        try:
            plan = plan_cluster(
                new_total, new_range, config.workers, old.max_concurrency, os.cpu_count() or 1
            )
        except PlanError as exc:
            raise ReshardRefusedError(str(exc)) from None
        use_ipc = config.private_transport == "ipc" and zmq.has("ipc")
        channel = EventChannel(
            _private_endpoint(owner_shared.runtime_dir, f"events-{new_total}", use_ipc)
        )
        self._channels.append(channel)
        endpoint = channel.endpoint
        book = SessionBook()
        held = HeldRuns()
        fingerprints = Fingerprints(shared=shared)
        if shared and self._early_fingerprints is not None:
            fingerprints, self._early_fingerprints = self._early_fingerprints, None

        def on_report(message: ipc.ShardReport | ipc.WorkerStatus) -> None:
            # this set's reports (`gen` is bound below, before any worker starts); a
            # later reshard's set has its own
            self._on_generation_report(gen, message)

        relay = Relay(channel, owner_shared.publisher, book, owner_shared.status.relay, on_report)
        relay.hold(held)
        base = max(run.pool.slots) + 1
        pool = WorkerPool(
            [(base + w.worker_id, w.shard_ids) for w in plan.workers],
            config.restart_policy,
            self._on_exit,
            run.router,
        )
        spec = replace(run.spec, total_shards=new_total, event_endpoint=endpoint)
        now = time.monotonic()
        deadline = now + 2 * identify_duration(plan, config.identify_interval_s) + RESHARD_GRACE_S
        gen = _Generation(
            old.total_shards,
            plan,
            book,
            channel,
            relay,
            pool,
            spec,
            held,
            fingerprints,
            now,
            deadline,
        )
        if self._reshard is not None:
            self._reshard_deduplicated += self._reshard.fingerprints.matched
        self._reshard = gen
        run.relay.publish_with(recorder=fingerprints.record)
        relay.start()
        owner_shared.status.sections["reshard"] = self._reshard_status
        if start:
            self._start_generation(gen)
        return gen

    def _start_generation(self, gen: _Generation) -> None:
        """The new set's workers start (its relay holds their events)."""
        for slot in gen.pool.slots.values():
            _spawn_into(gen.pool, gen.spec, gen.book, slot)
        plan = gen.plan
        log.info(
            "resharding %d -> %d shards: shards %d-%d identify beside the running ones "
            "(about %.0f s by the identify schedule)",
            gen.old_total,
            plan.total_shards,
            plan.shard_ids[0],
            plan.shard_ids[-1],
            identify_duration(plan, self._config.identify_interval_s),
        )

    def _reshard_status(self) -> dict[str, Any]:
        gen = self._reshard
        body: dict[str, Any] = {
            "switched_total": self._reshards["switched"],
            "abandoned_total": self._reshards["abandoned"],
            "deduplicated_total": self._reshard_deduplicated
            + (0 if gen is None else gen.fingerprints.matched),
        }
        if gen is not None:
            body.update(gen.status_json(time.monotonic()))
        return body

    def _on_generation_report(
        self, gen: _Generation, message: ipc.ShardReport | ipc.WorkerStatus
    ) -> None:
        if gen.phase is ReshardPhase.SWITCHED:
            self._on_report(message)  # the new set is the running one now
            return
        if isinstance(message, ipc.ShardReport):
            slot = gen.pool.slot_of(message.shard_id)
            if slot is None:
                return
            _heard_from(slot)
            gen.reports[message.shard_id] = message
            gen.book.on_session(message.shard_id, message.session_id, message.resume_url)
            ready = ShardPhase.parse(message.phase) is ShardPhase.READY
            if message.session_started and ready and self._run is not None:
                # the buckets are shared: the running set's coordinator spaces both sets
                self._run.coordinator.answered(message.shard_id, slot.pid)
            if ready:
                gen.ready.add(message.shard_id)
            else:
                gen.ready.discard(message.shard_id)
            if message.fatal_code is not None and gen.phase is ReshardPhase.STARTING:
                self._abandon(gen, explain_fatal(message.fatal_code, self._config.intents))
            return
        slot = gen.pool.slots.get(message.worker_id)
        if slot is not None and slot.pid == message.pid:
            _heard_from(slot)

    def _reshard_worker_exited(self, gen: _Generation, slot: WorkerSlot, code: int | None) -> None:
        if gen.phase is not ReshardPhase.STARTING or self._stopping:
            return
        if code == ExitCode.FATAL:
            self._abandon(gen, f"a worker of the new set stopped on a fatal close code ({code})")
            return
        log.warning(
            "reshard: worker %d of the new set exited (%s): restarting it; its shards resume",
            slot.worker_id,
            describe_exit(code),
        )
        gen.relay.drain()
        slot.transition(WorkerState.BACKOFF)
        _spawn_into(gen.pool, gen.spec, gen.book, slot)

    async def _watch_reshard(self, gen: _Generation) -> None:
        try:
            await self._follow_reshard(gen)
        except Exception:
            log.exception("reshard to %d shards failed", gen.plan.total_shards)
            self._abandon(gen, "an internal error (see the log)")

    async def _follow_reshard(self, gen: _Generation) -> None:
        while gen.phase is ReshardPhase.STARTING and not self._stopping:
            await asyncio.sleep(RESHARD_POLL_S)
            run = self._run
            if run is None:
                return
            shard_ids = gen.plan.shard_ids
            if len(gen.ready) == len(shard_ids) and gen.held.settled(shard_ids):
                self._switch(run, gen)
                await self._retire(run)
                return
            if time.monotonic() > gen.deadline:
                self._abandon(gen, "the new set was not ready by the deadline")
            elif run.coordinator.snapshot().exhausted:
                self._abandon(gen, "the identify budget ran out before every new shard was ready")

    def _abandon(self, gen: _Generation, why: str) -> None:
        """Give the reshard up: the new set's workers end their sessions; the old set runs on."""
        if gen.phase is not ReshardPhase.STARTING:
            return
        gen.phase = ReshardPhase.ABANDONED
        gen.error = why
        self._reshards["abandoned"] += 1
        log.error("reshard to %d shards abandoned: %s", gen.plan.total_shards, why)
        if self._run is not None:
            self._run.relay.publish_with()
        gen.relay.discard()
        self._tasks.append(
            asyncio.create_task(
                self._stop_set(gen.pool, gen.relay, gen.channel), name="reshard-end"
            )
        )

    def _switch(self, run: _Running, gen: _Generation) -> None:
        """One host: the new set takes over, in one step of the event loop (cluster/reshard.py)."""
        self._stop_old(run)
        self._take_over(run, gen)

    def _stop_old(self, run: _Running) -> None:
        """The old set publishes nothing more (its workers are ended by :meth:`_retire`)."""
        run.relay.drain()  # everything the old set sent until now is published
        run.relay.discard()
        if self._checkpointing is not None:
            self._checkpointing.cancel()  # its sessions end: nothing to resume from

    def _take_over(self, run: _Running, gen: _Generation) -> None:
        """The marker, the held events not published yet, then the new set publishes."""
        shared, config, status = self._shared, self._config, self._shared.status
        held = gen.held.take_all()
        contiguous: dict[int, int] = {}
        for h in held:
            contiguous[h.shard_id] = max(contiguous.get(h.shard_id, 1), h.first_seq + len(h.events))
        shards: dict[int, tuple[str | None, int]] = {}
        for shard_id in gen.plan.shard_ids:
            point = gen.book.resume_point(shard_id)
            session = None if point is None else point.session_id
            shards[shard_id] = (session, contiguous.get(shard_id, 1))
        switched_at = time.time()
        marker = marker_payload(gen.old_total, gen.plan.total_shards, switched_at, shards)
        shared.publisher.publish(MARKER_TOPIC, MARKER_HEADER, marker)
        sink = self._switch_sink(gen, marker)
        gen.relay.publish_with(event_filter=gen.fingerprints.take)
        for h in held:
            gen.relay.publish_run(h.shard_id, h.epoch, h.first_seq, h.events)
        shared.publisher.flush()
        relay = gen.relay
        asyncio.get_running_loop().call_later(
            SWITCH_WINDOW_S,
            lambda: relay.publish_with() if relay.mode is RelayMode.PUBLISH else None,
        )
        store = SessionStore(
            config.state_dir, config.token, gen.plan.total_shards, _range_of(gen.plan, config)
        )
        checkpointer = Checkpointer(
            gen.book,
            gen.plan.shard_ids,
            store,
            None if sink is not None else self._remote_checkpoints(),
            interval_s=config.checkpoint_interval_s,
        )
        status.assign(
            gen.plan.total_shards,
            [(w.worker_id, w.shard_ids) for w in gen.pool.slots.values()],
            identify_snapshot=run.coordinator.status_json,
        )
        for slot in run.pool.slots.values():
            slot.on_change = unwatched  # the status shows the new set from now on
        for slot in gen.pool.slots.values():
            slot.on_change = status.apply_worker
            status.apply_worker(slot)
        for report in gen.reports.values():
            status.apply_report(report)
        status.sections["checkpoint"] = checkpointer.status_json
        run.control.total_shards = gen.plan.total_shards
        run.control.local_shard_ids = frozenset(gen.plan.shard_ids)
        commands = self._make_command_reader(gen.plan) if sink is not None else None
        if commands is not None:
            status.sections["commands"] = commands.status_json
            self._commanding = asyncio.create_task(commands.run(), name="gateway-send")
            self._tasks.append(self._commanding)
        self._run = replace(
            run,
            lease=self._lease,
            sink=sink,
            commands=commands,
            plan=gen.plan,
            book=gen.book,
            store=store,
            channel=gen.channel,
            relay=gen.relay,
            pool=gen.pool,
            checkpointer=checkpointer,
            spec=gen.spec,
        )
        self._plan = gen.plan
        self._checkpointing = asyncio.create_task(checkpointer.run(), name="checkpoint")
        self._tasks.append(self._checkpointing)
        checkpointer.soon()
        gen.phase = ReshardPhase.SWITCHED
        gen.switched_at = time.monotonic()
        self._reshards["switched"] += 1
        if shared.redis is None:  # with Redis, its layout key says it for every host
            try:
                save_layout(config.state_dir, Layout(gen.plan.total_shards, gen.old_total))
            except OSError as exc:
                log.error("reshard: cannot save the new layout to %s: %s", config.state_dir, exc)
        log.info(
            "reshard: switched from %d to %d shards after %.1f s (%d held events published, "
            "%d duplicates dropped so far)",
            gen.old_total,
            gen.plan.total_shards,
            gen.switched_at - gen.started_at,
            sum(len(h.events) for h in held),
            gen.relay.filtered,
        )

    def _switch_sink(self, gen: _Generation, marker: bytes) -> StreamSink | None:
        """With --sink redis: the new set's sink (the new lease), and the marker appended."""
        shared, settings = self._shared, self._config.sink
        if settings is None or shared.streams is None or self._lease is None:
            return None
        self._plan = gen.plan  # the sink's shards
        sink = self._make_sink(gen.book)
        if sink is None:
            return None
        gen.relay.attach_sink(sink)
        sink.start()
        shared.status.sections["sink"] = sink.status_json
        streams = shared.streams
        data = dispatch_encoder(settings.encoding)(0, marker)

        async def append_marker() -> None:
            try:
                await streams.append_marker(MARKER_TOPIC.decode(), data)
            except RedisStateError as exc:
                log.error("reshard: the marker did not reach the sink: %s", exc)

        self._tasks.append(asyncio.create_task(append_marker(), name="reshard-marker"))
        return sink

    async def _retire(self, old: _Running) -> None:
        """After the switch: the old set's sessions end (close 1000), its channel goes."""
        await self._stop_set(old.pool, old.relay, old.channel, end_sessions=True)

    async def _stop_set(
        self,
        pool: WorkerPool,
        relay: Relay,
        channel: EventChannel,
        *,
        end_sessions: bool = True,
    ) -> None:
        deadline = time.monotonic() + self._config.stop_timeout_s
        for slot in pool.alive():
            if slot.state in (WorkerState.SPAWNING, WorkerState.RUNNING):
                slot.transition(WorkerState.STOPPING)
                if not await pool.stop_worker(slot, end_sessions=end_sessions):
                    pool.terminate(slot)
        await self._wait_exits(pool, deadline)
        if pool.alive():
            pool.kill_all()
            await self._wait_exits(pool, time.monotonic() + 2.0)
        relay.drain()
        relay.stop()
        channel.close()
        with contextlib.suppress(ValueError):
            self._channels.remove(channel)

    # -- the loop -----------------------------------------------------------------------------

    async def _main_loop(self) -> Outcome | FatalCloseError:
        while True:
            item = await self._queue.get()
            if isinstance(item, _Shutdown):
                return Outcome.STOPPED
            if isinstance(item, _Fenced):
                return Outcome.FENCED
            if isinstance(item, _Respawn):
                if item.slot.state is WorkerState.BACKOFF and not self._stopping:
                    self._spawn(item.slot)
                continue
            fatal = await self._handle_exit(item.slot, item.code)
            if fatal is not None:
                return fatal

    async def _handle_exit(self, slot: WorkerSlot, code: int | None) -> FatalCloseError | None:
        run = self._run
        assert run is not None
        run.relay.drain()  # the dead worker's last messages, before deciding anything
        if code == ExitCode.FATAL:
            deadline = time.monotonic() + _FATAL_DETAIL_WAIT_S
            while slot.fatal_code is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                run.relay.drain()
        decision = slot.tracker.on_exit(code, slot.started_at, time.monotonic())
        if decision.action is RestartAction.FATAL:
            line = (
                explain_fatal(slot.fatal_code, self._config.intents)
                if slot.fatal_code is not None
                else "a worker stopped on a fatal gateway close code"
            )
            self._shared.status.fatal_reason = line
            log.error("worker %d: %s; stopping the cluster", slot.worker_id, line)
            return FatalCloseError(line, slot.fatal_code)
        if decision.action is RestartAction.GIVE_UP:
            slot.transition(WorkerState.GIVEN_UP)
            log.error(
                "worker %d (shards %d-%d) died %d times in a row quickly (last exit %s): given up",
                slot.worker_id,
                slot.shard_ids[0],
                slot.shard_ids[-1],
                slot.tracker.quick_deaths,
                code,
            )
            return None
        slot.transition(WorkerState.BACKOFF)
        log.warning(
            "worker %d exited (%s): restarting in %.2f s; its shards resume",
            slot.worker_id,
            describe_exit(code),
            decision.delay_s,
        )
        if decision.delay_s <= 0:
            self._spawn(slot)
        else:
            loop = asyncio.get_running_loop()
            self._timers.append(
                loop.call_later(decision.delay_s, self._queue.put_nowait, _Respawn(slot))
            )
        return None

    # -- shutdown -----------------------------------------------------------------------------

    async def _shutdown(self, graceful: bool) -> None:
        self._stopping = True
        for timer in self._timers:
            timer.cancel()
        run = self._run
        gen = self._reshard
        if gen is not None and gen.phase is ReshardPhase.STARTING:
            gen.phase = ReshardPhase.ABANDONED
            gen.error = "the cluster stopped"
            gen.pool.kill_all()
            await self._wait_exits(gen.pool, time.monotonic() + 2.0)
        if run is not None:
            run.progress.finish()
            with contextlib.suppress(Exception):
                await run.control.stop()
            if self._fenced:
                run.pool.kill_all()
                await self._wait_exits(run.pool, time.monotonic() + 2.0)
            else:
                await self._stop_workers(run.pool)
        await cancel_and_wait(self._tasks)
        if run is None:
            return
        run.relay.drain()
        run.relay.stop()
        if run.sink is not None:
            if graceful and not self._fenced:
                if not await run.sink.close(SINK_CLOSE_S):
                    log.warning(
                        "the sink could not append %d events before stopping; the next "
                        "owner resumes from the last appended seq and appends them then",
                        run.sink.pending_events + run.sink.in_flight,
                    )
            else:
                await run.sink.stop()
        await run.coordinator.stop()
        if self._shared.endpoint is not None:
            save = graceful and self._spawned and not self._fenced
            await self._shared.endpoint.detach_owner(self._config.state_dir if save else None)
        status = self._shared.status
        for name in ("checkpoint", "identify_redis", "sink", "commands", "refused", "reshard"):
            status.sections.pop(name, None)
        # Without a worker having run, the book holds only what was loaded: re-saving
        # it would make old sessions look fresh. A fenced owner writes nothing more.
        if graceful and self._spawned and not self._fenced and await run.checkpointer.write():
            log.info(
                "saved %d sessions to %s for resume",
                len(run.checkpointer.checkpointed),
                run.store.path,
            )

    async def _stop_workers(self, pool: WorkerPool) -> None:
        deadline = time.monotonic() + self._config.stop_timeout_s
        for slot in pool.alive():
            if slot.state not in (WorkerState.SPAWNING, WorkerState.RUNNING):
                continue  # it exited while an earlier one was being stopped
            slot.transition(WorkerState.STOPPING)
            if not await pool.stop_worker(slot):
                pool.terminate(slot)
        await self._wait_exits(pool, deadline)
        if pool.alive():
            log.warning(
                "workers %s did not stop in time: killing them",
                [s.worker_id for s in pool.alive()],
            )
            pool.kill_all()
            await self._wait_exits(pool, time.monotonic() + 2.0)

    async def _wait_exits(self, pool: WorkerPool, deadline: float) -> None:
        while pool.alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._exits.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exits.wait(), left)


def _heard_from(slot: WorkerSlot) -> None:
    """A worker spoke: it is alive now, and running once it says anything at all."""
    slot.last_seen = time.monotonic()
    if slot.state is WorkerState.SPAWNING:
        slot.transition(WorkerState.RUNNING)


def _spawn_into(pool: WorkerPool, spec: WorkerSpec, book: SessionBook, slot: WorkerSlot) -> None:
    """Start ``slot``'s worker, each of its shards resuming from what ``book`` published."""
    pool.spawn(
        slot,
        replace(
            spec,
            worker_id=slot.worker_id,
            shard_ids=slot.shard_ids,
            sessions=book.resume_points(slot.shard_ids),
        ),
    )


def _range_of(plan: ClusterPlan, config: SupervisorConfig) -> tuple[int, int] | None:
    """The range for the state dir's file name (None: all shards, one file)."""
    first, last = plan.shard_ids[0], plan.shard_ids[-1]
    if (first, last) == (0, plan.total_shards - 1):
        return None
    return (first, last)


def _private_endpoint(runtime_dir: str, name: str, ipc: bool) -> str:
    """Where a private socket binds: the private runtime directory (ipc://), else loopback."""
    return f"ipc://{runtime_dir}/{name}" if ipc else "tcp://127.0.0.1:0"


def _bind_private(sock: zmq.Socket[Any], runtime_dir: str, name: str, ipc: bool) -> str:
    """Bind in the private runtime directory (ipc://), else on loopback port 0."""
    sock.bind(_private_endpoint(runtime_dir, name, ipc))
    endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return endpoint


def _budget_refusal(remaining: int, new_total: int, old_total: int) -> str:
    return (
        f"identify budget: {remaining} session starts left, the new set "
        f"needs {new_total} plus a reserve of {old_total} (the running set); "
        "try again after the daily reset"
    )


def describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
