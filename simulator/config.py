"""The simulator's frozen configuration and its validation.

Every knob of the simulated Discord lives here: the REST answers
(``/gateway/bot``), the gateway's timers and limits, the guilds each shard
receives, the event load and the chaos mode. Invalid values raise
:class:`ValueError` with a one-line cause (the CLI prints it as is). The token
never appears in a repr or an error.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Final

from protocol.gateway import (
    CLIENT_PAYLOAD_LIMIT,
    DEFAULT_SESSION_START_LIMIT,
    MAX_GUILDS_PER_SHARD,
    SEND_LIMIT,
    SEND_WINDOW_S,
)
from protocol.intents import PRIVILEGED_INTENTS

#: Event types the generator knows, with the intent a session needs to receive them
#: (shared/PROTOCOL.md section 9).
EVENT_INTENTS: Final[Mapping[str, int]] = {
    "MESSAGE_CREATE": 1 << 9,  # GUILD_MESSAGES
    "PRESENCE_UPDATE": 1 << 8,  # GUILD_PRESENCES (privileged)
    "TYPING_START": 1 << 11,  # GUILD_MESSAGE_TYPING
    "GUILD_MEMBER_UPDATE": 1 << 1,  # GUILD_MEMBERS (privileged)
    "MESSAGE_REACTION_ADD": 1 << 10,  # GUILD_MESSAGE_REACTIONS
}

DEFAULT_EVENT_MIX: Final[tuple[tuple[str, float], ...]] = (
    ("MESSAGE_CREATE", 0.5),
    ("PRESENCE_UPDATE", 0.25),
    ("TYPING_START", 0.1),
    ("GUILD_MEMBER_UPDATE", 0.05),
    ("MESSAGE_REACTION_ADD", 0.1),
)

#: 24 h, the window of Discord's daily session-start limit.
SESSION_START_WINDOW_MS: Final = 86_400_000


@dataclasses.dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """What the simulated Discord looks like and how strictly it behaves."""

    host: str = "127.0.0.1"
    #: 0 binds an ephemeral port (read it back from ``Simulator.port``).
    port: int = 0
    #: The one bot token accepted (REST ``Authorization: Bot <token>`` and Identify/Resume).
    token: str = dataclasses.field(default="simulated-token", repr=False)
    #: Recommended shard count answered by ``/gateway/bot`` at start; the admin API
    #: (``recommended_shards``) changes it at run time. IDENTIFY accepts any valid
    #: count, also several counts side by side (resharding).
    shards: int = 1
    max_concurrency: int = 1
    #: Total guilds of the bot, spread over shards by ``(guild_id >> 22) % num_shards``.
    #: None: 4 per recommended shard.
    guilds: int | None = None
    #: Dispatches per second per session (per shard); 0: none unless emitted.
    event_rate: float = 0.0
    event_mix: tuple[tuple[str, float], ...] = DEFAULT_EVENT_MIX
    heartbeat_interval_ms: int = 41250
    #: A connection with no heartbeat for ``interval * heartbeat_grace`` is closed.
    heartbeat_grace: float = 1.5
    identify_window_s: float = 5.0
    #: Session starts per day (``session_start_limit.total``): 1000 for a new
    #: application; Discord raises it for large bots (``--session-start-limit``).
    session_start_total: int = DEFAULT_SESSION_START_LIMIT
    #: None: equal to ``session_start_total``.
    session_start_remaining: int | None = None
    session_reset_after_ms: int = 14_400_000
    #: Dispatches kept per session for RESUME replay.
    replay_buffer: int = 1000
    #: How long a session without a connection stays resumable.
    resume_timeout_s: float = 120.0
    #: Faults per second per live connection (0: off), drawn from ``chaos_kinds``.
    chaos_rate: float = 0.0
    chaos_seed: int = 0
    #: None: the non-fatal default set of simulator.faults.CHAOS_KINDS.
    chaos_kinds: tuple[str, ...] | None = None
    #: Privileged intents the "application" has enabled in the Developer Portal
    #: (``--privileged-intents``); an IDENTIFY asking for any other gets 4014. None
    #: by default, as for a new application.
    privileged_intents: int = 0
    #: Discord's 2,500: an IDENTIFY whose shard would hold more guilds, or whose
    #: ``num_shards`` is below ``ceil(guilds / max_guilds_per_shard)``, is closed
    #: with 4011 (lower it in tests: 10 with 64 guilds needs at least 7 shards).
    max_guilds_per_shard: int = MAX_GUILDS_PER_SHARD
    payload_limit: int = CLIENT_PAYLOAD_LIMIT
    send_limit: int = SEND_LIMIT
    send_window_s: float = SEND_WINDOW_S
    #: "Request all members" (op 8, query "", limit 0) of one guild at most once per window.
    member_request_window_s: float = 30.0
    #: Guild shape in GUILD_CREATE (a few KB each with the defaults): a category,
    #: ``channels_per_guild - 2`` text channels and a voice channel.
    channels_per_guild: int = 8
    roles_per_guild: int = 5
    members_per_guild: int = 6
    #: Transport compression levels. Discord's are not documented; low levels keep
    #: the load source cheap, and the client's inflate cost barely depends on them.
    zlib_level: int = 1
    zstd_level: int = 3
    #: Keep one record entry per dispatch (turn off for long benchmarks).
    record_dispatches: bool = True

    def __post_init__(self) -> None:
        if self.guilds is None:
            object.__setattr__(self, "guilds", 4 * self.shards if _is_int(self.shards) else 0)
        if self.session_start_remaining is None:
            object.__setattr__(self, "session_start_remaining", self.session_start_total)
        self._validate()

    @property
    def guild_count(self) -> int:
        assert self.guilds is not None
        return self.guilds

    @property
    def session_start_initial(self) -> int:
        assert self.session_start_remaining is not None
        return self.session_start_remaining

    def with_changes(self, **changes: object) -> SimulatorConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def _validate(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            if not self.host or any(c.isspace() for c in self.host):
                raise ValueError(
                    f"host must be an IP address or a host name, got {self.host!r}"
                ) from None
        _int_range("port", self.port, 0, 65535)
        if (
            not isinstance(self.token, str)
            or not self.token
            or any(c.isspace() for c in self.token)
        ):
            raise ValueError("token must be a non-empty string without whitespace")
        _int_range("shards", self.shards, 1, 1 << 20)
        _int_range("max_concurrency", self.max_concurrency, 1, 1 << 16)
        if self.max_concurrency > 1 and self.shards % self.max_concurrency:
            raise ValueError(
                f"shards ({self.shards}) must be a multiple of max_concurrency ({self.max_concurrency})"
            )
        _int_range("guilds", self.guilds, 0, 10_000_000)
        _number_min("event_rate", self.event_rate, 0.0)
        if not self.event_mix:
            raise ValueError("event_mix must name at least one event type")
        for name, weight in self.event_mix:
            if name not in EVENT_INTENTS:
                raise ValueError(
                    f"event_mix: unknown event type {name!r}; known: {', '.join(EVENT_INTENTS)}"
                )
            _number_min(f"event_mix weight of {name}", weight, 0.0)
        if sum(w for _, w in self.event_mix) <= 0:
            raise ValueError("event_mix weights must not all be 0")
        _int_range("heartbeat_interval_ms", self.heartbeat_interval_ms, 1, 3_600_000)
        _number_min("heartbeat_grace", self.heartbeat_grace, 1.0)
        _number_positive("identify_window_s", self.identify_window_s)
        _int_range("session_start_total", self.session_start_total, 1, 1 << 31)
        _int_range(
            "session_start_remaining", self.session_start_remaining, 0, self.session_start_total
        )
        _int_range(
            "session_reset_after_ms", self.session_reset_after_ms, 0, SESSION_START_WINDOW_MS
        )
        _int_range("replay_buffer", self.replay_buffer, 1, 10_000_000)
        _number_positive("resume_timeout_s", self.resume_timeout_s)
        _number_min("chaos_rate", self.chaos_rate, 0.0)
        _int_range("chaos_seed", self.chaos_seed, -(1 << 63), 1 << 63)
        if self.chaos_kinds is not None:
            from simulator.faults import CHAOS_SAFE

            known = {k.value for k in CHAOS_SAFE}
            for kind in self.chaos_kinds:
                if kind not in known:
                    raise ValueError(
                        f"chaos_kinds: {kind!r} is not a non-fatal fault; choose from {sorted(known)}"
                    )
            if not self.chaos_kinds:
                raise ValueError("chaos_kinds must not be empty")
        _int_range("privileged_intents", self.privileged_intents, 0, PRIVILEGED_INTENTS)
        if self.privileged_intents & ~PRIVILEGED_INTENTS:
            raise ValueError(
                f"privileged_intents may only contain GUILD_MEMBERS, GUILD_PRESENCES and "
                f"MESSAGE_CONTENT (mask {PRIVILEGED_INTENTS}), got {self.privileged_intents}"
            )
        _int_range("max_guilds_per_shard", self.max_guilds_per_shard, 1, 1 << 31)
        _int_range("payload_limit", self.payload_limit, 64, 1 << 24)
        _int_range("send_limit", self.send_limit, 1, 1 << 20)
        _number_positive("send_window_s", self.send_window_s)
        _number_min("member_request_window_s", self.member_request_window_s, 0.0)
        _int_range("zlib_level", self.zlib_level, 0, 9)
        _int_range("zstd_level", self.zstd_level, 1, 19)
        _int_range("channels_per_guild", self.channels_per_guild, 3, 500)
        _int_range("roles_per_guild", self.roles_per_guild, 0, 250)
        _int_range("members_per_guild", self.members_per_guild, 0, 1000)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_range(name: str, value: object, low: int, high: int) -> None:
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    assert isinstance(value, int)
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def _number_min(name: str, value: object, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= low or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= {low}, got {value}")


def _number_positive(name: str, value: object) -> None:
    _number_min(name, value, 0.0)
    assert isinstance(value, int | float)
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value}")
