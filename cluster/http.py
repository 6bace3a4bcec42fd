"""The supervisor's HTTP endpoint: /health, /status, /metrics and the status page.

Served with aiohttp on loopback by default. Metrics are read from the
:class:`ClusterStatus` at scrape time by a custom collector, so the event hot
path pays nothing for them.

With a token (``--http-token-file``, required off loopback) every path but the
probes (:data:`OPEN_PATHS`: ``/health``, ``/livez``) answers 401 unless the
request carries ``Authorization: Bearer <token>``; the comparison takes the
same time whatever the guess, and the token is never logged or echoed.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from cluster.status import ClusterStatus
from cluster.status_page import STATUS_PAGE_HTML
from protocol.session import ShardPhase


class ClusterCollector(Collector):
    """Turns the cluster's live status into Prometheus metrics at scrape time."""

    def __init__(self, status: ClusterStatus) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status
        shards = [status.shards[i] for i in sorted(status.shards)]

        events = CounterMetricFamily(
            "titanium_events",
            "Dispatch events received, per shard and event type",
            labels=["shard", "type"],
        )
        latency = GaugeMetricFamily(
            "titanium_shard_latency_seconds", "Heartbeat round trip per shard", labels=["shard"]
        )
        ready = GaugeMetricFamily(
            "titanium_shard_ready", "1 when the shard is ready", labels=["shard"]
        )
        reconnects = CounterMetricFamily(
            "titanium_shard_reconnects", "Reconnects per shard", labels=["shard"]
        )
        resumes = CounterMetricFamily(
            "titanium_shard_resumes", "Successful resumes per shard", labels=["shard"]
        )
        identifies = CounterMetricFamily(
            "titanium_shard_identifies", "Identifies sent per shard", labels=["shard"]
        )
        shard_dropped = CounterMetricFamily(
            "titanium_shard_dropped",
            "Dispatches a worker dropped instead of relaying, per shard and reason "
            "(seq_not_increasing, seq_invalid, seq_missing, t_missing, t_invalid); only reasons seen",
            labels=["shard", "reason"],
        )
        for shard in shards:
            label = str(shard.shard_id)
            for event_type, count in shard.events_by_type.items():
                events.add_metric([label, event_type], count)
            if shard.latency_ms is not None:
                latency.add_metric([label], shard.latency_ms / 1000.0)
            ready.add_metric([label], 1.0 if shard.state is ShardPhase.READY else 0.0)
            reconnects.add_metric([label], shard.reconnects)
            resumes.add_metric([label], shard.resumes)
            identifies.add_metric([label], shard.identifies)
            for reason, count in shard.dropped.items():
                shard_dropped.add_metric([label, reason], count)
        yield from (events, latency, ready, reconnects, resumes, identifies, shard_dropped)

        yield GaugeMetricFamily(
            "titanium_shards_total", "Shards this supervisor runs", value=len(shards)
        )
        yield GaugeMetricFamily("titanium_shards_ready", "Shards ready", value=status.shards_ready)

        budget = status.identify_budget()
        if budget is not None and "remaining" in budget:
            yield GaugeMetricFamily(
                "titanium_session_starts_remaining",
                "Session starts (identifies) left in Discord's daily budget",
                value=budget["remaining"],
            )

        relay = status.relay
        yield CounterMetricFamily(
            "titanium_relay_published", "Events published on the PUB socket", value=relay.published
        )
        dropped = CounterMetricFamily(
            "titanium_relay_dropped",
            "Events dropped by the relay, by reason (pub_hwm: events a subscriber missed "
            "because its queue was full, per event and subscriber; pub_disconnected: "
            "queued for a subscriber when it left)",
            labels=["reason"],
        )
        dropped.add_metric(["duplicate"], relay.duplicates_dropped)
        dropped.add_metric(["pub_hwm"], relay.pub_dropped)
        dropped.add_metric(["pub_disconnected"], relay.pub_disconnected_dropped)
        dropped.add_metric(["malformed"], relay.malformed_dropped)
        yield dropped
        yield GaugeMetricFamily(
            "titanium_relay_subscriptions",
            "Subscriptions (topic prefixes) on the PUB socket",
            value=relay.subscriptions,
        )
        yield GaugeMetricFamily(
            "titanium_relay_subscribers",
            "Subscribers connected to the PUB socket",
            value=relay.subscribers,
        )
        yield GaugeMetricFamily(
            "titanium_relay_pub_queued",
            "Events waiting in the supervisor for PUB subscribers that fall behind",
            value=relay.pub_queued,
        )

        alive = GaugeMetricFamily(
            "titanium_worker_alive", "1 when the worker process is alive", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "titanium_worker_restarts", "Worker restarts", labels=["worker"]
        )
        for worker in status.workers.values():
            alive.add_metric([str(worker.worker_id)], 1.0 if worker.alive else 0.0)
            restarts.add_metric([str(worker.worker_id)], worker.restarts)
        yield alive
        yield restarts
        yield from _shared_state_metrics(status)
        yield from _sink_metrics(status)
        yield from _gateway_metrics(status)


def _shared_state_metrics(status: ClusterStatus) -> Iterator[Metric]:
    """Role, lease, Redis and checkpoint figures (the sections the supervisor registers)."""
    role = GaugeMetricFamily(
        "titanium_role", "1 for this supervisor's role (owner or spare)", labels=["role"]
    )
    for name in ("owner", "spare"):
        role.add_metric([name], 1.0 if status.role.value == name else 0.0)
    yield role
    checkpoint = _section(status, "checkpoint") or {}
    lease = _section(status, "lease") or {}
    redis = _section(status, "redis") or {}
    budget = redis.get("budget") if isinstance(redis.get("budget"), dict) else {}
    grants = _section(status, "identify_redis") or {}
    latency = grants.get("latency_ms") or {}
    rtt = redis.get("rtt_ms")
    mean = latency.get("mean")
    gauges: list[tuple[str, str, object]] = [
        (
            "titanium_checkpoint_age_seconds",
            "Seconds since the sessions were last checkpointed",
            checkpoint.get("age_s"),
        ),
        (
            "titanium_lease_held",
            "1 while this supervisor holds its range's lease",
            None if not lease else float(bool(lease.get("held"))),
        ),
        ("titanium_lease_token", "Fencing token of the held lease", lease.get("token")),
        (
            "titanium_lease_fence_seconds",
            "Seconds left before this host fences itself without a renewal",
            lease.get("fence_in_s"),
        ),
        (
            "titanium_redis_up",
            "1 when Redis answered the last request",
            None if not redis else float(bool(redis.get("up"))),
        ),
        (
            "titanium_redis_rtt_seconds",
            "Round trip of the last Redis request",
            None if rtt is None else float(rtt) / 1000.0,
        ),
        (
            "titanium_identify_budget_remaining_redis",
            "Session starts left as Redis counts them (shared by every host)",
            (budget or {}).get("remaining"),
        ),
        (
            "titanium_identify_grant_latency_seconds",
            "Mean round trip of an identify grant through Redis",
            None if mean is None else float(mean) / 1000.0,
        ),
    ]
    counters: list[tuple[str, str, object]] = [
        (
            "titanium_checkpoint_errors",
            "Checkpoint writes that failed (state dir or Redis)",
            checkpoint.get("errors"),
        ),
        ("titanium_lease_fenced", "Times this supervisor fenced itself", lease.get("fenced")),
        ("titanium_redis_errors", "Redis requests that failed", redis.get("errors")),
        (
            "titanium_identify_redis_granted",
            "Identify grants Redis gave this host",
            grants.get("granted"),
        ),
    ]
    for name, doc, value in gauges:
        if isinstance(value, int | float):
            yield GaugeMetricFamily(name, doc, value=float(value))
    for name, doc, value in counters:
        if isinstance(value, int | float):
            yield CounterMetricFamily(name, doc, value=float(value))


def _sink_metrics(status: ClusterStatus) -> Iterator[Metric]:
    """The Redis Streams sink and the gateway_send reader (sections "sink", "commands")."""
    sink = _section(status, "sink")
    if sink is not None:
        for name, doc, key in (
            ("titanium_sink_appended", "Events appended to Redis Streams", "appended"),
            (
                "titanium_sink_skipped",
                "Events not appended because the checkpoint had them (a replay)",
                "skipped",
            ),
            ("titanium_sink_errors", "Sink rounds or maintenance calls that failed", "errors"),
            (
                "titanium_sink_dropped_fenced",
                "Events given up when the lease was lost (the new owner replays them)",
                "dropped_fenced",
            ),
            ("titanium_sink_trimmed", "Entries the retention trimmed", "trimmed"),
        ):
            yield CounterMetricFamily(name, doc, value=float(sink.get(key) or 0))
        yield GaugeMetricFamily(
            "titanium_sink_pending_events",
            "Events published but not yet appended to Redis",
            value=float(sink.get("pending") or 0),
        )
        length = GaugeMetricFamily(
            "titanium_sink_stream_length", "Entries in a stream (XLEN)", labels=["stream"]
        )
        lag = GaugeMetricFamily(
            "titanium_sink_group_lag",
            "Entries a consumer group has not read yet (XINFO GROUPS lag)",
            labels=["stream", "group"],
        )
        pending = GaugeMetricFamily(
            "titanium_sink_group_pending",
            "Entries a consumer group read and did not acknowledge",
            labels=["stream", "group"],
        )
        for view in sink.get("streams") or []:
            length.add_metric([view["stream"]], float(view["length"]))
            for group in view["groups"]:
                labels = [view["stream"], group["group"]]
                if group["lag"] is not None:
                    lag.add_metric(labels, float(group["lag"]))
                pending.add_metric(labels, float(group["pending"]))
        yield length
        yield lag
        yield pending
    reshard = _section(status, "reshard")
    if reshard is not None:
        outcomes = CounterMetricFamily(
            "titanium_reshards", "Reshards by how they ended", labels=["outcome"]
        )
        for outcome in ("switched", "abandoned"):
            outcomes.add_metric([outcome], float(reshard.get(f"{outcome}_total") or 0))
        yield outcomes
        yield CounterMetricFamily(
            "titanium_reshard_deduplicated",
            "New-set events dropped at reshard switches (the old set had published them)",
            value=float(reshard.get("deduplicated_total") or 0),
        )
        yield GaugeMetricFamily(
            "titanium_reshard_new_shards_ready",
            "New shards READY in the running reshard (0 when none runs)",
            value=float(reshard.get("new_ready") or 0)
            if reshard.get("phase") == "starting"
            else 0.0,
        )
    refused = _section(status, "refused")
    if refused is not None:
        family = CounterMetricFamily(
            "titanium_curve_refused",
            "CURVE handshakes refused (a client key not let in, or a bad handshake)",
            labels=["socket"],
        )
        for socket_name in ("pub", "control"):
            family.add_metric([socket_name], float(refused.get(socket_name) or 0))
        yield family
    commands = _section(status, "commands")
    if commands is not None:
        outcomes = CounterMetricFamily(
            "titanium_sink_commands",
            "gateway_send entries by what became of them",
            labels=["outcome"],
        )
        for outcome, count in sorted((commands.get("outcomes") or {}).items()):
            outcomes.add_metric([outcome], float(count))
        yield outcomes


def _gateway_metrics(status: ClusterStatus) -> Iterator[Metric]:
    """The gateway endpoint for bot libraries (``--gateway``; section "gateway")."""
    gateway = _section(status, "gateway")
    if gateway is None:
        return
    clients = GaugeMetricFamily(
        "titanium_gateway_clients", "Gateway clients connected, per shard", labels=["shard"]
    )
    lag = GaugeMetricFamily(
        "titanium_gateway_client_lag_events",
        "Dispatches numbered for a connected client and not yet written to it (the most "
        "behind client of each shard)",
        labels=["shard"],
    )
    for shard, count in sorted((gateway.get("clients") or {}).items()):
        clients.add_metric([shard], float(count))
    for shard, events in sorted((gateway.get("client_lag_events") or {}).items()):
        lag.add_metric([shard], float(events))
    yield clients
    yield lag
    for name, doc, key in (
        (
            "titanium_gateway_events_forwarded",
            "Dispatches numbered into client sessions",
            "events_forwarded",
        ),
        ("titanium_gateway_events_written", "Dispatches written to clients", "events_written"),
        ("titanium_gateway_identifies", "Client IDENTIFYs answered from the cache", "identifies"),
        ("titanium_gateway_resumes", "Client RESUMEs replayed", "resumes"),
        (
            "titanium_gateway_resumes_failed",
            "Client RESUMEs answered with op 9 (unknown, expired, too far behind)",
            "resumes_failed",
        ),
        (
            "titanium_gateway_cut_off",
            "Clients cut off because their bounded buffer overflowed",
            "cut_off",
        ),
        ("titanium_gateway_zombies", "Clients closed for missing heartbeats", "zombies"),
        ("titanium_gateway_commands", "Commands clients sent to shards", "commands"),
    ):
        yield CounterMetricFamily(name, doc, value=float(gateway.get(key) or 0))
    closes = CounterMetricFamily(
        "titanium_gateway_closes", "Clients closed for bad input, by close code", labels=["code"]
    )
    for code, count in sorted((gateway.get("closes") or {}).items()):
        closes.add_metric([code], float(count))
    yield closes
    yield GaugeMetricFamily(
        "titanium_gateway_pending_events",
        "Events the relay handed the endpoint that it has not handled yet",
        value=float(gateway.get("pending_events") or 0),
    )
    cache = gateway.get("cache") or {}
    for name, doc, key in (
        ("titanium_gateway_cache_guilds", "Guilds in the gateway cache", "guilds"),
        ("titanium_gateway_cache_bytes", "Bytes the gateway cache holds", "bytes"),
        (
            "titanium_gateway_cache_guild_bytes_mean",
            "Bytes per cached guild, on average",
            "bytes_per_guild",
        ),
        (
            "titanium_gateway_cache_guild_bytes_max",
            "Bytes of the largest cached guild",
            "largest_guild_bytes",
        ),
        ("titanium_gateway_cache_members", "Members in the gateway cache", "members"),
    ):
        yield GaugeMetricFamily(name, doc, value=float(cache.get(key) or 0))
    dropped = CounterMetricFamily(
        "titanium_gateway_cache_dropped",
        "Members and presences not cached because their guild was at the cap",
        labels=["kind"],
    )
    dropped.add_metric(["members"], float(cache.get("members_dropped") or 0))
    dropped.add_metric(["presences"], float(cache.get("presences_dropped") or 0))
    yield dropped


def _section(status: ClusterStatus, name: str) -> dict[str, Any] | None:
    section = status.sections.get(name)
    value = section() if section is not None else None
    return value if isinstance(value, dict) else None


#: Paths that answer without the token: the Kubernetes probes.
OPEN_PATHS: Final = frozenset({"/health", "/livez"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_matches(header: str | None, token: str) -> bool:
    """True when an ``Authorization`` header value is ``Bearer <token>`` (constant-time compare)."""
    if header is None:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode("utf-8"), token.encode("utf-8"))


def token_middleware(token: str) -> Middleware:
    """401 for every path outside :data:`OPEN_PATHS` without ``Authorization: Bearer <token>``."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or bearer_matches(
            request.headers.get("Authorization"), token
        ):
            return await handler(request)
        return web.json_response(
            {"error": "this endpoint needs Authorization: Bearer <the --http-token-file token>"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="titanium-cluster"'},
        )

    return check


def build_app(status: ClusterStatus, token: str | None = None) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(status))

    async def health(_: web.Request) -> web.Response:
        healthy, body = status.health()
        return web.json_response(body, status=200 if healthy else 503)

    async def livez(_: web.Request) -> web.Response:
        # Answered by the supervisor's own loop: a stuck loop never answers. Never
        # Redis or Discord (a Discord outage must not restart the pod).
        return web.json_response(
            {"status": "alive", "uptime_s": round(time.time() - status.started_at, 3)}
        )

    async def status_json(_: web.Request) -> web.Response:
        return web.json_response(status.to_status_json())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=STATUS_PAGE_HTML, content_type="text/html")

    app = web.Application(middlewares=[] if token is None else [token_middleware(token)])
    app.router.add_get("/health", health)
    app.router.add_get("/livez", livez)
    app.router.add_get("/status", status_json)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", page)
    return app


class HealthServer:
    """Runs :func:`build_app` on host:port (port 0 picks a free one) without owning signals."""

    def __init__(
        self, status: ClusterStatus, host: str, port: int, token: str | None = None
    ) -> None:
        self._runner = web.AppRunner(
            build_app(status, token), handle_signals=False, access_log=None
        )
        self._host = host
        self._port = port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"
