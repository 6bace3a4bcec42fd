"""The sink's and the command stream's Redis side: appends, trims, group views, command reads.

Built on one :class:`cluster.state.redis_state.RedisState` (its client, its error
mapping, its script loading). The streams are the ``@discordjs/brokers`` layout
(:mod:`protocol.brokerformat`): one stream per event name, field ``data``.

- :class:`SinkBatch` collects runs (a shard's consecutive events of one session)
  into the keys and arguments of one ``SINK_APPEND`` script call;
  :meth:`StreamStore.append` runs a list of them in one pipeline, in order, on
  one connection, fenced by the caller's lease.
- :meth:`StreamStore.touch` keeps an idle shard's checkpoint from expiring;
  :meth:`StreamStore.trim` bounds the streams by age and length;
  :meth:`StreamStore.groups` is what ``/metrics`` says of each stream and group.
- :meth:`StreamStore.read_commands` / :meth:`StreamStore.ack` /
  :meth:`StreamStore.claim_commands` are one host's consumer group on ``gateway_send``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from cluster.state import redis_scripts
from cluster.state.redis_state import Lease, RedisState, RedisStateError

#: One stream entry as redis-py returns it: (id, {field: value}).
_Entry = tuple[bytes, dict[bytes, bytes]]


class SinkBatch:
    """The keys and arguments of one ``SINK_APPEND`` call (see cluster/state/redis_scripts.py)."""

    __slots__ = ("_key", "_run_keys", "_stream_index", "_streams", "args", "events", "runs")

    def __init__(self, state: RedisState) -> None:
        self._key = state.key
        self._run_keys: list[str] = []
        self._stream_index: dict[str, int] = {}
        self._streams: list[str] = []
        #: per run: session id, resume url, first seq, n, then n pairs (stream j, data)
        self.args: list[Any] = []
        self.runs = 0
        self.events = 0

    def add_run(
        self,
        shard_id: int,
        session_id: str,
        resume_url: str,
        first_seq: int,
        events: Sequence[tuple[str, bytes]],
    ) -> None:
        """A run of ``shard_id``: ``events`` are (stream, data) of seqs ``first_seq ..``."""
        args = self.args
        args += (session_id, resume_url, first_seq, len(events))
        index = self._stream_index
        for stream, data in events:
            j = index.get(stream)
            if j is None:
                self._streams.append(stream)
                j = index[stream] = len(self._streams)
            args.append(j)
            args.append(data)
        self._run_keys.append(self._key(f"sess:{shard_id}"))
        self.runs += 1
        self.events += len(events)

    def keys(self, lease_key: str) -> list[str]:
        return [lease_key, *self._run_keys, *self._streams]


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
        try:
            replies = await self._append_pipeline(lease, batches, ttl_ms)
        except RedisStateError as exc:
            if not isinstance(exc.__cause__, redis.exceptions.NoScriptError):
                raise
            # Redis lost its script cache (a restart, a failover): load it, run again.
            self._append.sha = await self._state.call(
                self._state.client.script_load(self._append.script)
            )
            replies = await self._append_pipeline(lease, batches, ttl_ms)
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
        # EVALSHA straight on the pipeline: redis-py's script object would ask
        # SCRIPT EXISTS before every pipeline (a second round trip per append).
        lease_key = self._lease_key(lease)
        sha = self._append.sha
        async with self._state.bulk.pipeline(transaction=False) as pipe:
            for batch in batches:
                keys = batch.keys(lease_key)
                pipe.evalsha(
                    sha, len(keys), *keys, lease.value, lease.token, ttl_ms, batch.runs, *batch.args
                )
            replies: list[Any] = await self._state.call(pipe.execute())
        return replies

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
