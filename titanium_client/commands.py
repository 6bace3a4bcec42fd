"""Send gateway commands to a cluster's shards: the control socket or the ``gateway_send`` stream.

One API, two transports (both behind :class:`Cluster`):

- :class:`ControlCluster` speaks DESIGN.md 4.3 on the control socket: a
  ZeroMQ DEALER sends ``{"op", "d", "shard_id" | "guild_id" | "all"}`` behind
  an empty delimiter (as REQ would) and waits for ``{"ok": true, "shard_ids"}``
  or ``{"ok": false, "error"}``, raised as :class:`CommandRefusedError`. One
  request is in flight at a time (replies come in order). After a timeout or a
  cancellation the socket is replaced, so a late reply can never answer the next
  request (the "lazy pirate" pattern); the command is not resent.
- :class:`StreamCluster` appends to the Redis stream ``gateway_send`` in the
  ``@discordjs/brokers`` layout, ``data`` = msgpack of ``{"shardId": n,
  "payload": {"op", "d"}}``, one entry per target shard (a guild's shard is
  ``(guild_id >> 22) % shard_count``, so it needs the shard count). Nothing
  answers on a stream, so the command is checked here first with the control
  socket's own rules (:func:`protocol.payloads.validate_command`, the 4096-byte
  limit); ``all=True`` writes every shard's entry in one MULTI.

The typed helpers build the ``d`` Discord documents with :mod:`protocol.payloads`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self

import orjson
import redis.asyncio
import redis.exceptions
import zmq
import zmq.asyncio

from protocol import payloads
from protocol.errors import InvalidCommandError as ProtocolCommandError
from protocol.errors import PayloadTooLargeError
from protocol.gateway import Opcode
from protocol.payloads import Status
from protocol.sharding import shard_for_guild
from titanium_client.codec import COMMAND_STREAM, Encoding, encode_command
from titanium_client.errors import (
    CommandRefusedError,
    CommandTimeoutError,
    InvalidCommandError,
    ReplyFormatError,
    TransportError,
)
from titanium_client.pub import CurveClient, is_pub_endpoint
from titanium_client.streams import connect_redis, is_redis_url

#: Seconds to wait for the control socket's reply.
DEFAULT_TIMEOUT: Final = 5.0
#: Approximate bound of the ``gateway_send`` stream (commands the cluster has not read yet).
DEFAULT_COMMAND_MAXLEN: Final = 10_000


def _target(shard_id: int | None, guild_id: int | str | None, every: bool) -> dict[str, Any]:
    given = sum((shard_id is not None, guild_id is not None, every))
    if given != 1:
        raise InvalidCommandError("give exactly one target: shard_id=, guild_id= or all=True")
    if shard_id is not None:
        if isinstance(shard_id, bool) or not isinstance(shard_id, int) or shard_id < 0:
            raise InvalidCommandError(f"shard_id must be a non-negative int, got {shard_id!r}")
        return {"shard_id": shard_id}
    if guild_id is not None:
        return {"guild_id": str(guild_id)}
    return {"all": True}


class Cluster(abc.ABC):
    """Gateway commands to a cluster's shards; use it with ``async with`` or call :meth:`close`."""

    @abc.abstractmethod
    async def send(
        self,
        op: int,
        d: Any,
        *,
        shard_id: int | None = None,
        guild_id: int | str | None = None,
        all: bool = False,
    ) -> tuple[int, ...]:
        """Send ``{"op": op, "d": d}`` to one shard, the guild's shard, or all; the shards it went to.

        Raises :class:`InvalidCommandError` for a bad command or target,
        :class:`CommandRefusedError` when the cluster refuses it,
        :class:`CommandTimeoutError` or :class:`TransportError` when it cannot be reached.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the socket or connection (idempotent)."""

    async def update_presence(
        self,
        status: Status | str = Status.ONLINE,
        activities: Sequence[Mapping[str, Any]] = (),
        *,
        since: int | None = None,
        afk: bool = False,
        shard_id: int | None = None,
    ) -> tuple[int, ...]:
        """Op 3 Update Presence on every shard (or on ``shard_id`` only)."""
        try:
            d = payloads.presence(status, activities, since, afk)
        except ValueError as exc:
            raise InvalidCommandError(str(exc)) from None
        return await self.send(Opcode.PRESENCE_UPDATE, d, shard_id=shard_id, all=shard_id is None)

    async def update_voice_state(
        self,
        guild_id: int | str,
        channel_id: int | str | None,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> tuple[int, ...]:
        """Op 4 Update Voice State on the guild's shard: join/move to ``channel_id``, None leaves."""
        try:
            payload = payloads.voice_state_update(guild_id, channel_id, self_mute, self_deaf)
        except ValueError as exc:
            raise InvalidCommandError(str(exc)) from None
        return await self.send(payload["op"], payload["d"], guild_id=guild_id)

    async def request_guild_members(
        self,
        guild_id: int | str,
        *,
        query: str | None = None,
        limit: int = 0,
        user_ids: Iterable[int | str] | None = None,
        presences: bool = False,
        nonce: str | None = None,
    ) -> tuple[int, ...]:
        """Op 8 Request Guild Members on the guild's shard (answers arrive as GUILD_MEMBERS_CHUNK)."""
        try:
            payload = payloads.request_guild_members(
                guild_id, query, limit, user_ids, presences, nonce
            )
        except ValueError as exc:
            raise InvalidCommandError(str(exc)) from None
        return await self.send(payload["op"], payload["d"], guild_id=guild_id)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def parse_reply(frames: Sequence[bytes]) -> tuple[int, ...]:
    """The shards of an ``ok`` reply; CommandRefusedError or ReplyFormatError otherwise."""
    body = frames[-1] if frames else b""
    if len(frames) > 2 or (len(frames) == 2 and frames[0]):
        raise ReplyFormatError(f"a reply is one frame after the delimiter, got {len(frames)}", body)
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ReplyFormatError("the reply is not JSON", body) from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ReplyFormatError('the reply is not an object with a boolean "ok"', body)
    raw_ids = reply.get("shard_ids", [])
    if not isinstance(raw_ids, list) or not all(type(i) is int and i >= 0 for i in raw_ids):
        raise ReplyFormatError('"shard_ids" must be a list of shard numbers', body)
    shard_ids = tuple(raw_ids)
    if reply["ok"]:
        return shard_ids
    error = reply.get("error")
    kind = reply.get("kind")
    raise CommandRefusedError(
        error if isinstance(error, str) else "refused without a reason",
        kind if isinstance(kind, str) else None,
        shard_ids,
    )


class ControlCluster(Cluster):
    """Commands over a cluster's control socket (``--control``, default ``tcp://127.0.0.1:5556``).

    A cluster off loopback speaks CURVE: ``curve_server_key=`` (its public key) and
    ``curve_secret_key=`` (this client's; Z85 text or raw bytes, see
    :func:`titanium_client.pub.read_key_file`). A key the cluster does not let in
    gets no reply: :class:`CommandTimeoutError`.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        context: zmq.asyncio.Context | None = None,
        curve_server_key: str | bytes | None = None,
        curve_secret_key: str | bytes | None = None,
        curve_public_key: str | bytes | None = None,
    ) -> None:
        self._curve = CurveClient.from_options(curve_server_key, curve_secret_key, curve_public_key)
        if not is_pub_endpoint(endpoint):
            raise ValueError(
                f"{endpoint!r} is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)"
            )
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.endpoint = endpoint
        self.timeout = timeout
        self._context = context
        self._own_context = context is None
        self._sock: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def _socket(self) -> zmq.asyncio.Socket:
        if self._closed:
            raise TransportError("the cluster connection is closed")
        if self._sock is None:
            if self._context is None:
                self._context = zmq.asyncio.Context()
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if self._curve is not None:
                self._curve.apply(sock)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close(0)

    async def send(
        self,
        op: int,
        d: Any,
        *,
        shard_id: int | None = None,
        guild_id: int | str | None = None,
        all: bool = False,
    ) -> tuple[int, ...]:
        """Send one request and wait for its reply (see :meth:`Cluster.send`)."""
        request = {"op": int(op), "d": d, **_target(shard_id, guild_id, all)}
        try:
            body = orjson.dumps(request)
        except orjson.JSONEncodeError as exc:
            raise InvalidCommandError(f"the command is not JSON-serializable: {exc}") from None
        async with self._lock:
            sock = self._socket()
            try:
                async with asyncio.timeout(self.timeout):
                    await sock.send_multipart([b"", body])
                    frames: list[bytes] = await sock.recv_multipart()
            except TimeoutError:
                self._drop_socket()
                raise CommandTimeoutError(self.endpoint, self.timeout) from None
            except BaseException:
                self._drop_socket()  # cancelled mid-request: its reply must not answer the next
                raise
        return parse_reply(frames)

    async def close(self) -> None:
        """Close the socket (linger 0) and the context if this object made it."""
        self._closed = True
        self._drop_socket()
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None


class StreamCluster(Cluster):
    """Commands as entries of the Redis stream ``gateway_send`` (the cluster's hosts read it)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        shard_count: int,
        client: redis.asyncio.Redis | None = None,
        stream: str = COMMAND_STREAM,
        encoding: Encoding = Encoding.MSGPACK,
        maxlen: int | None = DEFAULT_COMMAND_MAXLEN,
    ) -> None:
        if (url is None) == (client is None):
            raise ValueError("give either a Redis URL or a redis.asyncio client")
        if url is not None and not is_redis_url(url):
            raise ValueError("the URL must start with redis://, rediss:// or unix://")
        if isinstance(shard_count, bool) or not isinstance(shard_count, int) or shard_count < 1:
            raise ValueError(f"shard_count must be a positive int, got {shard_count!r}")
        self.shard_count = shard_count
        self.stream = stream
        self.encoding = encoding
        self.maxlen = maxlen
        self._redis = client if client is not None else connect_redis(url or "")
        self._own_client = client is None

    def _shards(
        self, shard_id: int | None, guild_id: int | str | None, every: bool
    ) -> tuple[int, ...]:
        target = _target(shard_id, guild_id, every)
        if "all" in target:
            return tuple(range(self.shard_count))
        if "guild_id" in target:
            try:
                return (shard_for_guild(target["guild_id"], self.shard_count),)
            except ValueError as exc:
                raise InvalidCommandError(str(exc)) from None
        if target["shard_id"] >= self.shard_count:
            raise InvalidCommandError(
                f"unknown shard {target['shard_id']}: the cluster has {self.shard_count} shards"
            )
        return (target["shard_id"],)

    async def send(
        self,
        op: int,
        d: Any,
        *,
        shard_id: int | None = None,
        guild_id: int | str | None = None,
        all: bool = False,
    ) -> tuple[int, ...]:
        """Append the command for each target shard (see :meth:`Cluster.send`)."""
        try:
            opcode = payloads.validate_command(op, d)
            payloads.encode_client_payload({"op": opcode.value, "d": d})
        except (ProtocolCommandError, PayloadTooLargeError) as exc:
            raise InvalidCommandError(str(exc)) from None
        shard_ids = self._shards(shard_id, guild_id, all)
        try:
            async with self._redis.pipeline(transaction=len(shard_ids) > 1) as pipe:
                for target in shard_ids:
                    pipe.xadd(
                        self.stream,
                        {"data": encode_command(target, opcode.value, d, self.encoding)},
                        maxlen=self.maxlen,
                        approximate=True,
                    )
                await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise TransportError(f"could not append to {self.stream}: {exc}") from exc
        return shard_ids

    async def close(self) -> None:
        """Close the Redis connection if this object made it."""
        if self._own_client:
            await self._redis.aclose()


def connect(
    url: str,
    *,
    shard_count: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    curve_server_key: str | bytes | None = None,
    curve_secret_key: str | bytes | None = None,
) -> Cluster:
    """A :class:`Cluster` for ``url``: ``tcp://``/``ipc://`` is the control socket, ``redis://`` the stream.

    Over Redis ``shard_count`` is required (it routes ``guild_id``). The ``curve_*``
    keys are for a control socket that speaks CURVE (see :class:`ControlCluster`).
    """
    if is_pub_endpoint(url):
        return ControlCluster(
            url,
            timeout=timeout,
            curve_server_key=curve_server_key,
            curve_secret_key=curve_secret_key,
        )
    if curve_server_key is not None or curve_secret_key is not None:
        raise ValueError("curve_*_key= is for the control socket (tcp://, ipc://), not Redis")
    if is_redis_url(url):
        if shard_count is None:
            raise ValueError("commands over Redis need shard_count= (to route guild_id)")
        return StreamCluster(url, shard_count=shard_count)
    raise ValueError(
        f"{url!r} is neither a control endpoint (tcp://, ipc://) nor a Redis URL (redis://)"
    )
