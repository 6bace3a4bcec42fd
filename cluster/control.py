"""The control socket: bots send gateway commands to shards (DESIGN.md 4.3).

A ZeroMQ ROUTER bound on ``--control`` with REQ/REP semantics: a client sends
one JSON request and gets one JSON reply. REQ clients work as they are; a
DEALER client sends an empty delimiter frame before the request (as REQ does)
and gets the reply after the same delimiter. Request::

    {"op": 3, "d": {...}, "shard_id": 0}            one shard
    {"op": 4, "d": {...}, "guild_id": "8134..."}    the guild's shard: (guild_id >> 22) % total
    {"op": 3, "d": {...}, "all": true}              every shard this supervisor runs

Reply: ``{"ok": true, "shard_ids": [...]}`` (the shards that took the command)
or ``{"ok": false, "error": "why"}``. Only ops 3, 4, 8, 31 and 43 pass
(:func:`protocol.payloads.validate_command`); the payload handed to the
supervisor's ``send(shard_id, payload)`` is ``{"op", "d"}`` encoded once, and
its 4096-byte gateway limit is checked here. The per-connection send limit is
the shard's own (worker/ratelimit.py): a command waits in the shard's queue,
it never jumps the limit.

The decisions live in the pure :func:`parse_control_request`; the server only
moves bytes. Requests are answered one at a time, in arrival order, so the
commands of one client reach a shard in the order sent. A bad request never
costs more than its reply: requests over :data:`MAX_REQUEST_BYTES` are refused
unread, frames over :data:`MAX_FRAME_BYTES` make ZeroMQ drop the peer, and
anything unexpected inside the handler becomes an ``ok: false`` reply.

With ``curve`` (``--curve-secret``, required off loopback) the socket is
libzmq's CURVE server and a ZAP handler (:class:`cluster.curve.ZapHandler`,
bound before the socket) lets in only the client keys of ``--curve-clients``;
anyone else never gets a reply (their handshake fails).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import zmq
import zmq.asyncio

from cluster.curve import ZapHandler, configure_curve_server
from cluster.router_service import RouterService
from protocol.curvezmq import CurveServerKeys
from protocol.errors import InvalidCommandError, PayloadTooLargeError
from protocol.gateway import Opcode
from protocol.payloads import encode_client_payload, validate_command
from protocol.sharding import shard_for_guild

log = logging.getLogger(__name__)

#: Requests larger than this get ``ok: false`` without being parsed.
MAX_REQUEST_BYTES: Final = 64 * 1024
#: ZeroMQ disconnects a peer that sends a frame larger than this (memory bound).
MAX_FRAME_BYTES: Final = 1024 * 1024
#: Requests queued in the socket before ZeroMQ stops reading from peers.
RECEIVE_HWM: Final = 1000
#: A shard's ``send`` that takes longer than this is a failure (a stuck worker must
#: not stall the control socket for everyone).
SEND_TIMEOUT_S: Final = 5.0

_REQUEST_KEYS: Final = frozenset({"op", "d", "shard_id", "guild_id", "all"})
_TARGET_KEYS: Final = ("shard_id", "guild_id", "all")

SendCommand = Callable[[int, bytes], Awaitable[None]]
#: ``{"reshard": ...}`` requests -> the reply object (the range owner's)
AdminHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
#: Request keys that go to the admin handler instead of a shard.
ADMIN_KEYS: Final = frozenset({"reshard"})


class ControlErrorKind(enum.Enum):
    """Why a control request was refused (the reply's ``error`` says it in words)."""

    FRAMES = "frames"  #: not exactly one request frame after the envelope
    TOO_LARGE = "too_large"  #: the request is over MAX_REQUEST_BYTES
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_KEY = "unknown_key"
    BAD_COMMAND = "bad_command"  #: op is not 3/4/8/31/43, or d is not what Discord takes
    PAYLOAD_TOO_LARGE = "payload_too_large"  #: the encoded command is over 4096 bytes
    BAD_TARGET = "bad_target"  #: no target, two targets, or a malformed one
    UNKNOWN_SHARD = "unknown_shard"  #: not a shard of this cluster
    NOT_LOCAL = "not_local"  #: a shard of the cluster that another supervisor runs
    SEND_FAILED = "send_failed"  #: the shard is not running or did not take it
    INTERNAL = "internal"


class ControlRequestError(ValueError):
    """A control request that cannot be carried out; ``str()`` is the reply's error text."""

    def __init__(self, kind: ControlErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Target(enum.Enum):
    SHARD = "shard_id"
    GUILD = "guild_id"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """A valid request: the command's opcode, its encoded payload, and where it goes."""

    op: Opcode
    payload: bytes
    target: Target
    shard_ids: tuple[int, ...]


def _describe_ids(ids: Collection[int]) -> str:
    ordered = sorted(ids)
    if not ordered:
        return "none"
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}" if len(ordered) > 1 else str(ordered[0])
    shown = ", ".join(str(i) for i in ordered[:8])
    return shown + (", ..." if len(ordered) > 8 else "")


def local_shard(shard_id: int, total_shards: int, local_shard_ids: Collection[int]) -> int:
    """``shard_id`` if this supervisor runs it; ControlRequestError (unknown, not local) if not."""
    if not 0 <= shard_id < total_shards:
        raise ControlRequestError(
            ControlErrorKind.UNKNOWN_SHARD,
            f"unknown shard {shard_id}: the cluster has {total_shards} shards "
            f"(0-{total_shards - 1})",
        )
    if shard_id not in local_shard_ids:
        raise ControlRequestError(
            ControlErrorKind.NOT_LOCAL,
            f"shard {shard_id} is not run by this supervisor (it runs shards "
            f"{_describe_ids(local_shard_ids)}); send it to the supervisor that runs it",
        )
    return shard_id


def _target(
    request: dict[str, Any], total_shards: int, local_shard_ids: Collection[int]
) -> tuple[Target, tuple[int, ...]]:
    given = [key for key in _TARGET_KEYS if key in request]
    if len(given) != 1:
        why = "no target" if not given else f"{len(given)} targets ({', '.join(given)})"
        raise ControlRequestError(
            ControlErrorKind.BAD_TARGET,
            f'{why}: give exactly one of "shard_id": n, "guild_id": "snowflake", "all": true',
        )
    key = given[0]
    value = request[key]
    if key == "shard_id":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ControlRequestError(
                ControlErrorKind.BAD_TARGET,
                f"shard_id must be an integer, not {type(value).__name__}",
            )
        return Target.SHARD, (local_shard(value, total_shards, local_shard_ids),)
    if key == "guild_id":
        try:
            shard_id = shard_for_guild(value, total_shards)
        except ValueError as exc:
            raise ControlRequestError(ControlErrorKind.BAD_TARGET, str(exc)) from None
        return Target.GUILD, (local_shard(shard_id, total_shards, local_shard_ids),)
    if value is not True:
        raise ControlRequestError(
            ControlErrorKind.BAD_TARGET, f"all must be true when given, not {value!r:.20}"
        )
    return Target.ALL, tuple(sorted(local_shard_ids))


def parse_control_request(
    raw: bytes, total_shards: int, local_shard_ids: Collection[int]
) -> ControlRequest:
    """Decide what one request asks for; raise :class:`ControlRequestError` if it cannot be done.

    ``local_shard_ids`` are the shards this supervisor runs (all of them
    unless ``--shard-ids`` gave a range). Pure: no I/O, no clock.
    """
    if len(raw) > MAX_REQUEST_BYTES:
        raise ControlRequestError(
            ControlErrorKind.TOO_LARGE,
            f"the request is {len(raw)} bytes, over the limit of {MAX_REQUEST_BYTES}",
        )
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ControlRequestError(
            ControlErrorKind.BAD_JSON, f"the request is not valid JSON: {exc}"
        ) from None
    if not isinstance(request, dict):
        raise ControlRequestError(
            ControlErrorKind.NOT_AN_OBJECT,
            f"the request must be a JSON object, not {_json_type(request)}",
        )
    unknown = sorted(k for k in request if k not in _REQUEST_KEYS)
    if unknown:
        raise ControlRequestError(
            ControlErrorKind.UNKNOWN_KEY,
            f"unknown key {unknown[0][:40]!r}: a request has op, d and one of "
            "shard_id, guild_id, all",
        )
    for key in ("op", "d"):
        if key not in request:
            raise ControlRequestError(ControlErrorKind.BAD_COMMAND, f"{key} is required")
    try:
        op = validate_command(request["op"], request["d"])
        payload = encode_client_payload({"op": op.value, "d": request["d"]})
    except PayloadTooLargeError as exc:
        raise ControlRequestError(ControlErrorKind.PAYLOAD_TOO_LARGE, str(exc)) from None
    except InvalidCommandError as exc:
        raise ControlRequestError(ControlErrorKind.BAD_COMMAND, str(exc)) from None
    target, shard_ids = _target(request, total_shards, local_shard_ids)
    return ControlRequest(op, payload, target, shard_ids)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def ok_reply(shard_ids: Sequence[int]) -> bytes:
    return orjson.dumps({"ok": True, "shard_ids": list(shard_ids)})


def error_reply(message: str, shard_ids: Sequence[int] | None = None) -> bytes:
    body: dict[str, Any] = {"ok": False, "error": message}
    if shard_ids:
        body["shard_ids"] = list(shard_ids)
    return orjson.dumps(body)


def split_envelope(frames: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split a ROUTER message into (routing envelope, request frames).

    The envelope is the peer's routing id plus everything up to and including
    the first empty delimiter frame (REQ, or DEALER with a delimiter); without
    a delimiter (a bare DEALER) it is the routing id alone. The reply goes
    back behind the same envelope.
    """
    for i in range(1, len(frames)):
        if not frames[i]:
            return list(frames[: i + 1]), list(frames[i + 1 :])
    return list(frames[:1]), list(frames[1:])


@dataclass(slots=True)
class ControlStats:
    requests: int = 0
    accepted: int = 0
    refused: int = 0
    send_failures: int = 0
    replies_dropped: int = 0


class ControlServer(RouterService):
    """The control socket of one supervisor; ``send`` is the supervisor's ``send_command``.

    ``send(shard_id, payload)`` must raise when the shard is not running; the
    client then gets ``ok: false`` naming the shard.
    """

    service_name = "control server"

    def __init__(
        self,
        endpoint: str,
        total_shards: int,
        local_shard_ids: Collection[int],
        send: SendCommand,
        *,
        context: zmq.asyncio.Context | None = None,
        send_timeout_s: float = SEND_TIMEOUT_S,
        curve: CurveServerKeys | None = None,
        admin: AdminHandler | None = None,
    ) -> None:
        if total_shards < 1:
            raise ValueError(f"total_shards must be at least 1, got {total_shards}")
        outside = [s for s in local_shard_ids if not 0 <= s < total_shards]
        if outside:
            raise ValueError(f"local shard ids {outside[:5]} are outside 0-{total_shards - 1}")
        super().__init__(endpoint, context)
        self.total_shards = total_shards
        self.local_shard_ids = frozenset(local_shard_ids)
        self._send = send
        self._send_timeout_s = send_timeout_s
        self._admin = admin
        self.stats = ControlStats()
        #: CURVE (``--curve-secret``): libzmq's server, client keys checked by our ZAP handler
        self._curve = curve
        self._zap: ZapHandler | None = None

    def _configure(self, sock: zmq.asyncio.Socket) -> None:
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        if self._curve is not None:
            # The ZAP handler answers before the socket is bound: no client is ever
            # handshaken without it (and ZAP_ENFORCE_DOMAIN refuses all if it were missing).
            assert self._context is not None
            self._zap = ZapHandler(self._context)
            self._zap.start(self._curve.allowed, asyncio.get_running_loop())
            configure_curve_server(sock, self._curve)

    @property
    def curve_refused(self) -> int:
        """CURVE handshakes refused by the ZAP handler (a key not let in) since start."""
        return 0 if self._zap is None else self._zap.denied

    def _close_context(self) -> None:
        # Before the context ends (a bind failure, a stop): term() waits for every socket.
        if self._zap is not None:
            self._zap.close()
            self._zap = None
        super()._close_context()

    def _started(self) -> None:
        log.info(
            "control socket on %s for shards %s",
            self._endpoint,
            _describe_ids(self.local_shard_ids),
        )

    def _crashed(self, exc: BaseException) -> None:
        log.error("the control server stopped: %r", exc, exc_info=exc)

    # -- serving ---------------------------------------------------------------------------

    async def _serve(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames: list[bytes] = await sock.recv_multipart()
            envelope, body = split_envelope(frames)
            reply = await self.answer(body)
            try:
                await sock.send_multipart([*envelope, reply], flags=zmq.DONTWAIT)
            except zmq.ZMQError:
                # The peer is gone or not reading; ROUTER would drop it silently anyway.
                self.stats.replies_dropped += 1

    async def answer(self, body: Sequence[bytes]) -> bytes:
        """The reply to one request (the frames after the envelope); never raises."""
        self.stats.requests += 1
        try:
            if len(body) != 1:
                raise ControlRequestError(
                    ControlErrorKind.FRAMES,
                    f"a request is one frame holding a JSON object, got {len(body)} frames",
                )
            admin = self._admin_request(body[0])
            if admin is not None:
                if self._admin is None:
                    raise ControlRequestError(
                        ControlErrorKind.UNKNOWN_KEY, "this supervisor takes no reshard requests"
                    )
                return orjson.dumps(await self._admin(admin))
            request = parse_control_request(body[0], self.total_shards, self.local_shard_ids)
        except ControlRequestError as exc:
            self.stats.refused += 1
            return error_reply(str(exc))
        except Exception:  # a bug must cost one reply, never the server
            log.exception("control request handling failed")
            self.stats.refused += 1
            return error_reply("internal error while reading the request")
        return await self._deliver(request)

    @staticmethod
    def _admin_request(raw: bytes) -> dict[str, Any] | None:
        """A ``{"reshard": ...}`` request (cheap test first: gateway commands never parse twice)."""
        if b'"reshard"' not in raw or len(raw) > MAX_REQUEST_BYTES:
            return None
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if isinstance(request, dict) and set(request) <= ADMIN_KEYS and request:
            return request
        return None

    async def _deliver(self, request: ControlRequest) -> bytes:
        delivered: list[int] = []
        failures: list[str] = []
        for shard_id in request.shard_ids:
            try:
                async with asyncio.timeout(self._send_timeout_s):
                    await self._send(shard_id, request.payload)
            except TimeoutError:
                self.stats.send_failures += 1
                failures.append(
                    f"shard {shard_id} did not take the command within {self._send_timeout_s:g} s"
                )
            except Exception as exc:
                self.stats.send_failures += 1
                failures.append(f"shard {shard_id} did not take the command ({_why(exc)})")
            else:
                delivered.append(shard_id)
        if failures:
            self.stats.refused += 1
            more = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
            return error_reply(failures[0] + more, delivered)
        self.stats.accepted += 1
        return ok_reply(delivered)


def _why(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
