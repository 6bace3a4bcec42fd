"""The gateway endpoint: a Discord-gateway-compatible websocket server fed by the relay.

Lives in the supervisor process as long as it does (``cluster up --gateway``).
The relay hands it every published run of events through :class:`EndpointTap`,
a :class:`cluster.runs.RunConsumer` whose ``add`` only appends to a deque; the
endpoint's own task (:meth:`GatewayEndpoint._pump`) does the work, a bounded
number of events per turn of the loop:

- every dispatch of :data:`cluster.endpoint.cache.CACHE_EVENTS` is parsed and
  applied to the guild cache (also with no client connected);
- with clients of the shard, every dispatch but the shard's own READY/RESUMED
  is numbered into each client session whose intents take it
  (:mod:`cluster.endpoint.filters`), ``d`` cut out of the payload once and
  shared; GUILD_MEMBERS_CHUNK and RATE_LIMITED go only to the client that asked
  (:mod:`cluster.endpoint.nonces`);
- a dispatch the cache does not need, of a shard without clients (MESSAGE_CREATE
  with nobody connected), costs one ``bytes()`` of its name and nothing else.

Sessions (:mod:`cluster.endpoint.session`): IDENTIFY makes one for the shard
(any subset of this supervisor's shards, several clients per shard); its
READY and GUILD_CREATEs come from the cache at once if the shard had its READY,
else when it does. RESUME finds the session (resumable for ``resume_window_s``
after a disconnect) and replays from its buffer, else op 9. A shard that gets a
new session of its own (a READY: it had to IDENTIFY again, events may be lost)
ends its clients' sessions with op 9, so they start over from the cache.
Commands (ops 3, 4, 8, 31, 43) are checked as the control socket checks them
(:func:`protocol.payloads.validate_command`) and go to the owner's
``send_command``, under the shard's send limit.

On the same port: ``GET /api/v{9,10}/gateway`` and ``/gateway/bot`` (the bot
token as ``Authorization: Bot ...``) answer the endpoint's URL, the cluster's
shard count and a session-start limit that never runs out (the endpoint spends
no Discord identify). With ``--gateway-token-file`` every request needs that
token first (:mod:`cluster.endpoint.settings`).

Overload: if the pump falls more than :data:`MAX_PENDING_EVENTS` behind the
relay, it applies the backlog to the cache only and ends every client session
(op 9): memory stays bounded and the shards never wait for the endpoint.

Restarts (:mod:`cluster.endpoint.persist`): the cache is saved every
``cache_save_interval_s`` and at a graceful stop; at start :meth:`GatewayEndpoint.adopt`
keeps every shard whose saved cache is of its saved session. A cache older than the
resume point makes the shard RESUME from the cache's seq (:meth:`GatewayEndpoint.rewind`);
the relay hands the replayed, already published events to :meth:`EndpointTap.add_replayed`
and the pump applies them to the cache only; the shard's clients get their READY once
the cache has caught up. The cache applies each ``(session, seq)`` once: whatever
arrives at or below a shard's stamp is neither applied again nor forwarded.

Content: a client without MESSAGE_CONTENT on a cluster with it gets message
dispatches blanked as Discord would blank them (:func:`cluster.endpoint.filters.without_content`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from cluster.endpoint.cache import CACHE_EVENTS, GuildCache, compact_json
from cluster.endpoint.connection import (
    MAX_FRAME_BYTES,
    Connection,
    IdentifyRequest,
    Refusal,
    check_identify,
    check_resume,
    parse_query,
    token_matches,
)
from cluster.endpoint.filters import (
    BY_NONCE,
    CONTENT_EVENTS,
    SHARD_ONLY,
    IntentFilter,
    without_content,
)
from cluster.endpoint.nonces import NonceBook, is_last_chunk, restore_nonce
from cluster.endpoint.persist import CacheWriter, SavedCache, cache_path, load_cache
from cluster.endpoint.session import ClientSession, SessionState
from cluster.endpoint.settings import GatewaySettings
from cluster.runs import EventSlices
from protocol import ipc
from protocol.compression import Compression
from protocol.errors import InvalidCommandError, PayloadTooLargeError
from protocol.gateway import CloseCode, Opcode
from protocol.intents import Intent
from protocol.payloads import encode_client_payload, validate_command
from protocol.session import Session

if TYPE_CHECKING:
    from cluster.relay import SessionBook

log = logging.getLogger("cluster.gateway")

SendCommand = Callable[[int, bytes], Awaitable[None]]

#: Events handled per turn of the pump before it yields to the loop.
PUMP_BATCH: Final = 2000
#: Beyond this many events waiting for the pump: cache only, client sessions ended.
MAX_PENDING_EVENTS: Final = 200_000
#: How often timers are checked: heartbeats, stalled writers, expired sessions.
SWEEP_S: Final = 0.1
#: A command the shard does not take within this long is dropped (logged).
SEND_TIMEOUT_S: Final = 5.0
#: Bytes of a shard's cache packed per turn of the loop when it is saved (~1 ms each).
SAVE_CHUNK_BYTES: Final = 1 << 20
#: A piece of a save not written within this long abandons the save: the shard's clients
#: (whose events wait meanwhile) and the endpoint's memory never wait for a stuck disk.
SAVE_WRITE_TIMEOUT_S: Final = 2.0
#: A session-start limit that never runs out: the endpoint spends no Discord identify.
_UNLIMITED: Final = 1_000_000
_RESUMED_D: Final = b'{"_trace":["titanium-gateway"]}'


#: A run in the tap: (shard id, session epoch, the run's last seq, its events, cache only)
TapRun = tuple[int, int, int, list[EventSlices], bool]


class EndpointTap:
    """The relay's :class:`cluster.runs.RunConsumer` for the endpoint: append and wake, no more.

    Also the relay's replay consumer (:meth:`add_replayed`): events a shard RESUMEd
    below its published seq replays, which the relay does not publish again, for the
    cache only.
    """

    __slots__ = ("_wake", "events", "runs")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.runs: collections.deque[TapRun] = collections.deque()
        #: events in ``runs``
        self.events = 0
        self._wake = wake

    def add(self, shard_id: int, epoch: int, first_seq: int, events: list[EventSlices]) -> None:
        self.runs.append((shard_id, epoch, first_seq + len(events) - 1, events, False))
        self.events += len(events)

    def add_replayed(
        self, shard_id: int, epoch: int, first_seq: int, events: list[EventSlices]
    ) -> None:
        """Events published before (by the last run of the supervisor), replayed for the cache."""
        self.runs.append((shard_id, epoch, first_seq + len(events) - 1, events, True))
        self.events += len(events)

    def flush(self) -> None:
        if self.runs:
            self._wake()


def dispatch_d(raw: bytes, t: bytes) -> bytes | None:
    """``d`` of a dispatch as bytes, cut out of ``{"t":..,"s":..,"op":0,"d":..}`` (None: another shape).

    Discord (and the simulator) write dispatches in that key order; anything else
    is parsed and ``d`` serialized again by the caller.
    """
    prefix_len = len(t) + 12  # {"t":"T","s":
    if not raw.startswith(b'{"t":"%s","s":' % t) or not raw.endswith(b"}"):
        return None
    at = raw.find(b',"op":0,"d":', prefix_len)
    if at < 0 or not (raw[prefix_len:at].isascii() and raw[prefix_len:at].isdigit()):
        return None
    return raw[at + 12 : -1]


@dataclass(slots=True)
class EndpointStats:
    connections: int = 0
    identifies: int = 0
    resumes: int = 0
    resumes_failed: int = 0
    forwarded: int = 0
    written: int = 0
    commands: int = 0
    commands_failed: int = 0
    cut_off: int = 0
    zombies: int = 0
    invalidated: int = 0
    overloads: int = 0
    pumped: int = 0
    #: already published events a RESUME replayed into the cache only
    replayed: int = 0
    #: cache saves, the last one's duration and bytes, when it ended (monotonic)
    saves: int = 0
    save_s: float = 0.0
    save_bytes: int = 0
    #: the longest the loop waited for a piece of a save, and the pump for a shard's
    save_stall_s: float = 0.0
    save_hold_s: float = 0.0
    saved_at: float | None = None


@dataclass(frozen=True, slots=True)
class _CatchUp:
    """A shard RESUMEd from its saved cache's older seq: the cache must reach ``target``."""

    epoch: int
    since: int
    target: int


class _Live:
    """A session the pump numbers dispatches into, with its filter and its connection (if any)."""

    __slots__ = ("conn", "filter", "session")

    def __init__(
        self, session: ClientSession, conn: Connection | None, cluster_intents: int
    ) -> None:
        self.session = session
        # Discord blanks content for an app without MESSAGE_CONTENT; the cluster's shards
        # have it, so the endpoint blanks it for such a client (filters.without_content)
        blank = bool(cluster_intents & Intent.MESSAGE_CONTENT) and not (
            session.intents & Intent.MESSAGE_CONTENT
        )
        self.filter = IntentFilter(session.intents, blank)
        self.conn = conn


class GatewayEndpoint:
    """The websocket server, its sessions, the guild cache and the relay tap."""

    def __init__(
        self, settings: GatewaySettings, token: str, total_shards: int, cluster_intents: int
    ) -> None:
        self.settings = settings
        self._token = token
        self.total_shards = total_shards
        self.cluster_intents = cluster_intents
        self.cache = GuildCache(settings.member_cap, settings.presence_cap)
        #: shard -> (session epoch, seq) of the last event the cache has seen
        self.stamps: dict[int, tuple[int, int]] = {}
        #: shards RESUMEd from an older saved cache, until the replay brought it up to date
        self._catch_up: dict[int, _CatchUp] = {}
        #: where the periodic saves go (the owned range's file; None: no range owned)
        self._save_to: Path | None = None
        self._save_lock = asyncio.Lock()
        #: an abandoned save's cleanup (referenced until done)
        self._background: set[asyncio.Task[None]] = set()
        #: cleared while a save takes its snapshot: the pump waits
        self._pump_free = asyncio.Event()
        self._pump_free.set()
        #: the stamps of the last save (nothing changed since: no save)
        self._saved_stamps: dict[int, tuple[int, int]] = {}
        self._woken = asyncio.Event()
        self.tap = EndpointTap(self._woken.set)
        self.nonces: NonceBook[str] = NonceBook()
        self.stats = EndpointStats()
        self.closes: collections.Counter[int] = collections.Counter()
        #: session id -> live session (attached or detached), and per shard
        self._lives: dict[str, _Live] = {}
        self._by_shard: dict[int, dict[str, _Live]] = {}
        #: identified, waiting for the shard's READY
        self._waiting: dict[int, list[tuple[Connection, ClientSession]]] = {}
        self._connections: set[Connection] = set()
        self._dirty: set[_Live] = set()
        self._conn_ids = itertools.count(1)
        self._send: SendCommand | None = None
        self._local: frozenset[int] | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._warned_intents = False
        #: a graceful stop saved the sessions: new connections are sent away (4000)
        self._restarting = False
        self.port = settings.port
        self._prefix = "" if settings.access_token is None else f"/{settings.access_token}"

    # -- lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._tasks.append(asyncio.create_task(self._pump(), name="gateway-pump"))
        self._tasks.append(asyncio.create_task(self._sweep(), name="gateway-sweep"))
        self._tasks.append(asyncio.create_task(self._saver(), name="gateway-cache-saver"))
        log.info(
            "gateway endpoint on %s for %d shards",
            self.display_url,
            self.total_shards,
            extra={"fields": {"event": "gateway_listening", "gateway": self.display_url}},
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in list(self._background):  # an abandoned save's cleanup (a file removed)
            with contextlib.suppress(Exception):
                await task
        for conn in list(self._connections):
            # 4000: resumable, as a server restart is to Discord's clients
            conn.close(CloseCode.UNKNOWN_ERROR, "The endpoint is shutting down.")
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner.cleanup(), 5)

    @property
    def display_url(self) -> str:
        """The URL for logs (never the access token)."""
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        path = "/<gateway-token>/" if self._prefix else "/"
        return f"ws://{host}:{self.port}{path}"

    def attach_owner(self, send: SendCommand, total_shards: int, local: Iterable[int]) -> None:
        """A range owner started: commands go to ``send``; these are the shards clients may take."""
        self._send = send
        self.total_shards = total_shards
        self._local = frozenset(local)
        for shard_id in list(self.cache.shards):
            if shard_id not in self._local:
                self.cache.forget_shard(shard_id)

    def adopt(
        self,
        state_dir: Path,
        saved: Mapping[int, Session],
        shard_ids: Collection[int],
        total_shards: int,
    ) -> dict[int, Session]:
        """Of a range's saved sessions, those that may RESUME: the shard's cache (in
        memory, else saved to ``state_dir``) is of that session.

        A cache at exactly the resume point goes on; an older one is brought up to it
        by the RESUME's replay (:meth:`rewind` must be called once the relay's book is
        seeded); a newer one (saved after the last checkpoint) skips what it has. The
        others are left out, so the shard IDENTIFYs and its READY and GUILD_CREATEs fill
        the cache (see :mod:`cluster.endpoint.persist`).
        """
        self._drain_to_cache()  # what an earlier owner's relay handed on is in the cache
        path = cache_path(state_dir, shard_ids, total_shards)
        self._save_to = path
        self._saved_stamps = {}
        on_disk: SavedCache | None = None
        kept: dict[int, Session] = {}
        exact: set[int] = set()
        behind: dict[int, int] = {}
        ahead: list[int] = []
        refilled: list[int] = []
        for shard_id in sorted(shard_ids):
            self._catch_up.pop(shard_id, None)
            session = saved.get(shard_id)
            if session is None:
                self.cache.forget_shard(shard_id)  # it identifies: READY fills it
                self.stamps.pop(shard_id, None)
                continue
            epoch = ipc.session_epoch(session.session_id)
            have = self.stamps.get(shard_id) if self.cache.is_ready(shard_id) else None
            if have is None or have[0] != epoch:
                if on_disk is None:
                    on_disk = load_cache(path)
                have = self._load_saved(shard_id, on_disk, epoch)
            if have is None:
                self.cache.forget_shard(shard_id)
                self.stamps.pop(shard_id, None)
                refilled.append(shard_id)
                continue
            kept[shard_id] = session
            if have[1] == session.seq:
                exact.add(shard_id)
            elif have[1] < session.seq:
                behind[shard_id] = session.seq - have[1]
                self._catch_up[shard_id] = _CatchUp(epoch, have[1], session.seq)
            else:
                ahead.append(shard_id)
        if refilled:
            log.warning(
                "--gateway: %d shards (%s) have no guild cache of their saved session (none "
                "was saved, the shard had to identify since, or another host ran it): they "
                "IDENTIFY instead of RESUME so the endpoint gets their READY and guilds",
                len(refilled),
                _some(refilled),
            )
        if behind:
            log.info(
                "--gateway: the saved guild cache of %d shards (%s) is %d events behind their "
                "resume point: they RESUME from the cache's seq and the replay brings it up "
                "to date (those events are not published again)",
                len(behind),
                _some(sorted(behind)),
                sum(behind.values()),
            )
        if ahead:
            log.info(
                "--gateway: the saved guild cache of %d shards (%s) is ahead of their "
                "checkpoint: the events it has are not applied or sent to clients again",
                len(ahead),
                _some(ahead),
            )
        if exact:
            log.info("--gateway: the guild cache of %d resumed shards is in place", len(exact))
        if on_disk is not None:
            self._restore_sessions(on_disk.sessions, exact)
        return kept

    def _load_saved(self, shard_id: int, on_disk: SavedCache, epoch: int) -> tuple[int, int] | None:
        """The saved cache of ``shard_id`` if it is of session ``epoch``: loaded, its stamp."""
        disk = on_disk.shards.get(shard_id)
        if disk is None or disk.epoch != epoch:
            return None
        try:
            self.cache.load_shard(shard_id, disk.data)
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
            log.warning("the saved gateway cache of shard %d is damaged: %s", shard_id, exc)
            self.cache.forget_shard(shard_id)
            return None
        self.stamps[shard_id] = (disk.epoch, disk.seq)
        return self.stamps[shard_id]

    def rewind(self, book: SessionBook) -> None:
        """Shards whose cache :meth:`adopt` found behind their resume point RESUME from
        the cache's seq; call once ``book`` is seeded with the saved sessions."""
        for shard_id, catch_up in self._catch_up.items():
            book.resume_from(shard_id, catch_up.since)

    def _restore_sessions(self, saved: list[list[Any]], shards: set[int]) -> None:
        """Client sessions of the last graceful stop, detached: their clients may RESUME."""
        restored = 0
        now = time.monotonic()
        for data in saved:
            try:
                session = ClientSession.load(
                    data, self.settings.replay_events, self.settings.replay_bytes
                )
            except (ValueError, TypeError) as exc:
                log.warning("ignoring a saved gateway client session: %s", exc)
                continue
            if session.shard_id not in shards or session.session_id in self._lives:
                continue
            session.detached_at = now
            live = _Live(session, None, self.cluster_intents)
            self._lives[session.session_id] = live
            self._by_shard.setdefault(session.shard_id, {})[session.session_id] = live
            restored += 1
        if restored:
            log.info("--gateway: %d client sessions of the last run may RESUME", restored)

    async def detach_owner(self, save_to: Path | None = None) -> None:
        """The range owner stopped (its relay drained): with ``save_to`` (a state dir; a
        graceful stop) the cache is saved for the next start; clients are ended."""
        self._send = None
        self._save_to = None  # no periodic save from now on
        if save_to is not None and self._local is not None:
            # From now on a client is told to come back (4000) before Hello: a RESUME
            # served here would move its session past what the next start restores.
            self._restarting = True
            self._drain_to_cache()
            path = cache_path(save_to, self._local, self.total_shards)
            sessions = [
                live.session.dump()
                for live in self._lives.values()
                if live.session.state in (SessionState.ATTACHED, SessionState.DETACHED)
            ]
            try:
                count = await self.save(path, sessions)
            except (OSError, _SaveAbandoned) as exc:
                why = getattr(exc, "strerror", None) or exc
                log.warning("cannot save the gateway cache to %s: %s", path, why)
            else:
                log.info("saved the gateway cache of %d shards to %s", count, path)
        self._catch_up.clear()
        for live in list(self._lives.values()):
            self._end(live, "the supervisor stopped running its shards", close=True)
        for waiting in self._waiting.values():
            for conn, _ in waiting:
                conn.close(CloseCode.UNKNOWN_ERROR, "The supervisor stopped running its shards.")
        self._waiting.clear()

    async def save(self, path: Path, sessions: list[list[Any]] | None = None) -> int:
        """Save the owned shards' cache (and ``sessions``) to ``path``; how many shards.

        Streamed (:class:`cluster.endpoint.persist.CacheWriter`): a shard's guilds are
        packed on the loop about :data:`SAVE_CHUNK_BYTES` per turn while the pump waits
        (so the shard's file matches its stamp), each piece written in a thread. A shard
        changed anyway (a new range's start) abandons the save: the next one is whole.
        """
        async with self._save_lock:
            started = time.perf_counter()
            writer = await asyncio.to_thread(CacheWriter, path)
            saved: dict[int, tuple[int, int]] = {}
            try:
                eligible = [
                    shard_id
                    for shard_id in sorted(self._local or ())
                    if shard_id in self.stamps and self.cache.is_ready(shard_id)
                ]
                pending = [writer.pack_head(len(eligible))]
                for shard_id in eligible:
                    pending, saved[shard_id] = await self._save_shard(writer, shard_id, pending)
                pending.append(writer.pack_tail(sessions))
                await asyncio.to_thread(writer.write, b"".join(pending))
                size = await asyncio.to_thread(writer.commit)
            except BaseException:
                # in a thread: a write abandoned by its timeout may still hold the file
                aborting = asyncio.create_task(asyncio.to_thread(writer.abort))
                self._background.add(aborting)
                aborting.add_done_callback(self._background.discard)
                raise
            stats = self.stats
            stats.saves += 1
            stats.save_s = time.perf_counter() - started
            stats.save_bytes = size
            stats.saved_at = time.monotonic()
            self._saved_stamps = saved
            log.debug(
                "saved the gateway cache of %d shards (%d bytes) in %.3f s",
                len(eligible),
                size,
                stats.save_s,
            )
            return len(eligible)

    async def _save_shard(
        self, writer: CacheWriter, shard_id: int, pending: list[bytes]
    ) -> tuple[list[bytes], tuple[int, int]]:
        """Pack one shard into ``pending``, writing it out as it grows; what is left, and
        the stamp the shard was saved at."""
        held = time.perf_counter()
        self._pump_free.clear()  # no event is applied to the shard until it is packed
        self.cache.flush_messages()
        try:
            stamp = self.stamps.get(shard_id)
            shard = self.cache.shards.get(shard_id)
            if stamp is None or shard is None or shard.ready is None:
                raise _SaveAbandoned(shard_id)
            items = list(shard.guilds.items())
            ready = compact_json(shard.ready)
            pending.append(writer.pack_shard(shard_id, stamp, ready, len(items)))
            size = 0
            took = time.perf_counter()
            for guild_id, entry in items:
                piece = writer.pack_guild(guild_id, None if entry is None else entry.dump())
                pending.append(piece)
                size += len(piece)
                if size < SAVE_CHUNK_BYTES:
                    continue
                stats = self.stats
                stats.save_stall_s = max(stats.save_stall_s, time.perf_counter() - took)
                data = b"".join(pending)
                pending, size = [], 0
                try:
                    async with asyncio.timeout(SAVE_WRITE_TIMEOUT_S):
                        await asyncio.to_thread(writer.write, data)
                except TimeoutError:
                    raise _SaveAbandoned(
                        f"{shard_id}: a write took over {SAVE_WRITE_TIMEOUT_S:g} s"
                    ) from None
                if (
                    self.stamps.get(shard_id) != stamp
                    or self.cache.shards.get(shard_id) is not shard
                ):
                    raise _SaveAbandoned(shard_id)
                took = time.perf_counter()
            stats = self.stats
            stats.save_stall_s = max(stats.save_stall_s, time.perf_counter() - took)
        finally:
            self._pump_free.set()
            self.stats.save_hold_s = max(self.stats.save_hold_s, time.perf_counter() - held)
        return pending, stamp

    async def _saver(self) -> None:
        """Every ``cache_save_interval_s``: save the owned range's cache if it changed."""
        failing = False
        while True:
            await asyncio.sleep(self.settings.cache_save_interval_s)
            path = self._save_to
            if path is None or self._local is None:
                continue
            if all(self.stamps.get(s) == self._saved_stamps.get(s) for s in self._local):
                continue
            try:
                await self.save(path)
            except _SaveAbandoned as exc:
                log.warning("--gateway: a cache save was abandoned (shard %s); the next one", exc)
            except OSError as exc:
                if not failing:
                    log.warning(
                        "cannot save the gateway cache to %s: %s (a SIGKILL now costs the "
                        "shards an IDENTIFY each)",
                        path,
                        exc.strerror or exc,
                    )
                failing = True
            else:
                failing = False

    # -- HTTP: REST and the websocket -----------------------------------------------------------

    def _authorized(self, request: web.Request) -> str | None:
        """The path after the access token (None: not authorized)."""
        path = request.path
        if not self._prefix:
            return path
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.strip().partition(" ")
        assert self.settings.access_token is not None
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self.settings.access_token.encode()
        ):
            return path
        head = path[: len(self._prefix)]
        rest = path[len(self._prefix) :]
        if hmac.compare_digest(head.encode(), self._prefix.encode()) and (
            not rest or rest.startswith("/")
        ):
            return rest or "/"
        return None

    def ws_url(self, request: web.Request) -> str:
        """The websocket URL clients reach this endpoint at (as they addressed it)."""
        scheme = "wss" if request.secure else "ws"
        return f"{scheme}://{request.host}{self._prefix}/"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = self._authorized(request)
        if path is None:
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "api" and parts[1] in ("v9", "v10"):
            tail = "/".join(parts[2:])
            if tail == "gateway":
                return _json({"url": self.ws_url(request)})
            if tail == "gateway/bot":
                if not token_matches(request.headers.get("Authorization"), self._token):
                    return _json({"message": "401: Unauthorized", "code": 0}, 401)
                return _json(self._gateway_bot(request))
            return _json({"message": "404: Not Found", "code": 0}, 404)
        if path in ("", "/") and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    def _gateway_bot(self, request: web.Request) -> dict[str, Any]:
        return {
            "url": self.ws_url(request),
            "shards": self.total_shards,
            "session_start_limit": {
                "total": _UNLIMITED,
                "remaining": _UNLIMITED,
                "reset_after": 14_400_000,
                "max_concurrency": max(1, self.total_shards),
            },
        }

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if len(self._connections) >= self.settings.max_clients:
            return _json({"message": "too many gateway clients", "code": 0}, 503)
        ws = web.WebSocketResponse(
            autoping=True, compress=False, max_msg_size=MAX_FRAME_BYTES, heartbeat=None
        )
        await ws.prepare(request)
        compression = parse_query(request.query)
        conn = Connection(
            self,
            next(self._conn_ids),
            ws,
            request,
            Compression.NONE if isinstance(compression, Refusal) else compression,
            self.ws_url(request),
            self.settings.write_high_water,
        )
        self._connections.add(conn)
        self.stats.connections += 1
        if isinstance(compression, Refusal) or self._restarting:
            if isinstance(compression, Refusal):
                conn.refuse(compression)
            else:
                conn.close(CloseCode.UNKNOWN_ERROR, "The endpoint is restarting: RESUME again.")
            self._connections.discard(conn)
            return ws
        await conn.run()
        return ws

    # -- sessions -------------------------------------------------------------------------------

    def identify(self, conn: Connection, d: Any) -> None:
        checked = check_identify(
            d, self._token, self.total_shards, self._local, self.cluster_intents
        )
        if isinstance(checked, Refusal):
            conn.refuse(checked)
            return
        self.stats.identifies += 1
        self._warn_missing_intents(checked)
        session = ClientSession(
            checked.shard_id,
            checked.num_shards,
            checked.intents,
            self.settings.replay_events,
            self.settings.replay_bytes,
        )
        conn.session = session
        log.info(
            "gateway client %s (%s) identified for shard %d",
            conn.conn_id,
            conn.peer,
            checked.shard_id,
            extra={"fields": {"event": "gateway_identify", "shard_id": checked.shard_id}},
        )
        if self.cache.is_ready(checked.shard_id) and checked.shard_id not in self._catch_up:
            self._start_session(conn, session)
        else:  # the shard's READY, or the replay that brings its cache up to date, is to come
            self._waiting.setdefault(checked.shard_id, []).append((conn, session))

    def _warn_missing_intents(self, request: IdentifyRequest) -> None:
        missing = request.intents & ~self.cluster_intents
        if missing and not self._warned_intents:
            self._warned_intents = True
            log.warning(
                "a gateway client asked for intents the cluster does not have (%s): it never "
                "gets those events; add them to --intents",
                ",".join(Intent(bit).name or str(bit) for bit in _bits(missing)),
            )

    def _start_session(self, conn: Connection, session: ClientSession) -> None:
        """READY and a GUILD_CREATE per guild from the cache, then live dispatches."""
        shard_id = session.shard_id
        ready = self.cache.ready_d(
            shard_id, session.session_id, conn.resume_url, (shard_id, session.num_shards)
        )
        entries = [(b"READY", ready)]
        if session.intents & Intent.GUILDS:
            presences = bool(session.intents & Intent.GUILD_PRESENCES)
            entries.extend(
                (b"GUILD_CREATE", d) for d in self.cache.guild_creates(shard_id, presences)
            )
        session.snapshot(entries)
        session.state = SessionState.ATTACHED
        live = _Live(session, conn, self.cluster_intents)
        self._lives[session.session_id] = live
        self._by_shard.setdefault(shard_id, {})[session.session_id] = live
        self._flush_live(live)

    def resume(self, conn: Connection, d: Any) -> None:
        checked = check_resume(d, self._token)
        if isinstance(checked, Refusal):
            conn.refuse(checked)
            return
        live = self._lives.get(checked.session_id)
        replay = None if live is None else live.session.replay_after(checked.seq)
        if live is None or replay is None:
            self.stats.resumes_failed += 1
            if live is not None:
                self._end(live, "resume from a seq the buffer no longer holds", close=False)
            log.info(
                "gateway client %s (%s): RESUME refused (session unknown, expired or too far "
                "behind): op 9",
                conn.conn_id,
                conn.peer,
            )
            conn.send_op(Opcode.INVALID_SESSION, False)
            return
        session = live.session
        previous = live.conn
        if previous is not None and previous is not conn:
            previous.session = None  # its close must not detach the session again
            previous.close(CloseCode.UNKNOWN_ERROR, "Session resumed elsewhere.")
        self.stats.resumes += 1
        session.resumes += 1
        session.replayed += len(replay)
        session.rewind(checked.seq)
        session.state = SessionState.ATTACHED
        session.detached_at = None
        conn.session = session
        live.conn = conn
        session.push(b"RESUMED", _RESUMED_D)
        log.info(
            "gateway client %s (%s) resumed on shard %d: %d dispatches replayed",
            conn.conn_id,
            conn.peer,
            session.shard_id,
            len(replay),
            extra={"fields": {"event": "gateway_resume", "shard_id": session.shard_id}},
        )
        self._flush_live(live)

    def connection_closed(self, conn: Connection) -> None:
        self._connections.discard(conn)
        session = conn.session
        if session is None:
            return
        if session.state is SessionState.WAITING:
            waiting = self._waiting.get(session.shard_id, [])
            self._waiting[session.shard_id] = [(c, s) for c, s in waiting if c is not conn]
            session.state = SessionState.ENDED
            return
        live = self._lives.get(session.session_id)
        if live is None or live.conn is not conn:
            return
        live.conn = None
        if conn.closed_by_client and conn.close_code in (1000, 1001):
            # Discord ends a session its client closes with 1000/1001
            self._end(live, "closed by the client", close=False)
            return
        session.state = SessionState.DETACHED
        session.detached_at = time.monotonic()

    def _end(self, live: _Live, why: str, *, close: bool, invalid: bool = False) -> None:
        session = live.session
        session.state = SessionState.ENDED
        self._lives.pop(session.session_id, None)
        shard = self._by_shard.get(session.shard_id)
        if shard is not None:
            shard.pop(session.session_id, None)
        self._dirty.discard(live)
        self.nonces.forget(session.session_id)
        conn = live.conn
        live.conn = None
        if conn is None:
            return
        conn.session = None
        if invalid:
            conn.send_op(Opcode.INVALID_SESSION, False)
        elif close:
            conn.close(CloseCode.UNKNOWN_ERROR, why[:100])

    def counted_close(self, code: int) -> None:
        self.closes[code] += 1

    # -- commands -------------------------------------------------------------------------------

    async def command(self, conn: Connection, op: int, d: Any) -> None:
        session = conn.session
        assert session is not None
        try:
            opcode = validate_command(op, d)
            assert isinstance(d, dict)
            if opcode is Opcode.REQUEST_GUILD_MEMBERS:
                client_nonce = d.get("nonce")
                ours = self.nonces.issue(session.session_id, client_nonce, time.monotonic())
                d = {**d, "nonce": ours}
            payload = encode_client_payload({"op": int(opcode), "d": d})
        except PayloadTooLargeError:
            conn.refuse(Refusal(CloseCode.DECODE_ERROR, "Payload too large."))
            return
        except InvalidCommandError as exc:
            conn.refuse(Refusal(CloseCode.UNKNOWN_OPCODE, f"Invalid payload: {exc}"[:120]))
            return
        self.stats.commands += 1
        send = self._send
        try:
            if send is None:
                raise LookupError("no range is owned right now")
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await send(session.shard_id, payload)
        except (LookupError, TimeoutError, OSError) as exc:
            self.stats.commands_failed += 1
            log.warning(
                "gateway client %s: op %d to shard %d not sent: %s",
                conn.conn_id,
                op,
                session.shard_id,
                exc,
            )

    # -- the pump -----------------------------------------------------------------------------------

    async def _pump(self) -> None:
        woken = self._woken
        free = self._pump_free
        tap = self.tap
        while True:
            await woken.wait()
            woken.clear()
            while tap.runs:
                if not free.is_set():
                    await free.wait()  # a save packs a shard (tens of ms per 1,000s of guilds)
                if tap.events > MAX_PENDING_EVENTS:
                    self._overload()
                self.process(PUMP_BATCH)
                self.flush_clients()
                if tap.runs:
                    await asyncio.sleep(0)

    def process(self, budget: int) -> int:
        """Handle up to about ``budget`` events from the tap; how many were handled."""
        tap = self.tap
        runs = tap.runs
        cache = self.cache
        by_shard = self._by_shard
        handled = 0
        loads = orjson.loads
        stamps = self.stamps
        while runs and handled < budget:
            shard_id, epoch, last_seq, events, cache_only = runs.popleft()
            tap.events -= len(events)
            handled += len(events)
            stamp = stamps.get(shard_id)
            if stamp is not None and stamp[0] == epoch and stamp[1] >= last_seq - len(events) + 1:
                # the cache has these (a RESUME below its stamp): not applied or sent again
                events = events[stamp[1] - last_seq + len(events) :]
            if cache_only:
                self._replay_into_cache(shard_id, epoch, last_seq, events, stamp)
                continue
            if not events:
                continue
            stamps[shard_id] = (epoch, last_seq)
            lives = by_shard.get(shard_id)
            for topic, payload in events:
                t = bytes(topic)
                cached = t in CACHE_EVENTS
                if not cached and not lives:
                    continue
                d: Any = _UNPARSED
                if t == b"MESSAGE_CREATE":
                    cache.message_seen(shard_id, payload)  # not parsed for the cache
                elif cached:
                    try:
                        obj = loads(payload)  # the memoryview: no copy
                    except orjson.JSONDecodeError:
                        continue
                    d = obj.get("d") if isinstance(obj, dict) else None
                    cache.apply(shard_id, t, d)
                    if t == b"READY":
                        self._on_shard_ready(shard_id)
                        lives = by_shard.get(shard_id)
                        continue
                if not lives or t in SHARD_ONLY:
                    continue
                raw = bytes(payload)
                if t in BY_NONCE:
                    self._route_answer(t, raw, d)
                    continue
                self._forward(lives, t, raw, d)
            if self._catch_up and shard_id in self._catch_up:
                self._caught_up(shard_id)
        self.stats.pumped += handled
        return handled

    def _replay_into_cache(
        self,
        shard_id: int,
        epoch: int,
        last_seq: int,
        events: list[EventSlices],
        stamp: tuple[int, int] | None,
    ) -> None:
        """Replayed events the relay had published before: the cache only, if they go on
        from where it is (its shard RESUMEd from the cache's seq)."""
        catch_up = self._catch_up.get(shard_id)
        if not events or catch_up is None or stamp is None or stamp[0] != epoch:
            return
        first = last_seq - len(events) + 1
        if first != stamp[1] + 1:
            log.warning(
                "--gateway: shard %d's replay starts at seq %d but its cache is at %d: "
                "the cache misses events %d-%d",
                shard_id,
                first,
                stamp[1],
                stamp[1] + 1,
                first - 1,
            )
        self._apply_to_cache(shard_id, epoch, last_seq, events)
        self.stats.replayed += len(events)
        self._caught_up(shard_id)

    def _caught_up(self, shard_id: int) -> None:
        """A catching-up shard's cache reached its resume point: its waiting clients begin."""
        catch_up = self._catch_up[shard_id]
        stamp = self.stamps.get(shard_id)
        if stamp is not None and stamp[0] == catch_up.epoch and stamp[1] < catch_up.target:
            return
        del self._catch_up[shard_id]
        log.info(
            "--gateway: shard %d's cache caught up from seq %d to %d by the RESUME's replay",
            shard_id,
            catch_up.since,
            catch_up.target,
            extra={"fields": {"event": "gateway_cache_caught_up", "shard_id": shard_id}},
        )
        self._release_waiting(shard_id)

    def _forward(self, lives: dict[str, _Live], t: bytes, raw: bytes, d: Any) -> None:
        body = dispatch_d(raw, t)
        parsed = [d]

        def value() -> Any:
            if parsed[0] is _UNPARSED:
                try:
                    obj = orjson.loads(raw)
                    parsed[0] = obj.get("d") if isinstance(obj, dict) else None
                except orjson.JSONDecodeError:
                    parsed[0] = None
            return parsed[0]

        if body is None:
            body = compact_json(value())

        def has_guild() -> bool:
            v = value()
            return isinstance(v, dict) and v.get("guild_id") is not None

        def about_self() -> bool:
            v = value()
            user = v.get("user") if isinstance(v, dict) else None
            bot = self.cache.bot_id
            return isinstance(user, dict) and bot is not None and str(user.get("id")) == str(bot)

        blanked: bytes | None = None  # d for clients without MESSAGE_CONTENT, made once
        dirty = self._dirty
        forwarded = 0
        for live in lives.values():
            flt = live.filter
            if t in flt.blocked:
                continue
            out = body
            if t in flt.checked:
                if not flt.allows(t, has_guild, about_self):
                    continue
                if flt.blanks and t in CONTENT_EVENTS:
                    if blanked is None:
                        stripped = without_content(t, value(), self.cache.bot_id)
                        blanked = body if stripped is None else compact_json(stripped)
                    out = blanked
            live.session.push(t, out)
            forwarded += 1
            if live.conn is not None:
                dirty.add(live)
        self.stats.forwarded += forwarded

    def _route_answer(self, t: bytes, raw: bytes, d: Any) -> None:
        """A GUILD_MEMBERS_CHUNK or RATE_LIMITED: only to the client whose nonce it carries."""
        if not isinstance(d, dict):
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return
            d = obj.get("d") if isinstance(obj, dict) else None
            if not isinstance(d, dict):
                return
        if t == b"RATE_LIMITED":
            meta = d.get("meta")
            nonce = meta.get("nonce") if isinstance(meta, dict) else None
            claimed = self.nonces.claim(nonce, time.monotonic(), last=True)
            if claimed is None:
                return
            owner, client_nonce = claimed
            d = {**d, "meta": restore_nonce(meta, client_nonce)}  # type: ignore[arg-type]
        else:
            claimed = self.nonces.claim(d.get("nonce"), time.monotonic(), last=is_last_chunk(d))
            if claimed is None:
                return
            owner, client_nonce = claimed
            d = restore_nonce(d, client_nonce)
        live = self._lives.get(owner)
        if live is None:
            return
        live.session.push(t, compact_json(d))
        self.stats.forwarded += 1
        if live.conn is not None:
            self._dirty.add(live)

    def _on_shard_ready(self, shard_id: int) -> None:
        """The shard has a (new) session: clients of its old one start over; waiting ones begin."""
        self._catch_up.pop(shard_id, None)  # its RESUME was refused: the READY fills the cache
        for live in list(self._by_shard.get(shard_id, {}).values()):
            self.stats.invalidated += 1
            self._end(live, "the shard started a new session", close=False, invalid=True)
        self._release_waiting(shard_id)

    def _release_waiting(self, shard_id: int) -> None:
        waiting = self._waiting.pop(shard_id, [])
        for conn, session in waiting:
            if conn.open and conn.session is session:
                self._start_session(conn, session)

    def flush_clients(self) -> None:
        dirty = self._dirty
        if not dirty:
            return
        lives = list(dirty)
        dirty.clear()
        for live in lives:
            self._flush_live(live)

    def _flush_live(self, live: _Live) -> None:
        conn = live.conn
        if conn is None:
            return
        if live.session.overflowed:
            self._cut_off(live, conn, "it fell too far behind (its replay buffer overflowed)")
            return
        self.stats.written += conn.flush()

    def _cut_off(self, live: _Live, conn: Connection, why: str) -> None:
        self.stats.cut_off += 1
        log.warning(
            "gateway client %s (%s) on shard %d cut off: %s",
            conn.conn_id,
            conn.peer,
            live.session.shard_id,
            why,
            extra={"fields": {"event": "gateway_cut_off", "shard_id": live.session.shard_id}},
        )
        live.conn = None
        live.session.state = SessionState.DETACHED
        live.session.detached_at = time.monotonic()
        conn.session = None
        conn.abort()

    def _overload(self) -> None:
        """The pump is too far behind: the backlog goes to the cache only; clients start over."""
        self.stats.overloads += 1
        log.error(
            "the gateway endpoint is %d events behind the relay: applying them to the cache "
            "only and ending every client session (op 9)",
            self.tap.events,
        )
        for live in list(self._lives.values()):
            self._end(live, "the endpoint was overloaded", close=False, invalid=True)
        self._drain_to_cache()

    def _drain_to_cache(self) -> None:
        """Everything the tap holds applied to the cache, nothing forwarded."""
        runs = self.tap.runs
        while runs:
            shard_id, epoch, last_seq, events, cache_only = runs.popleft()
            self.tap.events -= len(events)
            stamp = self.stamps.get(shard_id)
            if stamp is not None and stamp[0] == epoch and stamp[1] >= last_seq - len(events) + 1:
                events = events[stamp[1] - last_seq + len(events) :]
            if cache_only and (shard_id not in self._catch_up or not events):
                continue
            if events:
                self._apply_to_cache(shard_id, epoch, last_seq, events)
            if shard_id in self._catch_up:
                self._caught_up(shard_id)

    def _apply_to_cache(
        self, shard_id: int, epoch: int, last_seq: int, events: list[EventSlices]
    ) -> None:
        self.stamps[shard_id] = (epoch, last_seq)
        cache = self.cache
        for topic, payload in events:
            t = bytes(topic)
            if t == b"MESSAGE_CREATE":
                cache.message_seen(shard_id, payload)
            elif t in CACHE_EVENTS:
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                    cache.apply(shard_id, t, orjson.loads(bytes(payload)).get("d"))
                    if t == b"READY":
                        self._on_shard_ready(shard_id)

    # -- timers -------------------------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        timeout = self.settings.heartbeat_interval_ms / 1000.0 * 1.5
        for conn in list(self._connections):
            if conn.open and now - conn.last_beat > timeout:
                self.stats.zombies += 1
                log.warning(
                    "gateway client %s (%s) sent no heartbeat for %.1f s: closed (4000, resumable)",
                    conn.conn_id,
                    conn.peer,
                    now - conn.last_beat,
                )
                self.counted_close(CloseCode.UNKNOWN_ERROR)
                conn.close(CloseCode.UNKNOWN_ERROR, "Heartbeat timeout.")
        window = self.settings.resume_window_s
        for live in list(self._lives.values()):
            session = live.session
            if live.conn is not None:
                if session.backlog:
                    self._flush_live(live)  # a writer that waited for the client to read
                continue
            if session.detached_at is not None and now - session.detached_at > window:
                self._end(live, "expired", close=False)
        self.nonces.expire(now)

    # -- status -------------------------------------------------------------------------------------

    def status_json(self) -> dict[str, Any]:
        stats = self.stats
        cache = self.cache.stats()
        clients: dict[str, int] = {}
        lag: dict[str, int] = {}
        detached = 0
        for live in self._lives.values():
            key = str(live.session.shard_id)
            if live.conn is None:
                detached += 1
                continue
            clients[key] = clients.get(key, 0) + 1
            lag[key] = max(lag.get(key, 0), live.session.backlog)
        waiting = sum(len(w) for w in self._waiting.values())
        guilds = max(1, cache.guilds)
        return {
            "url": self.display_url,
            "connections": len(self._connections),
            "clients": clients,
            "clients_waiting": waiting,
            "sessions_detached": detached,
            "client_lag_events": lag,
            "pending_events": self.tap.events,
            "events_pumped": stats.pumped,
            "events_forwarded": stats.forwarded,
            "events_written": stats.written,
            "identifies": stats.identifies,
            "resumes": stats.resumes,
            "resumes_failed": stats.resumes_failed,
            "commands": stats.commands,
            "commands_failed": stats.commands_failed,
            "cut_off": stats.cut_off,
            "zombies": stats.zombies,
            "invalidated": stats.invalidated,
            "overloads": stats.overloads,
            "shards_catching_up": len(self._catch_up),
            "events_replayed_to_cache": stats.replayed,
            "closes": {str(code): n for code, n in sorted(self.closes.items())},
            "cache": {
                "shards_ready": cache.shards_ready,
                "guilds": cache.guilds,
                "guilds_unavailable": cache.guilds_unavailable,
                "bytes": cache.nbytes,
                "bytes_per_guild": cache.nbytes // guilds,
                "largest_guild_bytes": cache.largest_guild_nbytes,
                "members": cache.members,
                "presences": cache.presences,
                "members_dropped": cache.members_dropped,
                "presences_dropped": cache.presences_dropped,
                "messages_pending": cache.messages_pending,
                "member_cap": self.cache.member_cap,
                "presence_cap": self.cache.presence_cap,
                "saves": stats.saves,
                "saved_ago_s": None
                if stats.saved_at is None
                else round(time.monotonic() - stats.saved_at, 1),
                "save_seconds": round(stats.save_s, 4),
                "save_bytes": stats.save_bytes,
                "save_max_stall_ms": round(stats.save_stall_s * 1000, 2),
                "save_max_hold_ms": round(stats.save_hold_s * 1000, 2),
            },
        }


class _SaveAbandoned(Exception):
    """A save stopped half way: a shard changed meanwhile (a new range's start), or the
    disk took too long; the next save is whole. The message names the shard (and why)."""


class _Unparsed:
    __slots__ = ()


_UNPARSED: Final = _Unparsed()


def _some(shard_ids: list[int]) -> str:
    return ", ".join(map(str, shard_ids[:10])) + (", ..." if len(shard_ids) > 10 else "")


def _bits(value: int) -> Iterable[int]:
    bit = 1
    while bit <= value:
        if value & bit:
            yield bit
        bit <<= 1


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
