"""The supervisor of ``cluster up``: plan, spawn, watch, relay, serve, drain, save.

Startup (:meth:`Supervisor.run`): the embedded simulator (``--simulate``) ->
``GET /gateway/bot`` -> :func:`cluster.planner.plan_cluster` -> sockets in a
private runtime directory (ipc://): the workers' PULL (:mod:`cluster.relay`),
the command ROUTER, the identify coordinator (embedded, or ``--coordinator``)
-> the XPUB (:mod:`cluster.publisher`), the HTTP endpoint
(:class:`cluster.http.HealthServer`) and the control socket -> the worker
processes (:mod:`cluster.workers`), each given the saved sessions of its shards.

The embedded coordinator binds once every worker has said it started (or
after a short grace): the workers' requests wait in their ZeroMQ queues
until then, so every identify bucket has its whole queue from the first
window on and the last shard is ready ``(windows - 1) * interval`` after the
first IDENTIFY, however unevenly the worker processes came up.

Then one loop drains one queue (STYLE.md 5): signal handlers, worker exits
and restart timers only enqueue. A worker that exits unasked is replaced
(:class:`cluster.restart_policy.RestartTracker`: at once, with backoff, or
given up); its replacement RESUMEs each shard from the last seq this
supervisor *published* (:class:`cluster.relay.SessionBook`), so every
``(shard_id, seq)`` reaches the PUB socket exactly once. A worker silent for
``liveness_intervals`` report intervals (while the relay is caught up) is
SIGKILLed and replaced. Exit code 78 from a worker is a fatal close code:
the cluster stops and :class:`FatalCloseError` carries the one line.

Shutdown (SIGINT/SIGTERM, or fatal): stop taking commands, STOP every worker,
wait for their final reports and exits until ``stop_timeout_s``, SIGKILL what
remains, drain the channel, save the sessions (:class:`cluster.sessions.SessionStore`),
close every socket with linger 0. A second signal exits at once (status 130).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import importlib.util
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Final

import zmq
import zmq.asyncio

from cluster.config import LogFormat, SupervisorConfig
from cluster.coordinator import Coordinator
from cluster.discord_api import DiscordApiError, GatewayBot, fetch_gateway_bot
from cluster.http import HealthServer
from cluster.identify_scheduler import default_sent_hold
from cluster.planner import ClusterPlan, PlanError, identify_duration, plan_cluster
from cluster.progress import Progress
from cluster.publisher import Publisher
from cluster.relay import Relay, SessionBook
from cluster.restart_policy import WORKER_EXIT_FATAL, RestartAction
from cluster.sessions import SessionStore
from cluster.status import ClusterStatus
from cluster.workers import (
    CommandRoutingError,
    ShardNotRunningError,
    UnknownShardError,
    WorkerPool,
    WorkerSlot,
    WorkerState,
)
from protocol import ipc
from protocol.errors import WireFormatError
from protocol.gateway import explain_fatal
from worker.spec import WorkerSpec

__all__ = [
    "CommandRoutingError",
    "FatalCloseError",
    "ShardNotRunningError",
    "Supervisor",
    "SupervisorError",
    "UnknownShardError",
]

log = logging.getLogger("cluster.supervisor")

#: Exit status after a second SIGINT/SIGTERM (128 + SIGINT, as shells do).
EXIT_INTERRUPTED: Final = 130
#: How long the embedded coordinator waits for every worker to start before it binds anyway.
STARTUP_GATE_S: Final = 10.0
#: A worker that has not reported at all yet gets this long (spawn + imports) before it is "silent".
SPAWN_GRACE_S: Final = 30.0
#: Waiting for a fatal worker's last word (the WORKER_STATUS naming the close code).
_FATAL_DETAIL_WAIT_S: Final = 1.0


class SupervisorError(Exception):
    """The cluster cannot run or had to stop; the message is the one line for the operator."""


class FatalCloseError(SupervisorError):
    """A shard hit a fatal close code (4004, 4010-4014); the message names cause and fix."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


class _Shutdown(enum.Enum):
    SIGNAL = "signal"


@dataclass(frozen=True, slots=True)
class _WorkerExited:
    slot: WorkerSlot
    code: int | None


@dataclass(frozen=True, slots=True)
class _Respawn:
    slot: WorkerSlot


_Item = _Shutdown | _WorkerExited | _Respawn


class Supervisor:
    """One ``cluster up``: call :meth:`run` once; it returns after a graceful stop."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.book = SessionBook()
        self.status: ClusterStatus | None = None
        self.plan: ClusterPlan | None = None
        self.http: HealthServer | None = None
        self.publisher: Publisher | None = None
        self.coordinator: Coordinator | None = None
        self._pool: WorkerPool | None = None
        self._relay: Relay | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._stopping = False
        self._signalled = False
        self._exits = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._started_workers: set[int] = set()
        self._all_started = asyncio.Event()
        self._progress: Progress | None = None
        self._spec_base: dict[str, Any] = {}
        self._control: Any = None
        self._token = config.token
        self._runtime_dir: str | None = None
        #: True once a worker ran: only then is the book's view worth saving.
        self._spawned = False

    # -- the public surface ------------------------------------------------------------------

    async def send_command(self, shard_id: int, payload: bytes) -> None:
        """Hand a gateway payload to ``shard_id``'s worker (it goes out through the send limiter).

        Raises :class:`UnknownShardError` (not ours) or :class:`ShardNotRunningError`.
        """
        if self._pool is None or self._stopping:
            raise ShardNotRunningError(shard_id, "the cluster is not running")
        await self._pool.send(shard_id, payload)

    async def run(self) -> None:
        """Run until SIGINT/SIGTERM (returns) or a fatal condition (raises :class:`SupervisorError`)."""
        loop = asyncio.get_running_loop()
        runtime_dir = tempfile.mkdtemp(prefix="titanium-")
        self._runtime_dir = runtime_dir
        sync_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        async_context = zmq.asyncio.Context()
        sockets: list[zmq.Socket[Any]] = []
        simulator: Any = None
        store: SessionStore | None = None
        fatal: FatalCloseError | None = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            api_url, token = self.config.api_url, self._token
            if self.config.simulate is not None:
                simulator = await self._start_simulator()
                api_url = simulator.rest_url
            gateway = await self._fetch(api_url, token)
            plan = self._plan(gateway)
            self.plan = plan
            store = SessionStore(
                self.config.state_dir, token, plan.total_shards, self.config.shard_range
            )
            self._load_sessions(store, plan)
            use_ipc = self.config.private_transport == "ipc" and zmq.has("ipc")
            pull: zmq.Socket[bytes] = sync_context.socket(zmq.PULL)
            sockets.append(pull)
            pull.setsockopt(zmq.LINGER, 0)
            pull.setsockopt(zmq.RCVHWM, 10_000)
            event_endpoint = _bind_private(pull, runtime_dir, "events", use_ipc)
            router = async_context.socket(zmq.ROUTER)
            sockets.append(router)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            command_endpoint = _bind_private(router, runtime_dir, "commands", use_ipc)
            coordinator_endpoint = self._make_coordinator(
                plan, gateway, runtime_dir, use_ipc, async_context
            )
            status = ClusterStatus(
                plan.total_shards,
                [(w.worker_id, w.shard_ids) for w in plan.workers],
                identify_snapshot=None
                if self.coordinator is None
                else self.coordinator.status_json,
            )
            self.status = status
            self.publisher = self._bind_publisher(sync_context)
            self._relay = Relay(pull, self.publisher, self.book, status.relay, self._on_report)
            self._relay.start()
            self._pool = WorkerPool(
                [(w.worker_id, w.shard_ids) for w in plan.workers],
                self.config.restart_policy,
                self._on_exit,
                router,
                on_change=status.apply_worker,
            )
            self._tasks.append(asyncio.create_task(self._router_loop(router), name="router"))
            if self.coordinator is not None and not use_ipc:
                await self.coordinator.start()
                coordinator_endpoint = self.coordinator.endpoint
            await self._start_http(status)
            await self._start_control(plan, async_context)
            self._log_listening(plan, gateway)

            self._spec_base = {
                "total_shards": plan.total_shards,
                "token": token,
                "intents": self.config.intents,
                "gateway_url": gateway.url,
                "event_endpoint": event_endpoint,
                "command_endpoint": command_endpoint,
                "coordinator_endpoint": coordinator_endpoint,
                "compression": self.config.compression,
                "report_interval_s": self.config.report_interval_s,
                "max_concurrency": plan.max_concurrency,
                "identify_interval_s": self.config.identify_interval_s,
                "log_level": self.config.log_level,
                "log_json": self.config.log_format is LogFormat.JSON,
            }
            resuming = len(self.book.resume_points(plan.shard_ids))
            self._progress = Progress(
                len(plan.shard_ids), identify_duration(plan, self.config.identify_interval_s)
            )
            log.info(
                "starting %d shards of %d in %d workers (max_concurrency %d, %d to resume)",
                len(plan.shard_ids),
                plan.total_shards,
                len(plan.workers),
                plan.max_concurrency,
                resuming,
            )
            for slot in self._pool.slots.values():
                self._spawn(slot)
            if self.coordinator is None:
                self._progress.schedule_started()  # an external coordinator: no gate here
            else:
                self._tasks.append(asyncio.create_task(self._gate_coordinator(), name="gate"))
                self._tasks.append(
                    asyncio.create_task(self._refresh_limit(api_url, token), name="limit")
                )
            self._tasks.append(asyncio.create_task(self._liveness_loop(), name="liveness"))
            fatal = await self._main_loop()
        finally:
            try:
                await self._shutdown(store, fatal is None)
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
                for sock in sockets:
                    sock.close(linger=0)
                if self.publisher is not None:
                    self.publisher.close()
                if self.coordinator is not None:
                    await self.coordinator.stop()
                if self.http is not None:
                    await self.http.stop()
                if simulator is not None:
                    await simulator.stop()
                async_context.term()
                sync_context.term()
                shutil.rmtree(runtime_dir, ignore_errors=True)
        if fatal is not None:
            raise fatal

    # -- startup ----------------------------------------------------------------------------

    def _load_sessions(self, store: SessionStore, plan: ClusterPlan) -> None:
        for shard_id, session in store.load().items():
            if shard_id in plan.shard_ids:
                self.book.seed(shard_id, session)

    def _make_coordinator(
        self,
        plan: ClusterPlan,
        gateway: GatewayBot,
        runtime_dir: str,
        use_ipc: bool,
        context: zmq.asyncio.Context,
    ) -> str:
        """The endpoint workers ask for identify permits (the embedded coordinator is created here)."""
        if self.config.coordinator is not None:
            return self.config.coordinator
        if self.config.shard_range is not None:
            log.warning(
                "--shard-ids without --coordinator: the embedded coordinator only spaces "
                "this host's identifies; hosts sharing a bot need one `cluster coordinator`"
            )
        # ipc: the path is known before the bind, so the bind can wait for the workers
        # (see the module docstring); tcp binds at once on port 0 (see run()).
        endpoint = f"ipc://{runtime_dir}/identify" if use_ipc else "tcp://127.0.0.1:0"
        limit = gateway.session_start_limit
        self.coordinator = Coordinator(
            endpoint,
            max_concurrency=plan.max_concurrency,
            interval_s=self.config.identify_interval_s,
            safety_margin_s=self.config.identify_margin_s,
            sent_hold_s=default_sent_hold(self.config.identify_interval_s),
            session_total=limit.total,
            session_remaining=limit.remaining,
            reset_after_s=limit.reset_after_s,
            context=context,
        )
        return endpoint

    async def _start_simulator(self) -> Any:
        from simulator import Simulator, SimulatorConfig

        settings = self.config.simulate
        assert settings is not None
        sim = Simulator(
            SimulatorConfig(
                host="127.0.0.1",
                port=0,
                token=self._token,
                shards=settings.shards,
                max_concurrency=settings.max_concurrency,
                event_rate=settings.event_rate,
                identify_window_s=self.config.identify_interval_s,
            )
        )
        await sim.start()
        log.info("simulator on %s (%d shards)", sim.base_url, settings.shards)
        return sim

    async def _fetch(self, api_url: str, token: str) -> GatewayBot:
        try:
            gateway = await fetch_gateway_bot(api_url, token)
        except DiscordApiError as exc:
            raise SupervisorError(str(exc)) from None
        limit = gateway.session_start_limit
        log.info(
            "GET /gateway/bot: %d shards recommended, max_concurrency %d, %d of %d session starts left",
            gateway.shards,
            limit.max_concurrency,
            limit.remaining,
            limit.total,
        )
        return gateway

    def _plan(self, gateway: GatewayBot) -> ClusterPlan:
        total = self.config.shards if self.config.shards is not None else gateway.shards
        try:
            return plan_cluster(
                total,
                self.config.shard_range,
                self.config.workers,
                gateway.session_start_limit.max_concurrency,
                os.cpu_count() or 1,
            )
        except PlanError as exc:
            raise SupervisorError(str(exc)) from None

    def _bind_publisher(self, context: zmq.Context[zmq.Socket[bytes]]) -> Publisher:
        try:
            return Publisher(context, self.config.pub, self.config.pub_hwm)
        except zmq.ZMQError as exc:
            raise SupervisorError(f"cannot bind --pub {self.config.pub}: {exc.strerror}") from None

    async def _start_http(self, status: ClusterStatus) -> None:
        server = HealthServer(status, self.config.health_host, self.config.health_port)
        try:
            await server.start()
        except OSError as exc:
            await server.stop()
            raise SupervisorError(
                f"cannot listen on --health {self.config.health_host}:{self.config.health_port}: "
                f"{exc.strerror or exc}"
            ) from None
        self.http = server

    async def _start_control(self, plan: ClusterPlan, context: zmq.asyncio.Context) -> None:
        if importlib.util.find_spec("cluster.control") is None:
            log.warning("the control socket is not available in this build")
            return
        control_module = importlib.import_module("cluster.control")
        server = control_module.ControlServer(
            self.config.control,
            plan.total_shards,
            plan.shard_ids,
            send=self.send_command,
            context=context,
        )
        try:
            await server.start()
        except zmq.ZMQError as exc:
            raise SupervisorError(
                f"cannot bind --control {self.config.control}: {exc.strerror}"
            ) from None
        self._control = server

    def _log_listening(self, plan: ClusterPlan, gateway: GatewayBot) -> None:
        assert self.http is not None and self.publisher is not None
        control = self._control.endpoint if self._control is not None else None
        log.info(
            "listening: events on %s, control on %s, HTTP on %s",
            self.publisher.endpoint,
            control,
            self.http.url,
            extra={
                "fields": {
                    "event": "listening",
                    "pub": self.publisher.endpoint,
                    "control": control,
                    "http": self.http.url,
                    "shards": list(plan.shard_ids),
                    "total_shards": plan.total_shards,
                    "gateway": gateway.url,
                }
            },
        )

    # -- workers ----------------------------------------------------------------------------

    def _spec(self, slot: WorkerSlot) -> WorkerSpec:
        return WorkerSpec(
            worker_id=slot.worker_id,
            shard_ids=slot.shard_ids,
            sessions=self.book.resume_points(slot.shard_ids),
            **self._spec_base,
        )

    def _spawn(self, slot: WorkerSlot) -> None:
        assert self._pool is not None
        slot.fatal_code = None
        slot.fatal_detail = None
        self._pool.spawn(slot, self._spec(slot))
        self._spawned = True

    def _on_exit(self, slot: WorkerSlot, code: int | None) -> None:
        # Called from the sentinel's reader callback: only record and enqueue.
        slot.transition(WorkerState.EXITED)
        if self.status is not None:
            self.status.shards_lost(slot.shard_ids)
        self._exits.set()
        if not self._stopping:
            self._queue.put_nowait(_WorkerExited(slot, code))

    def _on_report(self, message: ipc.ShardReport | ipc.WorkerStatus) -> None:
        pool, status = self._pool, self.status
        assert pool is not None and status is not None
        if isinstance(message, ipc.ShardReport):
            slot = pool.slot_of(message.shard_id)
            if slot is None:
                return
            slot.last_seen = time.monotonic()
            if slot.state is WorkerState.SPAWNING:
                slot.transition(WorkerState.RUNNING)
            self.book.on_session(message.shard_id, message.session_id, message.resume_url)
            if message.fatal_code is not None and slot.fatal_code is None:
                slot.fatal_code = message.fatal_code
            status.apply_report(message)
            if self._progress is not None:
                self._progress.update(status.shards_ready)
            return
        slot = pool.slots.get(message.worker_id)
        if slot is None or slot.pid != message.pid:
            return
        slot.last_seen = time.monotonic()
        if message.status == ipc.WorkerStatusKind.STARTED.value:
            if slot.state is WorkerState.SPAWNING:
                slot.transition(WorkerState.RUNNING)
            self._started_workers.add(slot.worker_id)
            if len(self._started_workers) == len(pool.slots):
                self._all_started.set()
        elif message.status == ipc.WorkerStatusKind.FATAL.value:
            if message.fatal_code is not None:
                slot.fatal_code = message.fatal_code
            slot.fatal_detail = message.detail

    async def _router_loop(self, router: zmq.asyncio.Socket) -> None:
        assert self._pool is not None
        while True:
            frames = await router.recv_multipart()
            try:
                message = ipc.decode(frames[1:])
            except WireFormatError:
                continue
            if isinstance(message, ipc.Hello):
                self._pool.on_hello(message)

    async def _gate_coordinator(self) -> None:
        assert self.coordinator is not None
        if self.coordinator.running:
            if self._progress is not None:
                self._progress.schedule_started()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_started.wait(), STARTUP_GATE_S)
        try:
            await self.coordinator.start()
        except zmq.ZMQError as exc:
            log.critical("the identify coordinator cannot bind: %s", exc.strerror)
            return
        if self._progress is not None:
            self._progress.schedule_started()

    async def _refresh_limit(self, api_url: str, token: str) -> None:
        """Fetch ``GET /gateway/bot`` now and then; the coordinator takes the fresh budget."""
        assert self.coordinator is not None
        while True:
            await asyncio.sleep(self.config.limit_refresh_s)
            try:
                limit = (await fetch_gateway_bot(api_url, token)).session_start_limit
            except DiscordApiError as exc:
                log.warning("refreshing the session start limit failed: %s", exc)
                continue
            self.coordinator.update_limit(limit.remaining, limit.reset_after_s, limit.total)

    async def _liveness_loop(self) -> None:
        assert self._pool is not None and self._relay is not None
        interval = self.config.report_interval_s
        timeout = self.config.liveness_timeout_s
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if self._relay.lagging(now, 2 * interval):
                continue
            for slot in self._pool.silent(now, timeout):
                limit = SPAWN_GRACE_S if slot.state is WorkerState.SPAWNING else timeout
                if now - slot.last_seen <= limit:
                    continue
                log.warning(
                    "worker %d (pid %s) sent nothing for %.1f s: killing it",
                    slot.worker_id,
                    slot.pid,
                    now - slot.last_seen,
                )
                self._pool.kill(slot)

    # -- the loop ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Drain and stop, as SIGINT/SIGTERM do (the same command, from code)."""
        self._queue.put_nowait(_Shutdown.SIGNAL)

    def _on_signal(self, signum: signal.Signals) -> None:
        if self._signalled:
            # A second signal: no more waiting.
            if self._pool is not None:
                self._pool.kill_all()
            if self._runtime_dir is not None:
                shutil.rmtree(self._runtime_dir, ignore_errors=True)
            os._exit(EXIT_INTERRUPTED)
        self._signalled = True
        log.info("%s: stopping (again to stop at once)", signum.name)
        self.request_stop()

    async def _main_loop(self) -> FatalCloseError | None:
        while True:
            item = await self._queue.get()
            if isinstance(item, _Shutdown):
                return None
            if isinstance(item, _Respawn):
                if item.slot.state is WorkerState.BACKOFF:
                    self._spawn(item.slot)
                continue
            fatal = await self._handle_exit(item.slot, item.code)
            if fatal is not None:
                return fatal

    async def _handle_exit(self, slot: WorkerSlot, code: int | None) -> FatalCloseError | None:
        assert self._relay is not None and self.status is not None
        self._relay.drain()  # the dead worker's last messages, before deciding anything
        if code == WORKER_EXIT_FATAL:
            deadline = time.monotonic() + _FATAL_DETAIL_WAIT_S
            while slot.fatal_code is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                self._relay.drain()
        decision = slot.tracker.on_exit(code, slot.started_at, time.monotonic())
        if decision.action is RestartAction.FATAL:
            line = (
                explain_fatal(slot.fatal_code)
                if slot.fatal_code is not None
                else "a worker stopped on a fatal gateway close code"
            )
            self.status.fatal_reason = line
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
            _describe_exit(code),
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

    # -- shutdown ---------------------------------------------------------------------------

    async def _shutdown(self, store: SessionStore | None, graceful: bool) -> None:
        self._stopping = True
        for timer in self._timers:
            timer.cancel()
        if self._progress is not None:
            self._progress.finish()
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.stop()
        pool = self._pool
        if pool is not None:
            deadline = time.monotonic() + self.config.stop_timeout_s
            for slot in pool.alive():
                if slot.sentinel is None:
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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._relay is not None:
            self._relay.drain()
            self._relay.stop()
        # Without a worker having run, the book holds only what was loaded: re-saving
        # it would make old sessions look fresh.
        if store is not None and self.plan is not None and graceful and self._spawned:
            self._save(store, self.plan)

    async def _wait_exits(self, pool: WorkerPool, deadline: float) -> None:
        while pool.alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._exits.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exits.wait(), left)

    def _save(self, store: SessionStore, plan: ClusterPlan) -> None:
        sessions = self.book.resume_points(plan.shard_ids)
        try:
            store.save(sessions)
        except OSError as exc:
            log.error("cannot save sessions to %s: %s", store.path, exc.strerror or exc)
            return
        log.info("saved %d sessions to %s for resume", len(sessions), store.path)


def _bind_private(sock: zmq.Socket[Any], runtime_dir: str, name: str, ipc: bool) -> str:
    """Bind in the private runtime directory (ipc://), else on loopback port 0."""
    sock.bind(f"ipc://{runtime_dir}/{name}" if ipc else "tcp://127.0.0.1:0")
    endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return endpoint


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
