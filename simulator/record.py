"""What the simulated server saw and did, for tests to assert on.

Tests assert on the server's view, not on what a client claims: every
connection, Identify, Resume, heartbeat, ACK, client command, violation of a
Discord rule, injected fault and dispatch the server produced. In-process as
``Simulator.record``; as JSON at ``GET /_sim/record``.

Times are ``time.monotonic()`` seconds. Dispatches are recorded when the
server produces them into a session (``conn_id`` is None when the session had
no live connection then: such events reach the client only by RESUME replay).

Sessions of different shard counts may live side by side (resharding): a
generated event reaches every live session whose ``(shard_id, num_shards)``
covers its guild, and is recorded once per session with the same
``event_id``; ``num_shards`` says which shard set each record belongs to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Callable
from typing import Any, NamedTuple


class ViolationKind(enum.Enum):
    """A Discord rule a client broke, with the close code Discord answers (if any)."""

    IDENTIFY_RATE_LIMIT = "identify_rate_limit"  # op 9 false
    SESSION_START_EXHAUSTED = "session_start_exhausted"  # op 9 false, sessions terminated
    SEND_RATE_LIMIT = "send_rate_limit"  # 4008
    PAYLOAD_TOO_LARGE = "payload_too_large"  # 4002
    DECODE_ERROR = "decode_error"  # 4002
    UNKNOWN_OPCODE = "unknown_opcode"  # 4001
    INVALID_PAYLOAD = "invalid_payload"  # 4001
    NOT_AUTHENTICATED = "not_authenticated"  # 4003
    AUTH_FAILED = "auth_failed"  # 4004
    ALREADY_AUTHENTICATED = "already_authenticated"  # 4005
    INVALID_SEQ = "invalid_seq"  # 4007
    INVALID_SHARD = "invalid_shard"  # 4010
    SHARDING_REQUIRED = "sharding_required"  # 4011
    INVALID_API_VERSION = "invalid_api_version"  # 4012
    INVALID_INTENTS = "invalid_intents"  # 4013
    DISALLOWED_INTENTS = "disallowed_intents"  # 4014
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"  # closed 4000, session kept
    UNSUPPORTED_ENCODING = "unsupported_encoding"  # 4002
    REST_UNAUTHORIZED = "rest_unauthorized"  # HTTP 401


class IdentifyOutcome(enum.Enum):
    ACCEPTED = "accepted"
    RATE_LIMITED = "rate_limited"  # op 9 false: bucket already used in this window
    EXHAUSTED = "session_start_exhausted"  # op 9 false: no session starts left
    REJECTED = "rejected"  # closed with ``code``


class ResumeOutcome(enum.Enum):
    ACCEPTED = "accepted"
    INVALID_SESSION = "invalid_session"  # op 9 false: unknown, expired or invalidated
    REJECTED = "rejected"  # closed with ``code``


class ClosedBy(enum.StrEnum):
    """Who ended a connection (a StrEnum: compares equal to its value)."""

    SERVER = "server"  # a close frame from the server
    CLIENT = "client"  # a close frame from the client
    ABORT = "abort"  # the server dropped TCP on purpose (fault), no close frame
    LOST = "lost"  # TCP went away without a close frame from either side


class UrlKind(enum.Enum):
    MAIN = "main"
    RESUME = "resume"


@dataclasses.dataclass(slots=True)
class ConnectionRecord:
    conn_id: int
    url_kind: UrlKind
    v: int | None
    encoding: str
    compress: str
    opened_at: float
    shard_id: int | None = None
    session_id: str | None = None
    closed_at: float | None = None
    close_code: int | None = None
    closed_by: ClosedBy | None = None
    heartbeats: int = 0
    acks: int = 0
    payloads: int = 0
    num_shards: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class IdentifyRecord:
    conn_id: int
    shard_id: int | None
    num_shards: int | None
    intents: int | None
    at: float
    outcome: IdentifyOutcome
    code: int | None = None
    session_id: str | None = None
    #: the IDENTIFY's ``presence`` and ``large_threshold`` as sent (None: not given)
    presence: Any = None
    large_threshold: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class ResumeRecord:
    conn_id: int
    session_id: str | None
    seq: int | None
    at: float
    outcome: ResumeOutcome
    url_kind: UrlKind
    shard_id: int | None = None
    code: int | None = None
    replayed: int = 0
    num_shards: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class HeartbeatRecord:
    conn_id: int
    at: float
    seq: int | None
    acked: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    kind: ViolationKind
    conn_id: int | None
    at: float
    code: int | None = None
    shard_id: int | None = None
    detail: str = ""


class DispatchRecord(NamedTuple):
    """One dispatch produced into a session (a tuple: cheap at benchmark rates).

    A generated event reaching several sessions (two shard sets covering its
    guild) is one record per session, all with the same ``event_id``.
    """

    shard_id: int
    session_id: str
    seq: int
    t: str
    event_id: int | None
    conn_id: int | None
    at: float
    #: the session's shard count (None only from callers that predate it)
    num_shards: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CommandRecord:
    conn_id: int
    shard_id: int | None
    op: int
    d: Any
    at: float
    num_shards: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FaultRecord:
    conn_id: int
    shard_id: int | None
    kind: str
    params: dict[str, Any]
    at: float
    chaos: bool
    num_shards: int | None = None


Predicate = Callable[["Record"], bool]


class Record:
    """Everything the server saw, in order. Append-only while the simulator runs."""

    def __init__(self) -> None:
        self.connections: dict[int, ConnectionRecord] = {}
        self.identifies: list[IdentifyRecord] = []
        self.resumes: list[ResumeRecord] = []
        self.heartbeats: list[HeartbeatRecord] = []
        self.violations: list[Violation] = []
        self.dispatches: list[DispatchRecord] = []
        self.commands: list[CommandRecord] = []
        self.faults: list[FaultRecord] = []
        self.rest_requests: list[tuple[str, str, int]] = []
        self._waiters: list[tuple[Predicate, asyncio.Future[None]]] = []

    # -- appending (server side) -------------------------------------------------

    def changed(self) -> None:
        """Wake the waiters whose predicate now holds (cheap when nobody waits)."""
        if not self._waiters:
            return
        still: list[tuple[Predicate, asyncio.Future[None]]] = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                ok = predicate(self)
            except Exception as exc:  # a broken predicate fails the waiting test
                future.set_exception(exc)
                continue
            if ok:
                future.set_result(None)
            else:
                still.append((predicate, future))
        self._waiters = still

    def add(self, item: object) -> None:
        if isinstance(item, DispatchRecord):
            self.dispatches.append(item)
        elif isinstance(item, HeartbeatRecord):
            self.heartbeats.append(item)
        elif isinstance(item, IdentifyRecord):
            self.identifies.append(item)
        elif isinstance(item, ResumeRecord):
            self.resumes.append(item)
        elif isinstance(item, Violation):
            self.violations.append(item)
        elif isinstance(item, CommandRecord):
            self.commands.append(item)
        elif isinstance(item, FaultRecord):
            self.faults.append(item)
        else:
            raise TypeError(f"not a record item: {type(item).__name__}")
        self.changed()

    # -- queries (test side) -----------------------------------------------------

    async def wait_for(self, predicate: Predicate, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (a bounded wait is the point of these helpers)
        """Wait until ``predicate(record)`` holds; TimeoutError after ``timeout`` s."""
        if predicate(self):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            if not future.done():
                future.cancel()

    # ``num_shards`` (None: any) picks one shard set where sets of different sizes live
    # side by side (resharding).

    def identifies_for(
        self,
        shard_id: int,
        outcome: IdentifyOutcome | None = None,
        num_shards: int | None = None,
    ) -> list[IdentifyRecord]:
        return [
            r
            for r in self.identifies
            if r.shard_id == shard_id
            and (outcome is None or r.outcome is outcome)
            and (num_shards is None or r.num_shards == num_shards)
        ]

    def accepted_identifies(
        self, shard_id: int | None = None, num_shards: int | None = None
    ) -> list[IdentifyRecord]:
        return [
            r
            for r in self.identifies
            if r.outcome is IdentifyOutcome.ACCEPTED
            and (shard_id is None or r.shard_id == shard_id)
            and (num_shards is None or r.num_shards == num_shards)
        ]

    def resumes_for(
        self,
        shard_id: int | None = None,
        outcome: ResumeOutcome | None = None,
        num_shards: int | None = None,
    ) -> list[ResumeRecord]:
        return [
            r
            for r in self.resumes
            if (shard_id is None or r.shard_id == shard_id)
            and (outcome is None or r.outcome is outcome)
            and (num_shards is None or r.num_shards == num_shards)
        ]

    def accepted_resumes(
        self, shard_id: int | None = None, num_shards: int | None = None
    ) -> list[ResumeRecord]:
        return self.resumes_for(shard_id, ResumeOutcome.ACCEPTED, num_shards)

    def violations_of(self, kind: ViolationKind) -> list[Violation]:
        return [v for v in self.violations if v.kind is kind]

    def deliverable(self) -> list[DispatchRecord]:
        """Dispatches Discord delivers to someone: written to a connection, or replayed by
        an accepted RESUME after they were produced. One produced into a detached session
        that ended first (op 9 ``d=false`` on a zombie connection, say) reaches nobody."""
        replays: dict[str, list[tuple[float, int]]] = {}
        for r in self.resumes:
            if (
                r.outcome is ResumeOutcome.ACCEPTED
                and r.session_id is not None
                and r.seq is not None
            ):
                replays.setdefault(r.session_id, []).append((r.at, r.seq))
        return [
            d
            for d in self.dispatches
            if d.conn_id is not None
            or any(at > d.at and seq < d.seq for at, seq in replays.get(d.session_id, ()))
        ]

    def sent_events(
        self,
        shard_id: int | None = None,
        session_id: str | None = None,
        num_shards: int | None = None,
    ) -> list[DispatchRecord]:
        """Generated events (those with an ``event_id``), in production order.

        One record per session an event reached: with two shard sets live, an
        event appears once per set (same ``event_id``).
        """
        return [
            d
            for d in self.dispatches
            if d.event_id is not None
            and (shard_id is None or d.shard_id == shard_id)
            and (session_id is None or d.session_id == session_id)
            and (num_shards is None or d.num_shards == num_shards)
        ]

    def deliveries(self) -> dict[int, list[DispatchRecord]]:
        """Each generated event's id and the dispatches (one per session) that carried it."""
        out: dict[int, list[DispatchRecord]] = {}
        for d in self.dispatches:
            if d.event_id is not None:
                out.setdefault(d.event_id, []).append(d)
        return out

    def dispatches_of(
        self, t: str, shard_id: int | None = None, num_shards: int | None = None
    ) -> list[DispatchRecord]:
        return [
            d
            for d in self.dispatches
            if d.t == t
            and (shard_id is None or d.shard_id == shard_id)
            and (num_shards is None or d.num_shards == num_shards)
        ]

    def heartbeats_on(self, conn_id: int) -> list[HeartbeatRecord]:
        return [h for h in self.heartbeats if h.conn_id == conn_id]

    def connections_for(
        self, shard_id: int, num_shards: int | None = None
    ) -> list[ConnectionRecord]:
        return [
            c
            for c in self.connections.values()
            if c.shard_id == shard_id and (num_shards is None or c.num_shards == num_shards)
        ]

    def acks_sent(self) -> int:
        return sum(c.acks for c in self.connections.values())

    def to_json(self) -> dict[str, Any]:
        def plain(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            if isinstance(obj, enum.Enum):
                return obj.value
            if isinstance(obj, list | tuple):
                return [plain(x) for x in obj]
            if isinstance(obj, dict):
                return {str(k): plain(v) for k, v in obj.items()}
            return obj

        return {
            "connections": [plain(c) for c in self.connections.values()],
            "identifies": plain(self.identifies),
            "resumes": plain(self.resumes),
            "heartbeats": len(self.heartbeats),
            "acks": self.acks_sent(),
            "violations": plain(self.violations),
            "dispatches": [
                {
                    "shard_id": d.shard_id,
                    "session_id": d.session_id,
                    "seq": d.seq,
                    "t": d.t,
                    "event_id": d.event_id,
                    "conn_id": d.conn_id,
                    "at": d.at,
                    "num_shards": d.num_shards,
                }
                for d in self.dispatches
            ],
            "commands": plain(self.commands),
            "faults": plain(self.faults),
        }
