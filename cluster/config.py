"""The supervisor's frozen configuration (``cluster up``) and the parsing of its option values.

The CLI parses strings into a :class:`SupervisorConfig`; every bad value raises
:class:`ConfigError` whose message is the one line the user sees. The token is
kept out of the repr and out of every message.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cluster.curve import NEEDS_CURVE, NEEDS_TOKEN, is_loopback_endpoint, is_loopback_host
from cluster.endpoint.settings import (
    NEEDS_GATEWAY_TOKEN,
    GatewaySettings,
    GatewaySettingsError,
    load_gateway_token,
    parse_gateway,
)
from cluster.planner import PlanError, parse_shard_count, parse_shard_range
from cluster.restart_policy import RestartPolicy
from protocol import payloads
from protocol.brokerformat import Encoding
from protocol.compression import Compression
from protocol.curvezmq import CurveServerKeys
from protocol.errors import InvalidCommandError, UnknownIntentError
from protocol.gateway import DEFAULT_SESSION_START_LIMIT
from protocol.intents import (
    NON_PRIVILEGED_INTENTS,
    PRIVILEGED_INTENTS,
    PRIVILEGED_NAMES,
    parse_intents,
    parse_privileged_intents,
)
from protocol.payloads import LARGE_THRESHOLD_MAX, LARGE_THRESHOLD_MIN

DEFAULT_API_URL: Final = "https://discord.com/api/v10"
DEFAULT_PUB: Final = "tcp://127.0.0.1:5555"
DEFAULT_CONTROL: Final = "tcp://127.0.0.1:5556"
#: Each PUB subscriber's queue, in events (``--pub-hwm``); beyond it events are dropped and counted.
DEFAULT_PUB_HWM: Final = 10_000
DEFAULT_HEALTH: Final = "127.0.0.1:8080"
DEFAULT_STATE_DIR: Final = "./.cluster-state"
#: The token ``cluster up --simulate`` uses against its embedded simulator.
SIMULATED_TOKEN: Final = "simulated-token"
_ZMQ_TRANSPORTS: Final = ("tcp://", "ipc://", "inproc://")


class ConfigError(ValueError):
    """A bad option value; the message is one line naming the option and the fix."""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """``--redis``: shared state for several hosts (DESIGN.md section 6).

    Lease timing: a holder renews every ``renew_s`` and fences itself (its
    shards' TCP connections aborted, never a 1000/1001 close) once
    ``fence_after_s`` pass without a successful renew, counted from when the
    last good renew was *sent*; Redis expires the lease ``ttl_s`` after that
    renew arrived, so a taker connects at least ``ttl_s - fence_after_s`` after
    the old holder fenced, and waits ``takeover_wait_s`` more on top.
    """

    url: str = field(repr=False)
    #: H of ``--shard-ids auto --hosts H`` (None: a static range or all shards).
    hosts: int | None = None
    #: I of ``--host-index I`` (None: from the host name's trailing number, else any free range).
    host_index: int | None = None
    ttl_s: float = 10.0
    renew_s: float = 2.0
    fence_after_s: float = 6.0
    takeover_wait_s: float = 1.0
    #: Session starts kept back: no grant takes the budget below this.
    identify_reserve: int = 0
    #: How long a checkpoint in Redis stays resumable (Discord keeps a session a few minutes).
    checkpoint_ttl_s: float = 600.0
    #: How often a spare looks for a range whose lease expired.
    spare_poll_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"--redis must be a redis://HOST:PORT/DB, rediss:// or unix:///PATH URL, "
                f"got {redact_url(self.url)[:60]!r}"
            )
        if self.hosts is not None and self.hosts < 1:
            raise ConfigError("--hosts must be at least 1")
        if self.host_index is not None:
            if self.hosts is None:
                raise ConfigError("--host-index needs --shard-ids auto --hosts H")
            if not 0 <= self.host_index < self.hosts:
                raise ConfigError(
                    f"--host-index must be 0-{self.hosts - 1} for --hosts {self.hosts}, "
                    f"got {self.host_index}"
                )
        if not 0 < self.renew_s < self.fence_after_s < self.ttl_s:
            raise ConfigError("lease timing must satisfy 0 < renew < fence-after < ttl")
        if self.takeover_wait_s < 0 or self.identify_reserve < 0:
            raise ConfigError("--identify-reserve and the takeover wait must not be negative")

    @property
    def display_url(self) -> str:
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """``url`` with any password (userinfo, ``?password=``) as ``***``: for logs, /status, errors."""
    url = re.sub(
        r"^([a-z][a-z0-9+.-]*://)([^@/:]*:)?[^/]*@", lambda m: f"{m[1]}{m[2] or ''}***@", url
    )
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


def host_ordinal(hostname: str) -> int | None:
    """The number ending a host name (``bot-3`` -> 3), as a StatefulSet names its pods."""
    match = re.search(r"-(\d+)$", hostname)
    return int(match[1]) if match else None


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """``--sink redis``: every dispatch also appended to Redis Streams (DESIGN.md section 6)."""

    encoding: Encoding = Encoding.MSGPACK
    #: Entries older than this are trimmed (``MINID ~``).
    retention_s: float = 60.0
    #: Each stream is trimmed to about this many entries (``MAXLEN ~``); 0: no length bound.
    maxlen: int = 0
    #: Above this many events waiting for Redis the relay stops reading (back pressure).
    max_pending: int = 100_000

    def __post_init__(self) -> None:
        if not (math.isfinite(self.retention_s) and self.retention_s > 0):
            raise ConfigError(
                f"--sink-retention must be a number of seconds > 0, got {self.retention_s!r}"
            )
        if self.maxlen < 0:
            raise ConfigError(f"--sink-maxlen must be 0 (no bound) or more, got {self.maxlen}")
        if self.max_pending < 1:
            raise ConfigError("the sink's pending bound must be at least 1")


def parse_sink(
    sink: str, redis: RedisSettings | None, encoding: str, retention_s: float, maxlen: int
) -> SinkSettings | None:
    """``--sink none|redis`` and its options -> the settings (None: no sink)."""
    kind = sink.strip().lower()
    if kind in ("", "none"):
        return None
    if kind != "redis":
        raise ConfigError(f"--sink must be none or redis, got {sink[:40]!r}")
    if redis is None:
        raise ConfigError("--sink redis needs --redis URL (the streams live in that Redis)")
    try:
        parsed = Encoding(encoding.strip().lower())
    except ValueError:
        raise ConfigError(
            f"--sink-encoding must be msgpack or json, got {encoding[:40]!r}"
        ) from None
    return SinkSettings(encoding=parsed, retention_s=retention_s, maxlen=maxlen)


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class SimulateSettings:
    """The embedded simulator of ``cluster up --simulate``."""

    shards: int = 4
    max_concurrency: int = 4
    event_rate: float = 5.0
    #: The simulated application's Developer Portal toggles (``--privileged-intents``).
    privileged_intents: int = 0
    #: Session starts per day (``--session-start-limit``).
    session_start_limit: int = DEFAULT_SESSION_START_LIMIT

    def __post_init__(self) -> None:
        if self.privileged_intents & ~PRIVILEGED_INTENTS or self.privileged_intents < 0:
            raise ConfigError(
                f"--privileged-intents may only name {PRIVILEGED_NAMES}, got {self.privileged_intents}"
            )
        if not 1 <= self.session_start_limit <= 1 << 31:
            raise ConfigError(
                f"--session-start-limit must be between 1 and {1 << 31}, got {self.session_start_limit}"
            )

    @classmethod
    def from_options(
        cls,
        simulate: bool,
        shards: int,
        max_concurrency: int,
        event_rate: float,
        privileged_intents: str | None,
        session_start_limit: int | None,
    ) -> SimulateSettings | None:
        """The ``cluster up`` options about the simulator -> the settings (None: no ``--simulate``)."""
        if not simulate:
            if privileged_intents is not None:
                raise ConfigError(
                    "--privileged-intents goes with --simulate; on Discord, enable privileged "
                    "intents in the Developer Portal (Bot -> Privileged Gateway Intents)"
                )
            if session_start_limit is not None:
                raise ConfigError(
                    "--session-start-limit goes with --simulate; Discord sets the real limit "
                    "(GET /gateway/bot reports it)"
                )
            return None
        return cls(
            shards,
            max_concurrency,
            event_rate,
            parse_privileged_intents_option(privileged_intents),
            DEFAULT_SESSION_START_LIMIT if session_start_limit is None else session_start_limit,
        )


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Everything ``cluster up`` runs with (DESIGN.md 4.1), validated."""

    token: str = field(repr=False)
    #: None: Discord's recommendation (``--shards auto``).
    shards: int | None = None
    shard_range: tuple[int, int] | None = None
    #: Shared state across hosts (``--redis``); None: one host, the state dir, the embedded scheduler.
    redis: RedisSettings | None = None
    #: Durable delivery to Redis Streams (``--sink redis``); None: the PUB socket only.
    sink: SinkSettings | None = None
    #: The gateway-compatible endpoint for bot libraries (``--gateway``); None: off.
    gateway: GatewaySettings | None = None
    workers: int | None = None
    intents: int = NON_PRIVILEGED_INTENTS
    api_url: str = DEFAULT_API_URL
    compression: Compression = Compression.ZLIB_STREAM
    pub: str = DEFAULT_PUB
    control: str = DEFAULT_CONTROL
    health_host: str = "127.0.0.1"
    health_port: int = 8080
    #: CURVE on --pub and --control (``--curve-secret``, ``--curve-clients``); required off loopback.
    curve: CurveServerKeys | None = field(default=None, repr=False)
    #: The bearer token of /status, /metrics and / (``--http-token-file``); required off loopback.
    http_token: str | None = field(default=None, repr=False)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    identify_interval_s: float = 5.0
    #: Identify's presence (``--status``, ``--activity``); None: Discord's default (online).
    presence: dict[str, Any] | None = None
    #: Identify's ``large_threshold`` (50-250); None: Discord's default (50).
    large_threshold: int | None = None
    #: Extra spacing per bucket on top of the interval (None: the scheduler's default).
    identify_margin_s: float | None = None
    simulate: SimulateSettings | None = None
    log_format: LogFormat = LogFormat.TEXT
    log_level: str = "INFO"
    #: How often workers report every shard (liveness and /status freshness).
    report_interval_s: float = 1.0
    #: A worker silent for this many report intervals is killed and replaced.
    liveness_intervals: int = 10
    #: Per-subscriber queue of the PUB socket, in messages; beyond it events are dropped (counted).
    pub_hwm: int = DEFAULT_PUB_HWM
    #: Graceful stop: how long workers get to drain before SIGKILL.
    stop_timeout_s: float = 7.0
    #: Sessions (last published seq) are checkpointed at most this long after they change.
    checkpoint_interval_s: float = 0.5
    #: How often ``GET /gateway/bot`` is fetched again for fresh session-start numbers.
    limit_refresh_s: float = 600.0
    #: ``--auto-reshard``: reshard when ``GET /gateway/bot`` recommends more shards than run.
    auto_reshard: bool = False
    #: How often ``--auto-reshard`` asks Discord (``--auto-reshard-interval``).
    auto_reshard_interval_s: float = 3600.0
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    #: How the supervisor talks to its workers: "ipc" (a private directory; falls
    #: back to tcp where ZeroMQ has no ipc) or "tcp" (loopback, port 0).
    private_transport: str = "ipc"

    def __post_init__(self) -> None:
        if not self.token or any(c.isspace() for c in self.token):
            raise ConfigError("--token is required (or DISCORD_TOKEN): a bot token without spaces")
        for name, endpoint in (("--pub", self.pub), ("--control", self.control)):
            check_endpoint(name, endpoint)
            if self.curve is None and not is_loopback_endpoint(endpoint):
                raise ConfigError(NEEDS_CURVE.format(option=name, endpoint=endpoint))
        if self.http_token is None and not is_loopback_host(self.health_host):
            raise ConfigError(NEEDS_TOKEN.format(host=self.health_host, port=self.health_port))
        gateway = self.gateway
        if (
            gateway is not None
            and gateway.access_token is None
            and not is_loopback_host(gateway.host)
        ):
            raise ConfigError(NEEDS_GATEWAY_TOKEN.format(host=gateway.host, port=gateway.port))
        if self.redis is not None and self.redis.hosts is not None:
            if self.shard_range is not None:
                raise ConfigError("--hosts goes with --shard-ids auto, not with a fixed range")
            # With --shards auto the count comes from /gateway/bot: the supervisor checks it then.
            if self.shards is not None and self.redis.hosts > self.shards:
                raise ConfigError(f"--hosts {self.redis.hosts} is more than --shards {self.shards}")
        if self.sink is not None and self.redis is None:
            raise ConfigError("--sink redis needs --redis URL (the streams live in that Redis)")
        if not (math.isfinite(self.identify_interval_s) and self.identify_interval_s > 0):
            raise ConfigError(
                f"--identify-interval must be a number of seconds > 0, got {self.identify_interval_s!r}"
            )
        if self.identify_margin_s is not None and not (
            math.isfinite(self.identify_margin_s) and self.identify_margin_s >= 0
        ):
            raise ConfigError("--identify-margin must be a number of seconds >= 0")
        if not (math.isfinite(self.report_interval_s) and 0 < self.report_interval_s <= 60):
            raise ConfigError("--report-interval must be between 0 and 60 s")
        if not (math.isfinite(self.checkpoint_interval_s) and 0 < self.checkpoint_interval_s <= 1):
            raise ConfigError("the checkpoint interval must be > 0 and at most 1 s")
        if not (math.isfinite(self.limit_refresh_s) and self.limit_refresh_s > 0):
            raise ConfigError("the session-limit refresh interval must be > 0 s")
        if not (math.isfinite(self.auto_reshard_interval_s) and self.auto_reshard_interval_s > 0):
            raise ConfigError(
                "--auto-reshard-interval must be a number of seconds > 0, "
                f"got {self.auto_reshard_interval_s!r}"
            )
        if self.restart_policy.max_quick_deaths < 0:
            raise ConfigError("--max-quick-deaths must not be negative")
        if self.private_transport not in ("ipc", "tcp"):
            raise ConfigError("the private transport must be ipc or tcp")
        if self.liveness_intervals < 2:
            raise ConfigError("--liveness-intervals must be at least 2")
        if self.pub_hwm < 1:
            raise ConfigError("--pub-hwm must be at least 1")
        if not 0 <= self.health_port <= 65535:
            raise ConfigError(f"--health port must be 0-65535, got {self.health_port}")
        if not (self.api_url.startswith("http://") or self.api_url.startswith("https://")):
            raise ConfigError(f"--api-url must be an http(s) URL, got {self.api_url[:60]!r}")

    @property
    def liveness_timeout_s(self) -> float:
        return self.report_interval_s * self.liveness_intervals


def check_endpoint(option: str, endpoint: str) -> str:
    if not endpoint.startswith(_ZMQ_TRANSPORTS) or len(endpoint) <= len("tcp://"):
        raise ConfigError(
            f"{option} must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555 or ipc:///path, "
            f"got {endpoint[:60]!r}"
        )
    return endpoint


def parse_gateway_settings(
    gateway: str | None, token_file: str | None, **tuning: Any
) -> GatewaySettings | None:
    """``--gateway HOST:PORT``, ``--gateway-token-file`` and the tuning knobs -> the settings."""
    try:
        address = parse_gateway(gateway)
        if address is None:
            if token_file is not None:
                raise ConfigError("--gateway-token-file goes with --gateway HOST:PORT")
            return None
        access_token = None if token_file is None else load_gateway_token(token_file)
        return GatewaySettings(address[0], address[1], access_token, **tuning)
    except GatewaySettingsError as exc:
        raise ConfigError(str(exc)) from None


def parse_presence(status: str | None, activity: str | None) -> dict[str, Any] | None:
    """``--status`` and ``--activity`` -> Identify's presence (None when neither is given)."""
    if status is None and activity is None:
        return None
    try:
        activities = [] if activity is None else [payloads.parse_activity(activity)]
        return payloads.presence((status or "online").strip().lower(), activities)
    except InvalidCommandError as exc:
        option = "--activity" if "activit" in str(exc) else "--status"
        raise ConfigError(f"{option}: {exc}") from None


def parse_large_threshold(value: int | None) -> int | None:
    if value is not None and not LARGE_THRESHOLD_MIN <= value <= LARGE_THRESHOLD_MAX:
        raise ConfigError(
            f"--large-threshold must be {LARGE_THRESHOLD_MIN}-{LARGE_THRESHOLD_MAX}, got {value}"
        )
    return value


def parse_health(text: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6]:port`` for IPv6) -> (host, port)."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if (
        not sep
        or not host
        or not (port_text.isascii() and port_text.isdigit())
        or not 0 <= int(port_text) <= 65535
    ):
        raise ConfigError(f"--health must be host:port, e.g. 127.0.0.1:8080, got {text[:60]!r}")
    return host, int(port_text)


def parse_shards(text: str) -> int | None:
    try:
        return parse_shard_count(text)
    except PlanError as exc:
        raise ConfigError(f"--shards: {exc}") from None


def parse_range(text: str | None) -> tuple[int, int] | None:
    if text is None or text.strip().lower() in ("", "all"):
        return None
    try:
        return parse_shard_range(text)
    except PlanError as exc:
        raise ConfigError(f"--shard-ids: {exc}") from None


def parse_workers(text: str | None) -> int | None:
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    raw = text.strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigError(f"--workers must be 'auto' or a positive integer, got {raw[:40]!r}")
    return int(raw)


def parse_intent_option(text: str | None) -> int:
    if text is None:
        return NON_PRIVILEGED_INTENTS
    try:
        return parse_intents(text)
    except UnknownIntentError as exc:
        raise ConfigError(f"--intents: {exc}") from None


def parse_privileged_intents_option(text: str | None) -> int:
    """``--privileged-intents`` of ``cluster up --simulate`` (None: none enabled)."""
    if text is None:
        return 0
    try:
        return parse_privileged_intents(text)
    except UnknownIntentError as exc:
        raise ConfigError(f"--privileged-intents: {exc}") from None


def parse_compression(text: str) -> Compression:
    try:
        return Compression(text.strip().lower())
    except ValueError:
        raise ConfigError(
            f"--compress must be zlib-stream, zstd-stream or none, got {text[:40]!r}"
        ) from None


def parse_log_format(text: str) -> LogFormat:
    try:
        return LogFormat(text.strip().lower())
    except ValueError:
        raise ConfigError(f"--log-format must be text or json, got {text[:40]!r}") from None
