"""A reshard across hosts in Redis: its record, each host's progress, the old sets' fingerprints.

The keys (in the bot's namespace, see :mod:`cluster.state.redis_state`):

======================  ==============================================================
``reshard``             hash ``id``, ``from``, ``to``, ``hosts``, ``phase``, ``error``
``reshard:ready``       set of host range indexes whose new set is settled
``reshard:recording``   set of host range indexes whose old set records its fingerprints
``reshard:drained``     set of host range indexes whose old set stopped publishing
``reshard:fp``          list of fingerprint batches of what the old sets published
======================  ==============================================================

The phases, and who moves them (each a script of :mod:`cluster.state.redis_scripts`):
``starting`` (:meth:`ReshardStore.begin`) -> ``switching`` (the last host to call
:meth:`ReshardStore.ready`; the layout key moves to the new count in the same step) ->
``switched`` (the last host to call :meth:`ReshardStore.drained`, or a forced call when
a host died mid-switch); ``abandoned`` only from ``starting``
(:meth:`ReshardStore.abandon`). The protocol around them is
:mod:`cluster.reshard_hosts`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from cluster.state import redis_scripts
from cluster.state.redis_state import RedisState, RedisStateError

#: How long a reshard's keys outlive their last change.
RESHARD_TTL_MS: Final = 86_400_000
#: At most this many fingerprint batches are kept (each host pushes about 5 a second).
MAX_FINGERPRINT_BATCHES: Final = 4_000


class SharedPhase(enum.Enum):
    #: the new sets identify; the old ones publish
    STARTING = "starting"
    #: every new set is settled and the layout is the new one: the old sets stop publishing
    SWITCHING = "switching"
    #: every old set stopped: the new sets publish
    SWITCHED = "switched"
    #: given up before the switch; the old sets run on
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class ReshardRecord:
    id: str
    old_shards: int
    new_shards: int
    hosts: int
    phase: SharedPhase
    error: str | None


class ReshardBusyError(RedisStateError):
    """Another reshard is running."""


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _phase(raw: Any) -> SharedPhase | None:
    text = _text(raw) if raw else ""
    try:
        return SharedPhase(text)
    except ValueError:
        return None


class ReshardStore:
    """The reshard scripts and reads, on one supervisor's :class:`RedisState`."""

    def __init__(self, state: RedisState) -> None:
        self._state = state
        register = state.register
        self._begin = register(redis_scripts.RESHARD_BEGIN)
        self._join = register(redis_scripts.RESHARD_JOIN)
        self._recording = register(redis_scripts.RESHARD_RECORDING)
        self._ready = register(redis_scripts.RESHARD_READY)
        self._drained = register(redis_scripts.RESHARD_DRAINED)
        self._abandon = register(redis_scripts.RESHARD_ABANDON)
        key = state.key
        self._hash = key("reshard")
        self._layout = key("layout")
        self._ready_set = key("reshard:ready")
        self._drained_set = key("reshard:drained")
        self._recording_set = key("reshard:recording")
        self._fingerprints = key("reshard:fp")

    async def begin(self, reshard_id: str, old_shards: int, new_shards: int, hosts: int) -> None:
        """Record a reshard ``old_shards -> new_shards`` over ``hosts`` host ranges.

        Raises :class:`ReshardBusyError` while another runs, :class:`RedisStateError`
        when the layout does not run ``old_shards``.
        """
        raw = await self._state.call(
            self._begin(
                keys=[
                    self._hash,
                    self._layout,
                    self._ready_set,
                    self._drained_set,
                    self._fingerprints,
                    self._recording_set,
                ],
                args=[reshard_id, old_shards, new_shards, hosts, RESHARD_TTL_MS],
            )
        )
        outcome = _text(raw[0])
        if outcome == "busy":
            raise ReshardBusyError(f"a reshard to {int(raw[2])} shards is already running")
        if outcome == "layout":
            raise RedisStateError(
                f"the cluster runs {int(raw[1])} shards by Redis's layout, not {old_shards}"
            )

    async def read(self) -> ReshardRecord | None:
        """The current (or last) reshard, or None."""
        raw: list[Any] = await self._state.call(
            self._state.client.hmget(self._hash, "id", "from", "to", "hosts", "phase", "error")
        )
        phase = _phase(raw[4])
        if raw[0] is None or phase is None:
            return None
        try:
            old, new, hosts = int(raw[1]), int(raw[2]), int(raw[3])
        except (TypeError, ValueError):
            return None
        return ReshardRecord(
            _text(raw[0]), old, new, hosts, phase, None if raw[5] is None else _text(raw[5])
        )

    async def join(self, reshard_id: str, index: int) -> SharedPhase | None:
        """This host takes part (again): not ready until it says so; the phase now."""
        raw = await self._state.call(
            self._join(keys=[self._hash, self._ready_set], args=[reshard_id, index])
        )
        return _phase(raw)

    async def recording(self, reshard_id: str, index: int) -> tuple[SharedPhase | None, bool]:
        """This host's old set records what it publishes; (the phase, whether every host's does)."""
        raw = await self._state.call(
            self._recording(
                keys=[self._hash, self._recording_set], args=[reshard_id, index, RESHARD_TTL_MS]
            )
        )
        return _phase(raw[0]), bool(int(raw[1]))

    async def ready(self, reshard_id: str, index: int) -> SharedPhase | None:
        """This host's new set is settled; the phase after (None: another reshard now)."""
        raw = await self._state.call(
            self._ready(
                keys=[self._hash, self._layout, self._ready_set],
                args=[reshard_id, index, RESHARD_TTL_MS],
            )
        )
        return _phase(raw)

    async def drained(
        self, reshard_id: str, index: int | None, *, force: bool = False
    ) -> SharedPhase | None:
        """This host's old set stopped publishing (``index`` None: only ``force``)."""
        raw = await self._state.call(
            self._drained(
                keys=[self._hash, self._drained_set],
                args=[
                    reshard_id,
                    "" if index is None else index,
                    RESHARD_TTL_MS,
                    "1" if force else "0",
                ],
            )
        )
        return _phase(raw)

    async def abandon(self, reshard_id: str, why: str) -> SharedPhase | None:
        """Give the reshard up, unless its switch began; the phase after."""
        raw = await self._state.call(self._abandon(keys=[self._hash], args=[reshard_id, why[:300]]))
        return _phase(raw)

    async def push_fingerprints(self, batch: bytes) -> None:
        """Append one batch of the old set's fingerprints (bounded, expiring)."""
        pipe = self._state.client.pipeline(transaction=False)
        pipe.rpush(self._fingerprints, batch)
        pipe.ltrim(self._fingerprints, -MAX_FINGERPRINT_BATCHES, -1)
        pipe.pexpire(self._fingerprints, RESHARD_TTL_MS)
        await self._state.call(pipe.execute())

    async def fingerprints(self) -> list[bytes]:
        """Every batch the old sets pushed (on the bulk client: it may be megabytes)."""
        raw: list[Any] = await self._state.call(self._state.bulk.lrange(self._fingerprints, 0, -1))
        return [b if isinstance(b, bytes) else str(b).encode() for b in raw]
