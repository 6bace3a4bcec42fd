"""The Redis arbiter: one bot's shared state across hosts (DESIGN.md section 6).

Owns the client side of every key under ``tc:{<bot_id>}:`` (the braces are literal, so
one bot's keys share a hash slot):

========================  ==========================================================
``layout``                hash ``shards``, ``max_concurrency``: the first host's layout,
                          and ``resharded_from`` once a reshard switched it
``budget``                hash ``remaining``, ``total``, ``reset_at_ms`` (Redis time):
                          the daily identify budget (GET /gateway/bot)
``idb:<bucket>``          identify bucket ``shard_id % max_concurrency``, value
                          ``"<shard_id>|<holder>|<token>"``, held until the IDENTIFY is
                          written, then for the identify interval
``boot``                  cold-start guard: Redis time of the first grant request since
                          Redis last came up empty (no TTL)
``lease:<A>-<B>``         the range's owner, value ``"<holder>|<token>"``, with a TTL
``fence:<A>-<B>``         the range's last fencing token
``fence``                 the bot's last fencing token: a new token is above both, so a
                          range of a new layout outranks every range of the old one
``reshard``, ``reshard:*``  a reshard across hosts (:mod:`cluster.state.redis_reshard`)
``sess:<shard>``          JSON of :class:`protocol.session.Session` plus ``"fence"``
========================  ==========================================================

Everything that must be atomic is one Lua script from :mod:`cluster.state.redis_scripts`,
registered once per :class:`RedisState` and reloaded by redis-py on NOSCRIPT; the lease is
compared inside the script and a mismatch comes back as a code that becomes
:class:`LeaseLostError` or :attr:`GrantOutcome.LEASE_LOST`.

Every public call that talks to Redis is timed into :attr:`RedisState.stats`; a
connection refused or reset, a timeout, LOADING, READONLY or MASTERDOWN becomes
:class:`RedisUnavailableError`. Nothing here logs: the caller decides what a failure
means (an owner stops its shards when its lease is lost, a spare just waits). Error
messages never contain the URL's password.

redis-py is imported when the first :class:`RedisState` is made, not with this module:
a cluster without ``--redis`` never loads it (about 0.1 s of its start).
"""

from __future__ import annotations

import enum
import time
import urllib.parse
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from cluster.state import redis_scripts
from protocol.session import Session

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

__all__ = [
    "BudgetView",
    "GrantOutcome",
    "GrantResult",
    "Layout",
    "LayoutMismatchError",
    "Lease",
    "LeaseInfo",
    "LeaseLostError",
    "RedisState",
    "RedisStateError",
    "RedisStats",
    "RedisUnavailableError",
    "redact_url",
]

T = TypeVar("T")

MIN_REDIS_VERSION = (7, 0)

# The bulk client's socket timeout: a sink round of 4,000 events is a few megabytes.
BULK_TIMEOUT_S = 10.0

# A connection idle longer than this is PINGed before it is used again (redis-py's
# health check), so a connection Redis dropped while idle is replaced before a script
# runs on it.
HEALTH_CHECK_INTERVAL_S = 30


class RedisStateError(Exception):
    """Base of everything raised here. Messages never carry the URL password."""


class RedisUnavailableError(RedisStateError):
    """Redis did not answer: refused, reset, timed out, loading, read-only replica."""


@dataclass(frozen=True, slots=True)
class Layout:
    shards: int
    max_concurrency: int
    #: the count a reshard replaced (0: none); not part of what hosts must agree on
    resharded_from: int = field(default=0, compare=False)


class LayoutMismatchError(RedisStateError):
    """Another host claimed a different layout for this bot first."""

    def __init__(self, existing: Layout, wanted: Layout) -> None:
        super().__init__(
            f"Redis says this bot runs {existing.shards} shards "
            f"(max_concurrency {existing.max_concurrency}), this host computed "
            f"{wanted.shards} (max_concurrency {wanted.max_concurrency}): every host of "
            f"one bot must run one layout; start this host with --shards {existing.shards}, "
            "or change the running cluster with `cluster reshard`"
        )
        self.existing = existing
        self.wanted = wanted


class LayoutChangedError(RedisStateError):
    """A lease of a range the layout does not run any more (a reshard switched)."""

    def __init__(self, shards: int) -> None:
        super().__init__(f"the layout runs {shards} shards now")
        self.shards = shards


class LeaseLostError(RedisStateError):
    """The lease is no longer ours; ``holder`` is who holds it now (None: nobody)."""

    def __init__(self, shard_range: tuple[int, int], token: int, holder: str | None) -> None:
        first, last = shard_range
        now = f"held by {holder}" if holder is not None else "held by nobody"
        super().__init__(f"lost the lease on shards {first}-{last} (token {token}): it is {now}")
        self.shard_range = shard_range
        self.token = token
        self.holder = holder


@dataclass(frozen=True, slots=True)
class Lease:
    """A range we own, with the fencing token it was acquired under."""

    shard_range: tuple[int, int]
    holder: str
    token: int

    @property
    def key(self) -> str:
        """The range as it appears in key names: ``"A-B"``."""
        return _range_key(self.shard_range)

    @property
    def value(self) -> str:
        """The lease key's value while we hold it."""
        return f"{self.holder}|{self.token}"


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    holder: str
    token: int
    ttl_ms: int


class GrantOutcome(enum.Enum):
    """What :meth:`RedisState.try_identify` decided; the values are the script's codes."""

    GRANTED = "granted"
    BUCKET_BUSY = "bucket_busy"
    BUDGET_LOW = "budget_low"
    COLD_START = "cold_start"
    LEASE_LOST = "lease_lost"


@dataclass(frozen=True, slots=True)
class GrantResult:
    outcome: GrantOutcome
    retry_after_s: float
    # budget left after this call; -1 when unknown (no budget synced yet, or the call
    # stopped before the budget step: LEASE_LOST, COLD_START, BUCKET_BUSY)
    remaining: int


@dataclass(frozen=True, slots=True)
class BudgetView:
    remaining: int
    total: int
    reset_after_s: float


@dataclass(slots=True)
class RedisStats:
    """Health of the Redis link, for /status and /metrics.

    ``round_trips`` counts answered requests, ``errors`` failed ones; RTTs are of the
    answered ones. ``last_ok_at`` is ``time.monotonic()``.
    """

    round_trips: int = 0
    errors: int = 0
    last_rtt_ms: float | None = None
    max_rtt_ms: float = 0.0
    last_error: str | None = None
    last_ok_at: float | None = None


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or ``?password=``) replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in query):
        query = [(n, "***" if n == "password" else v) for n, v in query]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(query), parts.fragment)
    )


def _url_secrets(url: str) -> list[str]:
    """Every spelling of the URL's password, to scrub from error text."""
    try:
        parts = urllib.parse.urlsplit(url)
        found = [parts.password or ""]
        found += [v for n, v in urllib.parse.parse_qsl(parts.query) if n == "password"]
    except ValueError:
        return []
    spelled = {s for p in found if p for s in (p, urllib.parse.unquote(p))}
    return sorted(spelled, key=len, reverse=True)


def _range_key(shard_range: tuple[int, int]) -> str:
    first, last = shard_range
    return f"{first}-{last}"


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _text(raw: Any) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return str(raw)


def _parse_lease_value(raw: Any) -> tuple[str, int] | None:
    """``(holder, token)`` from ``"<holder>|<token>"``; None when malformed."""
    holder, sep, token = _text(raw).rpartition("|")
    if not sep or not (token.isascii() and token.isdigit()):
        return None
    return holder, int(token)


def _positive_ms(name: str, value: int) -> int:
    if value <= 0:
        raise ValueError(f"{name} must be > 0 ms, got {value}")
    return value


class RedisState:
    """One supervisor's client of the shared state; ``holder`` names this supervisor."""

    def __init__(self, url: str, bot_id: str, *, holder: str, timeout_s: float = 1.0) -> None:
        if not bot_id or any(c in bot_id for c in "{}"):
            raise ValueError("bot_id must be non-empty and contain no braces")
        if not holder or "|" in holder:
            raise ValueError("holder must be non-empty and contain no '|'")
        self._bot_id = bot_id
        self._holder = holder
        self._prefix = f"tc:{{{bot_id}}}:"
        self._secrets = _url_secrets(url)
        self.stats = RedisStats()
        import redis.asyncio
        import redis.exceptions
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # Errors that mean "Redis cannot answer right now", as opposed to a bug in a
        # command. BusyLoadingError (LOADING) and AuthenticationError are ConnectionErrors.
        self._unavailable: tuple[type[Exception], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError,
            redis.exceptions.MasterDownError,
        )
        self._redis_error: type[Exception] = redis.exceptions.RedisError
        try:
            self._redis = redis.asyncio.Redis.from_url(
                url,
                decode_responses=False,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                health_check_interval=HEALTH_CHECK_INTERVAL_S,
                # One immediate retry on a connection error only: it replaces a pooled
                # connection that a Redis restart closed. No retry on a timeout and no
                # backoff, so an outage surfaces within about timeout_s instead of after
                # redis-py's default 10 retries with backoff. A script whose reply was
                # lost and that runs twice is harmless: acquire, renew and checkpoint are
                # idempotent, a second grant attempt sees its own grant (BUCKET_BUSY), a
                # second release or identify_sent answers False.
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
            )
            # Bulk work (the sink's appends, blocking stream reads) on connections of its
            # own with a longer timeout: a round of thousands of events is megabytes, and
            # it must never queue a lease renewal behind it.
            self._bulk = redis.asyncio.Redis.from_url(
                url,
                decode_responses=False,
                socket_timeout=max(timeout_s, BULK_TIMEOUT_S),
                socket_connect_timeout=timeout_s,
                health_check_interval=HEALTH_CHECK_INTERVAL_S,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
            )
        except ValueError as exc:
            raise RedisStateError(
                f"bad Redis URL {redact_url(url)!r}: {self._scrub(str(exc))}"
            ) from None
        #: Every script registered, loaded by :meth:`connect` (SCRIPT LOAD) once.
        self._scripts: list[AsyncScript] = []
        register = self.register
        self._claim_layout = register(redis_scripts.CLAIM_LAYOUT)
        self._acquire_lease = register(redis_scripts.ACQUIRE_LEASE)
        self._renew_lease = register(redis_scripts.RENEW_LEASE)
        self._release_lease = register(redis_scripts.RELEASE_LEASE)
        self._read_leases = register(redis_scripts.READ_LEASES)
        self._try_identify = register(redis_scripts.TRY_IDENTIFY)
        self._identify_sent = register(redis_scripts.IDENTIFY_SENT)
        self._identify_release = register(redis_scripts.IDENTIFY_RELEASE)
        self._sync_budget = register(redis_scripts.SYNC_BUDGET)
        self._read_budget = register(redis_scripts.READ_BUDGET)
        self._checkpoint = register(redis_scripts.CHECKPOINT)

    def register(self, text: str) -> AsyncScript:
        """A script called by SHA, loaded at :meth:`connect` (and again by redis-py on NOSCRIPT).

        For the stores built on this client (:mod:`cluster.state.redis_streams`);
        call it before :meth:`connect`.
        """
        script = self._redis.register_script(text)
        self._scripts.append(script)
        return script

    @property
    def client(self) -> redis.asyncio.Redis:
        """The redis-py client, for stores built on this one: wrap every request in :meth:`call`."""
        return self._redis

    @property
    def bulk(self) -> redis.asyncio.Redis:
        """A second client for large or blocking requests (timeout :data:`BULK_TIMEOUT_S`)."""
        return self._bulk

    @property
    def holder(self) -> str:
        return self._holder

    def key(self, name: str) -> str:
        """The full key of ``name`` in this bot's namespace: ``tc:{<bot_id>}:<name>``."""
        return self._prefix + name

    # -- plumbing ------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _failed(self, exc: BaseException) -> str:
        detail = self._scrub(f"{type(exc).__name__}: {exc}")[:200]
        self.stats.errors += 1
        self.stats.last_error = detail
        return detail

    async def call(self, request: Awaitable[T]) -> T:
        """Await one request to Redis, timing it and mapping its errors."""
        started = time.monotonic()
        try:
            result = await request
        except self._unavailable as exc:
            raise RedisUnavailableError(f"Redis unavailable: {self._failed(exc)}") from exc
        except self._redis_error as exc:
            raise RedisStateError(f"Redis error: {self._failed(exc)}") from exc
        now = time.monotonic()
        rtt_ms = (now - started) * 1000.0
        stats = self.stats
        stats.round_trips += 1
        stats.last_rtt_ms = rtt_ms
        stats.max_rtt_ms = max(stats.max_rtt_ms, rtt_ms)
        stats.last_ok_at = now
        return result

    def lease_lost(self, lease: Lease, current: Any) -> LeaseLostError:
        parsed = None if current is None else _parse_lease_value(current)
        return LeaseLostError(lease.shard_range, lease.token, parsed[0] if parsed else None)

    def _grant_value(self, lease: Lease, shard_id: int) -> str:
        return f"{shard_id}|{lease.holder}|{lease.token}"

    # -- connection ----------------------------------------------------------------

    async def connect(self) -> None:
        """PING, check the server is Redis >= 7.0, and load every script once.

        Loading up front turns a script that does not compile into an error here, at
        start, rather than at the first identify.
        """
        await self.ping()
        info = await self.call(self._redis.info("server"))
        version = str(info.get("redis_version", "unknown"))
        try:
            found = tuple(int(part) for part in version.split(".")[:2])
        except ValueError:
            found = (0, 0)
        if found < MIN_REDIS_VERSION:
            raise RedisStateError(f"Redis >= 7.0 is required, found {version}")
        for script in self._scripts:
            script.sha = await self.call(self._redis.script_load(script.script))

    async def close(self) -> None:
        await self._redis.aclose()
        await self._bulk.aclose()

    async def ping(self) -> float:
        """One PING; the round trip in seconds."""
        started = time.monotonic()
        await self.call(self._redis.ping())
        return time.monotonic() - started

    # -- layout --------------------------------------------------------------------

    async def claim_layout(self, layout: Layout) -> Layout:
        """Write ``layout`` if no host has; return it, or raise if another one is stored."""
        raw = await self.call(
            self._claim_layout(
                keys=[self.key("layout")], args=[layout.shards, layout.max_concurrency]
            )
        )
        existing = Layout(int(raw[0]), int(raw[1]), int(raw[2]) if len(raw) > 2 else 0)
        if existing == layout:
            return existing
        if existing.resharded_from == layout.shards and (
            existing.max_concurrency == layout.max_concurrency
        ):
            return existing  # resharded: the caller runs the new count
        if existing != layout:
            raise LayoutMismatchError(existing, layout)
        return existing

    # -- leases --------------------------------------------------------------------

    async def acquire_lease(
        self, shard_range: tuple[int, int], ttl_ms: int, *, shards: int = 0
    ) -> Lease | None:
        """Take the range's lease with a new fencing token (or keep ours); None if taken.

        ``shards``: the count the range belongs to; when the layout runs another one
        (a reshard switched) :class:`LayoutChangedError` says which.
        """
        name = _range_key(shard_range)
        token = await self.call(
            self._acquire_lease(
                keys=[
                    self.key(f"lease:{name}"),
                    self.key(f"fence:{name}"),
                    self.key("fence"),
                    self.key("layout"),
                    self.key("reshard"),
                ],
                args=[self._holder, _positive_ms("ttl_ms", ttl_ms), shards],
            )
        )
        if token is None:
            return None
        if int(token) < 0:
            raise LayoutChangedError(-int(token))
        return Lease(shard_range, self._holder, int(token))

    async def renew_lease(self, lease: Lease, ttl_ms: int) -> None:
        """Extend our lease; re-assert it if its key is gone; LeaseLostError if taken."""
        raw = await self.call(
            self._renew_lease(
                keys=[
                    self.key(f"lease:{lease.key}"),
                    self.key(f"fence:{lease.key}"),
                    self.key("fence"),
                ],
                args=[lease.value, _positive_ms("ttl_ms", ttl_ms), lease.token],
            )
        )
        if int(raw[0]) == 0:
            raise self.lease_lost(lease, raw[1])

    async def release_lease(self, lease: Lease) -> bool:
        """Delete the lease if it is still ours (compare-and-delete); whether it was."""
        released = await self.call(
            self._release_lease(keys=[self.key(f"lease:{lease.key}")], args=[lease.value])
        )
        return bool(released)

    async def lease_info(self, shard_range: tuple[int, int]) -> LeaseInfo | None:
        name = _range_key(shard_range)
        return (await self._lease_infos([self.key(f"lease:{name}")])).get(name)

    async def leases(self) -> dict[str, LeaseInfo]:
        """Every lease of this bot, by range ``"A-B"`` (SCAN, then one read)."""
        pattern = _glob_escape(self.key("lease:")) + "*"
        found: set[bytes] = set()
        cursor = 0
        while True:
            cursor, page = await self.call(self._redis.scan(cursor, match=pattern, count=1000))
            found.update(k if isinstance(k, bytes) else str(k).encode() for k in page)
            if cursor == 0:
                break
        if not found:
            return {}
        return await self._lease_infos([k.decode("utf-8", "replace") for k in sorted(found)])

    async def _lease_infos(self, keys: list[str]) -> dict[str, LeaseInfo]:
        raw = await self.call(self._read_leases(keys=keys))
        prefix_len = len(self.key("lease:"))
        infos: dict[str, LeaseInfo] = {}
        for i, key in enumerate(keys):
            value, ttl_ms = raw[2 * i], int(raw[2 * i + 1])
            parsed = None if value is None else _parse_lease_value(value)
            if parsed is not None:
                infos[key[prefix_len:]] = LeaseInfo(parsed[0], parsed[1], ttl_ms)
        return infos

    # -- identify ------------------------------------------------------------------

    def _bucket_key(self, shard_id: int, max_concurrency: int) -> str:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        return self.key(f"idb:{shard_id % max_concurrency}")

    async def try_identify(
        self,
        lease: Lease,
        shard_id: int,
        *,
        max_concurrency: int,
        hold_ms: int,
        reserve: int,
        cold_start_ms: int,
    ) -> GrantResult:
        """Ask for the permit to IDENTIFY ``shard_id``, under ``lease``.

        In order: the lease must be ours (LEASE_LOST); the cold-start guard (COLD_START);
        the bucket ``shard_id % max_concurrency`` must be free (BUCKET_BUSY); the budget
        must stay above ``reserve`` (BUDGET_LOW); then the bucket is held for ``hold_ms``
        and one session spent (GRANTED). Follow a grant with :meth:`identify_sent` once
        the IDENTIFY is written, or :meth:`identify_release` if it never will be.
        """
        raw = await self.call(
            self._try_identify(
                keys=[
                    self.key(f"lease:{lease.key}"),
                    self.key("boot"),
                    self._bucket_key(shard_id, max_concurrency),
                    self.key("budget"),
                ],
                args=[
                    lease.value,
                    self._grant_value(lease, shard_id),
                    _positive_ms("hold_ms", hold_ms),
                    reserve,
                    max(0, cold_start_ms),
                ],
            )
        )
        return GrantResult(GrantOutcome(_text(raw[0])), max(0, int(raw[1])) / 1000.0, int(raw[2]))

    async def identify_sent(
        self, lease: Lease, shard_id: int, *, max_concurrency: int, spacing_ms: int
    ) -> bool:
        """The IDENTIFY under our grant was written: hold the bucket ``spacing_ms`` from now.

        False when the bucket no longer holds our grant (it expired first).
        """
        done = await self.call(
            self._identify_sent(
                keys=[self._bucket_key(shard_id, max_concurrency)],
                args=[self._grant_value(lease, shard_id), spacing_ms],
            )
        )
        return bool(done)

    async def identify_release(self, lease: Lease, shard_id: int, *, max_concurrency: int) -> bool:
        """Give back an unused grant: free the bucket and refund the session."""
        done = await self.call(
            self._identify_release(
                keys=[self._bucket_key(shard_id, max_concurrency), self.key("budget")],
                args=[self._grant_value(lease, shard_id)],
            )
        )
        return bool(done)

    # -- budget --------------------------------------------------------------------

    async def sync_budget(self, remaining: int, total: int, reset_after_ms: int) -> BudgetView:
        """Merge Discord's ``session_start_limit`` into the shared budget."""
        raw = await self.call(
            self._sync_budget(
                keys=[self.key("budget")], args=[remaining, total, max(0, reset_after_ms)]
            )
        )
        return BudgetView(int(raw[0]), int(raw[1]), int(raw[2]) / 1000.0)

    async def budget(self) -> BudgetView | None:
        raw = await self.call(self._read_budget(keys=[self.key("budget")]))
        if raw is None:
            return None
        return BudgetView(int(raw[0]), int(raw[1]), int(raw[2]) / 1000.0)

    # -- sessions ------------------------------------------------------------------

    async def checkpoint(
        self, lease: Lease, sessions: Mapping[int, Session | None], ttl_ms: int
    ) -> None:
        """Write (or, for None, delete) sessions in one script, fenced by ``lease``.

        LeaseLostError (nothing written) when the lease is not ours. A session stored
        under a higher fencing token is left alone.
        """
        keys = [self.key(f"lease:{lease.key}")]
        args: list[str | int] = [lease.value, lease.token, _positive_ms("ttl_ms", ttl_ms)]
        for shard_id, session in sessions.items():
            keys.append(self.key(f"sess:{shard_id}"))
            if session is None:
                args.append("")
            else:
                args.append(orjson.dumps({**session.to_json(), "fence": lease.token}).decode())
        raw = await self.call(self._checkpoint(keys=keys, args=args))
        if int(raw[0]) == 0:
            raise self.lease_lost(lease, raw[1])

    async def load_sessions(self, shard_ids: Iterable[int]) -> dict[int, Session]:
        """The stored sessions of ``shard_ids`` (one MGET); unparsable values are skipped."""
        ids = list(dict.fromkeys(shard_ids))
        if not ids:
            return {}
        values = await self.call(self._redis.mget([self.key(f"sess:{i}") for i in ids]))
        sessions: dict[int, Session] = {}
        for shard_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            try:
                sessions[shard_id] = Session.from_json(orjson.loads(value))
            except ValueError:
                continue
        return sessions
