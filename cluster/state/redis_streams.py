"""The sink's and the command stream's Redis side: appends, trims, group views, command reads.

Built on one :class:`cluster.state.redis_state.RedisState` (its client, its error
mapping, its script loading). The streams are the ``@discordjs/brokers`` layout
(:mod:`protocol.brokerformat`): one stream per event name, field ``data``.

- :class:`SinkBatch` writes runs (a shard's consecutive events of one session)
  straight into the RESP request of one ``SINK_APPEND`` script call;
  :meth:`StreamStore.append` writes a list of them in one pipeline, in order, on
  one connection of the bulk client, fenced by the caller's lease.
- :meth:`StreamStore.touch` keeps an idle shard's checkpoint from expiring;
  :meth:`StreamStore.trim` bounds the streams by age and length;
  :meth:`StreamStore.groups` is what ``/metrics`` says of each stream and group.
- :meth:`StreamStore.read_commands` / :meth:`StreamStore.ack` /
  :meth:`StreamStore.claim_commands` are one host's consumer group on ``gateway_send``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cluster.state import redis_scripts
from cluster.state.redis_state import Lease, RedisState, RedisStateError

if TYPE_CHECKING:
    import redis.exceptions

#: One stream entry as redis-py returns it: (id, {field: value}).
_Entry = tuple[bytes, dict[bytes, bytes]]


#: Streams one ``SINK_APPEND`` call can name: a run says which stream each event goes to
#: in one byte per event.
MAX_STREAMS: Final = 255

_CRLF: Final = b"\r\n"


def _bulk(arg: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


class SinkBatch:
    """One ``SINK_APPEND`` call (see cluster/state/redis_scripts.py), written as RESP.

    The events' data go straight into the request's bytes (a length line, the data, CRLF:
    no per-argument conversion by redis-py, whose packing of thousands of arguments per
    call cost more than the rest of the round). Runs of one shard share its session key
    and the events of one stream its key, each named once per call.
    """

    __slots__ = (
        "_body",
        "_key",
        "_nargs",
        "_session_index",
        "_sessions",
        "_stream_index",
        "_stream_of_name",
        "_streams",
        "events",
        "runs",
    )

    def __init__(self, state: RedisState) -> None:
        self._key = state.key
        #: shard id -> k (its session key is KEYS[1 + k])
        self._session_index: dict[int, int] = {}
        self._sessions: list[bytes] = []
        #: an event's topic (str, bytes or a read-only memoryview) -> j, its stream's byte
        self._stream_index: dict[Any, int] = {}
        self._stream_of_name: dict[str, int] = {}
        self._streams: list[str] = []
        #: per run: k, session id, resume url, first seq, streams (one byte per event), the
        #: events' data; as RESP bulk strings
        self._body: list[bytes] = []
        self._nargs = 0
        self.runs = 0
        self.events = 0

    @property
    def streams(self) -> list[str]:
        """The streams this call appends to."""
        return self._streams

    def add_run(
        self,
        shard_id: int,
        session_id: str,
        resume_url: str,
        first_seq: int,
        events: Sequence[tuple[Any, bytes]],
    ) -> int:
        """A run of ``shard_id``: ``events`` are (topic, data) of seqs ``first_seq ..``.

        Returns how many it took from the front: all, unless the call would name more than
        :data:`MAX_STREAMS` streams; the rest is a run from ``first_seq + taken`` for the
        next call.
        """
        index = self._stream_index
        streams = bytearray()
        data: list[bytes] = []
        put = data.append
        mark = streams.append
        taken = 0
        for topic, value in events:
            try:
                j = index.get(topic)
            except ValueError:  # a writable memoryview has no hash
                topic = bytes(topic)
                j = index.get(topic)
            if j is None:
                j = self._new_stream(topic)
                if j == 0:
                    break
            mark(j)
            put(b"$%d\r\n" % len(value))
            put(value)
            put(_CRLF)
            taken += 1
        if taken:
            k = self._session_index.get(shard_id)
            if k is None:
                self._sessions.append(self._key(f"sess:{shard_id}").encode())
                k = self._session_index[shard_id] = len(self._sessions)
            self._body += (
                _bulk(b"%d" % k),
                _bulk(session_id.encode()),
                _bulk(resume_url.encode()),
                _bulk(b"%d" % first_seq),
                _bulk(bytes(streams)),
            )
            self._body += data
            self._nargs += 5 + taken
            self.runs += 1
            self.events += taken
        return taken

    def _new_stream(self, topic: Any) -> int:
        """``topic``'s j in this call (0: a new stream, and the call names MAX_STREAMS)."""
        raw = topic.encode() if isinstance(topic, str) else bytes(topic)
        # As redis-py would write a str key; event names are ASCII.
        name = raw.decode("ascii", "replace")
        j = self._stream_of_name.get(name)
        if j is None:
            if len(self._streams) >= MAX_STREAMS:
                return 0
            self._streams.append(name)
            j = self._stream_of_name[name] = len(self._streams)
        self._stream_index[topic] = j
        return j

    def request(self, sha: str, lease_key: str, lease_value: str, token: int, ttl_ms: int) -> bytes:
        """The EVALSHA command, as RESP."""
        keys = [lease_key.encode(), *self._sessions, *(s.encode() for s in self._streams)]
        head = [
            b"EVALSHA",
            sha.encode(),
            b"%d" % len(keys),
            *keys,
            lease_value.encode(),
            b"%d" % token,
            b"%d" % ttl_ms,
            b"%d" % len(self._sessions),
            b"%d" % self.runs,
        ]
        first = b"*%d\r\n%b" % (len(head) + self._nargs, b"".join(map(_bulk, head)))
        # one bytes object (one copy): a socket write of a few thousand small pieces costs more
        return b"".join([first, *self._body])


@dataclass(frozen=True, slots=True)
class AppendResult:
    appended: int
    #: events whose seq the session key already held (a replay after a crash)
    skipped: int


@dataclass(frozen=True, slots=True)
class GroupView:
    """One consumer group as ``XINFO GROUPS`` reports it."""

    stream: str
    group: str
    consumers: int
    pending: int
    #: entries not yet delivered to the group (None: Redis cannot tell, e.g. after a trim
    #: past the group's position)
    lag: int | None


@dataclass(frozen=True, slots=True)
class StreamView:
    stream: str
    length: int
    groups: tuple[GroupView, ...]


@dataclass(frozen=True, slots=True)
class Command:
    """One ``gateway_send`` entry: its id and its raw ``data`` (None: no such field)."""

    entry_id: bytes
    data: bytes | None


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _int_or_none(raw: Any) -> int | None:
    return None if raw is None else int(raw)


async def _exchange(conn: Any, request: list[bytes], replies: int) -> list[Any]:
    """Write ``request`` on ``conn`` and read ``replies`` replies (all of them, so the
    connection stays in step, before the first error reply is raised)."""
    import redis.exceptions  # loaded with the client (cluster.state.redis_state): no cost

    await conn.send_packed_command(request)
    out: list[Any] = []
    error: redis.exceptions.ResponseError | None = None
    for _ in range(replies):
        try:
            out.append(await conn.read_response())
        except redis.exceptions.ResponseError as exc:
            error = error or exc
    if error is not None:
        raise error
    return out


def _commands(entries: Iterable[_Entry | None]) -> list[Command]:
    found: list[Command] = []
    for entry in entries:
        if entry is None:
            continue
        entry_id, fields = entry
        found.append(Command(entry_id, (fields or {}).get(b"data")))
    return found


class StreamStore:
    """The sink's and ``gateway_send``'s calls to Redis, on ``state``'s client."""

    def __init__(self, state: RedisState) -> None:
        self._state = state
        self._append = state.register(redis_scripts.SINK_APPEND)
        self._touch = state.register(redis_scripts.SINK_TOUCH)
        self._trim = state.register(redis_scripts.SINK_TRIM)

    def batch(self) -> SinkBatch:
        return SinkBatch(self._state)

    def _lease_key(self, lease: Lease) -> str:
        return self._state.key(f"lease:{lease.key}")

    async def append(self, lease: Lease, batches: Sequence[SinkBatch], ttl_ms: int) -> AppendResult:
        """Run ``batches`` in order in one pipeline; LeaseLostError when the lease is not ours.

        A batch the lease check refused wrote nothing, and neither did any after it
        (they are refused the same way). Running a batch twice (a reply lost, then a
        retry) appends nothing twice: its seqs are at or below the checkpoint then.
        """
        if not batches:
            return AppendResult(0, 0)
        try:
            replies = await self._state.call(self._append_pipeline(lease, batches, ttl_ms))
        except RedisStateError as exc:
            import redis.exceptions

            if not isinstance(exc.__cause__, redis.exceptions.NoScriptError):
                raise
            # Redis lost its script cache (a restart, a failover): load it, run again.
            self._append.sha = await self._state.call(
                self._state.client.script_load(self._append.script)
            )
            replies = await self._state.call(self._append_pipeline(lease, batches, ttl_ms))
        appended = skipped = 0
        for reply in replies:
            if int(reply[0]) == 0:
                raise self._state.lease_lost(lease, reply[1])
            appended += int(reply[1])
            skipped += int(reply[2])
        return AppendResult(appended, skipped)

    async def append_marker(self, stream: str, data: bytes) -> None:
        """One entry that is no gateway event (a reshard's marker): a plain XADD."""
        await self._state.call(self._state.bulk.xadd(stream, {"data": data}))

    async def _append_pipeline(
        self, lease: Lease, batches: Sequence[SinkBatch], ttl_ms: int
    ) -> list[Any]:
        # The batches' requests are already RESP: written on one connection of the bulk
        # client's pool as they are, then one reply read per batch (redis-py's pipeline
        # would pack every argument again, and its script object would ask SCRIPT EXISTS
        # first). As redis-py does, a connection error is tried once more on a fresh
        # connection (a pooled one that a Redis restart closed); a retried batch appends
        # nothing twice.
        lease_key = self._lease_key(lease)
        sha = self._append.sha
        request = [
            batch.request(sha, lease_key, lease.value, lease.token, ttl_ms) for batch in batches
        ]
        pool = self._state.bulk.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except TypeError:  # redis-py before 5.3 wants a command name
            conn = await pool.get_connection("EVALSHA")  # type: ignore[no-untyped-call]
        try:
            replies: list[Any] = await conn.retry.call_with_retry(
                lambda: _exchange(conn, request, len(batches)),
                lambda _error: conn.disconnect(),
            )
            return replies
        finally:
            await pool.release(conn)

    async def touch(self, lease: Lease, shard_ids: Iterable[int], ttl_ms: int) -> int:
        """Give the range's session keys ``ttl_ms`` again; how many exist."""
        keys = [self._lease_key(lease)] + [self._state.key(f"sess:{s}") for s in shard_ids]
        raw = await self._state.call(self._touch(keys=keys, args=[lease.value, ttl_ms]))
        if int(raw[0]) == 0:
            raise self._state.lease_lost(lease, raw[1])
        return int(raw[1])

    async def trim(self, streams: Sequence[str], retention_ms: int, maxlen: int) -> int:
        """Entries older than ``retention_ms`` or beyond ``maxlen`` removed; how many."""
        if not streams:
            return 0
        removed = await self._state.call(
            self._trim(keys=list(streams), args=[retention_ms, maxlen])
        )
        return int(removed)

    async def streams(self, streams: Sequence[str]) -> list[StreamView]:
        """Length and consumer groups of each of ``streams`` (two pipelined commands each)."""
        if not streams:
            return []
        async with self._state.bulk.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xlen(stream)
                pipe.xinfo_groups(stream)
            replies = await self._state.call(pipe.execute(raise_on_error=False))
        views = []
        for i, stream in enumerate(streams):
            length, groups = replies[2 * i], replies[2 * i + 1]
            if isinstance(length, Exception) or isinstance(groups, Exception):
                continue  # no such stream (XINFO raises): nothing to report yet
            views.append(
                StreamView(
                    stream,
                    int(length),
                    tuple(
                        GroupView(
                            stream,
                            _text(g.get("name")),
                            int(g.get("consumers") or 0),
                            int(g.get("pending") or 0),
                            _int_or_none(g.get("lag")),
                        )
                        for g in groups
                    ),
                )
            )
        return views

    # -- gateway_send ------------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str) -> bool:
        """Create ``group`` on ``stream`` at its end (MKSTREAM); False when it existed."""
        try:
            await self._state.call(
                self._state.bulk.xgroup_create(stream, group, id="$", mkstream=True)
            )
        except RedisStateError as exc:
            import redis.exceptions

            if isinstance(exc.__cause__, redis.exceptions.ResponseError) and "BUSYGROUP" in str(
                exc.__cause__
            ):
                return False
            raise
        return True

    async def read_commands(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[Command]:
        """New entries for ``consumer`` (XREADGROUP ``>``), waiting up to ``block_ms``."""
        reply: Any = await self._state.call(
            self._state.bulk.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
        )
        if not reply:
            return []
        return _commands(reply[0][1])

    async def claim_commands(
        self, stream: str, group: str, consumer: str, count: int
    ) -> tuple[list[Command], int]:
        """Entries the group's other consumers read and never acked (a dead owner's), and
        how many of those were trimmed away before anyone handled them."""
        claimed: list[Command] = []
        deleted = 0
        start: Any = "0-0"
        while True:
            reply = await self._state.call(
                self._state.bulk.xautoclaim(
                    stream, group, consumer, min_idle_time=0, start_id=start, count=count
                )
            )
            start = reply[0]
            claimed += _commands(reply[1])
            if len(reply) > 2:
                deleted += len(reply[2])
            if start in (b"0-0", "0-0"):
                return claimed, deleted

    async def ack(self, stream: str, group: str, entry_ids: Sequence[bytes]) -> None:
        if entry_ids:
            await self._state.call(self._state.bulk.xack(stream, group, *entry_ids))
