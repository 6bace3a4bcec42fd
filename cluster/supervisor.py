"""The supervisor of ``cluster up``: one process, for its whole life, around the ranges it owns.

:meth:`Supervisor.run` starts what lives as long as the process: the embedded
simulator (``--simulate``), ``GET /gateway/bot``, with ``--redis`` the Redis
client (the layout claimed, the namespace from ``GET /users/@me``) and the
lease keeper, the PUB socket (:mod:`cluster.publisher`) and the HTTP endpoint
(:class:`cluster.http.HealthServer`). Then it **claims** a range and **owns** it
(:class:`cluster.range_owner.RangeOwner`: workers, relay, coordinator,
control socket, checkpoints) until a stop, a fatal close code or a fence:

- without ``--redis``: the range is ``--shard-ids`` (or every shard), owned once;
- with ``--redis``: the range is the first of its candidates whose lease it
  can take (a static ``--shard-ids A-B``; with ``--shard-ids auto --hosts H``
  range I, I from ``--host-index`` or the number ending the host name; with no
  index, or one past H, any range: a spare). While no candidate is free the
  supervisor is a **spare**: ready when Redis answers, connecting nothing.
  A fenced owner (its lease lost) becomes a spare again.

With ``--auto-reshard`` a task lives beside each owner (:mod:`cluster.auto_reshard`):
when ``GET /gateway/bot`` recommends more shards than run, it asks the owner for a
reshard as ``cluster reshard`` does.

SIGINT/SIGTERM and :meth:`request_stop` are one command (STYLE.md 5): the
owner drains, saves its sessions and the lease is released; a second signal
SIGKILLs every worker and exits at once with status 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
from typing import TYPE_CHECKING, Any, Final

import zmq
import zmq.asyncio

from cluster import sd_notify
from cluster.auto_reshard import AutoReshard
from cluster.cancelling import cancel_and_wait
from cluster.config import SupervisorConfig, host_ordinal
from cluster.discord_api import DiscordApiError, GatewayBot, fetch_bot_user_id, fetch_gateway_bot
from cluster.http import HealthServer
from cluster.planner import ClusterPlan, PlanError, host_ranges, plan_cluster
from cluster.publisher import Publisher
from cluster.range_owner import (
    FatalCloseError,
    Outcome,
    RangeOwner,
    Shared,
    SupervisorError,
)
from cluster.reshard import ReshardRefusedError, effective_shards, load_layout
from cluster.sd_notify import SystemdNotifier
from cluster.state.lease import LeaseKeeper
from cluster.state.redis_reshard import ReshardStore
from cluster.state.redis_state import (
    BudgetView,
    Layout,
    LayoutChangedError,
    LayoutMismatchError,
    Lease,
    RedisState,
    RedisStateError,
)
from cluster.state.redis_streams import StreamStore
from cluster.status import ClusterStatus, Role
from cluster.workers import CommandRoutingError, ShardNotRunningError, UnknownShardError
from protocol.curvezmq import encode_key
from protocol.exitcodes import ExitCode

if TYPE_CHECKING:
    from cluster.endpoint.server import GatewayEndpoint

__all__ = [
    "CommandRoutingError",
    "FatalCloseError",
    "ShardNotRunningError",
    "Supervisor",
    "SupervisorError",
    "UnknownShardError",
]

log = logging.getLogger("cluster.supervisor")

#: A spare's first claim waits this long, so hosts with a range of their own (started
#: at the same time, as a StatefulSet's pods are) take it first.
SPARE_GRACE_S: Final = 3.0
#: How often the Redis monitor pings and reads the cluster's leases and budget for /status.
REDIS_MONITOR_S: Final = 2.0

ShardRange = tuple[int, int]


class Supervisor:
    """One ``cluster up``: call :meth:`run` once; it returns after a graceful stop."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        #: The live picture (/health, /status, /metrics); set once :meth:`run` has fetched the gateway.
        self.status: ClusterStatus | None = None
        self.publisher: Publisher | None = None
        self._owner: RangeOwner | None = None
        self._stop = asyncio.Event()
        self._signalled = False
        self._runtime_dir: str | None = None
        self._redis_up = True
        self._redis_view: dict[str, Any] = {}
        #: the first claim of a spare waits SPARE_GRACE_S (see _own_one)
        self._claimed_once = False
        #: the shard count run now (a reshard's switch changes it)
        self._total = 0
        #: systemd's Type=notify (a no-op without NOTIFY_SOCKET)
        self._systemd = SystemdNotifier.from_env()

    # -- the public surface ------------------------------------------------------------------

    async def send_command(self, shard_id: int, payload: bytes) -> None:
        """Hand a gateway payload to ``shard_id``'s worker (it goes out through the send limiter).

        Raises :class:`UnknownShardError` (not ours) or :class:`ShardNotRunningError`.
        """
        owner = self._owner
        if owner is None:
            raise ShardNotRunningError(shard_id, "the cluster is not running")
        await owner.send_command(shard_id, payload)

    def request_stop(self) -> None:
        """Drain and stop, as SIGINT/SIGTERM do (the same command, from code)."""
        if not self._stop.is_set():
            self._systemd.stopping()
        self._stop.set()
        if self._owner is not None:
            self._owner.request_stop()

    async def run(self) -> None:
        """Run until SIGINT/SIGTERM (returns) or a fatal condition (raises :class:`SupervisorError`)."""
        loop = asyncio.get_running_loop()
        runtime_dir = tempfile.mkdtemp(prefix="titanium-")
        self._runtime_dir = runtime_dir
        sync_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        async_context = zmq.asyncio.Context()
        simulator: Any = None
        http: HealthServer | None = None
        endpoint: GatewayEndpoint | None = None
        redis: RedisState | None = None
        leases: LeaseKeeper | None = None
        streams: StreamStore | None = None
        reshards: ReshardStore | None = None
        monitor: asyncio.Task[None] | None = None
        systemd: asyncio.Task[None] | None = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            api_url = self.config.api_url
            if self.config.simulate is not None:
                simulator = await self._start_simulator()
                api_url = simulator.rest_url
            gateway = await self._fetch(api_url)
            total = self._shard_count(gateway.shards)
            max_concurrency = gateway.session_start_limit.max_concurrency
            if self.config.redis is not None:
                redis, streams, reshards, total = await self._connect_redis(
                    api_url, Layout(total, max_concurrency)
                )
                leases = LeaseKeeper(redis, self.config.redis)
            self._total = total
            self._candidates(total)  # a bad --hosts for this count fails here, at start
            status = ClusterStatus(total, [])
            self.status = status
            self.publisher = self._bind_publisher(sync_context)
            self.publisher.start(loop)  # subscribers are served also while a spare
            http = await self._start_http(status)
            if self.config.gateway is not None:
                endpoint = await self._start_gateway(status, total)
            systemd = asyncio.create_task(
                sd_notify.watch(self._systemd, lambda: _readiness(status)), name="systemd"
            )
            if redis is not None and leases is not None:
                status.redis_ok = lambda: self._redis_up
                status.lease_held = lambda: leases.lease is not None
                status.sections["lease"] = leases.status_json
                status.sections["redis"] = lambda: self._redis_view
                monitor = asyncio.create_task(
                    self._monitor_redis(redis, api_url, max_concurrency),
                    name="redis-monitor",
                )
            self._log_listening(http, total, gateway)
            shared = Shared(
                config=self.config,
                api_url=api_url,
                gateway=gateway,
                publisher=self.publisher,
                status=status,
                sync_context=sync_context,
                async_context=async_context,
                runtime_dir=runtime_dir,
                redis=redis,
                leases=leases,
                streams=streams,
                endpoint=endpoint,
                reshards=reshards,
            )
            while not self._stop.is_set():
                try:
                    outcome = await self._own_one(
                        shared, self._candidates(self._total), self._total, max_concurrency
                    )
                except LayoutChangedError as exc:  # a reshard switched while this one waited
                    log.info("the cluster was resharded to %d shards: following", exc.shards)
                    self._total = exc.shards
                    continue
                if outcome is not Outcome.FENCED:
                    break
                status.assign(self._total, [], role=Role.SPARE)  # fenced: a spare again
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await cancel_and_wait((systemd, monitor))
            if leases is not None:
                await leases.release()
            if redis is not None:
                await redis.close()
            if self.publisher is not None:
                self.publisher.close()
            if endpoint is not None:
                await endpoint.stop()
            if http is not None:
                await http.stop()
            if simulator is not None:
                await simulator.stop()
            async_context.term()
            sync_context.term()
            shutil.rmtree(runtime_dir, ignore_errors=True)

    # -- one range ----------------------------------------------------------------------------

    async def _own_one(
        self,
        shared: Shared,
        candidates: tuple[ShardRange, ...],
        total: int,
        max_concurrency: int,
    ) -> Outcome | None:
        """Claim a range (as a spare until one is free), own it; None when stopped first."""
        lease: Lease | None = None
        leases = shared.leases
        if leases is not None:
            shared.status.assign(total, [], role=Role.SPARE)
            if not self._claimed_once and self._is_spare(candidates, total):
                # Hosts started together (a StatefulSet): the indexed ones take their own
                # ranges first; a spare that raced them would push one to another range.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), SPARE_GRACE_S)
            self._claimed_once = True
            lease = await leases.claim(candidates, self._stop, total)
            shared.status.assign(total, [])  # an owner, starting
            if lease is None:
                return None
            shard_range: ShardRange | None = lease.shard_range
        else:
            shard_range = candidates[0] if self.config.shard_range is not None else None
        plan = self._plan(total, shard_range, max_concurrency)
        owner = RangeOwner(shared, plan, lease)
        self._owner = owner
        holding: asyncio.Task[None] | None = None
        if leases is not None:
            holding = asyncio.create_task(leases.hold(owner.fence), name="lease")
        auto: asyncio.Task[None] | None = None
        if self.config.auto_reshard:
            auto = asyncio.create_task(self._auto_reshard(shared, owner).run(), name="auto-reshard")
        try:
            if self._stop.is_set():
                owner.request_stop()
            return await owner.run()
        finally:
            self._owner = None
            self._total = owner.total_shards  # a reshard's switch changed it
            await cancel_and_wait((auto, holding))

    def _auto_reshard(self, shared: Shared, owner: RangeOwner) -> AutoReshard:
        """``--auto-reshard`` for this range: Discord's recommendation, by the reshard path."""
        status = shared.status

        async def recommended() -> int:
            return (await fetch_gateway_bot(shared.api_url, self.config.token)).shards

        def can_start() -> bool:
            # the running set whole, and no reshard under way (its /status section)
            section = status.sections.get("reshard")
            progress = None if section is None else section()
            running = isinstance(progress, dict) and progress.get("phase") == "starting"
            return status.health()[0] and not running

        async def start(shards: int) -> None:
            # the control request's path: what `cluster reshard --shards N` asks
            answer = await owner.reshard_request({"reshard": {"shards": shards}})
            if not answer.get("ok"):
                raise ReshardRefusedError(str(answer.get("error")))

        return AutoReshard(
            recommended,
            lambda: status.total_shards,
            start,
            self.config.auto_reshard_interval_s,
            can_start=can_start,
        )

    def _is_spare(self, candidates: tuple[ShardRange, ...], total: int) -> bool:
        """No range of its own: it may take any (no index, or one of H or more)."""
        settings = self.config.redis
        if settings is None or settings.hosts is None or len(candidates) < 2:
            return False
        index = settings.host_index
        if index is None:
            index = host_ordinal(socket.gethostname())
        return index is None or index >= settings.hosts

    def _shard_count(self, recommended: int) -> int:
        """--shards, or Discord's recommendation; a reshard saved in --state-dir wins over
        ``auto`` and over the count it replaced (one host; with Redis the layout key rules)."""
        saved = None if self.config.redis is not None else load_layout(self.config.state_dir)
        total = effective_shards(self.config.shards, recommended, saved)
        if saved is not None and total == saved.shards:
            log.info(
                "running %d shards: the cluster was resharded from %d (%s)",
                total,
                saved.resharded_from,
                self.config.state_dir / "layout.json",
            )
        return total

    def _candidates(self, total: int) -> tuple[ShardRange, ...]:
        """The ranges this supervisor may own, in order of preference."""
        settings = self.config.redis
        if settings is None or settings.hosts is None:
            return (self.config.shard_range or (0, total - 1),)
        try:
            ranges = host_ranges(total, settings.hosts)
        except PlanError as exc:
            raise SupervisorError(str(exc)) from None
        index = settings.host_index
        if index is None:
            index = host_ordinal(socket.gethostname())
        if index is not None and index < len(ranges):
            # Its own range first; while another host holds it, any range whose lease
            # expires (a pod back from a rolling restart covers the next pod's range
            # instead of idling as the standby of a range that is owned).
            return (ranges[index], *(r for i, r in enumerate(ranges) if i != index))
        return ranges  # a spare: whichever range's lease expires first

    def _plan(
        self, total: int, shard_range: ShardRange | None, max_concurrency: int
    ) -> ClusterPlan:
        try:
            return plan_cluster(
                total, shard_range, self.config.workers, max_concurrency, os.cpu_count() or 1
            )
        except PlanError as exc:
            raise SupervisorError(str(exc)) from None

    # -- startup ------------------------------------------------------------------------------

    async def _start_simulator(self) -> Any:
        from simulator import Simulator, SimulatorConfig

        settings = self.config.simulate
        assert settings is not None
        sim = Simulator(
            SimulatorConfig(
                host="127.0.0.1",
                port=0,
                token=self.config.token,
                shards=settings.shards,
                max_concurrency=settings.max_concurrency,
                event_rate=settings.event_rate,
                identify_window_s=self.config.identify_interval_s,
                privileged_intents=settings.privileged_intents,
                session_start_total=settings.session_start_limit,
            )
        )
        await sim.start()
        log.info("simulator on %s (%d shards)", sim.base_url, settings.shards)
        return sim

    async def _fetch(self, api_url: str) -> GatewayBot:
        try:
            gateway = await fetch_gateway_bot(api_url, self.config.token)
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

    async def _connect_redis(
        self, api_url: str, layout: Layout
    ) -> tuple[RedisState, StreamStore, ReshardStore, int]:
        """Connect, name the bot's key space by its user id, and claim (or check) the layout.

        The stream store (the sink, ``gateway_send``) and the reshard store register
        their scripts before the connect loads them all. Returns them and the shard
        count to run: the layout's, which is a reshard's new count when this host asked
        for the count it replaced.
        """
        settings = self.config.redis
        assert settings is not None
        try:
            bot_id = await fetch_bot_user_id(api_url, self.config.token)
        except DiscordApiError as exc:
            raise SupervisorError(str(exc)) from None
        holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        redis = RedisState(settings.url, bot_id, holder=holder)
        streams = StreamStore(redis)
        reshards = ReshardStore(redis)
        try:
            await redis.connect()
            claimed = await redis.claim_layout(layout)
        except LayoutMismatchError as exc:
            await redis.close()
            raise SupervisorError(str(exc)) from None
        except RedisStateError as exc:
            await redis.close()
            raise SupervisorError(f"cannot use Redis at {settings.display_url}: {exc}") from None
        log.info(
            "Redis at %s: bot %s, %d shards, max_concurrency %d, this supervisor is %s",
            settings.display_url,
            bot_id,
            layout.shards,
            layout.max_concurrency,
            holder,
        )
        if claimed.shards != layout.shards:
            log.info(
                "running %d shards: the cluster was resharded from %d (Redis's layout)",
                claimed.shards,
                claimed.resharded_from,
            )
        return redis, streams, reshards, claimed.shards

    async def _monitor_redis(self, redis: RedisState, api_url: str, max_concurrency: int) -> None:
        """Ping Redis and read every host's lease and the shared budget, for /status.

        After Redis lost its data (restarted empty) it also puts back what every
        host relies on: the layout, and the budget from a fresh ``GET /gateway/bot``.
        """
        while True:
            view: dict[str, Any] = {
                "url": None if self.config.redis is None else self.config.redis.display_url
            }
            try:
                rtt = await redis.ping()
                ranges = await redis.leases()
                budget = await redis.budget()
                await redis.claim_layout(Layout(self._total, max_concurrency))
                if budget is None:
                    budget = await self._resync_budget(redis, api_url)
            except LayoutMismatchError as exc:
                log.error("Redis now holds another layout: %s", exc)
                view.update(up=True, last_error=str(exc))
            except RedisStateError as exc:
                if self._redis_up:
                    log.warning(
                        "Redis is unreachable: running shards go on, nothing new identifies (%s)",
                        exc,
                    )
                self._redis_up = False
                view.update(up=False, last_error=str(exc))
            else:
                if not self._redis_up:
                    log.info("Redis answers again")
                self._redis_up = True
                view.update(
                    up=True,
                    rtt_ms=round(rtt * 1000, 3),
                    ranges={
                        key: {"holder": info.holder, "token": info.token, "ttl_ms": info.ttl_ms}
                        for key, info in sorted(ranges.items())
                    },
                    budget=None
                    if budget is None
                    else {
                        "remaining": budget.remaining,
                        "total": budget.total,
                        "reset_after_s": round(budget.reset_after_s, 3),
                    },
                )
            stats = redis.stats
            view.update(
                errors=stats.errors,
                round_trips=stats.round_trips,
                max_rtt_ms=round(stats.max_rtt_ms, 3),
            )
            self._redis_view = view
            await asyncio.sleep(REDIS_MONITOR_S)

    async def _resync_budget(self, redis: RedisState, api_url: str) -> BudgetView | None:
        """Redis has no budget (it restarted empty): take Discord's numbers again."""
        try:
            limit = (await fetch_gateway_bot(api_url, self.config.token)).session_start_limit
        except DiscordApiError as exc:
            log.warning("Redis lost the identify budget and /gateway/bot failed: %s", exc)
            return None
        view = await redis.sync_budget(
            limit.remaining, limit.total, round(limit.reset_after_s * 1000)
        )
        log.warning(
            "Redis had no identify budget (restarted empty?): re-synced from /gateway/bot, "
            "%d of %d session starts left",
            view.remaining,
            view.total,
        )
        return view

    def _bind_publisher(self, context: zmq.Context[zmq.Socket[bytes]]) -> Publisher:
        curve = self.config.curve
        try:
            publisher = Publisher(context, self.config.pub, self.config.pub_hwm, curve)
        except zmq.ZMQError as exc:
            raise SupervisorError(f"cannot bind --pub {self.config.pub}: {exc.strerror}") from None
        if curve is not None:
            log.info(
                "CURVE on --pub and --control: server public key %s, %d client keys let in",
                encode_key(curve.public_key),
                len(curve.allowed),
            )
        return publisher

    async def _start_http(self, status: ClusterStatus) -> HealthServer:
        server = HealthServer(
            status, self.config.health_host, self.config.health_port, self.config.http_token
        )
        try:
            await server.start()
        except OSError as exc:
            await server.stop()
            raise SupervisorError(
                f"cannot listen on --health {self.config.health_host}:{self.config.health_port}: "
                f"{exc.strerror or exc}"
            ) from None
        return server

    async def _start_gateway(self, status: ClusterStatus, total: int) -> GatewayEndpoint:
        """``--gateway``: the endpoint for bot libraries, fed by each owned range's relay."""
        from cluster.endpoint.server import GatewayEndpoint

        settings = self.config.gateway
        assert settings is not None
        endpoint = GatewayEndpoint(settings, self.config.token, total, self.config.intents)
        try:
            await endpoint.start()
        except OSError as exc:
            await endpoint.stop()
            raise SupervisorError(
                f"cannot listen on --gateway {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        status.sections["gateway"] = endpoint.status_json
        return endpoint

    def _log_listening(self, http: HealthServer, total: int, gateway: GatewayBot) -> None:
        assert self.publisher is not None
        log.info(
            "listening: events on %s, control on %s, HTTP on %s",
            self.publisher.endpoint,
            self.config.control,
            http.url,
            extra={
                "fields": {
                    "event": "listening",
                    "pub": self.publisher.endpoint,
                    "control": self.config.control,
                    "http": http.url,
                    "total_shards": total,
                    "gateway": gateway.url,
                }
            },
        )

    # -- signals ------------------------------------------------------------------------------

    def _on_signal(self, signum: signal.Signals) -> None:
        if self._signalled:
            # A second signal: no more waiting.
            if self._owner is not None:
                self._owner.kill_all()
            if self._runtime_dir is not None:
                shutil.rmtree(self._runtime_dir, ignore_errors=True)
            os._exit(ExitCode.INTERRUPTED)
        self._signalled = True
        log.info("%s: stopping (again to stop at once)", signum.name)
        self.request_stop()


def _readiness(status: ClusterStatus) -> tuple[bool, str]:
    """What systemd hears: ready for the role (as /health), and one status line."""
    ready, body = status.health()
    line = f"{body['role']}: {body['shards_ready']}/{body['shards_total']} shards ready"
    problems = body.get("problems")
    if problems:
        line += f"; {problems[0]}"
    return ready, line
